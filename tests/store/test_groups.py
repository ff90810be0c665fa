"""Groups in the store (schema v6, docs/groups-plan.md step 2): the rules in commit order,
membership intervals for live reads and History, "delivered" in a group, and the
migration from version 5. Both stores where the behaviour is shared (no sockets here)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.protocol import ContentType, GroupEvent, GroupEventKind
from csce513msg.store import Batch, Fetch, LoginRead, MemoryStore, NewMessage, Refused, StoredMessage
from csce513msg.store.groupmark import GroupMark, tombstone, wanted
from csce513msg.store.interface import (
    ADD,
    ANNOUNCEMENTS,
    CREATE,
    DELETE,
    GROUP_EVENT,
    JOIN,
    LEAVE,
    MUTE,
    REDACT,
    REMOVE,
    RENAME,
    SLOW,
    UNMUTE,
    GroupChange,
    resent,
)
from csce513msg.store.schema import MIGRATIONS
from csce513msg.store.sqlite import SqliteStore
from tests.store.test_sqlite import accounts, msg

AnyStore = MemoryStore | SqliteStore
_clock = itertools.count(1000)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyStore]:
    if request.param == "memory":
        yield MemoryStore(accounts("alice", "bob", "carol", "dan"))
        return
    sqlite = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    sqlite.apply(Batch(accounts=accounts("alice", "bob", "carol", "dan")))
    yield sqlite
    sqlite.close()


def event(sender: str, stream: str, op: int, users: tuple[str, ...] = (), name: str = "") -> NewMessage:
    """A group event as the engine will write it (its body is opaque to the store)."""
    change = GroupChange(op, users or (sender,) if op in (CREATE, JOIN, LEAVE) else users, name)
    body = bytes([op]) + ",".join(change.users).encode() + b"|" + name.encode()
    return NewMessage(stream, (), sender, "d", 0, 2, name, GROUP_EVENT, next(_clock), body, change)


def post(sender: str, stream: str, body: bytes, client_id: int = 0, device: str = "d", target: str = "") -> NewMessage:
    return NewMessage(stream, (), sender, device, client_id, 2, target or "club", 0, next(_clock), body)


def one(store: AnyStore, m: NewMessage, max_members: int = 1000) -> StoredMessage | Refused:
    result = store.apply(Batch(messages=[m], max_group_members=max_members))
    if (job := store.maintenance()) is not None:  # as the hub does after each batch (a checkpoint)
        job()
    assert result.error is None
    (answer,) = result.stored
    return answer


def stored(store: AnyStore, m: NewMessage) -> StoredMessage:
    answer = one(store, m)
    assert isinstance(answer, StoredMessage), answer
    return answer


def create(store: AnyStore, owner: str = "alice", name: str = "club") -> str:
    return stored(store, event(owner, "g:", CREATE, name=name)).stream


def fetch(store: AnyStore, user: str, device: str, history: int = 100, groups: bool = True) -> list[int]:
    found = store.apply(Batch(fetches=[Fetch(1, user, device, 100, history, groups)])).fetched[1]
    return [m.position for m in found]


def page(store: AnyStore, stream: str, reader: str, before: int = 0, limit: int = 100) -> list[int]:
    got = store.apply(Batch(history={1: (stream, before, limit, 1 << 20)}, readers={1: reader})).history[1]
    return [m.position for m in got]


def ack(store: AnyStore, user: str, stream: str, position: int, device: str = "phone") -> list[tuple[str, int]]:
    batch = Batch(cursors={(user, device, stream): position}, delivered={(stream, user): position})
    return [(n.sender, n.position) for n in store.apply(batch).newly_delivered]


def test_the_store_s_numbers_are_the_protocol_s() -> None:
    """The store imports no protocol module, so it keeps its own copy of these numbers."""
    assert GROUP_EVENT == ContentType.GROUP_EVENT
    kinds = [GroupEventKind.CREATED, GroupEventKind.JOINED, GroupEventKind.LEFT]
    kinds += [GroupEventKind.ADDED, GroupEventKind.REMOVED, GroupEventKind.RENAMED]
    assert kinds == [CREATE, JOIN, LEAVE, ADD, REMOVE, RENAME]


def test_create_assigns_a_stream_never_reused_and_names_are_unique(store: AnyStore) -> None:
    first = stored(store, event("alice", "g:", CREATE, name="club"))
    assert (first.stream, first.position, first.change) == ("g:1", 1, GroupChange(CREATE, ("alice",), "club"))
    taken = one(store, event("bob", "g:", CREATE, name="club"))
    assert isinstance(taken, Refused) and taken.why == "name_taken"
    assert create(store, "bob", "chess") == "g:2"
    renamed = one(store, event("alice", "g:1", RENAME, name="chess"))
    assert isinstance(renamed, Refused) and renamed.why == "name_taken"
    stored(store, event("alice", "g:1", RENAME, name="book club"))
    assert create(store, "carol", "club") == "g:3"  # the old name is free again
    groups = store.load_groups()
    assert {s: (g.name, g.owner, g.members) for s, g in groups.items() if s != "g:0"} == {
        "g:1": ("book club", "alice", ("alice",)),
        "g:2": ("chess", "bob", ("bob",)),
        "g:3": ("club", "carol", ("carol",)),
    }


def test_a_late_joiner_reads_from_its_join_and_never_earlier_messages(store: AnyStore) -> None:
    g = create(store)
    for body in (b"1", b"2", b"3"):
        stored(store, post("alice", g, body))
    join = stored(store, event("bob", g, JOIN))
    assert join.position == 5 and join.change == GroupChange(JOIN, ("bob",))
    stored(store, post("alice", g, b"after"))
    assert fetch(store, "bob", "phone") == [5, 6]  # from the join (new-device history is 100 back)
    assert fetch(store, "bob", "d") == [6]  # the joining device sent the join itself
    assert fetch(store, "bob", "phone", groups=False) == []  # a session without groups reads none
    assert page(store, g, "bob") == [5, 6]
    assert page(store, g, "carol") == []  # never a member (the engine answers NOT_A_MEMBER first)
    assert page(store, g, "alice") == [1, 2, 3, 4, 5, 6]
    logins = store.apply(
        Batch(logins=[LoginRead(1, "bob", "tab", 100, 1000, True), LoginRead(2, "bob", "t2", 100, 1000)])
    )
    assert [logins.logins[1].waiting, logins.logins[2].waiting] == [2, 0]


def test_leave_rejoin_and_a_device_away_across_both(store: AnyStore) -> None:
    """A member reads [joined, left], both events included; after a rejoin, live and catch-up
    start at the new join (an old cursor is raised to it); History has both intervals."""
    g = create(store)
    stored(store, event("bob", g, JOIN))  # 2
    stored(store, post("alice", g, b"a"))  # 3
    ack(store, "bob", g, 3, device="laptop")  # the laptop then goes away
    stored(store, post("alice", g, b"b"))  # 4
    stored(store, event("bob", g, LEAVE))  # 5
    stored(store, post("alice", g, b"missed"))  # 6
    assert fetch(store, "bob", "laptop") == [] and page(store, g, "bob") == [2, 3, 4, 5]
    refused = one(store, post("bob", g, b"gone"))
    assert isinstance(refused, Refused) and refused.why == "not_member"
    stored(store, event("bob", g, JOIN, ()))  # 7
    stored(store, post("alice", g, b"c"))  # 8
    assert fetch(store, "bob", "laptop") == [7, 8]  # not 4 (before the leave) nor 6 (between)
    assert fetch(store, "bob", "new") == [7, 8]  # a new device: no further back than the join
    assert page(store, g, "bob") == [2, 3, 4, 5, 7, 8]  # the gap, 6, skipped
    # paging, two at a time from the newest, never repeats and never misses
    seen: list[int] = []
    before = 0
    while got := page(store, g, "bob", before, limit=2):
        seen = got + seen
        before = got[0]
    assert seen == [2, 3, 4, 5, 7, 8]
    assert store.load_groups()[g].members == ("alice", "bob") and store.load_groups()[g].former == ()


def test_add_and_remove_open_and_close_intervals(store: AnyStore) -> None:
    g = create(store)
    added = stored(store, event("alice", g, ADD, ("bob", "carol")))  # 2
    assert added.change == GroupChange(ADD, ("bob", "carol"))
    again = one(store, event("alice", g, ADD, ("bob",)))
    assert isinstance(again, Refused) and again.why == "unchanged"  # nothing to store: no event
    stored(store, post("carol", g, b"hi"))  # 3
    stored(store, event("alice", g, REMOVE, ("carol", "dan")))  # 4: dan was never a member
    assert fetch(store, "carol", "x") == [] and page(store, g, "carol") == [2, 3, 4]
    assert fetch(store, "bob", "x") == [2, 3, 4]
    nobody = one(store, event("alice", g, REMOVE, ("carol",)))
    assert isinstance(nobody, Refused) and nobody.why == "unchanged"
    outsider = one(store, event("dan", g, LEAVE))
    assert isinstance(outsider, Refused) and outsider.why == "not_member"
    owner_gone = one(store, event("dan", g, ADD, ("dan",)))  # an owner who left meanwhile: a member's change
    assert isinstance(owner_gone, Refused) and owner_gone.why == "not_member"
    staff = dataclasses.replace(event("dan", g, ADD, ("dan",)), change=GroupChange(ADD, ("dan",), moderator=True))
    stored(store, staff)  # 5: staff add without joining (the engine checks who may)
    groups = store.load_groups()
    assert (groups[g].members, groups[g].former) == (("alice", "bob", "dan"), ("carol",))


def test_a_bad_request_is_refused_and_never_rolls_back_the_batch(store: AnyStore) -> None:
    """A taken name used to be a UNIQUE violation inside the transaction: everyone's batch
    rolled back. Now each group message is checked at its turn in commit order."""
    g = create(store)
    stored(store, event("bob", g, JOIN))
    batch = Batch(
        messages=[
            post("alice", g, b"good 1"),
            post("carol", g, b"not a member"),
            event("bob", "g:", CREATE, name="club"),  # name taken
            event("carol", g, JOIN),  # the group holds 2 at most: full
            post("alice", "g:99", b"no such group"),
            post("alice", "g:x", b"no such stream"),
            post("alice", "g:99999999999999999999999", b"past 2^63"),
            event("bob", g, LEAVE),  # bob leaves ...
            post("bob", g, b"... and then posts"),  # refused: at its turn bob is no member
            event("carol", g, JOIN),  # room again
            post("carol", g, b"good 2"),
            msg("alice", "bob", b"a direct message rides along"),
        ],
        max_group_members=2,
    )
    result = store.apply(batch)
    assert result.error is None
    whys = [a.why if isinstance(a, Refused) else a.position for a in result.stored]
    assert whys == [3, "not_member", "name_taken", "full", "no_group", "no_group", "no_group", 4, "not_member", 5, 6, 1]
    assert page(store, g, "alice") == [1, 2, 3, 4, 5, 6]


def test_a_resend_compares_the_stream_so_a_rename_between_is_no_reuse(store: AnyStore) -> None:
    g = create(store)
    first = stored(store, post("alice", g, b"hi", client_id=7, target="club"))
    stored(store, event("alice", g, RENAME, name="chess"))
    again = stored(store, post("alice", g, b"hi", client_id=7, target="chess"))
    assert again.duplicate and again.message_id == first.message_id
    other = one(store, post("alice", "g:2", b"hi", client_id=7))
    assert isinstance(other, Refused) and other.reused
    stored(store, event("alice", g, LEAVE))
    late = stored(store, post("alice", g, b"hi", client_id=7))  # its receipt was lost, she left meanwhile
    assert late.duplicate
    old = StoredMessage(1, "dm:a,b", 1, "a", "d", 1, "b", 0, 1, b"x")
    assert isinstance(resent(msg("a", "c", b"x"), old), Refused)  # a direct message: still by target


def test_delivered_counts_the_members_now_other_than_the_sender(store: AnyStore) -> None:
    g = create(store)
    stored(store, event("alice", g, ADD, ("bob", "carol")))  # 2
    m = stored(store, post("alice", g, b"m"))  # 3
    assert ack(store, "alice", g, 3) == []  # the sender's own ack never holds or completes it
    assert ack(store, "bob", g, 3) == []  # carol has not
    assert ack(store, "carol", g, 3, device="tablet") == [("alice", 3)]  # on some device: one receipt
    assert ack(store, "carol", g, 3, device="phone") == []  # once
    stored(store, event("dan", g, JOIN))  # 4: dan joined after m: he counts as having it
    n = stored(store, post("bob", g, b"n"))  # 5
    assert ack(store, "alice", g, 5) == [] and ack(store, "dan", g, 5) == []
    assert ack(store, "carol", g, 4) == []  # not yet 5
    result = store.apply(Batch(messages=[event("carol", g, LEAVE)]))  # the holdout leaves: done
    assert [(x.sender, x.position) for x in result.newly_delivered] == [("bob", 5)]
    assert m.position == 3 and n.position == 5
    alone = create(store, "dan", "solo")
    result = store.apply(Batch(messages=[post("dan", alone, b"to nobody")]))
    assert [(x.sender, x.position) for x in result.newly_delivered] == [("dan", 2)]  # alone: at once


def test_missed_group_receipts_come_once_at_login_and_only_to_group_sessions(store: AnyStore) -> None:
    g = create(store)
    store.apply(Batch(logins=[LoginRead(1, "alice", "laptop", 100, 1000, True)]))
    stored(store, event("alice", g, ADD, ("bob",)))
    stored(store, post("alice", g, b"1", device="laptop"))  # 3
    stored(store, post("alice", g, b"2", device="laptop"))  # 4
    ack(store, "bob", g, 4)
    old = store.apply(Batch(logins=[LoginRead(2, "alice", "laptop", 100, 1000)])).logins[2]
    assert old.receipts == []  # a session without groups gets no receipt about a g: stream
    first = store.apply(Batch(logins=[LoginRead(3, "alice", "laptop", 100, 1000, True)])).logins[3]
    assert [(n.stream, n.position) for n in first.receipts] == [(g, 3), (g, 4)]  # not the events
    again = store.apply(Batch(logins=[LoginRead(4, "alice", "laptop", 100, 1000, True)])).logins[4]
    assert again.receipts == []


def test_groups_survive_a_reopen(tmp_path: Path) -> None:
    """Nothing of a group lives only in the writer's memory: a reopened store has the same
    groups, members and reads, and its rebuilt marks report each receipt once."""
    path = tmp_path / "db"
    store = SqliteStore(path, checkpoint_interval=0)
    g = create(store)
    stored(store, event("alice", g, ADD, ("bob", "carol")))
    stored(store, post("alice", g, b"m"))  # 3
    assert ack(store, "bob", g, 3) == []
    stored(store, event("carol", g, LEAVE))  # 4: completes 3
    stored(store, post("alice", g, b"n"))  # 5
    groups = store.load_groups()
    store.close()
    store = SqliteStore(path, checkpoint_interval=0)
    assert store.load_groups() == groups and groups[g].former == ("carol",)
    assert ack(store, "bob", g, 5) == [("alice", 5)]  # 3 was reported before the reopen
    refused = one(store, post("carol", g, b"x"))
    assert isinstance(refused, Refused) and refused.why == "not_member"
    assert create(store, "bob", "chess") == "g:2"
    store.close()


# ---- "delivered" against a brute-force oracle --------------------------------------------

Op = tuple[str, int, int]  # (what, user index, position offset)
USERS = ["u0", "u1", "u2", "u3", "u4"]


def _oracle_run(ops: list[Op]) -> tuple[list[set[tuple[str, int]]], list[set[tuple[str, int]]]]:
    """Per op, the (sender, position) pairs newly delivered: by a GroupMark, and by brute force
    over the definition (every member now but the sender acknowledged it, a joiner after it
    has it, events get none)."""
    members: dict[str, int] = {"u0": 1}
    acked: dict[str, int] = {}
    messages: list[tuple[str, bool]] = [("u0", True)]  # position p at index p - 1: (sender, event)
    mark = GroupMark(1, {"u0": (1, 0)})
    told: set[tuple[str, int]] = set()
    by_mark: list[set[tuple[str, int]]] = []
    by_force: list[set[tuple[str, int]]] = []
    for what, who, offset in ops:
        user = USERS[who]
        last = len(messages)
        if what == "post" and user in members:
            messages.append((user, False))
            spans = mark.posted(len(messages))
        elif what == "join" and user not in members:
            messages.append((user, True))
            members[user] = len(messages)
            spans = mark.change(len(messages), [user], [])
        elif what == "leave" and user in members:
            messages.append((user, True))
            del members[user]
            spans = mark.change(len(messages), [], [user])
        elif what == "ack" and user in members and last:
            position = min(last, max(acked.get(user, 0), members[user] - 1) + offset)
            acked[user] = max(acked.get(user, 0), position)
            spans = mark.ack(user, position)
        else:
            continue
        got = set()
        for span in spans:
            for p in range(span[0] + 1, span[1] + 1):
                sender, is_event = messages[p - 1]
                if not is_event and wanted(span, sender, p):
                    got.add((sender, p))
        by_mark.append(got)
        delivered = {
            (s, p)
            for p, (s, is_event) in enumerate(messages, start=1)
            if not is_event and all(max(acked.get(u, 0), j - 1) >= p for u, j in members.items() if u != s)
        }
        by_force.append(delivered - told)
        told |= delivered
    return by_mark, by_force


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["post", "post", "ack", "ack", "ack", "join", "leave"]),
                  st.integers(0, 4), st.integers(1, 4)),
        max_size=60,
    )
)  # fmt: skip
def test_group_mark_equals_brute_force(ops: list[Op]) -> None:
    by_mark, by_force = _oracle_run(ops)
    assert by_mark == by_force
    told = [pair for step in by_mark for pair in step]
    assert len(told) == len(set(told))  # each message reported once


def test_both_stores_report_what_brute_force_says_over_random_histories(tmp_path: Path) -> None:
    """The same random history through both stores' apply: each batch's receipts are the
    oracle's, and each message is reported once."""
    for seed in range(4):
        rng = random.Random(seed)
        kinds = ["post", "post", "ack", "ack", "join", "leave"]
        ops: list[Op] = [(rng.choice(kinds), rng.randrange(5), rng.randrange(1, 4)) for _ in range(80)]
        _, expected = _oracle_run(ops)
        for store in (MemoryStore(), SqliteStore(tmp_path / f"{seed}.db", checkpoint_interval=0)):
            g = create(store, "u0")
            members = {"u0": 1}
            acked: dict[str, int] = {}
            last = 1
            got = []
            for what, who, offset in ops:
                user = USERS[who]
                if what == "post" and user in members:
                    result = store.apply(Batch(messages=[post(user, g, b"x")]))
                elif what == "join" and user not in members:
                    result = store.apply(Batch(messages=[event(user, g, JOIN)]))
                    members[user] = last + 1
                elif what == "leave" and user in members:
                    result = store.apply(Batch(messages=[event(user, g, LEAVE)]))
                    del members[user]
                elif what == "ack" and user in members:
                    position = min(last, max(acked.get(user, 0), members[user] - 1) + offset)
                    acked[user] = max(acked.get(user, 0), position)
                    batch = Batch(cursors={(user, "d", g): position}, delivered={(g, user): position})
                    result = store.apply(batch)
                else:
                    continue
                last += bool(result.stored)
                got.append({(n.sender, n.position) for n in result.newly_delivered})
            assert got == expected, seed


