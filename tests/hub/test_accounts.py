"""Logins, registration, throttling, several sessions per user and accounts changed by
an admin: the hub driven directly (the same cases run over the wire in
tests/conformance/test_accounts.py and tests/system/test_accounts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csce513msg.hub import Lane
from csce513msg.protocol import (
    WAITING_CAP,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Login,
    LoginOk,
    Presence,
    Receipt,
    Register,
    Send,
    TargetKind,
    WhoReply,
    encode,
)
from csce513msg.store import MemoryStore
from csce513msg.store.accounts import AccountBook
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer, codes


def login_raw(h: Harness, user: str, password: str, rid: int = 2, host: str | None = None) -> Peer:
    peer = h.connect(raw=True, host=host)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login(user, password, "dev", request_id=rid)))
    return peer


def test_wrong_password_and_unknown_user_get_the_same_answer() -> None:
    h = Harness()
    h.account("alice")
    wrong, unknown = login_raw(h, "alice", "not it"), login_raw(h, "nobody", "not it")
    (e1,), (e2,) = wrong.of(Error), unknown.of(Error)
    assert e1.code == e2.code == ErrorCode.AUTH_FAILED
    assert e1.message == e2.message
    assert not wrong.closed and not unknown.closed  # they may try again
    right = login_raw(h, "alice", PASSWORD)
    assert right.of(LoginOk) and not codes(right)


def test_the_password_is_checked_in_the_hash_lane_and_requests_behind_it_wait() -> None:
    h = Harness(auto_jobs=False)
    h.account("alice")
    h.account("bob")
    peer = h.connect(raw=True)
    send = Send(TargetKind.USER, 0, 0, "bob", b"pipelined", request_id=3)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login("alice", PASSWORD, request_id=2)) + encode(send))
    lanes = []
    while not peer.of(LoginOk):  # the accounts poll (store), the hash, the login's read (store)
        assert len(peer.events) == 1  # only the Welcome: the Send waits for the login
        lanes += [j.lane for j in h.jobs]
        h.run_jobs()
        h.pump()
    assert lanes[-3:] == [Lane.LOOP, Lane.HASH, Lane.STORE]  # the poll, the hash, the login's read (a read: the thread)
    h.settle()
    assert [type(m) for m in peer.events[1:]] == [LoginOk, Receipt]  # in order, once the login is through


def test_failed_logins_are_throttled_per_account_without_hashing() -> None:
    h = Harness(login_failures_per_account=3, login_failure_window=60.0)
    h.account("alice")
    for _ in range(3):
        assert codes(login_raw(h, "alice", "guess")) == [ErrorCode.AUTH_FAILED]
    h.pump()
    blocked = login_raw(h, "alice", PASSWORD)  # even the right password waits out the window
    assert codes(blocked) == [ErrorCode.AUTH_THROTTLED]
    assert "try again in 60 s" in blocked.of(Error)[0].message
    h.advance(61)
    assert login_raw(h, "alice", PASSWORD).of(LoginOk)


def test_failed_logins_are_throttled_per_address() -> None:
    h = Harness(login_failures_per_account=100, login_failures_per_address=4)
    for i in range(4):  # a different name each time: only the address links them
        assert codes(login_raw(h, f"user{i}", "guess", host="10.9.9.9")) == [ErrorCode.AUTH_FAILED]
    assert codes(login_raw(h, "user9", "guess", host="10.9.9.9")) == [ErrorCode.AUTH_THROTTLED]
    assert codes(login_raw(h, "user9", "guess", host="10.8.8.8")) == [ErrorCode.AUTH_FAILED]  # another address


def test_registration_is_off_by_default() -> None:
    h = Harness()
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register("carol", PASSWORD, request_id=2)))
    assert codes(peer) == [ErrorCode.REGISTRATION_CLOSED]


def test_register_logs_in_and_a_taken_name_or_short_password_is_refused() -> None:
    h = Harness(self_register=True)
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register("Carol", PASSWORD, "dev", request_id=2)))
    (ok,) = peer.of(LoginOk)
    assert ok.user == "carol" and ok.role == "student"
    assert isinstance(h.store, MemoryStore)
    assert PASSWORDS.verify(PASSWORD, h.store.accounts["carol"].password_hash)
    again = h.connect(raw=True)
    h.send_raw(again, encode(Hello(request_id=1)) + encode(Register("carol", PASSWORD, request_id=2)))
    short = h.connect(raw=True)
    h.send_raw(short, encode(Hello(request_id=1)) + encode(Register("dave", "short", request_id=2)))
    assert codes(again) == [ErrorCode.NAME_TAKEN] and codes(short) == [ErrorCode.BAD_REQUEST]
    assert login_raw(h, "carol", PASSWORD).of(LoginOk)


def test_two_registrations_of_one_name_at_once() -> None:
    h = Harness(self_register=True, auto_jobs=False)
    first, second = h.connect(raw=True), h.connect(raw=True)
    for peer in (first, second):
        h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register("erin", PASSWORD, request_id=2)))
    h.settle()
    assert first.of(LoginOk) and codes(second) == [ErrorCode.NAME_TAKEN]


def test_two_sessions_of_one_user_both_receive_and_see_what_the_other_sent() -> None:
    h = Harness()
    watcher = h.connect("watcher", presence=True)
    laptop, gui = h.connect("alice", device="laptop"), h.connect("alice", device="gui")
    bob = h.connect("bob")
    bob.session.send_text("alice", "to both")
    laptop.session.send_text("bob", "from the laptop")
    h.pump()
    assert [d.body for d in laptop.of(Deliver)] == [b"to both"]
    assert sorted(d.body for d in gui.of(Deliver)) == [b"from the laptop", b"to both"]
    watcher.session.who()
    h.pump()
    (who,) = watcher.of(WhoReply)
    assert dict(zip(who.users, who.sessions, strict=True))["alice"] == 2
    h.drop(laptop)
    h.drop(gui)
    seen = [(p.user, p.online) for p in watcher.of(Presence) if p.user == "alice"]
    assert seen == [("alice", 1), ("alice", 0)]  # online with the first session, offline after the last


def test_login_ok_counts_the_messages_that_waited() -> None:
    h = Harness()
    h.account("bob")
    alice = h.connect("alice")
    for i in range(3):
        alice.session.send_text("bob", str(i))
    h.pump()
    bob = h.connect("bob")
    assert bob.of(LoginOk)[0].waiting == 3 and len(bob.of(Deliver)) == 3


def test_login_ok_counts_the_waiting_messages_up_to_the_cap() -> None:
    """A count costs what it counts (issue 9): past WAITING_CAP, LoginOk says "that many
    or more", and the catch-up still delivers everything."""
    h = Harness(rate=1e6, burst=10**6)
    h.drop(h.connect("bob"))  # bob's device was here before: everything after is news to it
    alice = h.connect("alice")
    for i in range(WAITING_CAP + 5):
        alice.session.send_text("bob", str(i))
    h.pump()
    bob = h.connect("bob")
    assert bob.of(LoginOk)[0].waiting == WAITING_CAP
    assert len(bob.of(Deliver)) == WAITING_CAP + 5  # the session acknowledges each window as it comes


