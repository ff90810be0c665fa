"""Conformance: the idle timeout, keep-alive pings and the request rate limit.

These need a server with small time constants, so this module starts its own
(the flags below). Against an external server, run it with the same flags.
"""

from __future__ import annotations

import itertools
import time

from csce513msg.protocol import Error, ErrorCode, LoginOk, Ping, Pong, Register
from tests.conformance.wire import PASSWORD, RawConn
from tests.fixtures import Names, Server

SERVER_FLAGS = ("--idle-timeout", "0.6", "--rate", "10", "--burst", "5")


def test_silent_connection_is_closed_after_the_idle_timeout(server: Server, names: Names) -> None:
    conn = RawConn(server)
    welcome = conn.handshake()
    assert welcome.idle_timeout_ms == 600
    started = time.monotonic()  # before our last bytes: the server hears them later, whatever the load
    conn.send(Register(names("sleepy"), PASSWORD, request_id=2))
    conn.expect(LoginOk)
    conn.expect_error(ErrorCode.IDLE_TIMEOUT, request_id=0)
    conn.expect_closed()
    assert time.monotonic() - started >= 0.5  # not before the timeout (with slack for timer rounding)


def test_a_half_open_peer_is_freed(server: Server, names: Names) -> None:
    """A client that vanished without a FIN (we simply never answer) is closed."""
    conn = RawConn(server)
    conn.welcome()  # never says Hello: the server must still free the connection
    conn.expect_error(ErrorCode.IDLE_TIMEOUT)
    conn.expect_closed()


def test_pings_keep_a_connection_alive(server: Server, names: Names) -> None:
    """Two connections: one pings, one is silent. Once the idle timeout has closed the
    silent one, the one that pinged (from before the silent one's handshake) is still served."""
    pinger = RawConn(server)
    pinger.handshake()
    silent = RawConn(server)
    silent.handshake()
    deadline = time.monotonic() + 30
    for i in itertools.count():
        pinger.send(Ping(request_id=100 + i))
        assert pinger.expect(Pong).request_id == 100 + i
        try:  # waiting on the silent one paces the pings (under the rate of 10 a second)
            closing = silent.expect(Error, timeout=0.15)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the silent connection was never closed"
    assert closing.code == ErrorCode.IDLE_TIMEOUT and "no data" in closing.message, closing  # idle, not login
    silent.expect_closed()
    pinger.alive()
    pinger.close()
    silent.close()


def test_a_flood_is_rate_limited_and_the_connection_stays(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(*[Ping(request_id=i) for i in range(1, 21)])  # 20 at once; the burst is 5
    replies = [conn.recv() for _ in range(20)]
    limited = [r for r in replies if isinstance(r, Error)]
    served = [r for r in replies if isinstance(r, Pong)]
    assert all(e.code == ErrorCode.RATE_LIMITED for e in limited)
    assert 5 <= len(served) < 20 and len(limited) >= 1
    assert sorted(r.request_id for r in replies) == list(range(1, 21))  # every request answered
    deadline = time.monotonic() + 30  # the bucket refills at 10 per second: ask until a Pong comes (the
    # connection stays: a refused request is answered, and its bytes keep the idle timeout away)
    for request_id in itertools.count(100):
        conn.send(Ping(request_id=request_id))
        reply = conn.recv()
        assert reply.request_id == request_id, reply
        if isinstance(reply, Pong):
            break
        assert isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED, reply
        assert time.monotonic() < deadline, "never served again after the flood"
        time.sleep(0.05)
    conn.close()