# ---- costs ---------------------------------------------------------------------------


def _statements(store: SqliteStore, batch: Batch) -> tuple[int, int]:
    """(statements, SQLite VM steps in tens) to apply ``batch``: the work, not the time."""
    statements: list[str] = []
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    store.db.set_trace_callback(statements.append)
    store.db.set_progress_handler(tick, 10)
    try:
        store.apply(batch)
    finally:
        store.db.set_trace_callback(None)
        store.db.set_progress_handler(None, 10)
    return len(statements), steps


def test_an_ack_s_work_does_not_grow_with_the_members(tmp_path: Path) -> None:
    """Before: every ack walked every member (46 µs per ack at 500 members), and each
    member's first ack re-reported the message. Now an ack is its cursor's upsert and, when it
    delivers something, one read of what it delivered: the same at 10 members and at 400."""
    costs = {}
    for size in (10, 400):
        store = SqliteStore(tmp_path / f"{size}.db", checkpoint_interval=0)
        g = create(store, "u0")
        others = tuple(f"u{i}" for i in range(1, size))
        stored(store, event("u0", g, ADD, others))  # 2
        for i in range(5):
            stored(store, post("u0", g, bytes([i])))  # 3..7
        ack(store, "u1", g, 3)  # the mark is built here, once (one read of the members)
        for user in others[2:]:
            ack(store, user, g, 7)
        cursor = {("u1", "p", g): 5}
        quiet = _statements(store, Batch(cursors=cursor, delivered={(g, "u1"): 5}))  # delivers nothing: u2 holds
        final = {("u2", "p", g): 7}
        result = store.apply(Batch(cursors=final, delivered={(g, "u2"): 6}))
        assert [n.position for n in result.newly_delivered] == [3, 4, 5]  # u1 had 5 of them
        delivering = _statements(store, Batch(cursors={("u1", "p", g): 7}, delivered={(g, "u1"): 7}))
        costs[size] = (quiet, delivering)
        store.close()
    for (statements, steps), (statements_400, steps_400) in zip(costs[10], costs[400], strict=True):
        assert statements == statements_400 and steps_400 <= steps + 2, costs  # +2: where the counting falls
    assert costs[10][0][0] <= 4 and costs[10][1][0] <= 5, costs  # BEGIN, upsert(s), a read, COMMIT


