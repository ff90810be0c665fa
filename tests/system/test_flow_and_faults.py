"""System tests, every backend: a never-reading client, abrupt resets, SIGTERM.

The slow-reader test shrinks every buffer on the way (the reader's SO_RCVBUF, the
server's SO_SNDBUF, the outbound limits): with the kernel's defaults, loopback
absorbs megabytes and the test would pass with no limit at all.
"""

from __future__ import annotations

import socket
import struct
import time

from csce513msg.client import Client, ServerError
from csce513msg.protocol import Deliver, ErrorCode, Login, LoginOk, Presence
from tests.conformance.wire import RawConn, connect
from tests.servers import start

SERVER_FLAGS = (
    "--max-frame", "4096", "--max-text", "1024", "--window", "2",
    "--high-water", "4096", "--low-water", "1024", "--hard-limit", "16384",
    "--sndbuf", "4096", "--rate", "100000", "--burst", "100000", "--close-timeout", "2",
)  # fmt: skip


def small_reader(server: object, user: str) -> RawConn:
    """A logged-in client with a tiny receive buffer that will never read again."""
    raw = RawConn(server, rcvbuf=2048)
    raw.handshake()
    raw.send(Login(user, request_id=2))
    assert isinstance(raw.recv(), LoginOk)
    return raw


def test_never_reading_recipient_is_aborted_and_others_keep_chatting(server: object, names: object) -> None:
    reader_name, flooder_name = names("reader"), names("flooder")  # type: ignore[operator]
    reader = small_reader(server, reader_name)
    flooder = connect(server, flooder_name)
    carol, dave = connect(server, names("carol")), connect(server, names("dave"))  # type: ignore[operator]
    text = "x" * 1000
    sent, aborted = 0, False
    deadline = time.monotonic() + 30
    while sent < 2000 and time.monotonic() < deadline:  # bounded in count and time
        try:
            flooder.send_text(reader_name, text)
        except ServerError as err:
            assert err.code == ErrorCode.USER_OFFLINE  # the reader is gone: it was aborted
            aborted = True
            break
        sent += 1
        if sent % 10 == 0:  # the rest of the class still chats while the reader's queue fills
            carol.send_text(dave.session.user, f"still here {sent}")  # type: ignore[arg-type]
            assert dave.next_message(Deliver).body == f"still here {sent}".encode()  # type: ignore[union-attr]
    assert aborted, f"the reader was never aborted after {sent} messages of 1000 bytes"
    assert sent * 1000 < 1_000_000, "the limit should trip within about 16 KiB plus kernel buffers"
    server.wait_log("outbound limit")  # type: ignore[attr-defined]
    carol.send_text(dave.session.user, "after the abort")  # type: ignore[arg-type]
    assert dave.next_message(Deliver).body == b"after the abort"  # type: ignore[union-attr]
    for c in (flooder, carol, dave):
        c.close()
    reader.close()


def test_abrupt_reset_frees_the_user_and_tells_subscribers(server: object, names: object) -> None:
    watcher = connect(server, names("watcher"), presence=True)  # type: ignore[operator]
    victim_name = names("victim")  # type: ignore[operator]
    victim = connect(server, victim_name)
    victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim.close()  # linger 0: the kernel sends RST, not FIN
    gone = watcher.next_message(lambda m: isinstance(m, Presence) and m.user == victim_name and not m.online)
    assert gone is not None
    assert victim_name not in watcher.who()
    again = connect(server, victim_name)  # the name is free
    again.close()
    watcher.close()


def test_reset_mid_frame_does_not_disturb_others(server: object, names: object) -> None:
    bystander = connect(server, names("bystander"))  # type: ignore[operator]
    raw = RawConn(server)
    raw.handshake()
    raw.send_raw(b"\x00\x00\x00\x40\x03\x00\x00\x05")  # half a prefix...
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # ...and gone
    assert bystander.session.user in bystander.who()
    bystander.close()


def test_sigterm_says_goodbye_and_exits_zero(backend: str, names: object) -> None:
    proc = start(backend, "--close-timeout", "1")
    try:
        a = Client.connect(proc.host, proc.port, user=names("alice"))  # type: ignore[operator]
        b = RawConn(proc)
        b.welcome()  # mid-handshake clients get the goodbye too
        status = proc.terminate(timeout=20)
        goodbye = a.next_message(lambda m: getattr(m, "code", None) == ErrorCode.SHUTTING_DOWN, timeout=10)
        assert goodbye.request_id == 0
        b.expect_error(ErrorCode.SHUTTING_DOWN)
        b.expect_closed()
        assert status == 0
        log = proc.log()
        assert "shutting down" in log and "stopped" in log and "Traceback" not in log
        a.close()
    finally:
        proc.stop()


def test_server_log_shows_the_story_without_message_text(server: object, names: object) -> None:
    alice, bob = names("alice"), names("bob")  # type: ignore[operator]
    a, b = connect(server, alice), connect(server, bob)
    a.send_text(bob, "top secret words")
    b.next_message(Deliver)
    a.close()
    log = server.wait_log(f"logout {alice}")  # type: ignore[attr-defined]
    assert f"login {alice}" in log and f"message {alice} -> {bob}, 16 bytes" in log
    assert "top secret words" not in log
    assert "connect #" in log
    b.close()
