"""The server's options: each flag's type, help, panel, range and environment variable.

``msgsrv.main`` takes one parameter per flag, typed by an alias below, with its default
from ``BackendConfig`` or ``HubConfig`` (the one place each default is set).
"""

from __future__ import annotations

import enum
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from ..backends.common import FD_RESERVE, BackendConfig
from ..hub import HubConfig, Visibility
from ..protocol import VERSION_MAJOR, VERSION_MINOR
from ..units import parse_size

NETWORK, LIMITS, TIMES, TLS, STORE, LOGINS, OUTPUT = (
    "Network", "Limits", "Timeouts", "TLS", "Storage", "Accounts and logins", "Output"
)  # fmt: skip
NET, HUB = BackendConfig(), HubConfig()  # the defaults: each flag's, from the one place it is set


class Backend(enum.StrEnum):
    """The I/O strategies (``backends.BACKENDS``, in teaching order)."""

    threads = "threads"
    select = "select"
    poll = "poll"
    epoll = "epoll"
    asyncio = "asyncio"
    uvloop = "uvloop"


class Durability(enum.StrEnum):
    full = "full"
    normal = "normal"
    memory = "memory"


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class RoleChoice(enum.StrEnum):
    student = "student"
    instructor = "instructor"
    assistant = "assistant"


class KdfChoice(enum.StrEnum):
    production = "production"
    test = "test"


def opt(help: str, panel: str, *decls: str, **more: Any) -> Any:
    """A typer option in a help panel."""
    return typer.Option(*decls, help=help, rich_help_panel=panel, **more)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msgsrv {metadata.version('csce513msg')} (protocol {VERSION_MAJOR}.{VERSION_MINOR})")
        raise typer.Exit()


BackendFlag = Annotated[
    Backend,
    opt("The I/O strategy (docs/backends.md).", NETWORK, envvar="MSGSRV_BACKEND", case_sensitive=False),
]
HostFlag = Annotated[str, opt("Address to listen on (0.0.0.0: every IPv4 address).", NETWORK, envvar="MSGSRV_HOST")]
PortFlag = Annotated[
    int, opt("TCP port; 0 picks a free one (the banner prints it).", NETWORK, envvar="MSGSRV_PORT", min=0, max=65535)
]
ServerNameFlag = Annotated[str, opt("Server name sent in the Welcome.", NETWORK, "--name", envvar="MSGSRV_NAME")]
MaxConnectionsFlag = Annotated[
    int,
    opt(
        f"Connections served at once; more are told SERVER_FULL. 0: the open-file limit - {FD_RESERVE}.",
        NETWORK,
        envvar="MSGSRV_MAX_CONNECTIONS",
        min=0,
    ),
]
BacklogFlag = Annotated[int, opt("listen() backlog.", NETWORK, min=1)]
RecvSizeFlag = Annotated[int, opt("Bytes asked of each recv() call.", NETWORK, min=1024)]
SndbufFlag = Annotated[int, opt("SO_SNDBUF of accepted sockets; 0: the kernel's default.", NETWORK, min=0)]
MaxFrameFlag = Annotated[int, opt("Largest frame (header + body) accepted, bytes.", LIMITS, min=4096)]
MaxTextFlag = Annotated[int, opt("Largest message body, bytes.", LIMITS, min=1)]
MaxGroupMembersFlag = Annotated[int, opt("Members a group may have at once.", LIMITS, min=1)]
FILES = "Files"


def _size(value: str | int) -> int:
    """A size flag's value: typed as ``10M`` (or the default, already a number)."""
    return value if isinstance(value, int) else parse_size(value)