# ---- migration -------------------------------------------------------------------------


def _dm_traffic(store: SqliteStore) -> None:
    store.apply(Batch(accounts=accounts("a", "b", "c"), logins=[LoginRead(1, "a", "laptop", 100, 1000)]))
    pairs = [("a", "b"), ("c", "a"), ("b", "c")]
    sent = [msg(s, t, f"{s}{t}{i}".encode(), device="laptop" if s == "a" else "d") for i in range(6) for s, t in pairs]
    store.apply(Batch(messages=sent))
    store.apply(Batch(logins=[LoginRead(2, "b", "phone", 100, 1000)]))
    store.apply(Batch(cursors={("b", "phone", "dm:a,b"): 4}, delivered={("dm:a,b", "b"): 4}))
    store.apply(Batch(cursors={("a", "laptop", "dm:a,c"): 3}, delivered={("dm:a,c", "a"): 3}))
    store.apply(Batch(notified={("a", "laptop", "dm:a,b"): 2}))


def _answers(store: SqliteStore) -> list[object]:
    """Catch-up, History, logins (waiting and missed receipts) and an ack's receipts: DM reads."""
    got: list[object] = []
    for user, device in [("a", "laptop"), ("b", "phone"), ("b", "new"), ("c", "d")]:
        fetched = store.apply(Batch(fetches=[Fetch(1, user, device, 100, 3)])).fetched[1]
        got.append([(m.stream, m.position, m.body) for m in fetched])
    for stream in ("dm:a,b", "dm:a,c", "dm:b,c"):
        got.append([m.body for m in store.apply(Batch(history={1: (stream, 5, 3, 1 << 20)})).history[1]])
    logins = store.apply(Batch(logins=[LoginRead(1, "a", "laptop", 100, 1000), LoginRead(2, "c", "d", 100, 2)]))
    got += [(i.waiting, [(n.stream, n.position) for n in i.receipts]) for i in logins.logins.values()]
    got.append(ack(store, "b", "dm:a,b", 6))
    return got


