"""What every I/O strategy needs and that is not the strategy itself.

- ``BackendConfig``: the backend's limits (every one a server flag).
- ``listen``: the first three steps of any TCP server: socket, bind, listen.
- ``tune``, ``peer_name``: an accepted socket's options, and its peer for the log.
- ``connection_cap``: how many connections are served at once (``door.py`` enforces it).
- ``SignalWakeup``: SIGINT/SIGTERM turned into a readable socket, so a loop that is
  blocked in select/poll/epoll wakes up for them (``signal.set_wakeup_fd``).
- ``Announce``: what a backend calls once it listens (the CLI prints the banner).
- ``guarded``: calls into the engine, where any exception is a bug that costs
  one connection, never the server.
- ``WAITS``: how many times the loop waited for readiness (its wake-ups) and, when
  ``msgsrv --stats`` asks, the CPU the loop's thread spent inside those waits.

Beside it: ``door.py`` (admission at ``accept``), ``queues.py`` (the outbound queue with
its water marks, and the deadline queue), ``jobs.py`` (blocking work off the loop, and
the storage batches the loop runs itself) and ``driver.py`` (the bookkeeping of the
select, poll and epoll loops).
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVarTuple

from ..hub import CHUNK_RANGE, HISTORY_PAGE, Action, HubConfig

log = logging.getLogger("csce513msg.backend")
Ts = TypeVarTuple("Ts")
#: Called once by a backend when it listens, with its name and the listening socket
#: (``cli/banner.py`` prints where it listens, the limits and how clients connect).
Announce = Callable[[str, socket.socket], None]
#: SO_LINGER on, 0 seconds: close() resets the connection (RST) at once. An abort uses it,
#: so a peer blocked writing to us learns at once that we are gone, instead of waiting
#: on a closed window.
LINGER_RESET = struct.pack("ii", 1, 0)
#: Descriptors the server keeps for its own use, below the open-file limit: the default
#: connection cap is the limit minus these. An idle server holds 12 to 18 (stdio, the
#: log, the database and its WAL, the listener, the wake-up and job sockets, the epoll
#: object; uvloop a few more); the rest is room for SQLite's temporary files, reading the
#: TLS certificate and ``--stats``' reads of /proc.
FD_RESERVE = 64


class Waits:
    """The loop's waits for readiness: ``with WAITS:`` around the one call that blocks
    (``select``, ``poll``, ``epoll.poll``; the asyncio loop's selector). Each wait is one
    wake-up of the loop, so ``calls`` counts them (an integer add: always on). With
    ``timed`` (``msgsrv --stats`` sets it) it also adds up the CPU the thread spent
    *inside* the call, not the time it slept there: ``time.thread_time`` is CPU time, and a
    thread blocked in the kernel uses none. That is the figure that grows with the watched
    sockets for select and poll (the lists copied in and scanned on every call) and stays
    with the ready ones for epoll. It costs two ``clock_gettime`` system calls per wait, so
    it is off unless asked for. One loop per process: the CLI's stats line reads it."""

    __slots__ = ("_started", "calls", "cpu_s", "timed")

    def __init__(self) -> None:
        self.calls = 0  #: waits so far (loop wake-ups)
        self.cpu_s = 0.0  #: CPU seconds inside them, while ``timed``
        self.timed = False
        self._started = 0.0

    def __enter__(self) -> None:
        self.calls += 1
        if self.timed:
            self._started = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        if self.timed:
            self.cpu_s += time.thread_time() - self._started


WAITS = Waits()  #: the loop's waits, for ``msgsrv --stats`` (and the benchmark's workload 7, which reads that line)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Limits and time constants of the I/O layer, with their defaults."""

    host: str = "127.0.0.1"
    port: int = 5130
    high_water: int = 256 * 1024  #: outbound bytes queued: above this, pause_writing
    low_water: int = 64 * 1024  #: ... and below this again, resume_writing
    hard_limit: int = 8 * 1024 * 1024  #: outbound bytes queued: above this, abort
    sndbuf: int = 0  #: SO_SNDBUF for accepted sockets; 0 keeps the kernel's default
    close_timeout: float = 5.0  #: seconds a closing connection may take to drain
    backlog: int = 1024  #: listen() backlog
    recv_size: int = 65536  #: bytes asked of each recv()
    #: connections served at once; past it a new one is told SERVER_FULL and closed.
    #: 0: the open-file limit minus ``FD_RESERVE`` (see ``connection_cap``)
    max_connections: int = 0
    #: the password-hashing threads' CPU priority (docs/security.md, "The hash lane's share"):
    #: nice steps below the process (0-19), a share the scheduler keeps for logins while
    #: chat keeps the core busy (10 steps: a hash thread weighs about a tenth of the loop);
    #: -1: SCHED_IDLE, only the CPU chat leaves idle (a login then waits while the core is busy)
    hash_nice: int = 10


def check_limits(backend: BackendConfig, hub: HubConfig) -> str | None:
    """Return why these limits cannot work together, or None if they can."""
    if not 0 < backend.low_water <= backend.high_water:
        return "the low-water mark must be positive and at most the high-water mark"
    # below the high-water mark a connection may be sent a full window of deliveries and,
    # on top, one History page (at least one message: see page_room)
    need = backend.high_water + (hub.window + 1) * hub.max_frame
    if backend.hard_limit < need:
        return (
            f"the outbound hard limit ({backend.hard_limit}) is below the high-water mark plus "
            f"(window + 1) x max frame ({need}): a client honouring the window would be aborted"
        )
    if not CHUNK_RANGE[0] <= hub.max_chunk <= CHUNK_RANGE[1]:
        least, most = CHUNK_RANGE
        return f"the max chunk must be {least} to {most} bytes (an upload's window holds a chunk)"
    if hub.max_text + 1024 > hub.max_frame:
        return "the max frame must exceed the text limit by at least 1024 bytes (the header)"
    for name, value in (("login timeout", hub.login_timeout), ("frame timeout", hub.frame_timeout)):
        if value <= 0:
            return f"the {name} must be more than 0 seconds"
    if hub.max_pending_logins < 1:
        return "--max-pending-logins must be 1 or more"
    return None


def page_room(backend: BackendConfig, hub: HubConfig) -> int:
    """The bytes of message bodies a History page may carry: what the hard limit has room
    for above the high-water mark and a full window (a page is read only below the mark),
    at most 1 MiB. Every page still carries one message, which ``check_limits`` made room for."""
    room = backend.hard_limit - backend.high_water - hub.window * hub.max_frame
    return max(hub.max_text, min(1 << 20, room - 1024 * HISTORY_PAGE))


def read_room(backend: BackendConfig, hub: HubConfig) -> int:
    """The outbound bytes the file lane's reads may add (``HubConfig.read_room``): what the hard
    limit leaves above the high-water mark, a full window and a History page of ``page_room``."""
    page = page_room(backend, hub) + 1024 * HISTORY_PAGE
    return max(0, backend.hard_limit - backend.high_water - hub.window * hub.max_frame - page)


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE this process runs with (``msgsrv`` raises it to the hard one)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20  # Linux's default fs.nr_open


def connection_cap(config: BackendConfig) -> int:
    """The connection cap: ``--max-connections``, or the open-file limit minus the reserve."""
    return config.max_connections or max(1, open_file_limit() - FD_RESERVE)


def listen(config: BackendConfig) -> socket.socket:
    """Create, bind and listen: the server's first three steps."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)  # step 1: create a socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without TIME_WAIT trouble
    sock.bind((config.host, config.port))  # step 2: bind it to an address
    sock.listen(config.backlog)  # step 3: listen; the kernel now completes handshakes for us
    return sock


def tune(sock: socket.socket, config: BackendConfig) -> None:
    """Options for an accepted socket: no Nagle delay, and the send buffer flag."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # chat is small messages
    if config.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.sndbuf)


def peer_name(sock: socket.socket) -> str:
    """Return ``host:port`` of the peer, or "?" if it is already gone."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SignalWakeup:
    """SIGINT and SIGTERM, as a socket that becomes readable when one arrives.

    The C-level handler writes the signal number to ``set_wakeup_fd``'s socket, so
    a loop blocked in select/poll/epoll wakes; the Python handler only records it.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.signalled: int | None = None
        signal.set_wakeup_fd(self._writer.fileno())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = signum

    def fileno(self) -> int:
        return self.reader.fileno()

    def drain(self) -> None:
        """Empty the wake-up socket."""
        try:
            while self.reader.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.reader.close()
        self._writer.close()


def guarded(call: Callable[[*Ts], list[Action]], *args: *Ts) -> list[Action] | None:
    """Call the engine; on an exception (a bug) log the traceback and return None,
    so the caller aborts that one connection and keeps serving everyone else."""
    try:
        return call(*args)
    except Exception:  # any exception in the engine is a bug that costs one connection, never the server
        shown: tuple[object, ...] = args  # for the log: the first argument (a connection's id) is enough
        log.exception("engine bug in %s%r", call.__name__, shown[:1])
        return None
