"""Conformance: the rules a client written from docs/protocol.md alone needs settled
(protocol 1.3 and on): trailing fields, limits, names, ids, and what a server sends whom.
Wire-only, so it can test any server (``--server HOST:PORT``)."""

from __future__ import annotations

import struct

from csce513msg.client import ServerError
from csce513msg.protocol import (
    VERSION_MINOR,
    Ack,
    Deliver,
    ErrorCode,
    GroupCreate,
    Hello,
    Login,
    LoginOk,
    Ping,
    Pong,
    Presence,
    Receipt,
    ReceiptState,
    Register,
    Send,
    encode,
    encode_frame,
)
from tests.conformance.wire import PASSWORD, RawConn, connect, next_of, register, wait_gone
from tests.fixtures import Names, Server


def logged_in(server: Server, user: str, device: str = "", minor: int = VERSION_MINOR) -> RawConn:
    """A raw connection of protocol 1.``minor`` logged in as ``user`` (registered already)."""
    conn = RawConn(server)
    conn.handshake(minor=minor)
    conn.send(Login(user, PASSWORD, device, request_id=2))
    conn.login_ok()
    return conn


def test_missing_trailing_fields_take_their_defaults(server: Server, names: Names) -> None:
    """Rule 3 of section 3, also inside a run of fixed-width fields: a Hello of its major
    version alone is a Hello; a History of its ``before`` alone is a History (of target
    kind 0: refused as a bad value, the connection stays)."""
    alice = names("alice")
    register(server, alice)
    conn = RawConn(server)
    conn.welcome()
    conn.send_raw(encode_frame(0x01, 1, struct.pack("!B", 1)))  # Hello: version_major only
    conn.send(Login(alice, PASSWORD, request_id=2))
    conn.login_ok()
    conn.send_raw(encode_frame(0x07, 3, struct.pack("!Q", 0)))  # History: before only
    conn.expect_error(ErrorCode.BAD_REQUEST, request_id=3)
    conn.alive()
    conn.close()


