"""Groups in the engine (protocol 1.4, docs/groups-plan.md step 3), on both stores.

The peers that ask for groups are ``ClientSession(groups=True)``; a client from before
groups announces 1.3 (``minor=3``); a server from before them is ``max_minor=3``. The
orderings of the plan's "riskiest parts" hold the storage jobs (``auto_jobs=False``) to commit them one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csce513msg.hub import Write
from csce513msg.protocol import (
    Ack,
    ContentType,
    Deliver,
    ErrorCode,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupJoin,
    GroupLeave,
    GroupList,
    GroupListReply,
    GroupMembers,
    GroupMembersReply,
    GroupRemove,
    GroupRename,
    History,
    HistoryEnd,
    LoginOk,
    Receipt,
    ReceiptState,
    Send,
    TargetKind,
    Welcome,
    decode,
    encode,
)
from csce513msg.store import Account, Batch, MemoryStore
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer, codes

USERS = {"alice": "student", "bob": "student", "carol": "student", "dan": "student", "teach": "instructor"}
Hub = Callable[..., Harness]


@pytest.fixture(params=["memory", "sqlite"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    """Makes a Harness on the parametrized store, with the accounts of ``USERS``.
    Every call has the same store: a second call is a restart (SQLite: the file reopened)."""
    accounts = [Account(name, role, PASSWORDS.hash(PASSWORD)) for name, role in USERS.items()]
    memory = MemoryStore(accounts)
    opened: list[SqliteStore] = []

    def make(**config: Any) -> Harness:
        if request.param == "memory":
            return Harness(store=memory, **config)
        for old in opened:
            old.close()
        sqlite = SqliteStore(tmp_path / "db", checkpoint_interval=0)
        if not opened:
            sqlite.apply(Batch(accounts=accounts))
        opened[:] = [sqlite]
        return Harness(store=sqlite, **config)

    yield make
    for sqlite in opened:
        sqlite.close()


def post(peer: Peer, group: str, text: str, cid: int = 0) -> int:
    return peer.session.request(Send(TargetKind.GROUP, ContentType.TEXT, cid, group, text.encode()))


def texts(peer: Peer, live: bool = True) -> list[str]:
    """The group messages (not events) ``peer`` was delivered, live (or as History: ``live`` False)."""
    return [
        d.body.decode() for d in peer.of(Deliver)
        if d.target_kind == TargetKind.GROUP and d.content_type == ContentType.TEXT and bool(d.request_id) != live
    ]  # fmt: skip


def events(peer: Peer) -> list[tuple[int, str, tuple[str, ...]]]:
    """The group events ``peer`` was delivered live: (kind, who acted, users)."""
    found = []
    for d in peer.of(Deliver):
        if d.content_type == ContentType.GROUP_EVENT and not d.request_id:
            event = GroupEvent.decode(d.body)
            found.append((event.kind, d.sender, event.users))
    return found


def info(peer: Peer) -> GroupInfo:
    return peer.of(GroupInfo)[-1]


def group_frames(peer: Peer) -> list[object]:
    """Everything of groups ``peer`` was sent: group frames, group Delivers, receipts about ``g:``."""
    return [
        e for e in peer.events
        if isinstance(e, (GroupInfo, GroupListReply, GroupMembersReply))
        or (isinstance(e, Deliver) and (e.target_kind == TargetKind.GROUP or e.content_type == ContentType.GROUP_EVENT))
        or (isinstance(e, (Receipt, HistoryEnd)) and e.stream.startswith("g:"))
    ]  # fmt: skip


def club(h: Harness, *members: str, name: str = "club", invite_only: int = 0) -> dict[str, Peer]:
    """alice's group ``name`` with ``members`` joined, each online on a 1.4 session."""
    peers = {"alice": h.connect("alice", device="a1", groups=True)}
    peers["alice"].session.request(GroupCreate(name, invite_only))
    h.pump()
    h.settle()
    for user in members:
        peers[user] = h.connect(user, device=user[0] + "1", groups=True)
        h.settle()
        if invite_only:
            peers["alice"].session.request(GroupAdd(name, (user,)))
        else:
            peers[user].session.request(GroupJoin(name))
        h.pump()
        h.settle()
    return peers


