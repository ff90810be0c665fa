"""The server window's first lines: where it listens, how many it serves, its limits,
and the exact command a student types to connect.

A server bound to a wildcard address (``0.0.0.0``, ``::``) listens on every address of
the machine, but ``0.0.0.0`` is not one a client can dial: the banner lists the
machine's own addresses instead, the LAN ones first, each with its ``msg`` command
(TLS fingerprint included), so an instructor can put one line on the projector.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from ..backends.common import FD_RESERVE, Announce, BackendConfig, connection_cap, open_file_limit
from ..hub import HubConfig

#: Documentation addresses (RFC 5737, RFC 3849). Connecting a UDP socket to one sends
#: nothing: it only asks the kernel which local address its route would use.
_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))


def make_announce(backend_cfg: BackendConfig, hub_cfg: HubConfig, fingerprint: str | None) -> Announce:
    """The banner a backend prints once it listens (``Announce``)."""

    def announce(backend: str, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        say(f"csce513msg server: backend {backend}, listening on {_hostport(host, port)}, pid {os.getpid()}")
        cap, files = connection_cap(backend_cfg), open_file_limit()
        origin = "--max-connections" if backend_cfg.max_connections else f"open files {files} - {FD_RESERVE} kept"
        say(f"connections: at most {cap} ({origin}); past that, SERVER_FULL")
        if cap > files - FD_RESERVE:
            say(f"connections: {cap} is within {FD_RESERVE} of the open-file limit ({files}): accept may fail "
                "(EMFILE) before the cap is reached")  # fmt: skip
        say(
            f"limits: frame {hub_cfg.max_frame} B, text {hub_cfg.max_text} B, window {hub_cfg.window}, "
            f"idle {hub_cfg.idle_timeout:g} s, rate {hub_cfg.rate:g}/s (burst {hub_cfg.burst}), "
            f"outbound high/low/hard {backend_cfg.high_water}/{backend_cfg.low_water}/{backend_cfg.hard_limit} B, "
            f"close {backend_cfg.close_timeout:g} s"
        )
        for address in reachable(host):
            say(f"connect: {client_command(address, port, fingerprint)}")

    return announce


def say(line: str) -> None:
    print(line, flush=True)  # stdout: tests and scripts read the port here


def client_command(address: str, port: int, fingerprint: str | None) -> str:
    """The ``msg`` command that reaches this server at ``address``."""
    command = f"msg --server {_hostport(address, port)} --user NAME"
    return command + (f" --fingerprint {fingerprint}" if fingerprint else "")


def reachable(host: str) -> list[str]:
    """The addresses clients can dial for a server bound to ``host``: ``host`` itself,
    or for a wildcard this machine's addresses, LAN ones first and loopback last."""
    ip = ipaddress.ip_address(host)
    if not ip.is_unspecified:
        return [host]
    families = (socket.AF_INET,) if ip.version == 4 else (socket.AF_INET6, socket.AF_INET)
    found: list[str] = []
    for family, probe in _PROBES:
        if family in families and (address := _route_source(family, probe)):
            found.append(address)
    try:
        for family, *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            if family in families:
                found.append(str(sockaddr[0]))
    except OSError:
        pass  # no name for this host: the route's address is enough
    local = ["127.0.0.1"] if socket.AF_INET in families else ["::1"]
    useful = [a for a in dict.fromkeys(found) if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    return useful + local


def _route_source(family: socket.AddressFamily, probe: str) -> str | None:
    """The local address the default route uses (no packet is sent), or None."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None  # no route of that family


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
