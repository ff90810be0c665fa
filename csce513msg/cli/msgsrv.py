"""``msgsrv``: the server's command line.

``msgsrv [serve] --backend NAME ...`` runs the server; ``serve`` is the default
command, so ``msgsrv --backend epoll`` works too. ``msgsrv user ...`` manages
accounts (``cli/users.py``), beside a running server too. Every limit is a flag;
defaults are documented in ``--help`` and README.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import resource
import socket
import sqlite3
import ssl
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..backends import BACKENDS, DESCRIPTIONS, BackendUnavailable, default_backend, load
from ..backends.common import FD_RESERVE, BackendConfig, check_limits, page_room
from ..backends.tls import TlsEngine, server_context
from ..crypto.certs import ensure_certificate, fingerprint_of_pem
from ..crypto.passwords import COSTS, Scrypt
from ..hub import Engine, EngineAPI, HubConfig, Visibility
from ..paths import DATABASE, default_data_dir, private_data_dir
from ..store import MemoryStore, Store
from ..store.sqlite import SqliteStore, database_problem
from . import stats as live_stats
from .users import user_app

DEFAULT_PORT = 5130
_BACKEND_HELP = "I/O strategy: " + "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in BACKENDS)

app = typer.Typer(
    add_completion=False,
    help="csce513Msg server. Backends: " + ", ".join(BACKENDS) + f" (default {default_backend()}).",
)


app.add_typer(user_app, name="user")


@app.callback()
def main() -> None:
    """csce513Msg chat server: run `msgsrv serve --help` for the server's flags."""