# ---- the life of a group ------------------------------------------------------------------


def test_create_join_post_leave(hub: Hub) -> None:
    h = hub()
    alice = h.connect("alice", device="a1", groups=True)
    welcome = alice.of(Welcome)[0]
    assert welcome.version_minor == 4 and "groups" in welcome.features
    alice.session.request(GroupCreate("Club"))
    h.pump()
    assert info(alice) == GroupInfo("g:1", "club", "alice", 0, 1, 1, 1, info(alice).request_id)
    bob = h.connect("bob", device="b1", groups=True)
    carol = h.connect("carol", device="c1", groups=True)
    bob.session.request(GroupJoin("club"))
    h.pump()
    assert (info(bob).position, info(bob).members, info(bob).member) == (2, 2, 1)
    assert events(alice) == [(GroupEventKind.JOINED, "bob", ("bob",))]
    post(bob, "g:1", "hello")
    h.pump()
    receipt = bob.of(Receipt)[0]
    assert (receipt.state, receipt.stream, receipt.position) == (ReceiptState.STORED, "g:1", 3)
    (deliver,) = [d for d in alice.of(Deliver) if d.content_type == ContentType.TEXT]
    assert (deliver.target_kind, deliver.target, deliver.stream, deliver.sender) == (2, "club", "g:1", "bob")
    assert group_frames(carol) == []  # not a member: nothing
    # alice acknowledged (ClientSession does): bob hears "delivered"
    assert [r.state for r in bob.of(Receipt)] == [ReceiptState.STORED, ReceiptState.DELIVERED]
    alice.session.request(GroupList(1))
    carol.session.request(GroupList(0))
    carol.session.request(GroupMembers("g:1"))
    h.pump()
    mine, every = alice.of(GroupListReply)[-1], carol.of(GroupListReply)[-1]
    # every account reads the announcements (g:0, the server's, invite-only): the 5 of USERS
    assert (mine.streams, mine.names, mine.owners) == (("g:0", "g:1"), ("announcements", "club"), ("", "alice"))
    assert (mine.sizes, mine.flags) == ((5, 2), (3, 2))  # flags: bit 0, invite-only; bit 1, a member
    assert (every.streams, every.sizes, every.flags) == (("g:0", "g:1"), (5, 2), (3, 0))
    members = carol.of(GroupMembersReply)[-1]
    assert (members.stream, members.users, members.roles, members.sessions) == (
        "g:1", ("alice", "bob"), ("student", "student"), (1, 1),
    )  # fmt: skip
    bob.session.request(GroupLeave("club"))
    h.pump()
    assert (info(bob).position, info(bob).member, info(bob).members) == (4, 0, 1)
    assert events(alice)[-1] == (GroupEventKind.LEFT, "bob", ("bob",))
    post(bob, "club", "still here?")
    post(alice, "club", "bye bob")
    h.pump()
    assert codes(bob) == [ErrorCode.NOT_A_MEMBER]
    assert texts(bob) == [] and texts(alice) == ["hello"]
    bob.session.request(History(0, 10, TargetKind.GROUP, "club"))  # a former member reads its interval
    h.pump()
    assert texts(bob, live=False) == ["hello"] and bob.of(HistoryEnd)[-1].count == 3  # joined, hello, left