def test_a_connection_gone_while_its_password_is_hashed() -> None:
    h = Harness(auto_jobs=False)
    h.account("alice")
    peer = login_raw(h, "alice", PASSWORD)
    h.drop(peer)
    h.settle()  # the hash result finds nobody: nothing happens, nothing breaks
    assert not h.engine.online


def test_admin_changes_reach_the_running_hub(tmp_path: Path) -> None:
    """`msgsrv user` writes the database from another process; the hub polls it."""
    path = tmp_path / "db.sqlite"
    h = Harness(store=SqliteStore(path, checkpoint_interval=0))
    book = AccountBook(path)
    book.add("alice", PASSWORDS.hash(PASSWORD))
    book.add("bob", PASSWORDS.hash(PASSWORD))
    h.advance(3)  # no connection yet: no poll; the first connection looks at once
    alice = login_raw(h, "alice", PASSWORD)
    bob = login_raw(h, "bob", PASSWORD)
    assert alice.of(LoginOk)
    book.set_password("alice", PASSWORDS.hash("a new password"))
    h.advance(2.5)
    assert codes(alice) == [ErrorCode.ACCOUNT_CHANGED] and alice.closed == "account changed"
    assert codes(login_raw(h, "alice", PASSWORD)) == [ErrorCode.AUTH_FAILED]
    assert login_raw(h, "alice", "a new password").of(LoginOk)
    book.remove("alice")
    h.advance(2.5)
    h.send_raw(bob, encode(Send(TargetKind.USER, 0, 0, "alice", b"still there?", request_id=9)))
    assert codes(bob) == [ErrorCode.USER_NOT_FOUND]
    book.close()


