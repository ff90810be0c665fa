"""Conformance: groups (protocol 1.4, docs/protocol.md section 11), through the client API.

Each member's sessions are clients that ask for groups (``groups=True``) on a device of
their own (``device_id``): a group message skips only the device that sent it.

To show that something did *not* arrive, a test sends a direct message after it, to the
same sessions, and waits for that: a session is sent what is stored in the order it is
stored, so whatever came before the marker has come.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import time
from collections.abc import Callable

import pytest

from csce513msg.client import Client, ClientSession, ServerError
from csce513msg.protocol import (
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupListReply,
    GroupMembersReply,
    HistoryEnd,
    LoginOk,
    Message,
    Ping,
    Receipt,
    ReceiptState,
    TargetKind,
)
from tests.conformance.wire import PASSWORD, connect, next_of
from tests.fixtures import Names, Server

GROUP = TargetKind.GROUP
_markers = itertools.count(1)


def member(server: Server, user: str, device: str) -> Client:
    """``user`` on ``device``, a client of 1.4 that asks for groups."""
    return connect(server, user, device_id=device, groups=True)


def posts(msgs: list[Message] | list[Deliver]) -> list[str]:
    """The group messages (not events) among ``msgs``, as text."""
    return [
        m.body.decode() for m in msgs
        if isinstance(m, Deliver) and m.target_kind == GROUP and m.content_type == ContentType.TEXT
    ]  # fmt: skip


def events(msgs: list[Message] | list[Deliver]) -> list[tuple[int, str, tuple[str, ...]]]:
    """The group events among ``msgs``: (kind, who acted, users)."""
    found = []
    for m in msgs:
        if isinstance(m, Deliver) and m.content_type == ContentType.GROUP_EVENT:
            event = GroupEvent.decode(m.body)
            found.append((event.kind, m.sender, event.users))
    return found


def mark(sender: Client, user: str) -> str:
    """Send ``user`` a direct message no one was sent before; return its text."""
    text = f"marker {next(_markers)}"
    sender.send_text(user, text)
    return text


def until(client: Client, marker: str) -> list[Message]:
    """Everything ``client`` was sent before the direct message ``marker`` (taken out of its inbox)."""
    next_of(client, Deliver, lambda d: d.body == marker.encode())
    taken = list(client.inbox)
    client.inbox.clear()
    return taken


def group_deliveries(client: Client, count: int) -> list[Deliver]:
    """Wait for ``count`` live group messages (not events) and return them in order."""
    return [
        next_of(client, Deliver, lambda d: d.target_kind == GROUP and d.content_type == ContentType.TEXT)
        for _ in range(count)
    ]


def whole_history(client: Client, group: str, limit: int = 3) -> list[Deliver]:
    """Every message of ``group`` that ``client`` may read, oldest first, paged ``limit`` at a time."""
    pages: list[list[Deliver]] = []
    before = 0
    while True:
        page, end = client.history(group, limit, before, kind=GROUP)
        assert isinstance(end, HistoryEnd) and end.count == len(page) <= limit
        if not page:
            break
        assert all(d.request_id and d.stream == end.stream for d in page)
        assert end.first == page[0].position
        pages.append(page)
        before = end.first
    found = [d for page in reversed(pages) for d in page]
    positions = [d.position for d in found]
    assert positions == sorted(set(positions)), positions  # paging never repeats
    return found


def test_the_membership_life_cycle(server: Server, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    club = names("club")
    a, b, c = member(server, alice, "a1"), member(server, bob, "b1"), member(server, carol, "c1")
    assert a.session.welcome is not None and a.session.welcome.version_minor >= 4
    assert "groups" in a.session.welcome.features and a.session.has_groups
    made = a.group_create(club.upper())  # names fold to lower case
    assert (made.name, made.owner, made.invite_only, made.members, made.member) == (club, alice, 0, 1, 1)
    assert made.stream.startswith("g:") and made.position == 1
    joined = b.group_join(club)
    assert (joined.stream, joined.members, joined.member, joined.position) == (made.stream, 2, 1, 2)
    assert b.group_join(made.stream).position == 0  # by its stream; a member already: no event
    assert next_of(a, Deliver).content_type == ContentType.GROUP_EVENT
    added = a.group_add(club, [carol])
    assert (added.members, added.position) == (3, 3)
    renamed = a.group_rename(club, names("chess"))
    assert renamed.stream == made.stream and renamed.position == 4
    mine = c.group_list()
    assert isinstance(mine, GroupListReply) and mine.streams[0] == "g:0"  # every account reads the announcements
    assert mine.streams[1:] == (made.stream,) and (mine.names[0], mine.owners[0], mine.flags[0]) == (
        "announcements",
        "",
        3,
    )
    assert (mine.names[1:], mine.owners[1:], mine.sizes[1:], mine.flags[1:]) == ((renamed.name,), (alice,), (3,), (2,))
    everyone = b.group_list(mine=False)
    assert made.stream in everyone.streams
    listed = b.group_members(renamed.name)
    assert isinstance(listed, GroupMembersReply) and listed.stream == made.stream
    assert sorted(listed.users) == sorted([alice, bob, carol]) and set(listed.roles) == {"student"}
    assert all(n >= 1 for n in listed.sessions)  # each is online
    left = b.group_leave(made.stream)
    assert (left.members, left.member, left.position) == (2, 0, 5)
    removed = a.group_remove(renamed.name, [carol])
    assert (removed.members, removed.position) == (1, 6)
    assert c.group_list().streams == ("g:0",) and b.group_list().streams == ("g:0",)  # the announcements only
    kinds = [(kind, users) for kind, _, users in events(until(b, mark(a, bob)))]
    # bob's session that made the join and the leave has their GroupInfo, not their events
    assert kinds == [(GroupEventKind.ADDED, (carol,)), (GroupEventKind.RENAMED, ())]
    assert [kind for kind, _, _ in events(until(c, mark(a, carol)))] == [GroupEventKind.ADDED,
        GroupEventKind.RENAMED, GroupEventKind.LEFT, GroupEventKind.REMOVED]  # fmt: skip
    for client in (a, b, c):
        client.close()


def test_fan_out_to_online_and_offline_members_with_two_devices_each(server: Server, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    club = names("club")
    a1, a2 = member(server, alice, "a1"), member(server, alice, "a2")
    b1, b2 = member(server, bob, "b1"), member(server, bob, "b2")
    c1, c2 = member(server, carol, "c1"), member(server, carol, "c2")
    a1.group_create(club)
    b1.group_join(club)
    c1.group_join(club)
    for c in (c1, c2):  # carol's devices have what came so far (acknowledged), then go away
        c.call(Ping())
        c.close()
    sent = []
    for i in range(6):  # two senders, interleaved
        sender = (a1, b2)[i % 2]
        receipt = sender.send_text(club, f"m{i}", kind=GROUP)
        assert receipt.state == ReceiptState.STORED and receipt.stream.startswith("g:")
        sent.append(receipt)
    texts = [f"m{i}" for i in range(6)]
    assert [r.position for r in sent] == sorted(r.position for r in sent)
    assert posts(group_deliveries(a2, 6)) == texts  # the sender's other device
    at_b1 = group_deliveries(b1, 6)
    assert posts(at_b1) == texts
    assert [(d.message_id, d.position, d.stream) for d in at_b1] == [(r.message_id, r.position, r.stream) for r in sent]
    assert posts(group_deliveries(a1, 3)) == ["m1", "m3", "m5"]  # each has the other's, not its own
    assert posts(group_deliveries(b2, 3)) == ["m0", "m2", "m4"]
    c1, c2 = member(server, carol, "c1"), member(server, carol, "c2")  # back: each catches up, in order
    for c in (c1, c2):
        caught = group_deliveries(c, 6)
        assert posts(caught) == texts and all(d.target == club and d.stream == sent[0].stream for d in caught)
        assert [d.message_id for d in caught] == [r.message_id for r in sent]
    marker = mark(a1, carol)
    for c in (c1, c2):
        assert posts(until(c, marker)) == []  # each once

    def is_delivered(r: Receipt) -> bool:
        return r.state == ReceiptState.DELIVERED and r.stream == sent[0].stream

    delivered = {next_of(a1, Receipt, is_delivered).message_id for _ in range(3)}
    assert delivered == {r.message_id for r in sent[0::2]}  # once everyone has them, once each
    for client in (a1, a2, b1, b2, c1, c2):
        client.close()


def test_history_pages_through_a_group(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    club = names("club")
    a, b = member(server, alice, "a1"), member(server, bob, "b1")
    made = a.group_create(club)
    b.group_join(club)
    for i in range(7):
        (a, b)[i % 2].send_text(club, f"h{i}", kind=GROUP)
    page, end = b.history(club, 3, kind=GROUP)
    assert posts(page) == ["h4", "h5", "h6"] and end.count == 3 and end.stream == made.stream
    found = whole_history(a, made.stream, limit=2)
    assert [d.position for d in found] == list(range(1, 10))  # created, joined, 7 messages
    assert posts(found) == [f"h{i}" for i in range(7)]
    assert [kind for kind, _, _ in events(found)] == [GroupEventKind.CREATED, GroupEventKind.JOINED]
    from_join = [(d.position, d.message_id) for d in found[1:]]
    assert [(d.position, d.message_id) for d in whole_history(b, club)] == from_join  # bob reads from his join on
    a.close()
    b.close()


def test_a_late_joiner_gets_nothing_from_before_the_join(server: Server, names: Names) -> None:
    alice, dan = names("alice"), names("dan")
    club = names("club")
    a = member(server, alice, "a1")
    watching = member(server, dan, "d1")  # online through it all, not a member yet
    a.group_create(club)
    for i in range(3):
        a.send_text(club, f"before {i}", kind=GROUP)
    joiner = member(server, dan, "d2")
    joined = joiner.group_join(club)
    a.send_text(club, "after", kind=GROUP)
    live = until(watching, mark(a, dan))
    assert posts(live) == ["after"] and events(live) == [(GroupEventKind.JOINED, dan, (dan,))]
    fresh = member(server, dan, "d3")  # a new device's catch-up
    caught = until(fresh, mark(a, dan))
    assert posts(caught) == ["after"] and min(d.position for d in caught if isinstance(d, Deliver) and
        d.target_kind == GROUP) == joined.position  # fmt: skip
    found = whole_history(fresh, club)
    assert posts(found) == ["after"] and found[0].position == joined.position
    for client in (a, watching, joiner, fresh):
        client.close()


def test_leave_reaches_every_session_then_nothing_and_a_rejoin_starts_again(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    club = names("club")
    a = member(server, alice, "a1")
    b1, b2 = member(server, bob, "b1"), member(server, bob, "b2")
    a.group_create(club)
    b1.group_join(club)
    a.send_text(club, "in", kind=GROUP)
    left = b1.group_leave(club)
    a.send_text(club, "out", kind=GROUP)
    with pytest.raises(ServerError) as err:
        b2.send_text(club, "may I?", kind=GROUP)
    assert err.value.code == ErrorCode.NOT_A_MEMBER
    marker = mark(a, bob)
    first, second = until(b1, marker), until(b2, marker)
    assert posts(first) == ["in"] and events(first) == []
    assert posts(second) == ["in"] and events(second)[-1] == (GroupEventKind.LEFT, bob, (bob,))
    assert max(d.position for d in second if isinstance(d, Deliver) and d.target_kind == GROUP) == left.position
    fresh = member(server, bob, "b3")
    assert posts(until(fresh, mark(a, bob))) == []  # its catch-up: nothing of a group it left
    assert posts(whole_history(fresh, club)) == ["in"]  # it may still read its interval
    again = b2.group_join(club)
    assert again.position > left.position + 1 and again.member == 1
    a.send_text(club, "back", kind=GROUP)
    assert posts(group_deliveries(b1, 1)) == ["back"]
    found = whole_history(b1, club, limit=2)
    assert posts(found) == ["in", "back"]  # both intervals, not the gap ("out")
    assert again.position in [d.position for d in found] and left.position in [d.position for d in found]
    for client in (a, b1, b2, fresh):
        client.close()


def test_a_1_3_client_of_a_member_sees_nothing_of_groups(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    club = names("club")
    a, b = member(server, alice, "a1"), member(server, bob, "b1")
    old = connect(server, bob, device_id="old", minor=3)
    assert old.session.minor == 3 and not old.session.has_groups
    a.group_create(club)
    b.group_join(club)
    a.send_text(club, "new", kind=GROUP)
    marker = mark(a, bob)
    assert posts(group_deliveries(b, 1)) == ["new"]
    seen = until(old, marker)
    of_groups = [
        m for m in seen
        if isinstance(m, (GroupInfo, GroupListReply, GroupMembersReply))
        or (isinstance(m, Deliver) and (m.target_kind == GROUP or m.content_type == ContentType.GROUP_EVENT))
        or (isinstance(m, Receipt) and m.stream.startswith("g:"))
    ]  # fmt: skip
    assert of_groups == [] and [m for m in seen if isinstance(m, Deliver)] == []
    again = connect(server, bob, device_id="old-2", minor=3)  # a new 1.3 device: waiting counts the direct one
    assert again.login_reply is not None and again.login_reply.waiting == 1
    second = mark(a, bob)
    assert [m.body for m in until(again, second) if isinstance(m, Deliver)] == [marker.encode()]
    for client in (a, b, old, again):
        client.close()


def test_group_error_codes(server: Server, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    club = names("club")
    a, b, c = member(server, alice, "a1"), member(server, bob, "b1"), member(server, carol, "c1")
    a.group_create(club)
    b.group_join(club)
    lab = names("lab")
    a.group_create(lab, invite_only=True)
    cases: list[tuple[Callable[[], object], ErrorCode]] = [
        (lambda: c.group_join(names("nowhere")), ErrorCode.GROUP_NOT_FOUND),
        (lambda: c.group_join("g:999999999"), ErrorCode.GROUP_NOT_FOUND),
        (lambda: c.send_text(names("nowhere"), "hi", kind=GROUP), ErrorCode.GROUP_NOT_FOUND),
        (lambda: c.send_text(club, "hi", kind=GROUP), ErrorCode.NOT_A_MEMBER),
        (lambda: c.group_leave(club), ErrorCode.NOT_A_MEMBER),
        (lambda: c.history(club, kind=GROUP), ErrorCode.NOT_A_MEMBER),
        (lambda: c.group_members(lab), ErrorCode.NOT_A_MEMBER),
        (lambda: c.group_join(lab), ErrorCode.FORBIDDEN),
        (lambda: b.group_add(club, [carol]), ErrorCode.FORBIDDEN),
        (lambda: b.group_remove(club, [alice]), ErrorCode.FORBIDDEN),
        (lambda: b.group_rename(club, names("mine")), ErrorCode.FORBIDDEN),
        (lambda: c.group_create(club.upper()), ErrorCode.NAME_TAKEN),
        (lambda: a.group_rename(lab, club), ErrorCode.NAME_TAKEN),
        (lambda: c.group_create("no way!"), ErrorCode.INVALID_NAME),
        (lambda: c.group_create("x" * 33), ErrorCode.INVALID_NAME),
        (lambda: a.group_rename(club, "g:1"), ErrorCode.INVALID_NAME),
        (lambda: a.group_add(club, [names("nobody")]), ErrorCode.USER_NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(ServerError) as err:
            call()
        assert err.value.code == code, (err.value, code)
    assert isinstance(c.group_list(), GroupListReply)  # each refusal left the connection served
    assert [isinstance(x, GroupInfo) for x in (b.group_leave(club), a.group_add(club, [carol]))] == [True, True]
    for client in (a, b, c):
        client.close()


# ---- 500 members ---------------------------------------------------------------------------

CROWD = 500  #: members added by one GroupAdd (the plan's figure; the limit is 1000 a group)
CROWD_POSTS = 10


class _Member:
    """One member's connection, non-blocking: the pure ``ClientSession`` (which acknowledges
    what it is delivered) driven by the test's selector instead of a thread of its own."""

    def __init__(self, server: Server, user: str) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=30)
        self.sock.setblocking(False)
        self.session = ClientSession(
            user, password=PASSWORD, register=True, device_id="crowd", groups=True, drop_repeats=False
        )  # fmt: skip
        self.out = b""
        self.got: list[Message] = []
        self.eof = False

    def received(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        self.got.extend(self.session.receive_data(data))

    def send(self) -> None:
        self.out += self.session.data_to_send()
        if self.out:
            try:
                self.out = self.out[self.sock.send(self.out) :]
            except BlockingIOError:
                pass

    def logged_in(self) -> bool:
        return any(isinstance(m, LoginOk) for m in self.got)

    def deliveries(self) -> list[Deliver]:
        return [m for m in self.got if isinstance(m, Deliver) and m.target_kind == GROUP and not m.request_id]


def _drive(crowd: list[_Member], done: Callable[[_Member], bool], what: str, timeout: float = 60.0) -> None:
    """Move every member's bytes both ways until each is ``done`` (or fail at ``timeout``)."""
    with selectors.DefaultSelector() as sel:
        for m in crowd:
            sel.register(m.sock, selectors.EVENT_READ, m)
        deadline = time.monotonic() + timeout
        while True:
            for m in crowd:
                m.send()
            waiting = [m for m in crowd if not done(m) or m.out]
            if not waiting:
                return
            assert time.monotonic() < deadline, f"{len(waiting)} of {len(crowd)} not {what} after {timeout} s"
            for key, _ in sel.select(timeout=0.2):
                member_ = key.data
                assert isinstance(member_, _Member)
                member_.received()
            eof = [m.session.user for m in crowd if m.eof]
            assert not eof, f"the server closed {eof[:5]}..."
            errors = [e for m in crowd for e in m.got if isinstance(e, Error)]
            assert not errors, errors[:5]


def test_500_members_added_at_once_each_get_every_message_once(server: Server, names: Names) -> None:
    """The plan's 500: one bulk GroupAdd (one event, ~7 KB), ten posts, each delivered once
    to each member's session, in order; one "delivered" receipt per message, once all have it.
    The members are non-blocking sockets on one selector here (the server: 500 connections;
    on the threads backend 1,000 threads, on select ~510 descriptors, under 1,024)."""
    owner_name, club = names("host"), names("crowd")
    users = [names("m") for _ in range(CROWD)]
    owner = member(server, owner_name, "o1")
    crowd: list[_Member] = []
    try:
        for user in users:
            crowd.append(_Member(server, user))
        _drive(crowd, _Member.logged_in, "logged in")
        made = owner.group_create(club)
        added = owner.group_add(club, users)
        assert (added.members, added.position) == (CROWD + 1, 2)
        sent = [owner.send_text(club, f"to all {i}", kind=GROUP) for i in range(CROWD_POSTS)]
        assert [r.position for r in sent] == list(range(3, 3 + CROWD_POSTS))
        _drive(crowd, lambda m: len(m.deliveries()) >= 1 + CROWD_POSTS, "delivered to")
        want = [(made.stream, 2, ContentType.GROUP_EVENT)] + [(r.stream, r.position, ContentType.TEXT) for r in sent]
        for m in crowd:  # once each (a repeat would show: drop_repeats is off), in order, nothing else
            got = m.deliveries()
            assert [(d.stream, d.position, d.content_type) for d in got] == want, (m.session.user, got)
            assert [d.message_id for d in got[1:]] == [r.message_id for r in sent]
        ids = {r.message_id for r in sent}  # every member acknowledged (ClientSession does): delivered
        delivered = [
            next_of(owner, Receipt, lambda r: r.state == ReceiptState.DELIVERED and r.message_id in ids, timeout=60)
            for _ in range(CROWD_POSTS)
        ]  # fmt: skip
        assert sorted(r.message_id for r in delivered) == sorted(ids)  # one each
        owner.call(Ping())  # and no second one before this answer
        assert not [r for r in owner.inbox if isinstance(r, Receipt) and r.message_id in ids]
    finally:
        for m in crowd:
            m.sock.close()
        owner.close()