@app.command()
def serve(
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = default_backend(),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (the banner prints it).")] = DEFAULT_PORT,
    name: Annotated[str, typer.Option(help="Server name sent in the Welcome.")] = "csce513msg",
    max_frame: Annotated[int, typer.Option(help="Largest frame (header + body) accepted, bytes.")] = 65536,
    max_text: Annotated[int, typer.Option(help="Largest message body, bytes.")] = 16384,
    window: Annotated[int, typer.Option(help="Unacknowledged deliveries per client (advertised).")] = 64,
    idle_timeout: Annotated[float, typer.Option(help="Seconds of silence before a connection is closed.")] = 90.0,
    login_timeout: Annotated[float, typer.Option(help="Seconds a connection has to log in.")] = 60.0,
    frame_timeout: Annotated[float, typer.Option(help="Seconds a frame may take from first to last byte.")] = 30.0,
    rate: Annotated[float, typer.Option(help="Requests per second per connection.")] = 500.0,
    burst: Annotated[int, typer.Option(help="Requests a connection may send at once.")] = 1000,
    high_water: Annotated[int, typer.Option(help="Outbound bytes queued before pause_writing.")] = 256 * 1024,
    low_water: Annotated[int, typer.Option(help="Outbound bytes queued before resume_writing.")] = 64 * 1024,
    hard_limit: Annotated[int, typer.Option(help="Outbound bytes queued before the connection is aborted.")] = 8
    * 1024
    * 1024,
    sndbuf: Annotated[int, typer.Option(help="SO_SNDBUF of accepted sockets; 0: kernel default.")] = 0,
    close_timeout: Annotated[float, typer.Option(help="Seconds a closing connection may take to drain.")] = 5.0,
    backlog: Annotated[int, typer.Option(help="listen() backlog.")] = 1024,
    recv_size: Annotated[int, typer.Option(help="Bytes asked of each recv() call.")] = 65536,
    max_connections: Annotated[
        int,
        typer.Option(
            help=f"Connections served at once; more are told SERVER_FULL. 0: the open-file limit - {FD_RESERVE}."
        ),
    ] = 0,
    tls: Annotated[bool, typer.Option(help="TLS 1.3 only; makes a self-signed certificate on first start.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (chain) to use instead.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for --tls-cert.")] = None,
    handshake_timeout: Annotated[float, typer.Option(help="Seconds a client has for the TLS handshake.")] = 10.0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Server data: database, TLS certificate. Default: ~/.local/share/csce513msg.")
    ] = None,
    durability: Annotated[
        str, typer.Option(help="full: fsync every commit; normal: survives a crash; memory: nothing on disk.")
    ] = "normal",
    checkpoint_interval: Annotated[float, typer.Option(help="Seconds between WAL checkpoints; 0: off.")] = 5.0,
    new_device_history: Annotated[int, typer.Option(help="Messages per stream a new device starts back.")] = 100,
    self_register: Annotated[
        bool, typer.Option(help="Let anyone create a student account over the wire (else: msgsrv user add).")
    ] = False,
    kdf_cost: Annotated[
        str, typer.Option(help="production (scrypt N=2^14, ~50 ms) or test (no protection; loopback only).")
    ] = "production",
    login_failures_per_account: Annotated[int, typer.Option(help="Failed logins per window per account.")] = 5,
    login_failures_per_address: Annotated[
        int, typer.Option(help="Failed logins per window per address (a class behind NAT shares one).")
    ] = 50,
    login_failure_window: Annotated[float, typer.Option(help="Seconds a failed login counts.")] = 60.0,
    registrations_per_address: Annotated[
        int, typer.Option(help="Accounts one address may register an hour (--self-register).")
    ] = 200,
    max_pending_logins: Annotated[
        int, typer.Option(help="Logins waiting for their password check, server-wide (then the busiest address waits).")
    ] = 1024,
    account_poll: Annotated[float, typer.Option(help="Seconds between checks for `msgsrv user` changes.")] = 2.0,
    retention_days: Annotated[float, typer.Option(help="Days messages are kept as history; 0: forever.")] = 365.0,
    ack_delay: Annotated[
        float, typer.Option(help="Seconds acknowledgements may wait to be stored with other work.")
    ] = 0.05,
    visibility: Annotated[
        Visibility,
        typer.Option(help="Who sees whom online: class (everyone) or instructors (students see only them)."),
    ] = Visibility.CLASS,
    stats: Annotated[
        bool, typer.Option(help="A live line in the server window: connections, msg/s, CPU, RSS.")
    ] = False,
    stats_interval: Annotated[float, typer.Option(help="Seconds between --stats lines.")] = 1.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    quiet: Annotated[bool, typer.Option(help="Only warnings and errors (same as --log-level warning).")] = False,
) -> None:
    """Run the chat server until SIGINT or SIGTERM."""
    level = logging.WARNING if quiet else getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        _fail(f"unknown log level {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(message)s", stream=sys.stderr)
    try:
        module = load(backend)
    except BackendUnavailable as exc:
        _fail(str(exc))
    hub_config = HubConfig(
        name, max_frame, max_text, window, idle_timeout, rate, burst, new_device_history,
        self_register=self_register, login_failures_per_account=login_failures_per_account,
        login_failures_per_address=login_failures_per_address, login_failure_window=login_failure_window,
        registrations_per_address=registrations_per_address, account_poll=account_poll,
        retention_days=retention_days, ack_delay=ack_delay, login_timeout=login_timeout,
        frame_timeout=frame_timeout, visibility=visibility, max_pending_logins=max_pending_logins,
    )  # fmt: skip
    if max_connections < 0:
        _fail("--max-connections must be 0 (the open-file limit decides) or more")
    backend_config = BackendConfig(
        host, port, high_water, low_water, hard_limit, sndbuf, close_timeout, backlog, recv_size, max_connections
    )
    problem = check_limits(backend_config, hub_config)
    if problem:
        _fail(problem)
    hub_config = dataclasses.replace(hub_config, page_bytes=page_room(backend_config, hub_config))
    loopback = ipaddress.ip_address(_resolve(host)).is_loopback
    passwords = _passwords(kdf_cost, loopback)
    _raise_fd_limit()  # the default --max-connections is the limit after this, less FD_RESERVE
    data_dir = data_dir or default_data_dir()
    store = _open_store(data_dir, durability, checkpoint_interval)
    wall_offset = time.time() - time.monotonic()
    accounts = store.load_accounts()
    print(
        f"accounts: {len(accounts)}; registration over the wire {'on' if self_register else 'off'}; kdf {kdf_cost}",
        flush=True,
    )
    if not accounts and not self_register:  # a first start: say how people get in
        data_flag = f" --data-dir {data_dir}" if data_dir != default_data_dir() else ""
        print(
            f"accounts: none yet: add them with `msgsrv user add NAME{data_flag}` (or use --self-register)", flush=True
        )
    chat = Engine(store, hub_config, wall_offset, passwords, accounts, store.load_device_tokens())
    engine: EngineAPI = chat
    if tls or tls_cert:
        engine = _with_tls(engine, tls_cert, tls_key, data_dir, handshake_timeout)
    elif not loopback:
        typer.echo(
            f"WARNING: no TLS on {host}: passwords and messages cross the network in clear (use --tls)", err=True
        )
    if stats:
        live_stats.start(chat, backend, stats_interval)
    try:
        module.serve(engine, backend_config, hub_config)
    except OSError as exc:  # e.g. the port is taken
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    logging.getLogger("csce513msg").info("stopped")


