"""``msgsrv invite``: what a student needs to join, as one command or a config file.

The instructor runs it on the server's machine: it finds the address students can
dial on the LAN (``banner.reachable``), and the TLS certificate's fingerprint in the
data directory (the self-signed one ``msgsrv --tls`` made, or ``--tls-cert``), and
prints the ``msg`` command; ``--output FILE`` also writes the config file to hand out
(students put it at ``~/.config/csce513msg/msg.toml`` or run ``msg --config FILE``).
Nothing secret is in it: an address, a port and a public fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..client.config import ClientConfig, render
from ..crypto.certs import fingerprint_of_pem
from ..paths import default_data_dir
from .banner import client_command, reachable
from .options import NET


def invite(
    host: Annotated[
        str | None, typer.Option(help="The address students dial [default: this machine's LAN address].")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, envvar="MSGSRV_PORT", help="The server's port.")] = NET.port,
    data_dir: Annotated[
        Path | None, typer.Option(envvar="MSGSRV_DATA_DIR", help="The server's data directory (for its certificate).")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="The certificate the server uses, if not its own.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the config file for students here.")] = None,
    tls: Annotated[
        bool | None,
        typer.Option("--tls/--no-tls", help="Whether the server runs with TLS [default: if it has a certificate]."),
    ] = None,
) -> None:
    """Print the command students use to connect (and write their config file)."""
    cert = tls_cert or (data_dir or default_data_dir()) / "tls" / "cert.pem"
    fingerprint = fingerprint_of_pem(cert) if cert.exists() and tls is not False else None
    if tls and fingerprint is None:
        typer.echo(f"msgsrv invite: --tls, but no certificate at {cert}", err=True)
        raise typer.Exit(2)
    if tls_cert is not None and fingerprint is None:
        typer.echo(f"msgsrv invite: no certificate at {tls_cert}", err=True)
        raise typer.Exit(2)
    address = host or reachable("0.0.0.0")[0]
    command = client_command(address, port, fingerprint).replace(" --user NAME", "")
    typer.echo(f"students connect with:\n  {command}")
    if fingerprint is None:
        typer.echo("(no TLS: passwords would cross the network in clear; start msgsrv with --tls)")
    elif tls is None:
        typer.echo("(with the fingerprint of the certificate in the data directory: --no-tls if msgsrv runs without)")
    server = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    text = render(ClientConfig(server=server, fingerprint=fingerprint))
    if output is not None:
        output.write_text(text)
        typer.echo(f"config file written to {output}: students save it as ~/.config/csce513msg/msg.toml")
    else:
        typer.echo("or with this msg.toml (in ~/.config/csce513msg/, or msg --config FILE):")
        typer.echo("".join(f"  {line}\n" for line in text.splitlines()), nl=False)
