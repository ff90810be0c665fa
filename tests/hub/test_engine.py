"""Hub unit tests: scenarios through the in-memory harness, with a fixed clock."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csce513msg.hub import NAME_RULE, TRANSITIONS, State, Write, direct_stream
from csce513msg.protocol import (
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Login,
    LoginOk,
    Message,
    Ping,
    Pong,
    Presence,
    Receipt,
    ReceiptState,
    Send,
    Welcome,
    Who,
    WhoReply,
    encode,
    encode_frame,
)
from csce513msg.store import Batch, MemoryStore, NewMessage, StoredMessage
from tests.hub.harness import PASSWORD, WALL_OFFSET, Harness, codes


def test_welcome_then_hello_then_login() -> None:
    h = Harness(max_frame=4096, max_text=1000, window=7, idle_timeout=30.0)
    alice = h.connect("alice")
    welcome, ok = alice.events[0], alice.events[1]
    assert isinstance(welcome, Welcome) and (welcome.max_frame, welcome.max_text, welcome.window) == (4096, 1000, 7)
    assert welcome.idle_timeout_ms == 30_000
    assert isinstance(ok, LoginOk) and ok.user == "alice"
    assert ok.time_us == int((h.now + WALL_OFFSET) * 1e6)  # wall time = now + offset, no clock read
    assert h.engine.sessions[alice.conn].state is State.READY


def test_direct_message_receipt_delivery_and_ack() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    alice.session.send_text("bob", "hello")
    h.pump()
    receipt, delivered = alice.of(Receipt)  # stored, then delivered once bob acknowledged
    (deliver,) = bob.of(Deliver)
    assert delivered.state == ReceiptState.DELIVERED and delivered.message_id == receipt.message_id
    assert delivered.request_id == 0
    assert receipt.state == ReceiptState.STORED and receipt.stream == direct_stream("alice", "bob")
    assert (deliver.sender, deliver.target, deliver.body, deliver.position) == ("alice", "bob", b"hello", 1)
    assert deliver.message_id == receipt.message_id
    # the client acknowledged automatically, cumulatively
    assert {s: m.acked for s, m in h.engine.sessions[bob.conn].streams.items()} == {"dm:alice,bob": 1}


def test_stream_is_shared_by_both_directions() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    alice.session.send_text("bob", "1")
    bob.session.send_text("alice", "2")
    alice.session.send_text("bob", "3")
    h.pump()
    stored = [r for r in alice.of(Receipt) + bob.of(Receipt) if r.state == ReceiptState.STORED]
    positions = sorted(r.position for r in stored)
    assert positions == [1, 2, 3]
    ids = [r.message_id for r in stored]
    assert len(set(ids)) == 3


def test_offline_recipient_is_stored_and_unknown_is_refused() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    h.drop(bob)
    alice.session.send_text("bob", "are you there")
    alice.session.send_text("zed", "who are you")
    h.pump()
    assert codes(alice) == [ErrorCode.USER_NOT_FOUND]
    (receipt,) = alice.of(Receipt)
    assert receipt.state == ReceiptState.STORED and receipt.detail == "bob is offline"


def test_name_rules_and_a_second_session_of_one_user() -> None:
    h = Harness()
    h.connect("alice")
    again = h.connect("ALICE")  # names fold to lower case: a second session of alice
    assert codes(again) == [] and again.of(LoginOk)[0].user == "alice"
    bad = h.connect("no spaces")
    assert codes(bad) == [ErrorCode.INVALID_NAME]
    assert not bad.closed  # it may try again


@given(st.text(max_size=40))
def test_name_rule_property(name: str) -> None:
    if NAME_RULE.fullmatch(name):
        assert 1 <= len(name) <= 32 and name[0] not in ".-" and name == name.lower()


def test_presence_only_to_subscribers_and_not_to_oneself() -> None:
    h = Harness()
    watcher = h.connect("watcher", presence=True)
    quiet = h.connect("quiet")
    bob = h.connect("bob", presence=True)
    h.drop(bob)
    seen = [(p.user, p.online) for p in watcher.of(Presence)]
    assert seen == [("quiet", 1), ("bob", 1), ("bob", 0)]
    assert not quiet.of(Presence)


def test_who_lists_online_users_sorted() -> None:
    h = Harness()
    carol = h.connect("carol")
    h.connect("alice")
    h.connect()  # connected but not logged in: not listed
    carol.session.who()
    h.pump()
    (reply,) = carol.of(WhoReply)
    assert reply.users == ("alice", "carol")


def test_idle_timeout_closes_after_the_limit_and_not_before() -> None:
    h = Harness(idle_timeout=10.0)
    alice = h.connect("alice")
    h.advance(9.0)
    assert alice.closed is None
    alice.session.ping()  # activity resets the clock
    h.pump()
    h.advance(9.5)
    assert alice.closed is None
    h.advance(2.0)
    assert alice.closed == "idle timeout" and codes(alice) == [ErrorCode.IDLE_TIMEOUT]


def test_no_timer_without_connections() -> None:
    h = Harness(idle_timeout=1.0)
    assert h.engine.next_deadline() is None
    peer = h.connect("alice")
    assert h.engine.next_deadline() is not None
    h.drop(peer)
    h.advance(5)
    assert h.engine.next_deadline() is None


def test_rate_limit_refuses_then_refills() -> None:
    h = Harness(rate=2.0, burst=3)
    peer = h.connect(raw=True)
    h.send_raw(peer, b"".join(encode(Ping(request_id=i)) for i in range(1, 6)))
    assert [type(e).__name__ for e in peer.events[1:]] == ["Pong"] * 3 + ["Error"] * 2
    assert codes(peer) == [ErrorCode.RATE_LIMITED] * 2
    h.now += 1.0  # two more tokens
    h.send_raw(peer, encode(Ping(request_id=9)))
    assert isinstance(peer.events[-1], Pong) and peer.closed is None


def test_bad_frame_answers_then_closes_and_ignores_the_rest() -> None:
    h = Harness()
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Ping(request_id=1)) + encode_frame(0x02, 2, b"\x00\x09ab") + encode(Ping(request_id=3)))
    assert isinstance(peer.events[1], Pong)
    assert codes(peer) == [ErrorCode.BAD_FRAME] and peer.closed == "bad_frame"
    h.send_raw(peer, encode(Ping(request_id=4)))  # after Close: input is ignored
    assert len(peer.events) == 3


def test_oversized_frame_closes() -> None:
    h = Harness(max_frame=2048, max_text=1000)
    peer = h.connect(raw=True)
    h.send_raw(peer, encode_frame(0x06, 1, b"", b"x" * 3000)[:20])
    assert codes(peer) == [ErrorCode.FRAME_TOO_LARGE] and peer.closed == "frame_too_large"


def test_refusals_by_state() -> None:
    h = Harness()
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Login("x", request_id=1)))  # before Hello
    h.send_raw(peer, encode(Hello(request_id=2)) + encode(Who(request_id=3)))  # before Login
    h.send_raw(peer, encode(Hello(request_id=4)))  # Hello twice
    h.account("x")
    h.send_raw(peer, encode(Login("x", PASSWORD, request_id=5)) + encode(Login("y", request_id=6)))  # 6 waits for 5
    h.send_raw(peer, encode(Receipt(1, 1, 1, 1, "s", request_id=7)))  # not a request
    errors = [(e.request_id, e.code) for e in peer.of(Error)]
    assert errors == [
        (1, ErrorCode.BAD_STATE),
        (3, ErrorCode.NOT_LOGGED_IN),
        (4, ErrorCode.BAD_STATE),
        (6, ErrorCode.ALREADY_LOGGED_IN),
        (7, ErrorCode.UNSUPPORTED),
    ]
    assert peer.closed is None


def test_version_mismatch_closes() -> None:
    h = Harness()
    peer = h.connect(raw=True)
    h.send_raw(peer, encode(Hello(version_major=2, request_id=1)))
    assert codes(peer) == [ErrorCode.VERSION_MISMATCH] and peer.closed == "version_mismatch"


def test_ack_beyond_delivery_is_refused() -> None:
    h = Harness()
    alice = h.connect("alice")
    alice.session.request(Ack(5, "dm:alice,bob"))
    h.pump()
    assert codes(alice) == [ErrorCode.BAD_REQUEST]


def test_text_limit() -> None:
    h = Harness(max_text=10, max_frame=2048)
    alice, bob = h.connect("alice"), h.connect("bob")
    alice.session.send_text("bob", "x" * 11)
    alice.session.send_text("bob", "x" * 10)
    h.pump()
    assert codes(alice) == [ErrorCode.TEXT_TOO_LONG] and len(bob.of(Deliver)) == 1


def test_shutdown_says_goodbye_and_closes_everyone() -> None:
    h = Harness()
    peers = [h.connect("alice"), h.connect("bob"), h.connect()]
    h.apply(h.engine.shutdown(h.now))
    for peer in peers:
        assert codes(peer) == [ErrorCode.SHUTTING_DOWN] and peer.closed == "shutdown"


def test_connection_lost_forgets_everything() -> None:
    h = Harness()
    alice = h.connect("alice", presence=True)
    h.drop(alice)
    assert not h.engine.sessions and not h.engine.online and not h.engine.subscribers
    again = h.connect("alice")  # the name is free again
    assert again.of(LoginOk)


def test_pause_and_resume_are_recorded() -> None:
    h = Harness()
    alice = h.connect("alice")
    assert h.engine.pause_writing(alice.conn, h.now) == []
    assert h.engine.sessions[alice.conn].paused
    h.engine.resume_writing(alice.conn, h.now)
    assert not h.engine.sessions[alice.conn].paused


def test_message_ids_grow_even_when_the_clock_does_not() -> None:
    store = MemoryStore()

    def one(time_us: int) -> int:
        msg = NewMessage("s", ("a", "b"), "a", "", 0, 1, "b", 0, time_us, b"")
        (stored,) = store.apply(Batch(messages=[msg])).stored
        assert isinstance(stored, StoredMessage), stored
        return stored.message_id

    assert [one(1000), one(1000), one(1000), one(10)] == [1000, 1001, 1002, 1003]


REQUESTS = [
    Hello(request_id=1),
    Login("zoe", PASSWORD, request_id=2),
    Send(1, 0, 0, "zoe", b"x", request_id=3),
    Ack(1, "dm:a,b", request_id=4),
    Who(request_id=5),
    Ping(request_id=6),
]


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_every_request_in_every_state_is_handled_or_refused(state: State, msg: Message) -> None:
    h = Harness()
    peer = h.connect(raw=True)
    session = h.engine.sessions[peer.conn]
    session.state = state
    if state is State.READY:
        session.user = "yan"
        h.engine.online["yan"] = (session,)
    h.send_raw(peer, encode(msg))
    handled = (state, type(msg)) in TRANSITIONS
    replies = peer.events[1:]
    if state is State.AUTHENTICATING:  # a login is being checked: everything waits for its answer
        assert replies == [] and session.held == [msg]
    elif not handled:
        assert [type(r) for r in replies] == [Error]
    else:
        assert all(not isinstance(r, Error) or r.code != ErrorCode.BAD_STATE for r in replies)


def test_visibility_instructors_shows_students_only_the_instructors() -> None:
    """--visibility instructors: a student sees (Who, presence) only instructors and
    themself; an instructor sees everyone. The default, class, shows everyone to everyone."""
    from csce513msg.hub import Visibility

    for visibility, student_sees in (
        (Visibility.CLASS, ["ann", "ben", "prof"]),
        (Visibility.INSTRUCTORS, ["ann", "prof"]),
    ):
        h = Harness(visibility=visibility)
        h.account("prof", "instructor")
        ann = h.connect("ann", presence=True)
        prof = h.connect("prof", presence=True)
        ben = h.connect("ben", presence=True)
        for peer in (ann, prof):
            peer.session.who()
        h.pump()
        assert list(ann.of(WhoReply)[-1].users) == student_sees
        assert list(prof.of(WhoReply)[-1].users) == ["ann", "ben", "prof"]
        heard = [p.user for p in ann.of(Presence)]
        assert heard == [u for u in ("prof", "ben") if u in student_sees]
        assert [p.user for p in prof.of(Presence)] == ["ben"]
        assert [p.user for p in ben.of(Presence)] == []


def test_visibility_instructors_leaks_no_presence_through_receipts_or_a_role_change() -> None:
    from csce513msg.hub import Visibility

    h = Harness(visibility=Visibility.INSTRUCTORS)
    h.account("prof", "instructor")
    h.account("ben")  # a student, offline
    ann = h.connect("ann", presence=True)
    prof = h.connect("prof")
    ann.session.send_text("ben", "hi")
    prof.session.send_text("ben", "hi")
    h.pump()
    assert [r.detail for r in ann.of(Receipt)] == [""]  # no hint for a student
    assert [r.detail for r in prof.of(Receipt)] == ["ben is offline"]
    h.engine.gate.accounts["prof"] = dataclasses.replace(h.engine.gate.accounts["prof"], role="student")  # demoted
    h.drop(prof)
    assert [(p.user, p.online) for p in ann.of(Presence)] == [("prof", 1), ("prof", 0)]


def test_a_client_is_sent_only_the_fields_of_the_version_it_announced() -> None:
    """LoginOk grew role and waiting in 1.2 and device_token in 1.3: a client that says
    Hello as 1.1 gets the 1.1 LoginOk (its missing fields decode as defaults), a 1.3
    client all of it."""
    h = Harness()
    got = {}
    for user, minor in (("old", 1), ("new", 3)):
        h.account(user)
        peer = h.connect(raw=True)
        h.send_raw(peer, encode(Hello(version_minor=minor, request_id=1)) + encode(Login(user, PASSWORD, request_id=2)))
        h.settle()
        (got[minor],) = peer.of(LoginOk)
    assert (got[1].role, got[1].waiting, got[1].device_token) == ("", 0, "")
    assert got[3].role == "student" and len(got[3].device_token) == 32


def test_a_direct_message_is_encoded_once_for_the_sessions_of_one_minor() -> None:
    """The Deliver of a stored message is encoded from its fields once per minor: bob's two
    sessions that do not coalesce (1.5) are written the same bytes object, his 1.3 session
    bytes of its own."""
    h = Harness(auto_jobs=False)
    alice = h.connect("alice")
    phone, laptop = (h.connect("bob", device=d, coalescing=False) for d in ("phone", "laptop"))
    old = h.connect("bob", device="old", minor=3)
    h.settle()
    alice.session.send_text("bob", "hi")
    h.pump()
    (job,) = h.jobs
    h.jobs = []
    actions = h.engine.job_done(job.job_id, job.job(), h.now)
    data = {a.conn: a.data for a in actions if isinstance(a, Write)}
    assert data[phone.conn] is data[laptop.conn] and data[old.conn] is not data[phone.conn]
    assert data[old.conn] == data[phone.conn]  # Deliver has no field newer than 1.0
    h.apply(actions)
    for bob in (phone, laptop, old):
        (deliver,) = bob.of(Deliver)
        assert (deliver.sender, deliver.target, deliver.body, deliver.request_id) == ("alice", "bob", b"hi", 0)
