"""What a connection may hold, and for how long: a small frame limit until the login is
taken, a deadline to log in, and one to finish a frame once begun. (5,000 connections
each holding a 64.9 kB half-sent frame once added 415 MB to a server, for ever.)"""

from __future__ import annotations

from csce513msg.protocol import (
    PRE_LOGIN_MAX_FRAME,
    ErrorCode,
    Hello,
    Login,
    LoginOk,
    Ping,
    Pong,
    Receipt,
    Send,
    TargetKind,
    encode,
)
from tests.hub.harness import PASSWORD, Harness, codes


def half_a_frame(length: int) -> bytes:
    """The first half of a Ping frame of ``length`` (header and body) bytes."""
    return encode(Ping(b"x" * length, request_id=5))[: length // 2]


def test_until_login_ok_a_frame_may_be_only_a_few_kilobytes() -> None:
    h = Harness()  # max_frame 65536
    stranger = h.connect(raw=True)
    h.send_raw(stranger, half_a_frame(PRE_LOGIN_MAX_FRAME + 1))  # refused on its prefix alone
    assert codes(stranger) == [ErrorCode.FRAME_TOO_LARGE] and stranger.closed == "frame_too_large"
    h.account("alice")
    guesser = h.connect(raw=True)  # a Login, right or wrong, vouches for nothing until it is answered
    big = encode(Send(TargetKind.USER, 0, 0, "alice", b"b" * 10_000, request_id=3))
    h.send_raw(guesser, encode(Hello(request_id=1)) + encode(Login("alice", "wrong", request_id=2)) + big)
    assert codes(guesser) == [ErrorCode.FRAME_TOO_LARGE] and guesser.closed == "frame_too_large"
    alice = h.connect(raw=True)
    h.send_raw(alice, encode(Hello(request_id=1)) + encode(Login("alice", PASSWORD, request_id=2)))
    h.settle()
    assert alice.of(LoginOk) and alice.closed is None
    h.send_raw(alice, big + encode(Ping(b"p" * 20_000, request_id=4)))  # logged in: the Welcome's limit
    h.settle()
    assert alice.of(Receipt)
    assert alice.of(Pong)


def test_a_failed_login_brings_the_small_limit_back() -> None:
    h = Harness()
    h.account("alice")
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login("alice", "wrong", request_id=2)))
    h.settle()
    assert codes(peer) == [ErrorCode.AUTH_FAILED]
    h.send_raw(peer, half_a_frame(20_000))
    assert codes(peer)[-1] == ErrorCode.FRAME_TOO_LARGE and peer.closed == "frame_too_large"


def test_a_connection_must_log_in_within_the_login_timeout() -> None:
    h = Harness(login_timeout=5.0, idle_timeout=60.0)
    silent = h.connect(raw=True)  # never says Hello
    pinger = h.connect(raw=True)  # says Hello, keeps the connection alive, never logs in
    h.send_raw(pinger, encode(Hello(request_id=1)))
    member = h.connect("alice")
    for _ in range(4):
        h.advance(1.0)
        h.send_raw(pinger, encode(Ping(request_id=2)))
    assert silent.closed is None and pinger.closed is None
    h.advance(2.0)  # the deadline is checked at the sweeps, every second here
    assert silent.closed == "login timeout" and pinger.closed == "login timeout"
    assert codes(silent) == codes(pinger) == [ErrorCode.IDLE_TIMEOUT]
    assert member.closed is None  # logged in: the deadline is met


def test_a_frame_begun_must_be_finished_within_the_frame_timeout() -> None:
    h = Harness(frame_timeout=3.0, idle_timeout=60.0)
    alice, bob = h.connect("alice"), h.connect("bob")
    stream = b"".join(encode(Ping(b"%d" % i, request_id=10 + i)) for i in range(40))
    for i in range(0, len(stream), 7):  # frames that straddle every read, for longer than the timeout
        h.send_raw(bob, stream[i : i + 7])
        h.advance(0.2)
    assert bob.closed is None and len(bob.of(Pong)) == 40
    h.send_raw(alice, half_a_frame(10_000))
    h.advance(2.5)
    assert alice.closed is None
    h.advance(1.5)  # checked at the sweeps: a quarter of the timeout apart
    assert alice.closed == "frame timeout" and codes(alice) == [ErrorCode.IDLE_TIMEOUT]