def test_registrations_are_limited_per_address() -> None:
    h = Harness(self_register=True, registrations_per_address=2)
    for i in range(3):
        peer = h.connect(raw=True, host="10.7.7.7")
        h.send_raw(peer, encode(Hello(request_id=1)) + encode(Register(f"bot{i}", PASSWORD, request_id=2)))
        assert codes(peer) == ([] if i < 2 else [ErrorCode.AUTH_THROTTLED])
    elsewhere = h.connect(raw=True, host="10.6.6.6")
    h.send_raw(elsewhere, encode(Hello(request_id=1)) + encode(Register("human", PASSWORD, request_id=2)))
    assert elsewhere.of(LoginOk)


def test_a_throttled_account_is_logged_once_not_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    h = Harness(login_failures_per_account=2)
    h.account("alice")
    for _ in range(2):
        login_raw(h, "alice", "guess")
    with caplog.at_level(logging.WARNING, logger="csce513msg.hub"):
        for _ in range(20):
            assert codes(login_raw(h, "alice", "guess")) == [ErrorCode.AUTH_THROTTLED]
    lines = [r for r in caplog.records if "login throttled" in r.getMessage()]
    assert len(lines) == 1


def test_a_bug_in_the_hash_lane_is_internal_and_the_connection_stays() -> None:
    """INTERNAL answers the one request a server bug failed; the connection goes on (the
    job runner hands the engine the exception a job raised, as here)."""
    h = Harness(auto_jobs=False)
    h.account("alice")
    peer = login_raw(h, "alice", PASSWORD)
    while not (hashes := [j for j in h.jobs if j.lane is Lane.HASH]):
        h.run_jobs()
        h.pump()
    h.jobs.remove(hashes[0])
    h.apply(h.engine.job_done(hashes[0].job_id, RuntimeError("the KDF broke"), h.now))
    h.pump()
    assert codes(peer) == [ErrorCode.INTERNAL] and peer.closed is None
    h.send_raw(peer, encode(Login("alice", PASSWORD, "dev", request_id=3)))  # and may try again
    h.settle()
    assert peer.of(LoginOk)


def test_sessions_of_one_user_hold_the_account_s_name_not_a_copy_each() -> None:
    """A logged-in session (and the device token the gate keeps for it) names its user with
    the account's own string: at 10,000 connections a copy each was 54 bytes a session."""
    hub = Harness()
    account = hub.account("alice")
    peers = [hub.connect("Alice", device=f"dev-{i}") for i in range(3)]  # each Login folds the name anew
    sessions = [hub.engine.sessions[p.conn] for p in peers]
    assert [s.user for s in sessions] == ["alice"] * 3
    assert all(s.user is account.name for s in sessions)
    assert all(t.user is account.name for t in hub.engine.gate.device_tokens.values())
