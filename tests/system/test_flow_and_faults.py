"""System tests, every backend: a never-reading client, abrupt resets, SIGTERM.

The slow-reader test shrinks every buffer on the way (the reader's SO_RCVBUF, the
server's SO_SNDBUF, the outbound limits): with the kernel's defaults, loopback
absorbs megabytes and the test would pass with no limit at all.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from csce513msg.protocol import Deliver, ErrorCode, Ping, Pong, Presence, ReceiptState, encode
from tests.conformance.wire import RawConn, connect
from tests.servers import start

SERVER_FLAGS = (
    "--max-frame", "4096", "--max-text", "1024", "--window", "2",
    "--high-water", "4096", "--low-water", "1024", "--hard-limit", "16384",
    "--sndbuf", "4096", "--rate", "100000", "--burst", "100000", "--close-timeout", "2",
)  # fmt: skip


def test_a_client_that_never_reads_its_replies_is_aborted(server: object, names: object) -> None:
    """Requests whose replies pile up: past the hard limit the server lets go of it."""
    carol, dave = connect(server, names("carol")), connect(server, names("dave"))  # type: ignore[operator]
    greedy = RawConn(server, rcvbuf=2048)
    greedy.welcome()
    ping = encode(Ping(b"x" * 1000, request_id=1))
    sent, deadline = 0, time.monotonic() + 30
    try:
        while sent < 5000 and time.monotonic() < deadline:  # bounded: about 5 MB at most
            greedy.sock.sendall(ping * 10)
            sent += 10
            if sent % 200 == 0:  # everyone else is served meanwhile
                carol.send_text(dave.session.user, f"still here {sent}")  # type: ignore[arg-type]
                assert dave.next_message(Deliver).body == f"still here {sent}".encode()  # type: ignore[union-attr]
    except OSError:
        pass  # reset: the server aborted us
    server.wait_log("outbound limit")  # type: ignore[attr-defined]
    carol.send_text(dave.session.user, "after the abort")  # type: ignore[arg-type]
    assert dave.next_message(Deliver).body == b"after the abort"  # type: ignore[union-attr]
    for c in (carol, dave, greedy):
        c.close()


def test_a_recipient_that_never_reads_is_paced_then_gets_everything(server: object, names: object) -> None:
    """A slow reader is held back, not aborted: it gets every message once it reads."""
    reader_name = names("reader")  # type: ignore[operator]
    log_before = len(server.log())  # type: ignore[attr-defined]
    reader = connect(server, reader_name, rcvbuf=2048, drop_repeats=False)  # type: ignore[attr-defined]
    flooder = connect(server, names("flooder"))  # type: ignore[operator]
    count = 300  # 300 kB: many times the outbound limit of 16 kB and the kernel buffers
    for i in range(count):
        receipt = flooder.send_text(reader_name, f"{i:04d}" + "x" * 996)
        assert receipt.state == ReceiptState.STORED
    assert reader_name in flooder.who()  # still connected: paced, not aborted
    got = reader.deliveries(count, timeout=60)  # now it reads (and acknowledges as it goes)
    assert [d.body[:4].decode() for d in got] == [f"{i:04d}" for i in range(count)]
    assert "outbound limit" not in server.log()[log_before:]  # type: ignore[attr-defined]
    reader.close()
    flooder.close()


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


def test_a_client_reset_while_its_error_goes_out_costs_the_others_nothing(server: object) -> None:
    """A client sends a bad frame and goes: the error reply meets a closed socket, and the
    kernel resets the connection between our write and our half-close (asyncio's
    ``write_eof`` then raises ENOTCONN). Other clients' replies from the same loop pass
    must still go out; before the fix they waited for their next write (an idle timeout)."""
    log_before = len(server.log())  # type: ignore[attr-defined]
    bystanders = [RawConn(server) for _ in range(8)]
    for b in bystanders:
        b.welcome()
    for round_ in range(1, 16):  # bounded; each round, the pings and the bad frame arrive together
        bad = RawConn(server)
        bad.welcome()
        for b in bystanders:
            b.send(Ping(b"still there?", request_id=round_))
        bad.send_raw(b"\xff\xff\xff\xff" + bytes(8))  # declares a 4 GiB frame: FRAME_TOO_LARGE, close
        bad.close()  # FIN; the reply then draws a reset
        for b in bystanders:
            try:
                reply = b.recv(timeout=5)  # generous: it comes at once, or not before the idle timeout
            except TimeoutError:
                pytest.fail(f"round {round_}: a bystander's Pong never came (lost with the bad client's pass)")
            assert isinstance(reply, Pong) and reply.request_id == round_, reply
    for b in bystanders:
        b.close()
    assert "Traceback" not in server.log()[log_before:]  # type: ignore[attr-defined]


def test_sigterm_says_goodbye_and_exits_zero(backend: str, names: object) -> None:
    proc = start(backend, "--close-timeout", "1")
    try:
        a = connect(proc, names("alice"))  # type: ignore[operator]
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
