"""TLS for the client: TLS 1.3, and a pinned certificate fingerprint.

A classroom server's certificate is self-signed, so no certificate authority can
vouch for it. The client trusts it the way ssh trusts a host key: on first use it
records the certificate's SHA-256 fingerprint in ``known_servers.json`` (in the
client config directory, see ``csce513msg.paths``) and from then on refuses that
address if the certificate changes. ``--fingerprint`` pins explicitly (the server
prints it at start), ``--ca FILE`` verifies a real certificate chain and host name
instead.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

from ..crypto.certs import fingerprint
from ..paths import client_config_dir
from .files import write_private


class TrustError(ssl.SSLError):
    """The server's certificate is not the one we trust for this address."""


def client_context(ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 only; verify a chain with ``ca``, else leave trust to the pin check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca is not None:
        context.load_verify_locations(ca)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the fingerprint check below replaces the chain
    return context


def wrap(
    sock: socket.socket,
    host: str,
    port: int,
    *,
    expected: str | None = None,
    ca: Path | None = None,
    known_servers: Path | None = None,
) -> tuple[ssl.SSLSocket, str]:
    """Do the TLS handshake on a connected socket and check who answered.

    Returns the TLS socket and a note for the user ("pinned ..." on first use).

    Raises:
        TrustError: the fingerprint differs from ``expected`` or from the pin on file.
        ssl.SSLError, OSError: the handshake failed (e.g. the server is not TLS).
    """
    tls = client_context(ca).wrap_socket(sock, server_hostname=host)
    if ca is not None:
        return tls, "certificate verified with the given CA"
    der = tls.getpeercert(binary_form=True)
    assert der is not None  # TLS 1.3 servers always present a certificate
    actual = fingerprint(der)
    if expected is not None:
        if _norm(expected) != _norm(actual):
            tls.close()
            raise TrustError(f"the server's certificate fingerprint is {actual}, not the expected {expected}")
        return tls, "certificate matches the given fingerprint"
    path = known_servers or client_config_dir() / "known_servers.json"
    pins = json.loads(path.read_text()) if path.exists() else {}
    address = f"{host}:{port}"
    if address not in pins:
        pins[address] = actual
        write_private(path, json.dumps(pins, indent=2, sort_keys=True) + "\n")  # 0600 in a 0700 directory
        return tls, f"first connection to {address}: pinned certificate {actual} in {path}"
    if _norm(pins[address]) != _norm(actual):
        tls.close()
        raise TrustError(
            f"the certificate of {address} CHANGED: pinned {pins[address]}, now {actual}. Someone may be "
            f"intercepting the connection. If the server really got a new certificate, remove "
            f"{address} from {path}."
        )
    return tls, "certificate matches the pinned fingerprint"


def _norm(fp: str) -> str:
    return fp.replace(":", "").strip().upper()
