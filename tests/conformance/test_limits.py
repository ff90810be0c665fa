"""Conformance: the idle timeout, keep-alive pings and the request rate limit.

These need a server with small time constants, so this module starts its own
(the flags below). Against an external server, run it with the same flags.
"""

from __future__ import annotations

import time

from csce513msg.protocol import Error, ErrorCode, LoginOk, Ping, Pong, Register
from tests.conformance.wire import PASSWORD, RawConn

SERVER_FLAGS = ("--idle-timeout", "0.6", "--rate", "10", "--burst", "5")


def test_silent_connection_is_closed_after_the_idle_timeout(server: object, names: object) -> None:
    conn = RawConn(server)
    welcome = conn.handshake()
    assert welcome.idle_timeout_ms == 600
    conn.send(Register(names("sleepy"), PASSWORD, request_id=2))  # type: ignore[operator]
    assert isinstance(conn.recv(), LoginOk)
    started = time.monotonic()
    conn.expect_error(ErrorCode.IDLE_TIMEOUT, request_id=0)
    conn.expect_closed()
    assert time.monotonic() - started >= 0.5  # not before the timeout (with slack for timer rounding)


def test_a_half_open_peer_is_freed(server: object, names: object) -> None:
    """A client that vanished without a FIN (we simply never answer) is closed."""
    conn = RawConn(server)
    conn.welcome()  # never says Hello: the server must still free the connection
    conn.expect_error(ErrorCode.IDLE_TIMEOUT)
    conn.expect_closed()


def test_pings_keep_a_connection_alive(server: object, names: object) -> None:
    conn = RawConn(server)
    conn.handshake()
    for i in range(8):  # 8 x 0.2 s: well past the 0.6 s idle timeout
        time.sleep(0.2)
        conn.send(Ping(request_id=100 + i))
        assert isinstance(conn.recv(), Pong)
    conn.close()


def test_a_flood_is_rate_limited_and_the_connection_stays(server: object) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(*[Ping(request_id=i) for i in range(1, 21)])  # 20 at once; the burst is 5
    replies = [conn.recv() for _ in range(20)]
    limited = [r for r in replies if isinstance(r, Error)]
    served = [r for r in replies if isinstance(r, Pong)]
    assert all(e.code == ErrorCode.RATE_LIMITED for e in limited)
    assert 5 <= len(served) < 20 and len(limited) >= 1
    assert sorted(r.request_id for r in replies) == list(range(1, 21))  # every request answered
    time.sleep(0.3)  # the bucket refills at 10 per second
    conn.alive()
    conn.close()
