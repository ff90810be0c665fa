"""``msg``: the command-line chat client."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..client.mux import MUXES, best_mux
from ..client.terminal import TlsOptions
from ..client.terminal import run as run_terminal

app = typer.Typer(add_completion=False)


@app.command()
def main(
    user: Annotated[str, typer.Option(help="Your user name.")],
    server: Annotated[str, typer.Option(help="HOST:PORT of the server.")] = "127.0.0.1:5130",
    mux: Annotated[str, typer.Option(help="How to wait on keyboard and socket: select, poll or epoll.")] = best_mux(),
    json: Annotated[bool, typer.Option("--json", help="One JSON object per event, for scripts.")] = False,
    tls: Annotated[bool, typer.Option(help="TLS 1.3; pins the server's certificate on first use.")] = False,
    fingerprint: Annotated[
        str | None, typer.Option(help="Expected SHA-256 certificate fingerprint (implies --tls).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="Verify the server's certificate with this CA (implies --tls).")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Create the account first (if the server allows it).")
    ] = False,
) -> None:
    """Chat from the terminal: type /help once connected. Reads commands from a pipe or
    file too, and exits at end of input once the server answered everything
    (status 0 only if every request succeeded).

    The password is asked for on the terminal; scripts set MSG_PASSWORD."""
    if mux not in MUXES:
        typer.echo(f"msg: unknown --mux {mux!r}; choose select, poll or epoll", err=True)
        raise typer.Exit(2)
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        typer.echo(f"msg: --server must be HOST:PORT, not {server!r}", err=True)
        raise typer.Exit(2)
    tls_options = TlsOptions(fingerprint, ca) if (tls or fingerprint or ca) else None
    password = _password(user, register)
    status = run_terminal(
        host.strip("[]") or "127.0.0.1", int(port), user, password, mux, json, tls_options, register=register
    )
    raise typer.Exit(status)


def _password(user: str, register: bool) -> str:
    """MSG_PASSWORD if set, else asked on the terminal (twice for a new account)."""
    if (password := os.environ.get("MSG_PASSWORD")) is not None:
        return password
    if not sys.stdin.isatty():
        typer.echo("msg: no terminal to ask for the password: set MSG_PASSWORD", err=True)
        raise typer.Exit(2)
    password = getpass.getpass(f"password for {user}: ")
    if register and getpass.getpass("again: ") != password:
        typer.echo("msg: the passwords differ", err=True)
        raise typer.Exit(2)
    return password


def run() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    run()
