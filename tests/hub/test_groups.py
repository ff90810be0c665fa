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
    Error,
    ErrorCode,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupDelete,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupJoin,
    GroupLeave,
    GroupList,
    GroupListReply,
    GroupMembers,
    GroupMembersReply,
    GroupMute,
    GroupRemove,
    GroupRename,
    GroupSlow,
    History,
    HistoryEnd,
    LoginOk,
    Message,
    Receipt,
    ReceiptState,
    Redact,
    Send,
    TargetKind,
    Welcome,
    decode,
    encode,
)
from csce513msg.store import Account, Batch, MemoryStore
from csce513msg.store.interface import ANNOUNCEMENTS
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer, codes

USERS = {
    "alice": "student", "bob": "student", "carol": "student", "dan": "student",
    "teach": "instructor", "ta": "assistant",
}  # fmt: skip
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
    assert welcome.version_minor >= 4 and "groups" in welcome.features
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
    # every account reads the announcements (g:0, the server's, invite-only): all of USERS
    assert (mine.streams, mine.names, mine.owners) == (("g:0", "g:1"), ("announcements", "club"), ("", "alice"))
    assert (mine.sizes, mine.flags) == ((len(USERS), 2), (3, 2))  # flags: bit 0, invite-only; bit 1, a member
    assert (every.streams, every.sizes, every.flags) == (("g:0", "g:1"), (len(USERS), 2), (3, 0))
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
        (teach, GroupAdd("club", ("carol", "dan")), ErrorCode.GROUP_FULL),  # staff need not be members (step 6)
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
    assert codes(teach) == [ErrorCode.GROUP_FULL, ErrorCode.GROUP_NOT_FOUND]
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


def test_a_group_list_too_long_for_one_header_is_cut_by_name_and_paged_with_after(hub: Hub) -> None:
    h = hub(burst=5000)
    alice = h.connect("alice", device="a1", groups=True)
    bob = h.connect("bob", device="b1", groups=True)
    names = [f"{i:04d}-" + "x" * 27 for i in range(1400)]  # 32 characters: ~57 header bytes a group
    for name in names:
        alice.session.request(GroupCreate(name))
    h.pump()
    h.settle()
    assert len(alice.of(GroupInfo)) == len(names) and codes(alice) == []
    bob.session.request(GroupJoin(names[-1]))
    h.pump()
    want = [*names, "announcements"]  # by name: digits before letters; everyone reads g:0
    for mine, who in ((0, bob), (1, alice)):
        pages: list[GroupListReply] = []
        after = ""
        for _ in range(len(names)):  # bounded: a page holds at least one group
            who.session.request(GroupList(mine, after))
            h.pump()
            pages.append(who.of(GroupListReply)[-1])
            if not pages[-1].flags or not pages[-1].flags[-1] & 4:
                break
            after = pages[-1].names[-1]
        assert len(pages) == 2  # 1400 groups of 57 bytes: over 65,535, under twice that
        assert [n for p in pages for n in p.names] == want  # by name, each once, none missed
        assert all(len(encode(p)) - 12 <= 0xFFFF for p in pages)  # each header fits its u16 length
        assert [f & 4 for p in pages for f in p.flags].count(4) == 1  # the cut: the first page's last
    every = [f for p in bob.of(GroupListReply) for f in p.flags]
    assert every.count(2) + every.count(6) == 1  # bob is a member of the last one only
    bob.session.request(GroupList(1))  # bob's own groups: one page, not cut
    h.pump()
    assert bob.of(GroupListReply)[-1].names == (names[-1], "announcements")
    assert bob.of(GroupListReply)[-1].flags == (2, 3)  # a member; and of the invite-only announcements


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
    h.engine.data_received(bob.conn, encode(Ack(session.streams["g:1"].delivered, "g:1"), 4), h.now)
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


# ---- the classroom's moderation (docs/groups-plan.md step 6) ------------------------------------


def error_of(peer: Peer) -> Error:
    return peer.of(Error)[-1]


