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
from tests.conformance.wire import RawConn, connect, next_of
from tests.fixtures import Names
from tests.servers import ServerProcess, start

SERVER_FLAGS = (
    "--max-frame", "4096", "--max-text", "1024", "--window", "2",
    "--high-water", "4096", "--low-water", "1024", "--hard-limit", "16384",
    "--sndbuf", "4096", "--rate", "100000", "--burst", "100000", "--close-timeout", "2",
)  # fmt: skip


def test_a_client_that_never_reads_its_replies_is_aborted(server: ServerProcess, names: Names) -> None:
    """Requests whose replies pile up: past the hard limit the server lets go of it."""
    dave_name = names("dave")
    carol, dave = connect(server, names("carol")), connect(server, dave_name)
    greedy = RawConn(server, rcvbuf=2048)
    greedy.welcome()
    ping = encode(Ping(b"x" * 1000, request_id=1))
    sent, deadline = 0, time.monotonic() + 30
    try:
        while sent < 5000 and time.monotonic() < deadline:  # bounded: about 5 MB at most
            greedy.sock.sendall(ping * 10)
            sent += 10
            if sent % 200 == 0:  # everyone else is served meanwhile
                carol.send_text(dave_name, f"still here {sent}")
                assert dave.next_message(Deliver).body == f"still here {sent}".encode()
    except OSError:
        pass  # reset: the server aborted us
    server.wait_log("outbound limit")
    carol.send_text(dave_name, "after the abort")
    assert dave.next_message(Deliver).body == b"after the abort"
    for c in (carol, dave, greedy):
        c.close()


def test_a_recipient_that_never_reads_is_paced_then_gets_everything(server: ServerProcess, names: Names) -> None:
    """A slow reader is held back, not aborted: it gets every message once it reads."""
    reader_name = names("reader")
    log_before = len(server.log())
    reader = connect(server, reader_name, rcvbuf=2048, drop_repeats=False)
    flooder = connect(server, names("flooder"))
    count = 300  # 300 kB: many times the outbound limit of 16 kB and the kernel buffers
    for i in range(count):
        receipt = flooder.send_text(reader_name, f"{i:04d}" + "x" * 996)
        assert receipt.state == ReceiptState.STORED
    assert reader_name in flooder.who()  # still connected: paced, not aborted
    got = reader.deliveries(count, timeout=60)  # now it reads (and acknowledges as it goes)
    assert [d.body[:4].decode() for d in got] == [f"{i:04d}" for i in range(count)]
    assert "outbound limit" not in server.log()[log_before:]
    reader.close()
    flooder.close()


def test_abrupt_reset_frees_the_user_and_tells_subscribers(server: ServerProcess, names: Names) -> None:
    watcher = connect(server, names("watcher"), presence=True)
    victim_name = names("victim")
    victim = connect(server, victim_name)
    came = next_of(watcher, Presence, lambda m: m.user == victim_name)
    assert came.online == 1  # the subscriber heard of the login...
    victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim.close()  # linger 0: the kernel sends RST, not FIN
    gone = next_of(watcher, Presence, lambda m: m.user == victim_name, timeout=30)
    assert gone.online == 0, gone  # ...and the next word of the victim is that it left (not, say, a second login)
    assert victim_name not in watcher.who()
    again = connect(server, victim_name)  # the name is free
    again.close()
    watcher.close()


def test_reset_mid_frame_does_not_disturb_others(server: ServerProcess, names: Names) -> None:
    bystander_name = names("bystander")
    bystander = connect(server, bystander_name)
    log_before = len(server.log())
    raw = RawConn(server)
    raw.handshake()
    number = server.connection_number(raw.sock)
    raw.send_raw(b"\x00\x00\x00\x40\x03\x00\x00\x05")  # half a prefix...
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # ...and gone: linger 0, so the kernel sends RST, not FIN
    server.wait_line(rf"disconnect #{number}$", timeout=30)  # the server has seen the reset and let go
    assert bystander_name in bystander.who()  # and, after it, still serves the others
    assert "Traceback" not in server.log()[log_before:]
    bystander.close()


def test_a_client_reset_while_its_error_goes_out_costs_the_others_nothing(server: ServerProcess) -> None:
    """A client sends a bad frame and goes: the error reply meets a closed socket, and the
    kernel resets the connection between our write and our half-close (asyncio's
    ``write_eof`` then raises ENOTCONN). Other clients' replies from the same loop pass
    must still go out; before the fix they waited for their next write (an idle timeout)."""
    log_before = len(server.log())
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
    assert "Traceback" not in server.log()[log_before:]


def test_sigterm_says_goodbye_and_exits_zero(backend: str, names: Names) -> None:
    proc = start(backend, "--close-timeout", "1")
    try:
        a = connect(proc, names("alice"))
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


def test_server_log_shows_the_story_without_message_text(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    a.send_text(bob, "top secret words")
    b.next_message(Deliver)
    a.close()
    log = server.wait_log(f"logout {alice}")
    assert f"login {alice}" in log and f"message {alice} -> {bob}, 16 bytes" in log
    assert "top secret words" not in log
    assert "connect #" in log
    b.close()