def test_a_version_5_database_with_direct_messages_migrates_and_answers_the_same(tmp_path: Path) -> None:
    """A real version-5 file (its schema made by MIGRATIONS[:5]) holding direct-message
    traffic: after the migration to 6 every DM read answers as before (the same traffic in a
    database made at version 6 gives the "before": direct messages keep their code path),
    each membership is [1, oo), and the new tables are empty."""
    fresh = SqliteStore(tmp_path / "fresh.db", checkpoint_interval=0)
    _dm_traffic(fresh)
    v5 = tmp_path / "v5.db"
    old = sqlite3.connect(v5)
    for statement in [s for version in MIGRATIONS[:5] for s in version]:
        old.execute(statement)
    old.execute("PRAGMA user_version=5")
    for table in ("users", "streams", "messages", "cursors", "devices", "notified", "device_tokens"):
        rows = fresh.db.execute(f"SELECT * FROM {table}").fetchall()
        if rows:
            old.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    old.executemany(  # a v5 file had no g:0 (v8's): its memberships are the direct streams'
        "INSERT INTO members VALUES (?, ?)", fresh.db.execute("SELECT user, stream FROM members WHERE stream != 'g:0'")
    )
    old.commit()
    old.close()
    before = _answers(fresh)
    fresh.close()
    migrated = SqliteStore(v5, checkpoint_interval=0)
    assert migrated.db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    spans = set(migrated.db.execute("SELECT joined_at, left_at FROM members"))
    assert spans == {(1, None)} and migrated.load_groups().keys() == {"g:0"}  # v8's announcements only
    users = tuple(sorted(name for (name,) in migrated.db.execute("SELECT name FROM users")))
    assert migrated.load_groups()["g:0"].members == users  # every account reads them
    assert _answers(migrated) == before
    assert before[0] and any(before[4:7]) and before[-1]  # the reads found something to compare
    indexes = {name for (name,) in migrated.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"members_current", "groups_by_name"} <= indexes
    migrated.close()