def removed_positions(peer: Peer) -> list[tuple[int, int, str, tuple[str, ...], int]]:
    """The moderation events ``peer`` was delivered live: (kind, its position, who acted, users, value)."""
    found = []
    for d in peer.of(Deliver):
        if d.content_type == ContentType.GROUP_EVENT and not d.request_id:
            e = GroupEvent.decode(d.body)
            if e.kind >= GroupEventKind.DELETED:
                found.append((e.kind, d.position, d.sender, e.users, e.value))
    return found


def test_a_student_attempting_each_moderation_action_is_forbidden(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    alice, bob = peers["alice"], peers["bob"]
    post(alice, "club", "alice's")  # 4
    h.pump()
    h.settle()
    attempts: list[tuple[Message, str]] = [
        (GroupDelete("club"), "delete it"),
        (GroupMute("club", ("carol",), 60), "mute its members"),
        (GroupMute("club", ("carol",), 0), "mute its members"),
        (GroupSlow("club", 10), "set its slow mode"),
        (GroupAdd("club", ("dan",)), "add, remove or rename"),
        (GroupRemove("club", ("carol",)), "add, remove or rename"),
        (GroupRename("club", "mine"), "add, remove or rename"),
        (Redact("club", 4), "remove a message"),  # another's: the store refuses it at its turn
    ]
    for request, rule in attempts:
        before = len(codes(bob))
        bob.session.request(request)
        h.pump()
        h.settle()
        assert codes(bob)[before:] == [ErrorCode.FORBIDDEN], request
        assert rule in error_of(bob).message and "staff" in error_of(bob).message
    assert removed_positions(peers["carol"]) == [] and h.engine.groups.by_name["club"].members == {
        "alice", "bob", "carol"
    }  # fmt: skip


def test_mute_refuses_a_post_with_the_time_left_until_unmuted_or_over(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
    alice.session.request(GroupMute("club", ("bob",), 60))  # the owner
    h.pump()
    h.settle()
    position = info(alice).position
    assert removed_positions(carol)[-1] == (GroupEventKind.MUTED, position, "alice", ("bob",), 60)
    post(bob, "club", "hello?")
    h.pump()
    muted = error_of(bob)
    assert muted.code == ErrorCode.MUTED and 0 < muted.retry_after_ms <= 60_000
    for who in ("alice", "teach", "ta"):  # the owner and staff cannot be muted
        alice.session.request(GroupMute("club", (who,), 60))
        h.pump()
        assert codes(alice)[-1] == ErrorCode.FORBIDDEN and "cannot be muted" in error_of(alice).message
    alice.session.request(GroupMute("club", ("dan",), 60))  # not a member
    h.pump()
    assert codes(alice)[-1] == ErrorCode.BAD_REQUEST
    teach = h.connect("teach", groups=True)  # staff, not a member: unmutes
    teach.session.request(GroupMute("club", ("bob",), 0))
    h.pump()
    h.settle()
    assert removed_positions(carol)[-1][:4] == (GroupEventKind.UNMUTED, info(teach).position, "teach", ("bob",))
    post(bob, "club", "back")
    h.pump()
    h.settle()
    assert texts(carol)[-1] == "back"
    teach.session.request(GroupMute("club", ("bob",), 30))
    h.pump()
    h.settle()
    h = hub()  # a restart: the mute was stored and is loaded
    bob = h.connect("bob", device="b1", groups=True)
    h.settle()
    post(bob, "club", "still?")
    h.pump()
    assert codes(bob)[-1] == ErrorCode.MUTED
    h.advance(31)  # over: a post goes through
    post(bob, "club", "free")
    h.pump()
    h.settle()
    assert bob.of(Receipt)[-1].state == ReceiptState.STORED


def test_slow_mode_spaces_a_student_s_posts_and_exempts_staff_and_the_owner(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
    ta = h.connect("ta", groups=True)
    ta.session.request(GroupSlow("club", 30))  # an assistant, not a member
    h.pump()
    h.settle()
    assert removed_positions(carol)[-1] == (GroupEventKind.SLOW, info(ta).position, "ta", (), 30)
    post(bob, "club", "one")
    h.pump()
    h.advance(10)
    post(bob, "club", "two")
    h.pump()
    slow = error_of(bob)
    assert slow.code == ErrorCode.SLOW_MODE and 19_000 <= slow.retry_after_ms <= 20_000
    post(carol, "club", "carol's first")  # per student
    post(alice, "club", "owner 1")
    post(alice, "club", "owner 2")  # the owner is exempt
    h.pump()
    h.settle()
    assert codes(alice) == [] and codes(carol) == []
    h.advance(20)
    post(bob, "club", "three")
    h.pump()
    h.settle()
    assert texts(carol)[-1] == "three" and len(codes(bob)) == 1
    alice.session.request(GroupSlow("club", 0))
    h.pump()
    h.settle()
    post(bob, "club", "four")
    post(bob, "club", "five")
    h.pump()
    h.settle()
    assert texts(carol)[-2:] == ["four", "five"] and len(codes(bob)) == 1


def test_a_redaction_leaves_a_tombstone_that_history_shows(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob", "carol")
    alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]
    post(bob, "club", "oops")  # 4
    post(carol, "club", "carol's")  # 5
    h.pump()
    h.settle()
    bob.session.request(Redact("club", 4))  # its sender
    h.pump()
    h.settle()
    removal = info(bob).position
    assert removed_positions(carol)[-1] == (GroupEventKind.REMOVED_MESSAGE, removal, "bob", ("bob",), 4)
    for peer, position, code in [
        (alice, 4, ErrorCode.NO_SUCH_MESSAGE),  # removed already
        (alice, 2, ErrorCode.NO_SUCH_MESSAGE),  # an event
        (alice, 99, ErrorCode.NO_SUCH_MESSAGE),
        (alice, 0, ErrorCode.NO_SUCH_MESSAGE),
    ]:
        peer.session.request(Redact("club", position))
        h.pump()
        h.settle()
        assert codes(peer)[-1] == code, position
    alice.session.request(Redact("club", 5))  # the owner removes another's
    h.pump()
    h.settle()
    dan = h.connect("dan", groups=True)
    dan.session.request(Redact("club", 3))
    h.pump()
    assert codes(dan) == [ErrorCode.NOT_A_MEMBER]
    carol.session.request(History(0, 50, TargetKind.GROUP, "club"))
    h.pump()
    h.settle()
    page = {d.position: d for d in carol.of(Deliver) if d.request_id}
    for position, author in [(4, "bob"), (5, "carol")]:
        tomb = page[position]
        assert (tomb.content_type, tomb.sender) == (ContentType.GROUP_EVENT, author)
        assert GroupEvent.decode(tomb.body) == GroupEvent(GroupEventKind.REMOVED_MESSAGE, (author,), "club", position)
    assert not any(b"oops" in d.body or b"carol's" in d.body for d in page.values())


def test_deleting_a_group_tells_the_members_then_it_is_gone_and_its_name_free(hub: Hub) -> None:
    h = hub()
    peers = club(h, "bob")
    alice, bob = peers["alice"], peers["bob"]
    teach = h.connect("teach", groups=True)
    teach.session.request(GroupDelete("club"))  # staff, not a member
    h.pump()
    h.settle()
    assert (info(teach).members, info(teach).member) == (0, 0)
    assert removed_positions(bob)[-1][:3] == (GroupEventKind.DELETED, info(teach).position, "teach")
    assert removed_positions(alice)[-1][0] == GroupEventKind.DELETED
    groups = h.engine.groups
    assert "club" not in groups.by_name and set(groups.by_id) == {ANNOUNCEMENTS}  # only the server's group
    assert all(streams == {ANNOUNCEMENTS} for streams in groups.of_user.values())
    gone: list[Send | History] = [Send(TargetKind.GROUP, 0, 0, "club", b"hi"), History(0, 5, TargetKind.GROUP, "club")]
    for request in gone:
        bob.session.request(request)
        h.pump()
        assert codes(bob)[-1] == ErrorCode.GROUP_NOT_FOUND
    bob.session.request(GroupCreate("club"))  # the name is free; a new stream
    h.pump()
    h.settle()
    assert info(bob).stream == "g:2" and info(bob).owner == "bob"
    bob.session.request(GroupDelete("club"))  # the owner
    h.pump()
    h.settle()
    assert info(bob).member == 0
    h = hub()  # a restart: neither comes back (the announcements are the server's)
    assert set(h.engine.groups.by_id) == {ANNOUNCEMENTS}
