"""The classroom in the engine (docs/groups-plan.md step 6): the announcements g:0, their
confirmations, office hours' queue; both stores, through the Harness (no sockets)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from csce513msg.protocol import (
    Confirm,
    Confirmations,
    Confirmed,
    ContentType,
    Deliver,
    ErrorCode,
    Feature,
    GroupCreate,
    GroupDelete,
    GroupJoin,
    GroupLeave,
    GroupMembers,
    GroupMembersReply,
    GroupMute,
    GroupRename,
    GroupSlow,
    Hand,
    HandOp,
    HandPlace,
    HandQueue,
    HandQueueReply,
    Hello,
    LoginOk,
    QueueOp,
    Receipt,
    Redact,
    Register,
    Send,
    TargetKind,
    Who,
    WhoReply,
    encode,
)
from csce513msg.store import Account, Batch, MemoryStore
from csce513msg.store.interface import Hand as StoredHand
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer, batch_of, codes
from tests.hub.test_groups import USERS, Hub, hub

__all__ = ["hub"]  # the fixture (both stores, the USERS accounts: teach is the instructor)


def announce(peer: Peer, text: str, asks: bool = False, target: str = "announcements") -> int:
    kind = ContentType.ASKS_CONFIRMATION if asks else ContentType.TEXT
    return peer.session.request(Send(TargetKind.GROUP, kind, 0, target, text.encode()))


def announcements(peer: Peer) -> list[tuple[int, str]]:
    return [(d.content_type, d.body.decode()) for d in peer.of(Deliver) if d.stream == "g:0"]


def lists(peer: Peer) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    c = peer.of(Confirmations)[-1]
    return (c.position, c.confirmed, c.pending)


def place(peer: Peer) -> tuple[int, int, str, str]:
    p = peer.of(HandPlace)[-1]
    return (p.place, p.size, p.question, p.taken_by)


def test_staff_announce_everyone_reads_students_may_not_post_or_change_it(hub: Hub) -> None:
    h = hub(self_register=True)
    teach, bob = h.connect("teach", groups=True), h.connect("bob", groups=True)
    announce(teach, "exam friday", asks=True)
    announce(teach, "room 101")
    h.pump()
    assert [r.position for r in teach.of(Receipt)] == [1, 2]
    assert announcements(bob) == [(4, "exam friday"), (0, "room 101")]
    announce(bob, "hi all")
    for request in (GroupJoin("announcements"), GroupLeave("g:0"), GroupRename("g:0", "news")):
        bob.session.request(request)
    h.pump()
    assert codes(bob) == [ErrorCode.FORBIDDEN] * 4
    announce(teach, "not here", asks=True, target="bob")  # content type 4 to a user: no
    teach.session.request(Send(TargetKind.USER, ContentType.ASKS_CONFIRMATION, 0, "bob", b"x"))
    h.pump()
    assert codes(teach) == [ErrorCode.GROUP_NOT_FOUND, ErrorCode.BAD_REQUEST]  # no group bob; a user: no
    erin = h.connect(raw=True)  # an account made after them (registered) reads them all at its first login
    hello = Hello(features=(Feature.GROUPS.value,), request_id=1)
    h.send_raw(erin, encode(hello) + encode(Register("erin", PASSWORD, "dev", request_id=2)))
    h.settle()
    assert erin.of(LoginOk) and announcements(erin) == [(4, "exam friday"), (0, "room 101")]
    assert "erin" in h.engine.groups.by_id["g:0"].members


def test_confirmations_once_each_then_the_staff_list_survives_a_restart(hub: Hub) -> None:
    h = hub()
    teach, bob, carol = (h.connect(u, groups=True) for u in ("teach", "bob", "carol"))
    announce(teach, "read the syllabus", asks=True)
    h.pump()
    bob.session.request(Confirm(1))
    bob.session.request(Confirm(1))  # twice: the same answer, one record
    carol.session.request(Confirm(2))  # no announcement there
    carol.session.request(Confirmed(0))  # a student may not see who confirmed
    h.pump()
    teach.session.request(Confirmed(0))
    h.pump()
    assert [(c.position, c.confirmed, c.pending) for c in bob.of(Confirmations)] == [(1, ("bob",), ())] * 2
    assert codes(carol) == [ErrorCode.NO_SUCH_MESSAGE, ErrorCode.FORBIDDEN]
    assert lists(teach) == (1, ("bob",), ("alice", "carol", "dan"))  # pending: not staff (teach)
    h2 = hub()  # a restart on the same store
    teach2 = h2.connect("teach", groups=True, device="2")
    teach2.session.request(Confirmed(1))
    h2.pump()
    assert lists(teach2) == (1, ("bob",), ("alice", "carol", "dan"))


def test_the_queue_in_raise_order_places_pushed_take_names_the_student(hub: Hub) -> None:
    h = hub()
    teach, bob, carol, dan = (h.connect(u, groups=True) for u in ("teach", "bob", "carol", "dan"))
    bob.session.request(Hand(HandOp.RAISE, "q bob"))
    h.pump()
    h.now += 5
    carol.session.request(Hand(HandOp.RAISE, "q carol"))
    h.pump()
    h.now += 5
    dan.session.request(Hand(HandOp.RAISE, "q dan"))
    bob.session.request(Hand(HandOp.RAISE, "q bob, better"))  # again: the same place, a new question
    teach.session.request(Hand(HandOp.RAISE, "staff?"))
    h.pump()
    assert codes(teach) == [ErrorCode.FORBIDDEN]
    assert [(p.place, p.size, p.request_id != 0) for p in carol.of(HandPlace)] == [(2, 2, True)]
    assert (bob.of(HandPlace)[-1].place, bob.of(HandPlace)[-1].question) == (1, "q bob, better")
    pushed = teach.of(HandQueueReply)[-1]  # every change, to staff
    assert (pushed.taken, pushed.users, pushed.questions) == (
        "",
        ("bob", "carol", "dan"),
        ("q bob, better", "q carol", "q dan"),
    )
    assert (pushed.waited, pushed.request_id) == ((10, 5, 0), 0)
    bob.session.request(Hand(HandOp.LOWER))
    h.pump()
    assert [(p.place, p.request_id == 0) for p in carol.of(HandPlace)][-1] == (1, True)  # moved up: pushed
    assert [(p.place, p.request_id == 0) for p in dan.of(HandPlace)][-1] == (2, True)
    teach.session.request(HandQueue(QueueOp.TAKE))
    carol.session.request(HandQueue(QueueOp.LIST))  # students may not see the queue
    h.pump()
    taken = teach.of(HandQueueReply)[-1]
    assert (taken.taken, taken.users, taken.request_id != 0) == ("carol", ("dan",), True)
    assert place(carol) == (0, 1, "q carol", "teach")
    assert place(dan) == (1, 1, "q dan", "")
    assert codes(carol) == [ErrorCode.FORBIDDEN]
    h2 = hub()  # the queue survives a restart
    assert list(h2.engine.classroom.hands.values()) == [StoredHand("dan", "q dan", h.engine.wall_us(1010.0))]


def test_a_failed_batch_answers_store_failed_and_leaves_the_queue(hub: Hub) -> None:
    h = hub(auto_jobs=False)
    bob = h.connect("bob", groups=True)
    h.settle()
    bob.session.request(Hand(HandOp.RAISE, "q"))
    h.pump()
    (job,) = h.jobs
    h.jobs = []
    assert [n.op for n in batch_of(job).notes] == ["raise"]
    h.apply(h.engine.job_done(job.job_id, RuntimeError("disk on fire"), h.now))
    assert codes(bob) == [ErrorCode.STORE_FAILED]
    assert h.engine.classroom.hands == {}


def test_lists_longer_than_one_header_holds_are_cut_and_the_counts_still_tell() -> None:
    """A reply without a body must fit one header (65,535 bytes): in a class of 2,001 accounts
    with 32-character names, GroupMembers of the announcements, Confirmed, the queue and Who
    are cut (by name; the confirmed first; the first hands), and nobody loses a connection."""
    hashed = PASSWORDS.hash(PASSWORD)
    students = [f"{i:04d}" + "s" * 28 for i in range(2000)]
    accounts = [Account("teach", "instructor", hashed)] + [Account(s, "student", hashed) for s in students]
    h = Harness(MemoryStore(accounts), burst=5000)
    teach = h.connect("teach", groups=True)
    announce(teach, "read chapter 3", asks=True)
    h.pump()
    everyone = [h.connect(s, groups=True) for s in students]  # online: Who lists 2,001
    first = everyone[:400]
    for peer in first[:3]:
        peer.session.request(Confirm(1))
    for peer in first:
        peer.session.request(Hand(HandOp.RAISE, "q" * 200))
    h.pump()
    teach.session.request(GroupMembers("announcements"))
    teach.session.request(Confirmed(0))
    teach.session.request(HandQueue(QueueOp.LIST))
    teach.session.request(Who())
    h.pump()
    assert codes(teach) == [] and all(p.of(HandPlace) for p in first)
    members = teach.of(GroupMembersReply)[-1]
    assert (
        1000 < len(members.users) < 2001 and members.users == tuple(sorted(["teach", *students]))[: len(members.users)]
    )
    position, confirmed, pending = lists(teach)
    assert (position, confirmed) == (1, tuple(students[:3])) and 1000 < len(pending) < 1997
    queue = [r for r in teach.of(HandQueueReply) if r.request_id][-1]
    assert 100 < len(queue.users) < 400 and queue.users == tuple(students[: len(queue.users)])
    assert place(first[-1])[:2] == (400, 400)  # the student's place counts every hand
    who = teach.of(WhoReply)[-1]
    assert 1000 < len(who.users) < 2001 and who.users == tuple(sorted(["teach", *students]))[: len(who.users)]
    assert len(who.sessions) == len(who.roles) == len(who.users)
    for reply in (members, teach.of(Confirmations)[-1], queue, who):
        assert len(encode(reply)) - 12 <= 0xFFFF  # the header: hlen is a u16


def test_a_removed_account_leaves_the_queue_and_a_take_names_its_student(tmp_path: Path) -> None:
    """`msgsrv user remove` deletes the hand in the database (a trigger): the engine's queue
    drops it at the poll, and the next take is the next student's, in both (the take's note
    names the student, so the store never picks another)."""
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    store.apply(Batch(accounts=[Account(n, r, PASSWORDS.hash(PASSWORD)) for n, r in USERS.items()]))
    h = Harness(store=store)
    alice, bob, teach = (h.connect(u, groups=True) for u in ("alice", "bob", "teach"))
    alice.session.request(Hand(HandOp.RAISE, "q1"))
    h.pump()
    h.advance(1)
    bob.session.request(Hand(HandOp.RAISE, "q2"))
    h.pump()
    other = sqlite3.connect(tmp_path / "db")
    other.execute("DELETE FROM users WHERE name = 'alice'")  # as `msgsrv user remove alice`
    other.commit()
    h.advance(5)  # the accounts poll
    assert list(h.engine.classroom.hands) == ["bob"] and place(bob)[:2] == (1, 1)  # pushed: bob moved up
    teach.session.request(HandQueue(QueueOp.TAKE))
    h.pump()
    assert teach.of(HandQueueReply)[-1].taken == "bob" and place(bob) == (0, 0, "q2", "teach")
    assert other.execute("SELECT user FROM hands").fetchall() == []


def test_a_queued_group_add_knows_a_user_made_in_the_same_poll(tmp_path: Path) -> None:
    """`msgsrv user add newbie`, then `msgsrv group add cs513 newbie --as teach`, both before
    the server's next poll: the engine learns the account before it checks the change."""
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    store.apply(Batch(accounts=[Account(n, r, PASSWORDS.hash(PASSWORD)) for n, r in USERS.items()]))
    h = Harness(store=store)
    teach = h.connect("teach", groups=True)
    teach.session.request(GroupCreate("cs513"))
    h.pump()
    other = sqlite3.connect(tmp_path / "db", isolation_level=None)
    other.execute("INSERT INTO users (name, created_us, role, password) VALUES ('newbie', 1, 'student', '')")
    other.execute("INSERT INTO group_queue (op, grp, users, actor, queued_us) VALUES (4, 'g:1', 'newbie', 'teach', 1)")
    h.advance(5)
    assert other.execute("SELECT outcome FROM group_queue").fetchall() == [("done: g:1 position 2",)]


def test_nobody_moderates_the_announcements_and_only_staff_list_their_members(hub: Hub) -> None:
    """The announcements are every account's: no deletion, mute, slow mode or removal there
    (FORBIDDEN early, with words, not the store's bad_change); their member list is every
    account with its role, so only staff get it."""
    h = hub()
    teach, bob = h.connect("teach", groups=True), h.connect("bob", groups=True)
    announce(teach, "exam friday")
    h.pump()
    for request in (GroupDelete("g:0"), GroupMute("announcements", ("bob",), 60), GroupSlow("g:0", 30),
                    Redact("g:0", 1)):  # fmt: skip
        teach.session.request(request)
    teach.session.request(GroupMembers("announcements"))
    bob.session.request(GroupMembers("announcements"))
    h.pump()
    assert codes(teach) == [ErrorCode.FORBIDDEN] * 4 and codes(bob) == [ErrorCode.FORBIDDEN]
    assert "teach" in teach.of(GroupMembersReply)[-1].users and not bob.of(GroupMembersReply)