# ---- the classroom's moderation (schema v7, docs/groups-plan.md step 6) -------------------------


def moderation(sender: str, stream: str, op: int, users: tuple[str, ...] = (), **more: Any) -> NewMessage:
    """A moderation event as the engine writes it (its body opaque here; a REDACT's is the store's)."""
    change = GroupChange(op, users, **more)
    return NewMessage(stream, (), sender, "d", 0, 2, "club", GROUP_EVENT, next(_clock), b"event", change)


def test_the_moderation_numbers_are_the_protocol_s_and_the_tombstone_is_its_event() -> None:
    kinds = [GroupEventKind.DELETED, GroupEventKind.MUTED, GroupEventKind.UNMUTED, GroupEventKind.SLOW]
    assert [*kinds, GroupEventKind.REMOVED_MESSAGE] == [DELETE, MUTE, UNMUTE, SLOW, REDACT]
    body = tombstone("bøb", "club", 2**63 - 1)
    assert body == GroupEvent(GroupEventKind.REMOVED_MESSAGE, ("bøb",), "club", 2**63 - 1).encode()


def test_delete_closes_every_interval_frees_the_name_and_the_group_is_gone(store: AnyStore) -> None:
    g = create(store)
    stored(store, event("bob", g, JOIN))  # 2
    stored(store, post("bob", g, b"hi"))  # 3
    gone = stored(store, moderation("dan", g, DELETE))  # 4: staff, not a member
    assert gone.change is not None and gone.change.op == DELETE
    assert g not in store.load_groups()
    assert page(store, g, "bob") == [2, 3, 4]  # History keeps the intervals, up to the deletion
    assert fetch(store, "bob", "new") == []  # no current interval: nothing to catch up
    late = one(store, post("alice", g, b"after"))
    assert isinstance(late, Refused) and late.why == "no_group"
    assert create(store, "carol", "club") == "g:2"  # the name is free; the stream is not reused


