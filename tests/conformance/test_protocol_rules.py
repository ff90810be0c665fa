"""Conformance: the handshake, version rules and bad input, over real sockets.

Wire-only: these tests speak frames to a server at an address, so they can test
any server that speaks protocol v1 (``pytest tests/conformance --server HOST:PORT``).
"""

from __future__ import annotations

import struct

import pytest

from csce513msg.protocol import (
    VERSION_MAJOR,
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    History,
    Login,
    LoginOk,
    Ping,
    Pong,
    Receipt,
    Register,
    Send,
    Welcome,
    Who,
    encode_frame,
)
from tests.conformance.wire import PASSWORD, RawConn, connect
from tests.fixtures import Names, Server

SERVER_FLAGS = ("--max-frame", "8192", "--max-text", "4096", "--window", "8", "--idle-timeout", "60")


def test_welcome_is_the_first_frame_and_advertises_limits(server: Server) -> None:
    conn = RawConn(server)
    welcome = conn.welcome()
    assert welcome.version_major == VERSION_MAJOR
    assert welcome.server
    if server.backend != "external":
        assert (welcome.max_frame, welcome.max_text, welcome.window) == (8192, 4096, 8)
        assert welcome.idle_timeout_ms == 60_000
    assert "presence" in welcome.features
    conn.close()


def test_other_major_version_is_refused_and_closed(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(Hello(version_major=VERSION_MAJOR + 1, request_id=5))
    conn.expect_error(ErrorCode.VERSION_MISMATCH, request_id=5)
    conn.expect_closed()


def test_newer_minor_version_is_accepted(server: Server, names: Names) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(Hello(version_minor=99, features=("some-future-feature",), request_id=1))
    conn.send(Register(names("minor"), PASSWORD, request_id=2))
    assert isinstance(conn.recv(), LoginOk)
    conn.close()


def test_requests_before_hello_are_refused_but_the_connection_stays(server: Server, names: Names) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(Register(names("early"), PASSWORD, request_id=3))
    conn.expect_error(ErrorCode.BAD_STATE, request_id=3)
    conn.alive()  # ping is allowed in every state
    conn.send(Hello(request_id=4), Register(names("late"), PASSWORD, request_id=5))
    assert isinstance(conn.recv(), LoginOk)
    conn.close()


def test_chat_requests_need_a_login(server: Server) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send(Who(request_id=7))
    conn.expect_error(ErrorCode.NOT_LOGGED_IN, request_id=7)
    conn.send(Send(1, 0, 0, "anyone", b"hi", request_id=8))
    conn.expect_error(ErrorCode.NOT_LOGGED_IN, request_id=8)
    conn.alive()
    conn.close()


def test_second_login_on_a_connection_is_refused(server: Server, names: Names) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(names("twice"), PASSWORD, request_id=2))
    assert isinstance(conn.recv(), LoginOk)
    conn.send(Login(names("again"), request_id=3))
    conn.expect_error(ErrorCode.ALREADY_LOGGED_IN, request_id=3)
    conn.close()


def test_unknown_type_gets_unsupported_naming_the_request_and_stays_open(server: Server) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send_raw(encode_frame(0x7E, 77, b"\x00\x01future", b"body"))
    conn.expect_error(ErrorCode.UNSUPPORTED, request_id=77)
    conn.alive()
    conn.close()


def test_server_message_types_are_not_requests(server: Server) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send(Welcome(1, 0, 1, 1, 1, 1, (), "fake", request_id=12))
    conn.expect_error(ErrorCode.UNSUPPORTED, request_id=12)
    conn.alive()
    conn.close()


def test_unknown_header_fields_are_ignored(server: Server) -> None:
    """A newer peer appends fields; an older reader skips them (header length)."""
    conn = RawConn(server)
    conn.handshake()
    conn.send_raw(encode_frame(0x06, 31, b"\x00\x04more", b"ping-body"))  # Ping with an extra field
    pong = conn.recv()
    assert isinstance(pong, Pong) and pong.request_id == 31 and pong.body == b"ping-body"
    conn.close()


MALFORMED = {
    "header longer than frame": struct.pack("!IBBHI", 4, 0x06, 0, 10, 1) + b"abcd",
    "string cut short": encode_frame(0x02, 9, b"\x00\x20abc"),
    "name not utf-8": encode_frame(0x02, 9, b"\x00\x02\xff\xfe"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frame_gets_an_error_then_close_and_others_are_unaffected(
    server: Server, names: Names, case: str
) -> None:
    bystander = connect(server, names("bystander"))
    conn = RawConn(server)
    conn.handshake()
    conn.send_raw(MALFORMED[case])
    conn.expect_error(ErrorCode.BAD_FRAME)
    conn.expect_closed()
    assert bystander.session.user in bystander.who()
    bystander.close()


def test_oversized_declared_length_is_refused_before_the_body(server: Server, names: Names) -> None:
    bystander = connect(server, names("bystander"))
    conn = RawConn(server)
    welcome = conn.handshake()
    # only the prefix is sent: the server must refuse on the declared length alone
    conn.send_raw(struct.pack("!IBBHI", welcome.max_frame + 1, 0x03, 0, 0, 4))
    conn.expect_error(ErrorCode.FRAME_TOO_LARGE)
    conn.expect_closed()
    assert bystander.session.user in bystander.who()
    bystander.close()


def test_garbage_bytes_close_only_that_connection(server: Server, names: Names) -> None:
    bystander = connect(server, names("bystander"))
    conn = RawConn(server)
    conn.welcome()
    conn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # a browser, say
    err = conn.expect(Error)
    assert err.code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_FRAME)
    conn.expect_closed()
    assert bystander.who()
    bystander.close()


def test_ping_echoes_its_body(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(Ping(b"\x00\x01binary\xff", request_id=6))
    pong = conn.recv()
    assert isinstance(pong, Pong) and pong.body == b"\x00\x01binary\xff" and pong.request_id == 6
    conn.close()


def test_a_u64_over_2_63_is_a_bad_request_and_the_conversation_goes_on(server: Server, names: Names) -> None:
    """A client_msg_id or a History ``before`` of 2^63 or more (stores keep signed 64-bit
    integers) once broke the storage batch and lost other people's messages. It is a bad
    value, not a broken frame: BAD_REQUEST naming the request, and the connection stays."""
    alice, bob = names("alice"), names("bob")
    receiver = connect(server, bob)
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(alice, PASSWORD, request_id=2))
    assert isinstance(conn.recv(), LoginOk)
    conn.send(
        Send(1, 0, 2**63, bob, b"lost?", request_id=3),
        History(2**64 - 1, 10, 1, bob, request_id=4),
        Ack(2**63, f"dm:{min(alice, bob)},{max(alice, bob)}", request_id=5),
        Send(1, 0, 7, bob, b"kept", request_id=6),
    )
    for rid in (3, 4, 5):
        error = conn.expect_error(ErrorCode.BAD_REQUEST, request_id=rid)
        assert "2^63" in error.message
    receipt = conn.recv()
    assert isinstance(receipt, Receipt) and receipt.request_id == 6 and receipt.position == 1, receipt
    delivered = receiver.next_message(Deliver, timeout=10)
    assert delivered.body == b"kept" and delivered.position == 1
    conn.alive()
    conn.close()
    receiver.close()