def _passwords(kdf_cost: str, loopback: bool) -> Scrypt:
    if kdf_cost not in COSTS:
        _fail(f"unknown kdf cost {kdf_cost!r}: choose {' or '.join(COSTS)}")
    if kdf_cost == "test":
        if not loopback:
            _fail("--kdf-cost test protects no password: it is refused on a non-loopback address")
        typer.echo("WARNING: --kdf-cost test: password hashes are trivial to crack; for tests only", err=True)
    return Scrypt(COSTS[kdf_cost])


def _open_store(data_dir: Path, durability: str, checkpoint_interval: float) -> Store:
    """The embedded default: SQLite in the data directory, created on first start.

    The directory and its files become the owner's only (umask 077 from here on: the
    TLS files made after this too). A database that is damaged, empty, or beside a WAL
    not its own is refused here, before serving, with what to do (exit status 2)."""
    if durability == "memory":
        print("store: in memory (--durability memory): nothing survives a restart", flush=True)
        return MemoryStore()
    if durability not in ("full", "normal"):
        _fail(f"unknown durability {durability!r}: choose full, normal or memory")
    path = data_dir / DATABASE
    try:
        for note in private_data_dir(data_dir):
            logging.getLogger("csce513msg").warning("data directory: %s", note)
        if problem := database_problem(path):
            _fail(f"will not start on this database: {problem}")
        store = SqliteStore(path, durability, checkpoint_interval)
    except (OSError, sqlite3.Error) as exc:
        _fail(f"cannot open the database {path}: {exc}")
    print(f"store: {path} (durability {durability})", flush=True)
    return store


def _with_tls(engine: EngineAPI, cert: Path | None, key: Path | None, data_dir: Path, timeout: float) -> EngineAPI:
    """Wrap the engine in TLS, making the certificate on first start."""
    if cert is None:
        cert, key, created = ensure_certificate(data_dir / "tls")
        origin = f"self-signed, {'created now' if created else 'made earlier'} in {cert.parent}"
    elif key is None:
        _fail("--tls-cert needs --tls-key")
        raise AssertionError  # unreachable: _fail exits
    else:
        origin = str(cert)
    try:
        context = server_context(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        _fail(f"cannot load the TLS certificate: {exc}")
    print(f"tls: TLS 1.3 only; certificate {origin}", flush=True)
    print(f"tls: SHA-256 fingerprint {fingerprint_of_pem(cert)}", flush=True)
    return TlsEngine(engine, context, timeout)


def _resolve(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except OSError:
        return host


def _fail(message: str) -> NoReturn:
    typer.echo(f"msgsrv: {message}", err=True)
    raise typer.Exit(2)


def _raise_fd_limit() -> None:
    """Allow as many connections as the hard limit of open files permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # macOS: an unlimited hard limit, but soft stops at OPEN_MAX
            pass


def run() -> None:
    """Console script: ``serve`` is the default command."""
    args = sys.argv[1:]
    if not args or args[0] not in ("serve", "user", "--help", "-h"):
        sys.argv[1:1] = ["serve"]
    app()


if __name__ == "__main__":
    run()