def test_mute_unmute_and_slow_mode_are_stored_and_loaded(store: AnyStore) -> None:
    g = create(store)
    stored(store, event("alice", g, ADD, ("bob", "carol")))
    muted = stored(store, moderation("dan", g, MUTE, ("bob", "carol"), seconds=60))
    stored(store, moderation("alice", g, UNMUTE, ("carol",)))
    stored(store, moderation("alice", g, SLOW, seconds=30))
    record = store.load_groups()[g]
    assert record.mutes == (("bob", muted.time_us + 60_000_000),) and record.slow_s == 30
    stored(store, moderation("alice", g, SLOW, seconds=0))
    stored(store, moderation("alice", g, DELETE))
    create(store, "alice", "club")
    assert [(r.slow_s, r.mutes) for s, r in store.load_groups().items() if s != ANNOUNCEMENTS] == [(0, ())]


def test_a_redaction_leaves_a_tombstone_in_place_by_the_rules_at_its_turn(store: AnyStore) -> None:
    g = create(store)
    stored(store, event("bob", g, JOIN))  # 2
    hi = stored(store, post("bob", g, b"secret words"))  # 3
    stored(store, post("alice", g, b"kept"))  # 4
    for sender, position, moderator, why in [
        ("carol", 3, False, "forbidden"),  # another's message, no moderator
        ("bob", 2, False, "no_message"),  # an event
        ("bob", 9, False, "no_message"),  # nothing there
        ("bob", 0, True, "no_message"),
    ]:
        refused = one(store, moderation(sender, g, REDACT, position=position, moderator=moderator))
        assert isinstance(refused, Refused) and refused.why == why, (sender, position)
    own = stored(store, moderation("bob", g, REDACT, position=3))  # 5: its author, who need not moderate
    body = tombstone("bob", "club", 3)
    assert own.body == body and own.position == 5
    again = one(store, moderation("alice", g, REDACT, position=3, moderator=True))
    assert isinstance(again, Refused) and again.why == "no_message"  # removed already
    found = store.apply(Batch(history={1: (g, 0, 100, 1 << 20)}, readers={1: "alice"})).history[1]
    tomb = found[2]
    assert (tomb.position, tomb.sender, tomb.time_us, tomb.message_id) == (3, "bob", hi.time_us, hi.message_id)
    assert (tomb.content_type, tomb.body) == (GROUP_EVENT, body)
    assert [m.body for m in found[3:]] == [b"kept", body]  # the event after it: the same body
    assert fetch(store, "alice", "new")[-3:] == [3, 4, 5] and b"secret" not in b"".join(m.body for m in found)
    stored(store, moderation("alice", g, REDACT, position=4, moderator=False))  # the owner's own: as author