def test_history_limit_0_is_a_page_of_20_and_paging_ends_with_count_0(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    a = connect(server, alice)
    for i in range(25):
        a.send_text(bob, f"m{i}")
    page, end = a.history(bob, limit=0)
    assert len(page) == end.count == 20 and end.first == 6  # the newest 20
    page, end = a.history(bob, limit=10, before=end.first)
    assert [d.position for d in page] == [1, 2, 3, 4, 5] and end.first == 1
    page, end = a.history(bob, limit=10, before=end.first)
    assert page == [] and (end.count, end.first) == (0, 0)  # the end: stop here (before=0 is the newest again)
    a.close()


def test_an_error_that_closes_names_the_frame_s_request_if_it_was_read(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send_raw(encode_frame(0x01, 7, b"\x01"))  # a Hello of its major version alone: fine
    conn.send_raw(encode_frame(0x05, 8, b"") + encode_frame(0x07, 9, struct.pack("!Q", 1) + b"\x00"))  # cut mid-field
    conn.expect_error(ErrorCode.NOT_LOGGED_IN, request_id=8)
    conn.expect_error(ErrorCode.BAD_FRAME, request_id=9)  # its prefix was read: its id
    conn.expect_closed()
    big = RawConn(server)
    big.welcome()
    big.send_raw(struct.pack("!IBBHI", 1 << 30, 0x06, 0, 0, 10))
    big.expect_error(ErrorCode.FRAME_TOO_LARGE, request_id=0)  # about the stream: 0
    big.expect_closed()


def test_an_unknown_type_is_unsupported_in_every_state(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send_raw(encode_frame(0x7E, 4, b""))  # before Hello: the type is checked first
    conn.expect_error(ErrorCode.UNSUPPORTED, request_id=4)
    conn.alive()
    conn.close()


def test_a_short_password_is_a_bad_request(server: Server, names: Names) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(names("shorty"), "short", request_id=2))
    assert "8" in conn.expect_error(ErrorCode.BAD_REQUEST, request_id=2).message
    conn.close()


def test_a_request_id_of_0_is_answered_with_0(server: Server) -> None:
    conn = RawConn(server)
    conn.welcome()
    conn.send(Ping(b"zero", request_id=0))
    reply = conn.recv()
    assert isinstance(reply, Pong) and reply.request_id == 0 and reply.body == b"zero"
    conn.close()


def test_names_are_ascii_folded_and_a_malformed_target_is_invalid_name(server: Server, names: Names) -> None:
    alice = names("alice")
    a = connect(server, alice)
    kelvin = "\u212a" + names("elvin")  # the Kelvin sign folds to k in Unicode
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(kelvin, PASSWORD, request_id=2))
    conn.expect_error(ErrorCode.INVALID_NAME, request_id=2)
    for target, code in ((".dot", ErrorCode.INVALID_NAME), ("x" * 33, ErrorCode.INVALID_NAME),
                         (names("nobody"), ErrorCode.USER_NOT_FOUND)):  # fmt: skip
        try:
            a.send_text(target, "hi")
            raise AssertionError(f"{target!r} accepted")
        except ServerError as exc:
            assert exc.code == code, (target, exc)
    assert a.send_text(alice.upper(), "to me, in capitals").stream == f"dm:{alice},{alice}"
    conn.close()
    a.close()


def test_a_long_device_id_is_a_bad_request(server: Server, names: Names) -> None:
    alice = names("alice")
    register(server, alice)
    conn = RawConn(server)
    conn.handshake()
    conn.send(Login(alice, PASSWORD, "d" * 65, request_id=2))
    conn.expect_error(ErrorCode.BAD_REQUEST, request_id=2)
    conn.send(Login(alice, PASSWORD, "d" * 64, request_id=3))  # the limit itself is fine
    conn.login_ok()
    conn.close()


def test_own_sends_reach_the_user_s_other_devices_and_sending_to_yourself(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    laptop = connect(server, alice, device_id="laptop")
    phone = connect(server, alice, device_id="phone")
    laptop.send_text(bob, "from the laptop")
    copy = phone.next_message(Deliver, timeout=10)
    assert (copy.sender, copy.target, copy.body) == (alice, bob, b"from the laptop")  # the phone sees it
    laptop.send_text(alice, "a note to self")
    note = phone.next_message(Deliver, timeout=10)
    assert (note.sender, note.target, note.stream) == (alice, alice, f"dm:{alice},{alice}")
    laptop.call(Ping())  # a round trip: the laptop got neither back
    assert not [m for m in laptop.inbox if isinstance(m, Deliver)]
    laptop.close()
    phone.close()


def test_a_reused_client_id_for_another_message_is_refused(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    a = connect(server, alice, device_id="d1")
    first = a.call(Send(1, 0, 77, bob, b"first"))
    assert isinstance(first, Receipt)
    again = a.call(Send(1, 0, 77, bob, b"first"))  # a resend: the same message
    assert isinstance(again, Receipt) and again.message_id == first.message_id
    try:
        a.call(Send(1, 0, 77, bob, b"something else"))
        raise AssertionError("a reused client id was answered with the old receipt")
    except ServerError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST and "77" in str(exc)
    a.close()


def test_one_delivered_receipt_per_message_with_its_own_time(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    a = connect(server, alice)
    sent = [a.send_text(bob, f"m{i}") for i in range(3)]
    b = logged_in(server, bob)
    got = [b.expect(Deliver) for _ in range(3)]
    b.send(Ack(got[-1].position, got[-1].stream))  # one cumulative ack
    receipts = [next_of(a, Receipt, lambda m: m.state == ReceiptState.DELIVERED, 10) for _ in range(3)]
    assert [r.message_id for r in receipts] == [s.message_id for s in sent]
    assert [r.time_us for r in receipts] == [s.time_us for s in sent]
    a.close()
    b.close()


def test_presence_on_a_user_s_first_login_and_last_logout_only(server: Server, names: Names) -> None:
    watcher, alice = names("watcher"), names("alice")
    register(server, alice)
    w = connect(server, watcher, presence=True)
    one = connect(server, alice, device_id="one")
    two = connect(server, alice, device_id="two")
    one.close()
    two.close()
    wait_gone(w, alice)
    w.call(Ping())
    events = [(m.user, m.online) for m in w.inbox if isinstance(m, Presence) and m.user == alice]
    assert events == [(alice, 1), (alice, 0)]
    w.close()


def test_a_frame_over_4_kib_before_login_ok_is_refused(server: Server) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send_raw(struct.pack("!IBBHI", 5000, 0x06, 0, 0, 3) + b"x" * 100)
    conn.expect_error(ErrorCode.FRAME_TOO_LARGE)
    conn.expect_closed()


def test_an_older_client_is_sent_only_the_fields_of_its_version(server: Server, names: Names) -> None:
    """A client that says Hello as 1.1 gets a LoginOk without 1.2's role and waiting and
    1.3's device token (it would skip them; it is not sent what it did not ask for)."""
    alice = names("alice")
    register(server, alice)
    conn = RawConn(server)
    conn.welcome()
    conn.send(Hello(version_minor=1, request_id=1), Login(alice, PASSWORD, request_id=2))
    ok = conn.recv()
    assert isinstance(ok, LoginOk) and (ok.role, ok.device_token) == ("", ""), ok
    conn.close()


def test_a_group_request_from_a_peer_below_1_4_is_unsupported_and_the_connection_stays(
    server: Server, names: Names
) -> None:
    """Section 11: a frame type is added by a minor version; a server that does not serve
    it to this peer answers UNSUPPORTED with its request id, and keeps serving."""
    alice = names("alice")
    register(server, alice)
    conn = logged_in(server, alice, minor=3)
    conn.send_raw(encode(GroupCreate("lab", 0, request_id=41), 4))
    error = conn.expect_error(ErrorCode.UNSUPPORTED, request_id=41)
    assert "0x10" in error.message
    conn.alive()
    conn.close()
    plain = logged_in(server, alice)  # 1.4, without the feature ``groups``: served none either
    plain.send(GroupCreate("lab", 0, request_id=42))
    plain.expect_error(ErrorCode.UNSUPPORTED, request_id=42)
    plain.alive()
    plain.close()
