"""``msg``: the command-line chat client.

On a terminal it is interactive (``client/interactive.py``: line editing, history,
completion, a status bar); with a pipe or a file as input, or ``--plain``, it runs the
teaching loop (``client/terminal.py``: select/poll/epoll by hand, plain lines).

Exit status: 0 when the run went as asked (interactive: /quit or Ctrl-D; a pipe: every
request succeeded); 1 when a request failed, the login was refused or the server could
not be reached; 2 for a usage error (a bad flag or config file, no way to get the password,
a password that would go in clear to a remote server).
"""

from __future__ import annotations

import getpass
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..client import config as client_config
from ..client import interactive, terminal
from ..client.launch import Plan, start
from ..client.mux import MUXES, best_mux
from ..client.steps import TlsOptions
from ..client.view import PlainView, View
from ..hub import fold_name
from ..protocol import VERSION_MAJOR, VERSION_MINOR
from ..units import parse_size

DEFAULT_PORT = 5130
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msg {metadata.version('csce513msg')} (protocol {VERSION_MAJOR}.{VERSION_MINOR})")
        raise typer.Exit()


@app.command()
def main(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your user name [default: your login name].")] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", "-s", help=f"HOST[:PORT] of the server [default: 127.0.0.1:{DEFAULT_PORT}]."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config file [default: msg.toml in the config directory].")
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="TLS 1.3; pins the server's certificate on first use.")] = False,
    fingerprint: Annotated[
        str | None, typer.Option(help="Expected SHA-256 certificate fingerprint (implies --tls).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="Verify the server's certificate with this CA (implies --tls).")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Create the account first (if the server allows it).")
    ] = (False),
    plain: Annotated[bool, typer.Option("--plain", help="The teaching loop on a terminal too: plain lines.")] = False,
    mux: Annotated[str, typer.Option(help="The teaching loop's wait: select, poll or epoll.")] = best_mux(),
    json: Annotated[bool, typer.Option("--json", help="One JSON object per event, for scripts.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Message ids and every receipt.")] = False,
    downloads: Annotated[
        Path | None, typer.Option(help="Where received files go [default: downloads in msg's data directory].")
    ] = None,
    auto_download: Annotated[
        str, typer.Option(help="Fetch an offered file up to this size as it arrives (0: never; e.g. 10M).")
    ] = "10M",
    no_e2e: Annotated[
        bool, typer.Option("--no-e2e", help="No end-to-end encryption: messages are readable by the server.")
    ] = False,
    reset_keys: Annotated[
        bool,
        typer.Option("--reset-keys", help="Set your end-to-end keys aside and make new ones (contacts see a change)."),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Chat from the terminal: type /help once connected. Reads commands from a pipe or
    file too, and exits at end of input once the server answered everything.

    The password is asked for after connecting; scripts set MSG_PASSWORD. Direct messages and
    group posts are end-to-end encrypted with everyone whose client does it; the keys are kept
    under the password (or MSG_KEY_PASSPHRASE)."""
    try:
        settings = client_config.load(config)
    except client_config.ConfigError as exc:
        _usage(str(exc))
    if mux not in MUXES:
        _usage(f"unknown --mux {mux!r}; choose select, poll or epoll")
    host, port = _address(server or settings.server or DEFAULT_SERVER)
    given = user or settings.user or getpass.getuser()
    name = fold_name(given)
    if name is None:
        _usage(f"invalid user name {given!r}: use 1-32 letters, digits, '_', '.', '-'")
    fingerprint = fingerprint or settings.fingerprint
    ca = ca or (Path(settings.ca).expanduser() if settings.ca else None)
    tls_options = TlsOptions(fingerprint, ca) if (tls or settings.tls or fingerprint or ca) else None
    try:
        auto = parse_size(auto_download)
    except ValueError as exc:
        _usage(f"--auto-download: {exc}")
    plan = Plan(
        host, port, name, tls_options, register, settings.allow_plaintext, verbose, downloads, auto, not no_e2e,
        reset_keys,
    )  # fmt: skip
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty() and not json
    live = on_terminal and not plain
    view: View = (
        interactive.LiveView(interactive.color_wanted(settings.color), name) if live else PlainView(as_json=json)
    )
    confirm = (lambda question: typer.confirm(question, default=False, err=True)) if on_terminal else None
    started = start(plan, view, lambda: _password(name, register), confirm, live=live)
    if isinstance(started, int):
        raise typer.Exit(started)
    chat, connector = started
    status = interactive.run(chat, connector) if live else terminal.run(chat, connector, mux)
    raise typer.Exit(status)


def _address(server: str) -> tuple[str, int]:
    """HOST[:PORT] (an IPv6 address in brackets when it has a port: [::1]:5130)."""
    if server.startswith("[") and "]" in server:
        host, _, rest = server[1:].partition("]")
        port = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, str(DEFAULT_PORT)  # a name, an IPv4 address, or a bare IPv6 address
    if not port.isdigit() or not 0 < int(port) < 65536:
        _usage(f"--server must be HOST[:PORT], not {server!r}")
    return host or "127.0.0.1", int(port)


def _password(user: str, register: bool) -> str | None:
    """MSG_PASSWORD if set, else asked on the terminal (twice for a new account)."""
    if (password := os.environ.get("MSG_PASSWORD")) is not None:
        return password
    if not sys.stdin.isatty():
        typer.echo("msg: no terminal to ask for the password: set MSG_PASSWORD", err=True)
        return None
    password = getpass.getpass(f"password for {user}: ")
    if register and getpass.getpass("again: ") != password:
        typer.echo("msg: the passwords differ", err=True)
        return None
    return password


def _usage(message: str) -> NoReturn:
    typer.echo(f"msg: {message}", err=True)
    raise typer.Exit(2)


def run() -> None:
    """Console script entry point."""
    app(prog_name="msg")


if __name__ == "__main__":
    run()
