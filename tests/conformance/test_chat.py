"""Conformance: login, names, who, presence, direct messages, receipts and acks."""

from __future__ import annotations

import random
import time

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.protocol import (
    Ack,
    Deliver,
    ErrorCode,
    Login,
    LoginOk,
    Ping,
    Presence,
    Receipt,
    ReceiptState,
    Register,
    Send,
    TargetKind,
)
from tests.conformance.wire import PASSWORD, RawConn, connect, next_of, wait_gone
from tests.fixtures import Names, Server

SERVER_FLAGS = ("--max-text", "4096", "--max-frame", "8192")


def test_login_and_who(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a = connect(server, alice)
    b = connect(server, bob)
    online = a.who()
    assert {alice, bob} <= set(online)
    assert online == sorted(online)
    b.close()
    wait_gone(a, bob)  # the server notices the close and forgets bob
    a.close()


@pytest.mark.parametrize("bad", ["", "has space", "-dash", ".dot", "x" * 33, "semi;colon", "ünïcode"])
def test_invalid_names_are_refused(server: Server, bad: str) -> None:
    conn = RawConn(server)
    conn.handshake()
    conn.send(Login(bad, request_id=2))
    conn.expect_error(ErrorCode.INVALID_NAME, request_id=2)
    conn.alive()  # and the connection may try again
    conn.close()


def test_a_taken_name_cannot_be_registered_again_in_any_case(server: Server, names: Names) -> None:
    name = names("carol")
    first = connect(server, name)
    again = Client.connect(server.host, server.port)
    with pytest.raises(ServerError) as err:
        again.login(name.upper(), PASSWORD, register=True)
    assert err.value.code == ErrorCode.NAME_TAKEN
    assert again.login(name.upper(), PASSWORD).user == name  # logging in is fine: a second session
    first.close()
    again.close()


def test_login_reply_names_the_user_in_lower_case(server: Server, names: Names) -> None:
    conn = RawConn(server)
    conn.handshake()
    name = names("Dave")
    conn.send(Register(name, PASSWORD, request_id=2))
    ok = conn.recv()
    assert isinstance(ok, LoginOk) and ok.user == name.lower() and ok.request_id == 2
    assert abs(ok.time_us / 1e6 - time.time()) < 60
    conn.close()


def test_presence_goes_to_subscribers_only(server: Server, names: Names) -> None:
    watcher = connect(server, names("watcher"), presence=True)
    quiet = connect(server, names("quiet"), presence=False)
    newcomer_name = names("newcomer")
    newcomer = connect(server, newcomer_name)
    online = next_of(watcher, Presence, lambda m: m.user == newcomer_name)
    assert online.online == 1
    newcomer.close()
    offline = next_of(watcher, Presence, lambda m: m.user == newcomer_name)
    assert offline.online == 0
    quiet.who()  # a round trip: anything sent to quiet before this reply has arrived
    assert not [m for m in quiet.inbox if isinstance(m, Presence)]
    watcher.close()
    quiet.close()


def test_direct_messages_both_ways_with_receipts_and_positions(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    before_us = time.time() * 1e6
    r1 = a.send_text(bob, "hello bob")
    d1 = b.next_message(Deliver)
    r2 = b.send_text(alice, "hi alice ✓")
    d2 = a.next_message(Deliver)
    r3 = a.send_text(bob.upper(), "third")
    d3 = b.next_message(Deliver)
    for receipt in (r1, r2, r3):
        assert receipt.state == ReceiptState.STORED
    stream = r1.stream
    assert stream == r2.stream == r3.stream == d1.stream == d2.stream == d3.stream
    assert [r1.position, r2.position, r3.position] == [1, 2, 3]
    assert [d.position for d in (d1, d2, d3)] == [1, 2, 3]
    assert len({r1.message_id, r2.message_id, r3.message_id}) == 3
    assert r1.message_id < r2.message_id < r3.message_id
    assert (d1.sender, d1.target, d1.body) == (alice, bob, b"hello bob")
    assert (d2.sender, d2.target, d2.body.decode()) == (bob, alice, "hi alice ✓")
    assert d1.message_id == r1.message_id and d1.time_us == r1.time_us
    assert d1.target_kind == TargetKind.USER
    assert before_us - 60e6 < d1.time_us < time.time() * 1e6 + 60e6
    a.close()
    b.close()


def test_binary_body_is_forwarded_untouched(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    body = bytes(range(256)) * 4
    from csce513msg.protocol import Send  # a raw Send: the body is not text

    a.call(Send(TargetKind.USER, 0, 0, bob, body))
    assert b.next_message(Deliver).body == body
    a.close()
    b.close()


def test_acks_are_cumulative_and_checked(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a = connect(server, alice)
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(bob, PASSWORD, request_id=2))
    conn.login_ok()
    for i in range(3):
        a.send_text(bob, f"m{i}")
    got = [conn.expect(Deliver) for _ in range(3)]
    assert [d.position for d in got] == [1, 2, 3]
    stream = got[0].stream
    conn.send(Ack(2, stream, request_id=10), Ack(3, stream, request_id=11), Ack(1, stream, request_id=12))
    conn.alive()  # no error came before the pong: all three were fine
    conn.send(Ack(9, stream, request_id=13))
    conn.expect_error(ErrorCode.BAD_REQUEST, request_id=13)
    conn.send(Ack(1, "dm:nobody,else", request_id=14))
    conn.expect_error(ErrorCode.BAD_REQUEST, request_id=14)
    a.close()
    conn.close()


def test_unknown_recipient_is_refused_and_nothing_is_stored(server: Server, names: Names) -> None:
    a = connect(server, names("alice"))
    nobody = names("nobody")
    with pytest.raises(ServerError) as err:
        a.send_text(nobody, "hello?")
    assert err.value.code == ErrorCode.USER_NOT_FOUND and nobody in err.value.error.message
    late = connect(server, nobody)  # the name now exists, and nothing was kept for it
    late.call(Ping())
    assert not [m for m in late.inbox if isinstance(m, Deliver)]
    late.close()
    a.close()


def test_offline_messages_are_stored_and_delivered_in_order_on_return(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a = connect(server, alice)
    connect(server, bob).close()  # bob exists, then leaves
    wait_gone(a, bob)
    receipts = [a.send_text(bob, f"while you were out {i}") for i in range(5)]
    assert all(r.state == ReceiptState.STORED and r.detail == f"{bob} is offline" for r in receipts)
    b = connect(server, bob)
    got = b.deliveries(5)
    assert [d.body.decode() for d in got] == [f"while you were out {i}" for i in range(5)]
    assert [d.time_us for d in got] == [r.time_us for r in receipts]  # the original times
    assert [d.message_id for d in got] == [r.message_id for r in receipts]
    b.call(Ping())  # acknowledged (the client acks as it reads); nothing comes twice
    b.close()
    wait_gone(a, bob)  # the acks reached the server before the close
    again = connect(server, bob)
    again.call(Ping())
    assert not [m for m in again.inbox if isinstance(m, Deliver)]
    again.close()
    a.close()


def test_delivered_receipt_follows_when_the_recipient_acknowledges(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    stored = a.send_text(bob, "did you get this?")
    b.next_message(Deliver)  # reading it acknowledges it
    delivered = next_of(a, Receipt, lambda m: m.state == ReceiptState.DELIVERED)
    assert delivered.message_id == stored.message_id and delivered.request_id == 0
    assert (delivered.stream, delivered.position) == (stored.stream, stored.position)
    a.close()
    b.close()


def test_history_pages_back_through_a_conversation(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    for i in range(5):
        (a if i % 2 == 0 else b).send_text(bob if i % 2 == 0 else alice, f"h{i}")
    newest, end = a.history(bob, limit=3)
    assert [d.body for d in newest] == [b"h2", b"h3", b"h4"] and end.count == 3
    assert all(d.request_id and d.stream == end.stream for d in newest)
    older, end = a.history(bob, limit=3, before=end.first)
    assert [d.body for d in older] == [b"h0", b"h1"] and end.count == 2 and end.first == 1
    a.close()
    b.close()


def test_a_resend_gets_the_original_message_and_no_second_delivery(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a = connect(server, alice, device_id="laptop-1")
    b = connect(server, bob)
    first = a.call(Send(TargetKind.USER, 0, 4242, bob, b"only once"))
    again = a.call(Send(TargetKind.USER, 0, 4242, bob, b"only once"))
    assert isinstance(first, Receipt) and isinstance(again, Receipt)
    assert (again.message_id, again.position) == (first.message_id, first.position)
    assert b.next_message(Deliver).body == b"only once"
    b.call(Ping())
    assert not [m for m in b.inbox if isinstance(m, Deliver)]
    a.close()
    b.close()


def test_text_over_the_limit_is_refused(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    assert a.session.welcome is not None  # connect waited for it
    max_text = a.session.welcome.max_text
    with pytest.raises(ServerError) as err:
        a.send_text(bob, "x" * (max_text + 1))
    assert err.value.code == ErrorCode.TEXT_TOO_LONG
    assert a.send_text(bob, "y" * max_text).state == ReceiptState.STORED
    assert len(b.next_message(Deliver).body) == max_text
    a.close()
    b.close()


def test_group_targets_are_reserved(server: Server, names: Names) -> None:
    from csce513msg.protocol import Send

    a = connect(server, names("alice"))
    with pytest.raises(ServerError) as err:
        a.call(Send(TargetKind.GROUP, 0, 0, "class", b"hi"))
    assert err.value.code == ErrorCode.BAD_REQUEST
    a.close()


def test_200_concurrent_clients_each_message_delivered_exactly_once(server: Server, names: Names) -> None:
    count, per_client = 200, 5
    users = [names("crowd") for _ in range(count)]
    clients = [connect(server, u) for u in users]
    rng = random.Random(513)
    expected: dict[str, list[tuple[str, str]]] = {u: [] for u in users}
    for i, c in enumerate(clients):  # everyone queues its messages, then all go at once
        for k in range(per_client):
            to = users[(i + rng.randrange(1, count)) % count]
            text = f"{users[i]}#{k}"
            c.session.send_text(to, text)
            expected[to].append((users[i], text))
    for c in clients:
        c.flush()
    for i, c in enumerate(clients):
        got = c.deliveries(len(expected[users[i]]), timeout=30)
        assert sorted((d.sender, d.body.decode()) for d in got) == sorted(expected[users[i]])
        receipts = [next_of(c, Receipt, lambda m: m.request_id != 0, timeout=30) for _ in range(per_client)]
        assert all(r.state == ReceiptState.STORED for r in receipts)
    for c in clients:  # nothing extra: a ping round trip flushes anything in flight
        c.call(Ping())
        assert not [m for m in c.inbox if isinstance(m, Deliver)], "a message was delivered twice"
        c.close()
