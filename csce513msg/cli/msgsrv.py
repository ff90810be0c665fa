"""``msgsrv``: the server's command line.

``msgsrv [OPTIONS]`` runs the server (``msgsrv serve [OPTIONS]`` is the same);
``msgsrv user ...`` manages accounts (``cli/users.py``), beside a running server too;
a server option given before a command would be ignored, so it is refused.

Every limit is a flag, and every flag's default comes from one place: the field of
the same name in ``BackendConfig`` or ``HubConfig``, which the options below read and
``_configs`` fills by name (the two that configure other parts, ``--handshake-timeout``
and ``--checkpoint-interval``, from ``backends.tls`` and ``store.checkpoints``). ``msgsrv
invite`` prints what students need to connect (``cli/invite.py``). The options a deployment sets also come from the
environment (``MSGSRV_HOST``, ``MSGSRV_PORT``, ``MSGSRV_DATA_DIR``...: ``--help``
shows each one).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import resource
import shutil
import socket
import sqlite3
import ssl
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.markup import escape

from ..backends import BACKENDS, DESCRIPTIONS, BackendUnavailable, default_backend, load
from ..backends.common import WAITS, BackendConfig, check_limits, page_room, read_room
from ..backends.tls import HANDSHAKE_TIMEOUT, TlsEngine, server_context
from ..crypto.certs import ensure_certificate, fingerprint_of_pem
from ..crypto.passwords import COSTS, Scrypt
from ..hub import Engine, EngineAPI, HubConfig
from ..paths import DATABASE, default_data_dir, private_data_dir
from ..store import MemoryStore, Store
from ..store.checkpoints import CHECKPOINT_INTERVAL
from ..store.files import FileShelf
from ..store.schema import database_problem
from ..store.sqlite import SqliteStore
from ..units import show_size
from . import options as o
from . import stats as live_stats
from .banner import make_announce
from .groups import group_app
from .invite import invite
from .users import user_app

C = TypeVar("C", BackendConfig, HubConfig)  #: a config that ``_configs`` fills from the options
app = typer.Typer(
    help="csce513Msg chat server: one protocol, six I/O strategies. Runs the server; `msgsrv user` manages accounts.",
    epilog=escape("Backends: " + "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in BACKENDS) + "."),
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",  # help panels; texts with brackets go through escape()
)
app.add_typer(user_app, name="user")
app.add_typer(group_app, name="group")
app.command("invite")(invite)


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    backend: o.BackendFlag = o.Backend(default_backend()),
    host: o.HostFlag = o.NET.host,
    port: o.PortFlag = o.NET.port,
    server_name: o.ServerNameFlag = o.HUB.server_name,
    max_connections: o.MaxConnectionsFlag = o.NET.max_connections,
    backlog: o.BacklogFlag = o.NET.backlog,
    recv_size: o.RecvSizeFlag = o.NET.recv_size,
    sndbuf: o.SndbufFlag = o.NET.sndbuf,
    max_frame: o.MaxFrameFlag = o.HUB.max_frame,
    max_text: o.MaxTextFlag = o.HUB.max_text,
    window: o.WindowFlag = o.HUB.window,
    max_file: o.MaxFileFlag = o.HUB.max_file,
    file_quota: o.FileQuotaFlag = o.HUB.file_quota,
    disk_reserve: o.DiskReserveFlag = o.HUB.disk_reserve,
    file_days: o.FileDaysFlag = o.HUB.file_days,
    max_chunk: o.MaxChunkFlag = o.HUB.max_chunk,
    no_files: o.NoFilesFlag = False,
    key_days: o.KeyDaysFlag = o.HUB.key_days,
    max_group_members: o.MaxGroupMembersFlag = o.HUB.max_group_members,
    rate: o.RateFlag = o.HUB.rate,
    burst: o.BurstFlag = o.HUB.burst,
    high_water: o.HighWaterFlag = o.NET.high_water,
    low_water: o.LowWaterFlag = o.NET.low_water,
    hard_limit: o.HardLimitFlag = o.NET.hard_limit,
    idle_timeout: o.IdleTimeoutFlag = o.HUB.idle_timeout,
    login_timeout: o.LoginTimeoutFlag = o.HUB.login_timeout,
    frame_timeout: o.FrameTimeoutFlag = o.HUB.frame_timeout,
    close_timeout: o.CloseTimeoutFlag = o.NET.close_timeout,
    handshake_timeout: o.HandshakeTimeoutFlag = HANDSHAKE_TIMEOUT,
    tls: o.TlsFlag = False,
    tls_cert: o.TlsCertFlag = None,
    tls_key: o.TlsKeyFlag = None,
    data_dir: o.DataDirFlag = None,
    durability: o.DurabilityFlag = o.Durability.normal,
    checkpoint_interval: o.CheckpointIntervalFlag = CHECKPOINT_INTERVAL,
    retention_days: o.RetentionDaysFlag = o.HUB.retention_days,
    new_device_history: o.NewDeviceHistoryFlag = o.HUB.new_device_history,
    ack_delay: o.AckDelayFlag = o.HUB.ack_delay,
    self_register: o.SelfRegisterFlag = o.HUB.self_register,
    visibility: o.VisibilityFlag = o.HUB.visibility,
    kdf_cost: o.KdfCostFlag = o.KdfChoice.production,
    login_failures_per_account: o.LoginFailuresPerAccountFlag = o.HUB.login_failures_per_account,
    login_failures_per_address: o.LoginFailuresPerAddressFlag = o.HUB.login_failures_per_address,
    login_failure_window: o.LoginFailureWindowFlag = o.HUB.login_failure_window,
    registrations_per_address: o.RegistrationsPerAddressFlag = o.HUB.registrations_per_address,
    max_pending_logins: o.MaxPendingLoginsFlag = o.HUB.max_pending_logins,
    hash_nice: o.HashNiceFlag = o.NET.hash_nice,
    account_poll: o.AccountPollFlag = o.HUB.account_poll,
    log_level: o.LogLevelFlag = o.LogLevel.info,
    quiet: o.QuietFlag = False,
    stats: o.StatsFlag = False,
    stats_interval: o.StatsIntervalFlag = 1.0,
    version: o.VersionFlag = False,
) -> None:
    """Run the chat server until SIGINT or SIGTERM (Ctrl-C): it says goodbye to every client and exits 0."""
    if ctx.invoked_subcommand is not None:  # `msgsrv user ...`, `invite`, or `serve ...` (which runs this again)
        given = [name for name in ctx.params if _from_command_line(ctx, name)]
        if given:  # they would be ignored: `msgsrv --data-dir X user list` must not read the default one
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            _fail(f"{flags} before `{ctx.invoked_subcommand}` would be ignored: put it after the command")
        return
    live = live_stats.LiveLine.on_terminal() if stats else None  # log lines print above the live line
    logging.basicConfig(
        level=logging.WARNING if quiet else getattr(logging, log_level.value.upper()),
        format="%(asctime)s %(levelname)-7s %(message)s",
        stream=sys.stderr,
    )
    backend_config, hub_config = _configs(ctx.params)
    try:
        module = load(backend.value)
    except BackendUnavailable as exc:
        _fail(str(exc))
    loopback = ipaddress.ip_address(_resolve(host)).is_loopback
    passwords = _passwords(kdf_cost, loopback)
    _raise_fd_limit()  # the default --max-connections is the limit after this, less FD_RESERVE
    data_dir = data_dir or default_data_dir()
    store = _open_store(data_dir, durability, checkpoint_interval)
    accounts = store.load_accounts()
    _say(f"accounts: {len(accounts)}; registration over the wire {'on' if self_register else 'off'}; kdf {kdf_cost}")
    if not accounts and not self_register:  # a first start: say how people get in
        data_flag = f" --data-dir {data_dir}" if data_dir != default_data_dir() else ""
        _say(f"accounts: none yet: add them with `msgsrv user add NAME{data_flag}` (or use --self-register)")
    wall_offset = time.time() - time.monotonic()
    shelf = None if no_files else _open_shelf(data_dir, durability, disk_reserve)
    chat = Engine(
        store, hub_config, wall_offset, passwords, accounts, store.load_device_tokens(), store.load_groups(),
        store.load_classroom(), shelf, shelf.load() if shelf else None, store.load_keys(),
    )  # fmt: skip
    engine: EngineAPI = chat
    fingerprint = None
    if tls or tls_cert:
        engine, fingerprint = _with_tls(engine, tls_cert, tls_key, data_dir, handshake_timeout)
    elif not loopback:
        warning = f"WARNING: no TLS on {host}: passwords and messages cross the network in clear (use --tls)"
        typer.echo(warning, err=True)
    if stats:
        live_stats.start(chat, backend.value, stats_interval, live, WAITS)
    try:
        module.serve(engine, backend_config, make_announce(backend_config, hub_config, fingerprint))
    except OSError as exc:  # e.g. the port is taken
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    logging.getLogger("csce513msg").info("stopped")


app.command("serve", help="Run the server: the same as `msgsrv` with no command.")(main)


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _configs(params: dict[str, Any]) -> tuple[BackendConfig, HubConfig]:
    """Both configs, each field from the option of the same name; exit 2 if they cannot work together."""

    def fill(kind: type[C]) -> C:
        return kind(**{f.name: params[f.name] for f in dataclasses.fields(kind) if f.name in params})

    backend_config = fill(BackendConfig)
    hub_config = fill(HubConfig)
    if problem := check_limits(backend_config, hub_config):
        _fail(problem)
    page, reads = page_room(backend_config, hub_config), read_room(backend_config, hub_config)
    return backend_config, dataclasses.replace(hub_config, page_bytes=page, read_room=reads)


def _passwords(kdf_cost: o.KdfChoice, loopback: bool) -> Scrypt:
    if kdf_cost is o.KdfChoice.test:
        if not loopback:
            _fail("--kdf-cost test protects no password: it is refused on a non-loopback address")
        typer.echo("WARNING: --kdf-cost test: password hashes are trivial to crack; for tests only", err=True)
    return Scrypt(COSTS[kdf_cost.value])


def _open_shelf(data_dir: Path, durability: o.Durability, reserve: int) -> FileShelf:
    """Where uploads live: ``DATA_DIR/files`` (0700); with ``--durability memory``, a
    directory emptied at every start (nothing survives a restart, as for the messages)."""
    private_data_dir(data_dir)
    directory = data_dir / ("files.memory" if durability is o.Durability.memory else "files")
    if durability is o.Durability.memory:
        shutil.rmtree(directory, ignore_errors=True)
    shelf = FileShelf(directory, reserve)
    _say(f"files: {directory} (kept free on its disk: {show_size(reserve)})")
    return shelf


def _open_store(data_dir: Path, durability: o.Durability, checkpoint_interval: float) -> Store:
    """The embedded default: SQLite in the data directory, created on first start.

    The directory and its files become the owner's only (umask 077 from here on: the
    TLS files made after this too). A database that is damaged, empty, or beside a WAL
    not its own is refused here, before serving, with what to do (exit status 2)."""
    if durability is o.Durability.memory:
        _say("store: in memory (--durability memory): nothing survives a restart")
        return MemoryStore()
    path = data_dir / DATABASE
    try:
        for note in private_data_dir(data_dir):
            logging.getLogger("csce513msg").warning("data directory: %s", note)
        if problem := database_problem(path):
            _fail(f"will not start on this database: {problem}")
        store = SqliteStore(path, durability.value, checkpoint_interval)
    except (OSError, sqlite3.Error) as exc:
        _fail(f"cannot open the database {path}: {exc}")
    _say(f"store: {path} (durability {durability.value})")
    return store


def _with_tls(
    engine: EngineAPI, cert: Path | None, key: Path | None, data_dir: Path, timeout: float
) -> tuple[EngineAPI, str]:
    """Wrap the engine in TLS, making the certificate on first start; with its fingerprint."""
    if cert is None:
        cert, key, created = ensure_certificate(data_dir / "tls")
        origin = f"self-signed, {'created now' if created else 'made earlier'} in {cert.parent}"
    elif key is None:
        _fail("--tls-cert needs --tls-key")
    else:
        origin = str(cert)
    try:
        context = server_context(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        _fail(f"cannot load the TLS certificate: {exc}")
    fingerprint = fingerprint_of_pem(cert)
    _say(f"tls: TLS 1.3 only; certificate {origin}")
    _say(f"tls: SHA-256 fingerprint {fingerprint}")
    return TlsEngine(engine, context, timeout), fingerprint


def _resolve(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except OSError:
        _fail(f"cannot resolve --host {host!r}")


def _say(line: str) -> None:
    print(line, flush=True)


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
    """Console script entry point."""
    app(prog_name="msgsrv")


if __name__ == "__main__":
    run()
