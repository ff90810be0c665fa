"""What a connection may hold, and for how long, on every backend (the deadlines ride on
each backend's timer): a stranger's frame is refused past 4 KiB, a connection that does
not log in is let go at the login timeout, a frame left half-sent at the frame timeout.
(5,000 connections each holding a 64.9 kB half-sent frame once added 415 MB, for ever.)"""

from __future__ import annotations

from csce513msg.protocol import PRE_LOGIN_MAX_FRAME, ErrorCode, Login, LoginOk, Ping, encode
from tests.conformance.wire import PASSWORD, RawConn, connect, register
from tests.fixtures import Names
from tests.servers import start


def test_strangers_and_half_sent_frames_are_let_go(backend: str, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--login-timeout", "3", "--frame-timeout", "1")  # room for two logins on a busy machine
    try:
        register(server, bob)
        member = connect(server, alice)
        silent = RawConn(server)  # connects, never says Hello
        silent.welcome()
        greedy = RawConn(server)  # starts a frame over the pre-login limit
        greedy.handshake()
        greedy.send_raw(encode(Ping(b"x" * 60_000, request_id=2))[:20_000])
        half = RawConn(server)  # logged in, then leaves a frame half-sent
        half.handshake()
        half.send(Login(bob, PASSWORD, request_id=2))
        assert isinstance(half.recv(), LoginOk)
        half.send_raw(encode(Ping(b"y" * 30_000, request_id=3))[:15_000])
        error = greedy.expect_error(ErrorCode.FRAME_TOO_LARGE)
        assert str(PRE_LOGIN_MAX_FRAME) in error.message
        greedy.expect_closed()
        assert "log" in silent.expect_error(ErrorCode.IDLE_TIMEOUT).message
        silent.expect_closed()
        assert "frame" in half.expect_error(ErrorCode.IDLE_TIMEOUT).message
        half.expect_closed()
        assert member.who()  # the rest are served
        for conn in (silent, greedy, half, member):
            conn.close()
    finally:
        server.stop()