def test_early_checks_answer_with_the_group_codes(hub: Hub) -> None:
    h = hub(max_group_members=3)
    peers = club(h, "bob")
    alice, bob = peers["alice"], peers["bob"]
    carol = h.connect("carol", groups=True)
    teach = h.connect("teach", groups=True)
    h.settle()
    cases: list[tuple[Peer, Any, ErrorCode]] = [
        (carol, GroupJoin("chess"), ErrorCode.GROUP_NOT_FOUND),
        (carol, GroupJoin("g:99"), ErrorCode.GROUP_NOT_FOUND),
        (carol, GroupJoin("g:x"), ErrorCode.GROUP_NOT_FOUND),
        (carol, GroupCreate("no way!"), ErrorCode.INVALID_NAME),
        (carol, GroupCreate("CLUB"), ErrorCode.NAME_TAKEN),
        (carol, Send(TargetKind.GROUP, 0, 0, "club", b"hi"), ErrorCode.NOT_A_MEMBER),
        (carol, GroupLeave("club"), ErrorCode.NOT_A_MEMBER),
        (carol, History(0, 5, TargetKind.GROUP, "club"), ErrorCode.NOT_A_MEMBER),
        (bob, GroupAdd("club", ("carol",)), ErrorCode.FORBIDDEN),
        (bob, GroupRemove("club", ("alice",)), ErrorCode.FORBIDDEN),
        (bob, GroupRename("club", "chess"), ErrorCode.FORBIDDEN),
        (teach, GroupAdd("club", ("carol",)), ErrorCode.NOT_A_MEMBER),  # the store wants a member
        (alice, GroupAdd("club", ("nobody",)), ErrorCode.USER_NOT_FOUND),
        (alice, GroupAdd("club", ()), ErrorCode.BAD_REQUEST),
        (alice, GroupAdd("club", ("carol", "dan")), ErrorCode.GROUP_FULL),
        (alice, Send(TargetKind.GROUP, ContentType.GROUP_EVENT, 0, "club", b"\x01"), ErrorCode.BAD_REQUEST),
        (alice, Send(TargetKind.USER, ContentType.GROUP_EVENT, 0, "bob", b"\x01"), ErrorCode.BAD_REQUEST),
        (alice, Send(7, 0, 0, "club", b"hi"), ErrorCode.BAD_REQUEST),
    ]
    for peer, request, code in cases:
        before = len(codes(peer))
        peer.session.request(request)
        h.pump()
        assert codes(peer)[before:] == [code], (request, code)
    bob.session.request(GroupJoin("CLUB"))  # a member already: no event
    alice.session.request(GroupRename("club", "club"))
    h.pump()
    assert info(bob).position == 0 and info(alice).position == 0
    alice.session.request(GroupCreate("lab", 1))
    h.pump()
    carol.session.request(GroupJoin("lab"))  # invite-only
    teach.session.request(GroupJoin("lab"))  # an instructor may
    h.pump()
    assert codes(carol)[-1] == ErrorCode.FORBIDDEN and info(teach).member == 1
    teach.session.request(GroupRename("lab", "lab-2"))  # and may change it
    teach.session.request(GroupAdd("lab-2", ("carol",)))  # checked before the rename is committed
    h.pump()
    assert codes(teach) == [ErrorCode.NOT_A_MEMBER, ErrorCode.GROUP_NOT_FOUND]
    teach.session.request(GroupAdd("lab-2", ("carol",)))
    h.pump()
    assert (info(teach).name, info(teach).members) == ("lab-2", 3)
    assert h.engine.groups.by_name["lab-2"].stream == "g:2" and "lab" not in h.engine.groups.by_name