def test_a_redacted_text_is_gone_from_the_database_and_the_wal_files(tmp_path: Path) -> None:
    """The bytes on disk: ``secure_delete`` zeroes the old cell, the TRUNCATE checkpoint empties
    the WAL that held the page as first written; another message's text stays. The long text
    fills overflow pages, which without ``secure_delete`` would keep it on the free list."""
    path = tmp_path / "db"
    store = SqliteStore(path, checkpoint_interval=0)
    try:
        store.apply(Batch(accounts=accounts("alice", "bob")))
        g = create(store)
        stored(store, event("bob", g, JOIN))
        stored(store, post("bob", g, b"SECRET-redact-me-0123456789"))  # 3
        stored(store, post("alice", g, b"KEPT-visible-9876543210"))  # 4
        stored(store, post("bob", g, b"LONG-SECRET-" * 700))  # 5: 8 KB, in overflow pages
        store.db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the text in both files, as in a server that ran a while

        def on_disk() -> bytes:
            return b"".join(p.read_bytes() for p in (path, tmp_path / "db-wal") if p.exists())

        assert b"SECRET-redact-me" in on_disk() and b"LONG-SECRET-" in on_disk()
        stored(store, moderation("alice", g, REDACT, position=3, moderator=True))
        stored(store, moderation("bob", g, REDACT, position=5))
        assert b"SECRET-redact-me" not in on_disk() and b"LONG-SECRET-" not in on_disk()
        assert b"KEPT-visible" in on_disk()
    finally:
        store.close()


def test_a_reader_that_holds_the_wal_delays_its_truncation_without_failing_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = SqliteStore(path, checkpoint_interval=0)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        store.apply(Batch(accounts=accounts("alice", "bob")))
        g = create(store)
        stored(store, post("alice", g, b"SECRET-held-by-a-reader"))  # 2
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()  # a snapshot that needs the WAL
        stored(store, moderation("alice", g, REDACT, position=2, moderator=True))  # committed all the same
        assert store.checkpoints.scrub  # to be tried again
        reader.execute("COMMIT")
        stored(store, post("alice", g, b"next"))  # the next batch truncates
        assert not store.checkpoints.scrub
        wal = tmp_path / "db-wal"
        assert b"SECRET-held" not in path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    finally:
        reader.close()
        store.close()
