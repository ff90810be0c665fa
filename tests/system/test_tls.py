"""TLS 1.3 on every backend: the wrapper engine, certificates and trust.

A subset of the conformance suite runs over TLS (login, a message with its
receipt, a bad frame, a never-reading client, the SIGTERM goodbye), then the
trust rules: pinning on first use, a changed certificate refused, TLS 1.2 refused,
plaintext to the TLS port closed with a logged reason.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from csce513msg.client import Client
from csce513msg.client.tls import TrustError, client_context
from csce513msg.protocol import Deliver, ErrorCode, Ping, ReceiptState, encode
from tests.conformance.wire import RawConn, connect
from tests.fixtures import Names
from tests.servers import ServerProcess, fingerprint_of, start

DATA_DIR = tempfile.mkdtemp(prefix="msgsrv-tls-")
SERVER_FLAGS = (
    "--tls", "--data-dir", DATA_DIR, "--handshake-timeout", "2",
    "--max-frame", "4096", "--max-text", "1024", "--window", "2",
    "--high-water", "4096", "--low-water", "1024", "--hard-limit", "16384", "--sndbuf", "4096",
    "--rate", "100000", "--burst", "100000", "--close-timeout", "2",
)  # fmt: skip


def tls_client(server: ServerProcess, user: str | None, **kw: Any) -> Client:
    """A client over TLS (logged in, its account registered over the wire, if ``user``)."""
    return connect(server, user, tls=True, fingerprint=fingerprint_of(server), drop_repeats=True, **kw)


def tls_raw(server: ServerProcess, rcvbuf: int = 0) -> RawConn:
    conn = RawConn(server, rcvbuf=rcvbuf)
    conn.sock = client_context().wrap_socket(conn.sock)
    return conn


def test_banner_prints_the_certificate_fingerprint(server: ServerProcess) -> None:
    assert "TLS 1.3 only" in server.banner
    assert (Path(DATA_DIR) / "tls" / "cert.pem").exists() and (Path(DATA_DIR) / "tls" / "key.pem").exists()
    assert (Path(DATA_DIR) / "tls" / "key.pem").stat().st_mode & 0o077 == 0


def test_login_and_direct_message_over_tls(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = tls_client(server, alice), tls_client(server, bob)
    assert isinstance(a.sock, ssl.SSLSocket) and a.sock.version() == "TLSv1.3"
    receipt = a.send_text(bob, "over tls")
    assert receipt.state == ReceiptState.STORED
    deliver = b.next_message(Deliver)
    assert deliver.body == b"over tls" and deliver.message_id == receipt.message_id
    a.close()
    b.close()


def test_bad_frame_over_tls_gets_an_error_then_a_close(server: ServerProcess) -> None:
    conn = tls_raw(server)
    conn.handshake()
    conn.send_raw(struct.pack("!IBBHI", 4, 0x06, 0, 10, 1) + b"abcd")
    conn.expect_error(ErrorCode.BAD_FRAME)
    conn.expect_closed()


def test_never_reading_tls_client_is_aborted(server: ServerProcess) -> None:
    greedy = tls_raw(server, rcvbuf=2048)
    greedy.welcome()
    ping = encode(Ping(b"x" * 1000, request_id=1))
    sent, deadline = 0, time.monotonic() + 30
    try:
        while sent < 5000 and time.monotonic() < deadline:  # bounded
            greedy.sock.sendall(ping * 10)
            sent += 10
    except OSError:
        pass  # the server aborted us
    server.wait_log("outbound limit")
    greedy.close()


def test_pinning_on_first_use_and_a_changed_certificate_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    pins = tmp_path / "known_servers.json"
    first = Client.connect(server.host, server.port, tls=True, known_servers=pins)
    first.close()
    address = f"{server.host}:{server.port}"
    assert json.loads(pins.read_text()) == {address: fingerprint_of(server)}
    Client.connect(server.host, server.port, tls=True, known_servers=pins).close()
    pins.write_text(json.dumps({address: "00:" * 31 + "00"}))  # as if the server's certificate changed
    with pytest.raises(TrustError, match="CHANGED"):
        Client.connect(server.host, server.port, tls=True, known_servers=pins)
    with pytest.raises(TrustError, match="not the expected"):
        Client.connect(server.host, server.port, tls=True, fingerprint="AB:CD")


def test_tls_1_2_is_refused(server: ServerProcess) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(server.address, timeout=10) as sock, pytest.raises(ssl.SSLError):
        context.wrap_socket(sock)
    server.wait_log("TLS handshake failed")


def test_plaintext_to_the_tls_port_is_closed_with_a_logged_reason(server: ServerProcess) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x00\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x01")  # a plaintext Ping
        received = b""
        while chunk := sock.recv(4096):  # the TLS alert, if any, then the close
            received += chunk
    assert not received.startswith(b"\x00")  # no plaintext frame was ever sent
    server.wait_log("TLS handshake failed")


def test_a_silent_plaintext_client_is_closed_at_the_handshake_timeout(server: ServerProcess) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        assert sock.recv(4096) == b""  # waits for a Welcome that never comes; the server closes it
    server.wait_log("TLS handshake timeout")


def test_sigterm_goodbye_over_tls(backend: str, names: Names, tmp_path: Path) -> None:
    proc = start(backend, "--tls", "--data-dir", str(tmp_path), "--close-timeout", "1")
    try:
        a = tls_client(proc, names("alice"))
        assert proc.terminate(timeout=20) == 0
        goodbye = a.next_message(lambda m: getattr(m, "code", None) == ErrorCode.SHUTTING_DOWN, timeout=10)
        assert goodbye.request_id == 0
        a.close()
    finally:
        proc.stop()