def test_a_1_3_session_of_a_member_sees_nothing_of_groups(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob")
    old = h.connect("bob", device="old", minor=3)  # a 1.3 client
    h.settle()
    assert not h.engine.sessions[old.conn].groups
    peers["alice"].session.request(GroupAdd("club", ("carol",)))
    post(peers["alice"], "club", "one")
    post(peers["bob"], "club", "two")  # delivered (alice acks): a receipt to bob's 1.4 session only
    old.session.send_text("alice", "a direct one")
    h.pump()
    h.settle()
    assert texts(peers["bob"]) == ["one"] and [r.state for r in peers["bob"].of(Receipt)][-1] == ReceiptState.DELIVERED
    assert group_frames(old) == []
    h.send_raw(old, encode(GroupList(1), 4))  # a group frame from a 1.3 peer
    h.send_raw(old, encode(Send(TargetKind.GROUP, 0, 0, "club", b"x"), 3))
    h.send_raw(old, encode(History(0, 5, TargetKind.GROUP, "club"), 3))
    assert codes(old) == [ErrorCode.UNSUPPORTED, ErrorCode.BAD_REQUEST, ErrorCode.BAD_REQUEST]
    fresh = h.connect(
        "bob", device="new-old", minor=3
    )  # a new 1.3 device: the DM waits, the group's messages do not count
    h.settle()
    assert fresh.of(LoginOk)[0].waiting == 1 and group_frames(fresh) == []
    again = h.connect("bob", device="new", groups=True)  # a new 1.4 device: the group's recent messages too
    h.settle()
    assert texts(again) == ["one", "two"]
    assert again.of(LoginOk)[0].waiting == 5  # from bob's join: joined, added, one, two; and the DM


def test_a_1_3_server_serves_no_group_to_a_1_4_client() -> None:
    h = Harness(max_minor=3)  # a server from before groups
    alice = h.connect("alice", groups=True)
    welcome = alice.of(Welcome)[0]
    assert welcome.version_minor == 3 and "groups" not in welcome.features
    assert not h.engine.sessions[alice.conn].groups
    h.send_raw(alice, encode(GroupCreate("club"), 4))
    assert codes(alice) == [ErrorCode.UNSUPPORTED]


def test_group_requests_before_the_login_are_refused_by_the_state_table(hub: Hub) -> None:
    h = hub()
    silent = h.connect(None, raw=True)  # no Hello
    h.send_raw(silent, encode(GroupJoin("club"), 4))
    anonymous = h.connect(None, groups=True)  # Hello, no Login
    h.send_raw(anonymous, encode(GroupJoin("club"), 4))
    assert codes(silent) == [ErrorCode.BAD_STATE] and codes(anonymous) == [ErrorCode.NOT_LOGGED_IN]
    plain = h.connect("dan", minor=3)  # 1.4 server, a 1.3 client
    h.send_raw(plain, encode(GroupJoin("club"), 4))
    no_groups = h.connect("carol")  # a 1.4 client that did not ask for groups
    h.send_raw(no_groups, encode(GroupJoin("club")))
    h.send_raw(no_groups, encode(Send(TargetKind.GROUP, 0, 0, "club", b"x")))
    assert codes(plain) == [ErrorCode.UNSUPPORTED]
    assert codes(no_groups) == [ErrorCode.UNSUPPORTED, ErrorCode.BAD_REQUEST]


# ---- fan-out ------------------------------------------------------------------------------


def test_fan_out_encodes_the_deliver_once_and_writes_the_same_bytes_to_every_member(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol", "dan")
    extra = h.connect("bob", device="b2", groups=True)
    h.settle()
    h.auto_jobs = False
    post(peers["alice"], "club", "to all")
    h.pump()
    (job,) = h.jobs
    h.jobs = []
    actions = h.engine.job_done(job.job_id, job.job(), h.now)
    writes = [a for a in actions if isinstance(a, Write) and a.conn != peers["alice"].conn]
    assert {w.conn for w in writes} == {peers["bob"].conn, peers["carol"].conn, peers["dan"].conn, extra.conn}
    assert len({id(w.data) for w in writes}) == 1  # one bytes object, four sessions
    deliver = decode(next(iter(FrameDecoder(4096).feed(writes[0].data))), 4, 4)
    assert isinstance(deliver, Deliver) and deliver.body == b"to all"
    h.apply(actions)


def test_a_full_window_catches_up_from_the_store(hub: Hub) -> None:
    h = hub(window=2)
    peers = club(h, "bob")
    bob = peers["bob"]
    bob.session.data_to_send = lambda: b""  # type: ignore[method-assign]  # bob reads, does not ack yet
    for i in range(5):
        post(peers["alice"], "club", f"m{i}")
    h.pump()
    assert texts(bob) == ["m0", "m1"] and not h.engine.sessions[bob.conn].live
    session = h.engine.sessions[bob.conn]
    h.engine.data_received(bob.conn, encode(Ack(session.delivered["g:1"], "g:1"), 4), h.now)
    del bob.session.data_to_send  # acks again
    h.pump()
    h.settle()
    assert texts(bob) == [f"m{i}" for i in range(5)]


# ---- the riskiest orderings (auto_jobs=False) ----------------------------------------------


def test_a_member_removed_while_a_message_is_in_flight_gets_it_then_the_removal_then_nothing(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    bob_phone = h.connect("bob", device="b2", groups=True)
    h.settle()
    h.auto_jobs = False
    alice, bob = peers["alice"], peers["bob"]
    post(alice, "club", "M")
    h.pump()  # M's batch is in flight
    alice.session.request(GroupRemove("club", ("bob",)))
    h.pump()  # the removal waits for the next batch
    assert len(h.jobs) == 1
    h.settle()
    post(alice, "club", "after")
    h.pump()
    h.settle()
    for peer in (bob, bob_phone):
        assert texts(peer) == ["M"]
        assert events(peer)[-1] == (GroupEventKind.REMOVED, "alice", ("bob",))
    assert texts(peers["carol"]) == ["M", "after"]
    assert info(alice).member == 1 and info(alice).members == 2


def test_a_send_behind_its_sender_s_removal_is_refused_by_the_store(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob")
    h.auto_jobs = False
    alice, bob = peers["alice"], peers["bob"]
    alice.session.request(GroupRemove("club", ("bob",)))
    h.pump()  # in flight
    post(bob, "club", "sneaky")  # the committed cache still says member: it goes to the store
    h.pump()
    h.settle()
    assert codes(bob) == [ErrorCode.NOT_A_MEMBER]
    assert texts(alice) == [] and not bob.of(Receipt)
    alice.session.request(History(0, 10, TargetKind.GROUP, "club"))
    h.pump()
    h.settle()
    assert alice.of(HistoryEnd)[-1].count == 3  # created, joined, removed: nothing stored for bob


def test_a_failed_batch_leaves_the_groups_as_they_were(hub: Hub) -> None:
    h = hub()
    peers = club(h)
    h.auto_jobs = False
    bob = h.connect("bob", groups=True)
    h.settle()
    bob.session.request(GroupJoin("club"))
    h.pump()
    (job,) = h.jobs
    h.jobs = []
    h.apply(h.engine.job_done(job.job_id, RuntimeError("disk gone"), h.now))
    assert codes(bob) == [ErrorCode.STORE_FAILED]
    assert h.engine.groups.by_name["club"].members == {"alice"} and events(peers["alice"]) == []
    bob.session.request(GroupJoin("club"))
    h.pump()
    h.settle()
    assert info(bob).member == 1 and events(peers["alice"]) == [(GroupEventKind.JOINED, "bob", ("bob",))]


def test_two_creates_of_one_name_in_a_batch_the_second_is_name_taken(hub: Hub) -> None:
    h = hub()
    alice = h.connect("alice", groups=True)
    bob = h.connect("bob", groups=True)
    h.settle()
    h.auto_jobs = False
    alice.session.request(GroupCreate("club"))
    bob.session.request(GroupCreate("club"))
    h.pump()
    h.settle()
    assert info(alice).member == 1 and codes(bob) == [ErrorCode.NAME_TAKEN]


def test_leave_then_rejoin_with_a_device_offline_across_both(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob")
    alice, bob = peers["alice"], peers["bob"]
    tablet = h.connect("bob", device="tablet", groups=True)
    h.settle()
    post(alice, "club", "1")  # 3 (1 created, 2 bob joined)
    h.pump()
    h.drop(tablet)  # offline across the leave and the rejoin
    post(alice, "club", "2")  # 4
    bob.session.request(GroupLeave("club"))  # 5
    h.pump()
    post(alice, "club", "gap")  # 6
    h.pump()
    bob.session.request(GroupJoin("club"))  # 7
    h.pump()
    post(alice, "club", "3")  # 8
    h.pump()
    h.settle()
    assert texts(bob) == ["1", "2", "3"]
    tablet = h.connect("bob", device="tablet", groups=True)
    h.settle()
    assert texts(tablet) == ["3"]  # from the current interval's join only
    assert events(tablet) == [(GroupEventKind.JOINED, "bob", ("bob",))]
    pages: list[list[int]] = []
    before = 0
    while True:  # paging never repeats, never shows the gap
        tablet.session.request(History(before, 2, TargetKind.GROUP, "club"))
        h.pump()
        h.settle()
        end = tablet.of(HistoryEnd)[-1]
        if not end.count:
            break
        pages.append([d.position for d in tablet.of(Deliver) if d.request_id == end.request_id])
        before = end.first
    assert [p for page in pages[::-1] for p in page] == [2, 3, 4, 5, 7, 8]  # [J1, L1], [J2, now]: never 6


def test_a_group_and_a_user_both_named_bob(hub: Hub) -> None:
    h = hub()
    peers = club(h, "carol", name="bob")
    alice, carol = peers["alice"], peers["carol"]
    bob = h.connect("bob", groups=True)
    h.settle()
    alice.session.send_text("bob", "to the user")
    post(alice, "bob", "to the group")
    h.pump()
    h.settle()
    assert [d.body for d in bob.of(Deliver)] == [b"to the user"] and bob.of(Deliver)[0].stream == "dm:alice,bob"
    assert [d.body for d in carol.of(Deliver) if d.content_type == 0] == [b"to the group"]
    assert [r.stream for r in alice.of(Receipt) if r.state == ReceiptState.STORED] == ["dm:alice,bob", "g:1"]
    alice.session.request(History(0, 10, TargetKind.USER, "bob"))
    alice.session.request(History(0, 10, TargetKind.GROUP, "bob"))
    h.pump()
    h.settle()
    assert [e.stream for e in alice.of(HistoryEnd)] == ["dm:alice,bob", "g:1"]
    assert texts(alice, live=False) == ["to the group"]


# ---- receipts, restarts --------------------------------------------------------------------


def test_delivered_once_when_every_other_member_has_it_and_never_to_a_sender_who_left(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    alice, carol = peers["alice"], peers["carol"]
    carol.session.data_to_send = lambda: b""  # type: ignore[method-assign]  # carol holds it back
    post(alice, "club", "one")
    h.pump()
    h.settle()
    delivered = [r for r in alice.of(Receipt) if r.state == ReceiptState.DELIVERED]
    assert delivered == []
    del carol.session.data_to_send
    h.pump()
    h.settle()
    assert len([r for r in alice.of(Receipt) if r.state == ReceiptState.DELIVERED]) == 1
    carol.session.data_to_send = lambda: b""  # type: ignore[method-assign]
    post(alice, "club", "two")
    h.pump()
    alice.session.request(GroupLeave("club"))
    h.pump()
    h.settle()
    del carol.session.data_to_send
    h.pump()
    h.settle()
    assert len([r for r in alice.of(Receipt) if r.state == ReceiptState.DELIVERED]) == 1  # alice left: dropped


def test_groups_survive_a_restart(hub: Hub) -> None:
    h = hub()
    club(h, "bob")
    h.settle()
    again = hub()  # the same store, a new engine
    carol = again.connect("carol", groups=True)
    again.settle()
    carol.session.request(GroupJoin("club"))
    again.pump()
    again.settle()
    carol.session.request(GroupMembers("g:1"))  # answered from the committed groups: after the join
    again.pump()
    assert (info(carol).position, info(carol).members) == (3, 3)
    assert carol.of(GroupMembersReply)[-1].users == ("alice", "bob", "carol")
