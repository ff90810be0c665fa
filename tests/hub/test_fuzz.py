"""Hypothesis over the engine and the SQLite store together.

The decoder's own fuzzing could not find what broke storage: a well-formed request
whose value SQLite cannot hold (a u64 of 2^63 or more) failed inside the batch, left
its transaction open and lost other people's messages. Here random requests, values
at the edges, reconnects and every ordering of jobs run through the real engine on a
real SQLite file, and the store's own rules are checked afterwards: positions dense
from 1 in each stream, both members recorded, and every message the server stored
delivered to its recipient (live, or by catch-up after a reconnect).

Groups (protocol 1.4) have their own test: random group requests from several users and
devices, pipelined, with disconnects, checked against a model that replays the commit
log under section 11's rules (who may do what, who is a member over which positions)
and against what every session got.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.protocol import (
    MAX_REQUEST_U64,
    Ack,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    GroupAdd,
    GroupCreate,
    GroupEvent,
    GroupEventKind,
    GroupJoin,
    GroupLeave,
    GroupRemove,
    GroupRename,
    History,
    Receipt,
    ReceiptState,
    Send,
    TargetKind,
)
from csce513msg.store.accounts import AccountBook
from csce513msg.store.interface import ANNOUNCEMENTS
from csce513msg.store.sqlite import SqliteStore
from tests.hub.harness import PASSWORD, PASSWORDS, Harness, Peer

USERS = ("ann", "ben", "cat")
EDGE = st.one_of(st.just(0), st.integers(1, 40), st.integers(MAX_REQUEST_U64 - 1, 2**64 - 1))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2), EDGE, st.binary(max_size=8)),
        st.tuples(st.just("history"), st.integers(0, 2), st.integers(0, 2), EDGE, st.integers(0, 300)),
        st.tuples(st.just("ack"), st.integers(0, 2), st.integers(0, 2), EDGE),
        st.tuples(st.just("reconnect"), st.integers(0, 2)),
        st.tuples(
            st.just("jobs"),
        ),
    ),
    max_size=40,
)


@settings(max_examples=60)
@given(OPS)
def test_random_requests_never_lose_a_stored_message(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        book = AccountBook(path)
        for name in USERS:
            book.add(name, PASSWORDS.hash(PASSWORD))
        book.close()
        store = SqliteStore(path, checkpoint_interval=0)
        try:
            _run(Harness(store=store, auto_jobs=False), store, ops)
        finally:
            store.close()


def _run(h: Harness, store: SqliteStore, ops: list[tuple[object, ...]]) -> None:
    peers = {name: h.connect(name, device="d1") for name in USERS}
    h.settle()
    history: list[Peer] = []  # the peers replaced by a reconnect, for what they saw
    for op in ops:
        match op:
            case ("send", int(a), int(b), int(cid), bytes(body)):
                peers[USERS[a]].session.request(Send(TargetKind.USER, ContentType.TEXT, cid, USERS[b], body))
            case ("history", int(a), int(b), int(before), int(limit)):
                peers[USERS[a]].session.request(History(before, limit, TargetKind.USER, USERS[b]))
            case ("ack", int(a), int(b), int(position)):
                stream = "dm:" + ",".join(sorted({USERS[a], USERS[b]}))
                peers[USERS[a]].session.request(Ack(position, stream))
            case ("reconnect", int(a)):
                name = USERS[a]
                history.append(peers[name])
                h.drop(peers[name])
                peers[name] = h.connect(name, device="d1")
            case ("jobs",):
                h.run_jobs()
            case _:
                raise AssertionError(f"an operation OPS does not make: {op!r}")
        h.pump()
    h.settle()
    for peer in [*history, *peers.values()]:
        errors = [e.code for e in peer.of(Error)]
        assert ErrorCode.STORE_FAILED not in errors and ErrorCode.INTERNAL not in errors, errors
        assert peer.closed is None, peer.closed  # nothing here is a reason to close
    history.extend(peers.values())
    for name in USERS:  # everyone reconnects: the catch-up brings whatever was not live
        h.drop(peers[name])
        history.append(h.connect(name, device="d1"))
    h.settle()
    _check_store(store, history)


def _check_store(store: SqliteStore, peers: list[Peer]) -> None:
    db = store.db
    for stream, count, low, high in db.execute(
        "SELECT stream, count(*), min(position), max(position) FROM messages GROUP BY stream"
    ):
        assert (low, high) == (1, count), f"{stream}: positions {low}..{high} for {count} messages"
        members = {u for (u,) in db.execute("SELECT user FROM members WHERE stream = ?", (stream,))}
        assert members == set(stream[3:].split(",")), (stream, members)
    stored = {r.message_id for p in peers for r in p.of(Receipt) if r.state == ReceiptState.STORED}
    in_db = {mid: (sender, target) for mid, sender, target in db.execute("SELECT id, sender, target FROM messages")}
    assert stored <= in_db.keys()  # a receipt promises the message is stored
    seen: dict[str, set[int]] = {}
    for p in peers:
        user = p.session.user or ""
        seen.setdefault(user, set()).update(d.message_id for d in p.of(Deliver) if not d.request_id)
    for mid, (sender, target) in in_db.items():
        if sender != target:  # to oneself from one's only device: nothing to deliver
            assert mid in seen.get(target, set()), f"message {mid} from {sender} never reached {target}"


# ---- groups: random operations against a model of membership (docs/groups-plan.md step 3) ----

MEMBERS = ("ann", "ben", "cat", "tea")  # tea is an instructor
DEVICES = ("d1", "d2")
NAMES = ("red", "blue", "teal")
_WHO = st.integers(0, len(MEMBERS) - 1)
_DEV = st.integers(0, len(DEVICES) - 1)
_NAME = st.integers(0, len(NAMES) - 1)
_USERS = st.lists(_WHO, min_size=1, max_size=3)
GROUP_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), _WHO, _DEV, _NAME, st.booleans()),
        st.tuples(st.just("join"), _WHO, _DEV, _NAME),
        st.tuples(st.just("join"), _WHO, _DEV, _NAME),
        st.tuples(st.just("leave"), _WHO, _DEV, _NAME),
        st.tuples(st.just("add"), _WHO, _DEV, _NAME, _USERS),
        st.tuples(st.just("remove"), _WHO, _DEV, _NAME, _USERS),
        st.tuples(st.just("rename"), _WHO, _DEV, _NAME, _NAME),
        st.tuples(st.just("post"), _WHO, _DEV, _NAME),
        st.tuples(st.just("post"), _WHO, _DEV, _NAME),
        st.tuples(st.just("post"), _WHO, _DEV, _NAME),
        st.tuples(st.just("ack"), _WHO, _DEV, st.integers(1, 3), st.integers(0, 30)),
        st.tuples(st.just("history"), _WHO, _DEV, _NAME, st.integers(0, 30), st.integers(0, 5)),
        st.tuples(st.just("disconnect"), _WHO, _DEV),
        st.tuples(
            st.just("jobs"),
        ),
        st.tuples(
            st.just("jobs"),
        ),
        st.tuples(
            st.just("settle"),
        ),
    ),
    min_size=20,
    max_size=60,
)
#: every example starts with these committed (then creates, mostly NAME_TAKEN, try the rest):
#: red public (ann's), blue invite-only (ben's) with ann added, teal public (tea's) with cat
PRELUDE: list[tuple[object, ...]] = [
    ("create", 0, 0, 0, False), ("create", 1, 0, 1, True), ("create", 3, 0, 2, False), ("settle",),
    ("add", 1, 0, 1, [0]), ("join", 2, 0, 2), ("settle",),
]  # fmt: skip


@settings(max_examples=50, deadline=None)  # about 4 s here
@given(GROUP_OPS)
def test_random_group_operations_deliver_exactly_what_each_membership_covers(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        book = AccountBook(path)
        for name in MEMBERS:
            book.add(name, PASSWORDS.hash(PASSWORD), "instructor" if name == "tea" else "student")
        book.close()
        store = SqliteStore(path, checkpoint_interval=0)
        try:
            _run_groups(Harness(store=store, auto_jobs=False), store, ops)
        finally:
            store.close()


def _run_groups(h: Harness, store: SqliteStore, ops: list[tuple[object, ...]]) -> None:
    """Random group requests, pipelined (jobs run only at "jobs"), from two devices a user;
    then every device reconnects, and what each session got is checked against the model
    the commit log (the store's messages, in position order) replays under section 11's rules."""
    online: dict[tuple[str, str], Peer] = {}
    sessions: list[tuple[str, str, Peer]] = []  # every connection made, in order: (user, device, peer)
    histories: list[tuple[str, Peer, int]] = []  # (user, peer, request id) of each group History

    def peer(who: int, dev: int) -> Peer:
        key = (MEMBERS[who], DEVICES[dev])
        if key not in online:
            online[key] = h.connect(key[0], device=key[1], groups=True)
            sessions.append((*key, online[key]))
        return online[key]

    for op in [*PRELUDE, *ops]:
        match op:
            case ("create", int(a), int(d), int(n), bool(invite_only)):
                peer(a, d).session.request(GroupCreate(NAMES[n], int(invite_only)))
            case ("join", int(a), int(d), int(n)):
                peer(a, d).session.request(GroupJoin(NAMES[n]))
            case ("leave", int(a), int(d), int(n)):
                peer(a, d).session.request(GroupLeave(NAMES[n]))
            case ("add", int(a), int(d), int(n), list(users)):
                peer(a, d).session.request(GroupAdd(NAMES[n], tuple(MEMBERS[u] for u in users)))
            case ("remove", int(a), int(d), int(n), list(users)):
                peer(a, d).session.request(GroupRemove(NAMES[n], tuple(MEMBERS[u] for u in users)))
            case ("rename", int(a), int(d), int(n), int(m)):
                peer(a, d).session.request(GroupRename(NAMES[n], NAMES[m]))
            case ("post", int(a), int(d), int(n)):
                p = peer(a, d)
                p.session.request(Send(TargetKind.GROUP, ContentType.TEXT, 0, NAMES[n], b"x"))
            case ("ack", int(a), int(d), int(g), int(position)):
                peer(a, d).session.request(Ack(position, f"g:{g}"))
            case ("history", int(a), int(d), int(n), int(before), int(limit)):
                p = peer(a, d)
                rid = p.session.request(History(before, limit, TargetKind.GROUP, NAMES[n]))
                histories.append((MEMBERS[a], p, rid))
            case ("disconnect", int(a), int(d)):
                key = (MEMBERS[a], DEVICES[d])
                if key in online:
                    h.drop(online.pop(key))
            case ("jobs",):  # one round: what is in flight commits, what it leads to waits
                h.run_jobs()
            case ("settle",):  # everything commits, logins included
                h.settle()
            case _:
                raise AssertionError(f"an operation GROUP_OPS does not make: {op!r}")
        h.pump()
    h.settle()
    for _, _, p in sessions:
        errors = [e.code for e in p.of(Error)]
        assert ErrorCode.STORE_FAILED not in errors and ErrorCode.INTERNAL not in errors, errors
        assert p.closed is None, p.closed
    for key in list(online):  # every device of every user comes back: the catch-up brings the rest
        h.drop(online.pop(key))
    for a in range(len(MEMBERS)):
        for d in range(len(DEVICES)):
            peer(a, d)
    h.settle()
    model = _GroupModel(store)
    model.check_store(store)
    model.check_hub(h)
    model.check_sessions(sessions)
    model.check_histories(histories)


class _GroupModel:
    """Membership replayed from the commit log under section 11's rules: per (user, stream),
    the intervals of positions [J, L] (L None: a member now)."""

    def __init__(self, store: SqliteStore) -> None:
        db = store.db
        invite_only = {f"g:{i}": bool(v) for i, v in db.execute("SELECT id, invite_only FROM groups")}
        self.intervals: dict[tuple[str, str], list[list[int | None]]] = {}
        self.names: dict[str, str] = {}  # stream -> name now
        self.owners: dict[str, str] = {}
        self.members: dict[str, set[str]] = {}
        self.last: dict[str, int] = {}
        self.made: dict[tuple[str, int], tuple[str, str]] = {}  # (stream, position) -> (sender, device)
        rows = db.execute(
            "SELECT stream, position, sender, device, content_type, body FROM messages"
            " WHERE stream LIKE 'g:%' ORDER BY stream, position"
        )  # fmt: skip
        for stream, position, sender, device, content_type, body in rows:
            assert position == self.last.get(stream, 0) + 1, (stream, position)  # dense from 1
            self.last[stream] = position
            self.made[stream, position] = (sender, device)
            members = self.members.setdefault(stream, set())
            if content_type != ContentType.GROUP_EVENT:
                assert sender in members, f"{stream}@{position}: a post from {sender}, not a member"
                continue
            event = GroupEvent.decode(body)
            # staff change a group member or not; its owner as a member at the change's turn
            manager = sender == "tea" or (sender in members and sender == self.owners.get(stream))
            if event.kind == GroupEventKind.CREATED:
                assert position == 1 and event.name not in self.names.values(), (stream, event)
                self.names[stream], self.owners[stream] = event.name, sender
                self._join(stream, sender, position)
            elif event.kind == GroupEventKind.JOINED:
                assert sender not in members and event.users == (sender,), (stream, position, event)
                allowed = not invite_only[stream] or sender in (self.owners[stream], "tea")
                assert allowed, f"{stream}@{position}: {sender} joined an invite-only group"
                self._join(stream, sender, position)
            elif event.kind == GroupEventKind.LEFT:
                assert sender in members and event.users == (sender,), (stream, position, event)
                self._leave(stream, sender, position)
            elif event.kind == GroupEventKind.ADDED:
                assert manager and event.users, f"{stream}@{position}: an add by {sender}"
                for user in event.users:
                    if user not in members:
                        self._join(stream, user, position)
            elif event.kind == GroupEventKind.REMOVED:
                assert manager and event.users, f"{stream}@{position}: a removal by {sender}"
                for user in event.users:
                    if user in members:
                        self._leave(stream, user, position)
            elif event.kind == GroupEventKind.RENAMED:
                assert manager, f"{stream}@{position}: a rename by {sender}"
                others = {n for s, n in self.names.items() if s != stream}
                assert event.name not in others, f"{stream}@{position}: renamed to a name in use"
                self.names[stream] = event.name
            else:
                raise AssertionError(f"{stream}@{position}: event {event}")

    def _join(self, stream: str, user: str, position: int) -> None:
        self.members[stream].add(user)
        self.intervals.setdefault((user, stream), []).append([position, None])

    def _leave(self, stream: str, user: str, position: int) -> None:
        self.members[stream].discard(user)
        self.intervals[user, stream][-1][1] = position

    def within(self, user: str, stream: str, position: int) -> bool:
        """Whether ``user`` was a member of ``stream`` at ``position`` (its join and leave included)."""
        return any(
            j is not None and j <= position and (left is None or position <= left)
            for j, left in self.intervals.get((user, stream), ())
        )  # fmt: skip

    def check_store(self, store: SqliteStore) -> None:
        """The store's membership rows are the model's intervals, its group rows the names and owners."""
        rows = store.db.execute(  # the announcements (g:0, every account's) are not the model's
            "SELECT user, stream, joined_at, left_at FROM members WHERE stream LIKE 'g:%' AND stream != 'g:0'"
        )
        found: dict[tuple[str, str], set[tuple[int, int | None]]] = {}
        for user, stream, joined, left in rows:
            found.setdefault((user, stream), set()).add((joined, left))
        want = {k: {(j, left) for j, left in v if j is not None} for k, v in self.intervals.items()}
        assert found == want, (found, want)
        groups = {f"g:{i}": (n, o) for i, n, o in store.db.execute("SELECT id, name, owner FROM groups WHERE id")}
        assert groups == {s: (self.names[s], self.owners[s]) for s in self.names}

    def check_hub(self, h: Harness) -> None:
        """The engine's committed cache says what the model says."""
        cache = h.engine.groups
        assert {s: (g.name, g.owner, g.members) for s, g in cache.by_id.items() if s != ANNOUNCEMENTS} == {
            s: (self.names[s], self.owners[s], self.members[s]) for s in self.names
        }  # fmt: skip
        by_name = {n: g.stream for n, g in cache.by_name.items() if g.stream != ANNOUNCEMENTS}
        assert by_name == {n: s for s, n in self.names.items()}

    def check_sessions(self, sessions: list[tuple[str, str, Peer]]) -> None:
        """Each session got group messages only from its user's memberships, each once, in order,
        never one its own device made; every device of a member now has the whole of its current
        membership (every session of each device reconnected at the end)."""
        got: dict[tuple[str, str], set[tuple[str, int]]] = {}
        for user, device, p in sessions:
            seen: dict[str, int] = {}
            for d in p.of(Deliver):
                if d.request_id or not d.stream.startswith("g:"):
                    continue
                where = f"{user}/{device} {d.stream}@{d.position}"
                assert d.position > seen.get(d.stream, 0), f"{where}: repeated or out of order"
                seen[d.stream] = d.position
                assert self.within(user, d.stream, d.position), f"{where}: not a member then"
                assert self.made[d.stream, d.position] != (user, device), f"{where}: its own device's"
                got.setdefault((user, device), set()).add((d.stream, d.position))
        for stream, members in self.members.items():
            for user in members:
                joined = self.intervals[user, stream][-1][0]
                assert joined is not None
                for device in DEVICES:
                    want = {
                        (stream, p) for p in range(joined, self.last[stream] + 1)
                        if self.made[stream, p] != (user, device)
                    }  # fmt: skip
                    missing = want - got.get((user, device), set())
                    assert not missing, f"{user}/{device} never got {sorted(missing)}"

    def check_histories(self, histories: list[tuple[str, Peer, int]]) -> None:
        """A History page holds only its reader's intervals, each position once."""
        for user, p, rid in histories:
            page = [d for d in p.of(Deliver) if d.request_id == rid]
            positions = [d.position for d in page]
            assert len(set(positions)) == len(positions), positions
            for d in page:
                assert self.within(user, d.stream, d.position), f"{user}: History gave {d.stream}@{d.position}"