MaxFileFlag = Annotated[int, opt("Largest file an upload may declare (e.g. 256M).", FILES, parser=_size)]
FileQuotaFlag = Annotated[int, opt("Bytes of uploads one user may hold at once (e.g. 1G).", FILES, parser=_size)]
DiskReserveFlag = Annotated[
    int, opt("Bytes kept free on the data directory's disk: uploads past it are refused.", FILES, parser=_size)
]
FileDaysFlag = Annotated[
    float, opt("Days an upload is kept from its start, then deleted.", FILES, min=0.001, max=36500)
]
KeyDaysFlag = Annotated[
    float,
    opt("Days a device's end-to-end keys stay in the key directory after its last login.", LIMITS, min=1, max=36500),
]
MaxChunkFlag = Annotated[
    int,
    opt(
        "Largest chunk of a file in one frame for clients of protocol 1.8 (e.g. 256K; at most 1M; "
        "never less than --max-frame less 1 KiB).",
        FILES,
        parser=_size,
    ),
]
NoFilesFlag = Annotated[bool, opt("Keep no files: uploads are not offered (protocol 1.6's files off).", FILES)]
WindowFlag = Annotated[int, opt("Unacknowledged deliveries per client (advertised).", LIMITS, min=1)]
RateFlag = Annotated[float, opt("Requests per second per connection.", LIMITS, min=0.001)]
BurstFlag = Annotated[int, opt("Requests a connection may send at once.", LIMITS, min=1)]
HighWaterFlag = Annotated[int, opt("Outbound bytes queued before pause_writing.", LIMITS, min=1)]
LowWaterFlag = Annotated[int, opt("Outbound bytes queued before resume_writing.", LIMITS, min=1)]
HardLimitFlag = Annotated[int, opt("Outbound bytes queued before the connection is aborted.", LIMITS, min=1)]
IdleTimeoutFlag = Annotated[float, opt("Seconds of silence before a connection is closed.", TIMES, min=0.001)]
LoginTimeoutFlag = Annotated[float, opt("Seconds a connection has to log in.", TIMES, min=0.001)]
FrameTimeoutFlag = Annotated[float, opt("Seconds a frame may take from first to last byte.", TIMES, min=0.001)]
CloseTimeoutFlag = Annotated[float, opt("Seconds a closing connection may take to drain.", TIMES, min=0)]
HandshakeTimeoutFlag = Annotated[float, opt("Seconds a client has for the TLS handshake.", TIMES, min=0.001)]
TlsFlag = Annotated[
    bool, opt("TLS 1.3 only; makes a self-signed certificate on first start.", TLS, "--tls", envvar="MSGSRV_TLS")
]
TlsCertFlag = Annotated[Path | None, opt("PEM certificate (chain) to use instead.", TLS, envvar="MSGSRV_TLS_CERT")]
TlsKeyFlag = Annotated[Path | None, opt("PEM private key for --tls-cert.", TLS, envvar="MSGSRV_TLS_KEY")]
DataDirFlag = Annotated[
    Path | None,
    opt(
        "Server data: the database, the TLS certificate. Default: ~/.local/share/csce513msg.",
        STORE,
        envvar="MSGSRV_DATA_DIR",
    ),
]
DurabilityFlag = Annotated[
    Durability,
    opt(
        "full: fsync every commit; normal: survives a crash; memory: nothing on disk.",
        STORE,
        envvar="MSGSRV_DURABILITY",
        case_sensitive=False,
    ),
]
CheckpointIntervalFlag = Annotated[float, opt("Seconds between WAL checkpoints; 0: off.", STORE, min=0)]
RetentionDaysFlag = Annotated[float, opt("Days messages are kept as history; 0: forever.", STORE, min=0)]
NewDeviceHistoryFlag = Annotated[int, opt("Messages per conversation a new device starts back.", STORE, min=0)]
AckDelayFlag = Annotated[float, opt("Seconds acknowledgements may wait to be stored with other work.", STORE, min=0)]
SelfRegisterFlag = Annotated[
    bool,
    opt(
        "Let anyone create a student account over the wire (else: msgsrv user add).",
        LOGINS,
        "--self-register/--no-self-register",
        envvar="MSGSRV_SELF_REGISTER",
    ),
]
VisibilityFlag = Annotated[
    Visibility,
    opt(
        "Who sees whom online: class (everyone) or instructors (students see only them).",
        LOGINS,
        envvar="MSGSRV_VISIBILITY",
        case_sensitive=False,
    ),
]
KdfCostFlag = Annotated[
    KdfChoice, opt("production (scrypt N=2^14, ~50 ms) or test (no protection; loopback only).", LOGINS)
]
LoginFailuresPerAccountFlag = Annotated[int, opt("Failed logins per window per account.", LOGINS, min=1)]
LoginFailuresPerAddressFlag = Annotated[
    int, opt("Failed logins per window per address (a class behind NAT shares one).", LOGINS, min=1)
]
LoginFailureWindowFlag = Annotated[float, opt("Seconds a failed login counts.", LOGINS, min=0.001)]
RegistrationsPerAddressFlag = Annotated[
    int, opt("Accounts one address may register an hour (--self-register).", LOGINS, min=1)
]
MaxPendingLoginsFlag = Annotated[
    int,
    opt("Logins waiting for their password check, server-wide (then the busiest address waits).", LOGINS, min=1),
]
HashNiceFlag = Annotated[
    int,
    opt(
        "Password checks' CPU priority: nice steps below the server's (0-19; at 10 each hash thread weighs a tenth "
        "of the loop while chat keeps the core busy), or -1 for SCHED_IDLE (only CPU chat leaves idle).",
        LOGINS,
        min=-1,
        max=19,
    ),
]
AccountPollFlag = Annotated[float, opt("Seconds between checks for `msgsrv user` changes.", LOGINS, min=0.001)]
LogLevelFlag = Annotated[
    LogLevel, opt("Server window verbosity.", OUTPUT, envvar="MSGSRV_LOG_LEVEL", case_sensitive=False)
]
QuietFlag = Annotated[bool, opt("Only warnings and errors (same as --log-level warning).", OUTPUT, "--quiet", "-q")]
StatsFlag = Annotated[bool, opt("A live line in the server window: connections, msg/s, CPU, RSS.", OUTPUT, "--stats")]
StatsIntervalFlag = Annotated[float, opt("Seconds between --stats updates.", OUTPUT, min=0.1)]
VersionFlag = Annotated[bool, opt("Print the version and exit.", OUTPUT, "--version", callback=_version, is_eager=True)]
