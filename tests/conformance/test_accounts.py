"""Conformance: accounts over the wire (the server runs with --self-register).

Register, log in, wrong passwords, duplicate registration, several sessions of one
user, a second device, and the count of messages that waited. Throttling needs a
server of its own (tests/system/test_accounts.py), so it cannot throttle these.
"""

from __future__ import annotations

from csce513msg.client import Client
from csce513msg.protocol import Deliver, Error, ErrorCode, Hello, Login, LoginOk, Ping, Pong, Register
from tests.conformance.wire import PASSWORD, RawConn, connect, register, wait_gone
from tests.fixtures import Names, Server


def test_register_then_log_in_with_the_password(server: Server, names: Names) -> None:
    name = names("ann")
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(name, PASSWORD, "dev-1", request_id=2))
    ok = conn.recv()
    assert isinstance(ok, LoginOk) and ok.user == name and ok.role == "student" and ok.request_id == 2
    conn.close()
    again = RawConn(server)
    again.handshake()
    again.send(Login(name.upper(), PASSWORD, "dev-1", request_id=3))
    ok = again.recv()
    assert isinstance(ok, LoginOk) and ok.user == name
    again.close()


def test_wrong_password_and_unknown_user_get_the_same_reply(server: Server, names: Names) -> None:
    name = names("ben")
    register(server, name)
    replies = []
    for user in (name, names("nobody")):
        conn = RawConn(server)
        conn.handshake()
        conn.send(Login(user, "not the password", request_id=2))
        reply = conn.recv()
        assert isinstance(reply, Error)
        replies.append((reply.code, reply.message))
        conn.alive()  # the connection stays: the client may try again
        conn.close()
    assert replies[0] == replies[1] and replies[0][0] == ErrorCode.AUTH_FAILED


def test_registration_refuses_a_taken_name_and_a_short_password(server: Server, names: Names) -> None:
    name = names("cat")
    register(server, name)
    conn = RawConn(server)
    conn.handshake()
    conn.send(Register(name.upper(), PASSWORD, request_id=2))
    conn.expect_error(ErrorCode.NAME_TAKEN, request_id=2)
    conn.send(Register(names("dan"), "short", request_id=3))
    conn.expect_error(ErrorCode.BAD_REQUEST, request_id=3)
    conn.alive()
    conn.close()


def test_requests_sent_right_behind_a_login_wait_for_its_answer(server: Server, names: Names) -> None:
    name = names("eve")
    register(server, name)
    conn = RawConn(server)
    conn.welcome()
    conn.send(Hello(request_id=1), Login(name, PASSWORD, request_id=2), Ping(b"after", request_id=3))
    assert isinstance(conn.recv(), LoginOk)  # first: the Ping waited for the password check
    pong = conn.recv()
    assert isinstance(pong, Pong) and pong.request_id == 3 and pong.body == b"after"
    conn.close()


def test_two_sessions_of_one_user_both_receive_and_who_counts_them(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    laptop = connect(server, alice, device_id="laptop")
    gui = connect(server, alice, device_id="gui")
    b = connect(server, bob)
    receipt = b.send_text(alice, "to every alice")
    assert receipt.detail == ""  # alice is online
    for session in (laptop, gui):
        assert session.next_message(Deliver).body == b"to every alice"
    who = b.who_reply()
    assert dict(zip(who.users, who.sessions, strict=True))[alice] == 2
    laptop.send_text(bob, "from the laptop")
    mine = gui.next_message(Deliver)  # the other device sees what alice typed on the laptop
    assert (mine.sender, mine.body) == (alice, b"from the laptop")
    laptop.close()
    gui.call(Ping())  # the laptop's close must not log the GUI out
    assert alice in b.who()
    gui.close()
    wait_gone(b, alice)
    b.close()


def test_a_new_device_catches_up_and_login_ok_counts_what_waited(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    a = connect(server, alice, device_id="laptop")
    for i in range(3):
        a.send_text(bob, f"while away {i}")
    phone = Client.connect(server.host, server.port, device_id="bob-phone", drop_repeats=False)
    ok = phone.login(bob, PASSWORD)
    assert ok.waiting == 3
    assert [d.body for d in phone.deliveries(3)] == [f"while away {i}".encode() for i in range(3)]
    second = connect(server, alice, device_id="desktop")  # alice's second device: what she sent
    sent = second.deliveries(3)
    assert [d.sender for d in sent] == [alice] * 3
    for client in (a, phone, second):
        client.close()
