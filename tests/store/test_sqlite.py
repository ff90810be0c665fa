"""The SQLite store on its own (one backend is enough: no sockets here)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from csce513msg.store import (
    Account,
    Batch,
    BatchResult,
    Fetch,
    LoginRead,
    MemoryStore,
    NewMessage,
    StoredMessage,
)
from csce513msg.store.accounts import AccountBook
from csce513msg.store.checkpoints import TAIL_EVERY
from csce513msg.store.schema import MIGRATIONS
from csce513msg.store.sqlite import SqliteStore


def accounts(*names: str) -> list[Account]:
    return [Account(name, "student", "scrypt$1$1$1$c2FsdA$a2V5", 1) for name in names]


def msg(
    sender: str, target: str, body: bytes, client_id: int = 0, device: str = "d", time_us: int = 1000
) -> NewMessage:
    stream = "dm:" + ",".join(sorted((sender, target)))
    return NewMessage(stream, tuple(sorted((sender, target))), sender, device, client_id, 1, target, 0, time_us, body)


def kept(result: BatchResult) -> list[StoredMessage]:
    """The batch's messages, each of which the store must have taken (none Refused)."""
    stored = [m for m in result.stored if isinstance(m, StoredMessage)]
    assert len(stored) == len(result.stored), result.stored
    return stored


def test_messages_survive_a_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = SqliteStore(path, "full", checkpoint_interval=0)
    (first,) = kept(store.apply(Batch(accounts=accounts("alice", "bob"), messages=[msg("alice", "bob", b"1")])))
    store.close()
    store = SqliteStore(path, "normal", checkpoint_interval=0)
    assert store.load_accounts() == {a.name: a for a in accounts("alice", "bob")}
    (second,) = kept(store.apply(Batch(messages=[msg("bob", "alice", b"2", time_us=5)])))  # clock went back
    assert second.message_id > first.message_id and second.position == 2
    fetched = store.apply(Batch(fetches=[Fetch(1, "bob", "phone", 10, 100)])).fetched[1]
    assert [m.body for m in fetched] == [b"1", b"2"]  # what bob sent from device "d" is news to his phone
    store.close()


def test_same_rules_as_the_memory_store(tmp_path: Path) -> None:
    """One scenario against both stores: resends, cursors, own-device filter, limits."""
    for store in (MemoryStore(), SqliteStore(tmp_path / "db", checkpoint_interval=0)):
        batch = Batch(
            accounts=accounts("a", "b"),
            messages=[msg("a", "b", b"x", 7), msg("a", "b", b"x", 7), msg("b", "a", b"y", device="bd")]
            + [msg("a", "b", bytes([i])) for i in range(5)],
        )
        stored = kept(store.apply(batch))
        assert [m.duplicate for m in stored[:3]] == [False, True, False]
        assert stored[0].message_id == stored[1].message_id
        assert [m.position for m in stored] == [1, 1, 2, 3, 4, 5, 6, 7]
        result = store.apply(Batch(cursors={("b", "bd", "dm:a,b"): 2}, fetches=[Fetch(9, "b", "bd", 3, 100)]))
        assert [m.position for m in result.fetched[9]] == [3, 4, 5]  # after the cursor, limited
        new_device = store.apply(Batch(fetches=[Fetch(1, "b", "new", 100, 2)])).fetched[1]
        assert [m.position for m in new_device] == [6, 7]  # a new device starts 2 back
        reads = [LoginRead(4, "b", "bd", 100, 1000), LoginRead(5, "a", "new", 3, 1000)]
        logins = store.apply(Batch(logins=reads)).logins
        assert logins[4].waiting == 5  # positions 3-7, as the fetch would deliver them
        assert logins[5].waiting == 3  # a new device of a: the last 3, though a sent them (from device "d")


def test_migrates_an_older_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA user_version=0")  # an empty database of "version 0"
    old.close()
    SqliteStore(path, checkpoint_interval=0).close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "streams", "members", "messages", "cursors"} <= tables


def test_a_read_only_database_gives_a_clear_error_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    SqliteStore(path, checkpoint_interval=0).close()
    store = SqliteStore(f"file:{path}?mode=ro", checkpoint_interval=0)
    result = store.apply(Batch(accounts=accounts("a"), messages=[msg("a", "b", b"lost")]))
    assert result.error and "readonly" in result.error.replace(" ", "").lower() and not result.stored


def test_a_full_disk_rolls_the_batch_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLite's own "disk full"
    result = store.apply(Batch(messages=[msg("a", "b", b"x" * 4000, i + 1) for i in range(20)]))
    assert result.error and "full" in result.error and not result.stored
    store.db.execute("PRAGMA max_page_count=1000000")
    ok = store.apply(Batch(messages=[msg("a", "b", b"small", 99)]))
    assert ok.error is None and kept(ok)[0].position == 1  # the failed batch left no trace


def test_version_1_users_keep_their_name_without_a_password(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("INSERT INTO users VALUES ('zoe', 5)")
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    store = SqliteStore(path, checkpoint_interval=0)
    assert store.load_accounts() == {"zoe": Account("zoe", "student", "", 5)}  # no login until `user passwd`


def test_version_3_data_survives_the_rebuild_without_rowid(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = sqlite3.connect(path)
    for statement in [s for version in MIGRATIONS[:3] for s in version]:
        old.execute(statement)
    store_v3 = [
        "INSERT INTO users VALUES ('a', 1, 'student', ''), ('b', 1, 'student', '')",
        "INSERT INTO streams VALUES ('dm:a,b', 2)",
        "INSERT INTO members VALUES ('a', 'dm:a,b'), ('b', 'dm:a,b')",
        "INSERT INTO messages VALUES (10, 'dm:a,b', 1, 'a', 'd', 0, 1, 'b', 0, 10, x'31')",
        "INSERT INTO messages VALUES (11, 'dm:a,b', 2, 'a', 'd', 0, 1, 'b', 0, 11, x'32')",
        "INSERT INTO devices VALUES ('b', 'bd', 0, 7)",
        "INSERT INTO cursors VALUES ('b', 'bd', 'dm:a,b', 1)",
        "INSERT INTO delivered VALUES ('dm:a,b', 'b', 1)",
        "INSERT INTO notified VALUES ('a', 'd', 'dm:a,b', 1)",
        "PRAGMA user_version=3",
    ]
    for statement in store_v3:
        old.execute(statement)
    old.commit()
    old.close()
    store = SqliteStore(path, checkpoint_interval=0)
    tables = dict(store.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    assert all("WITHOUT ROWID" in tables[t] for t in ("streams", "members", "cursors", "devices", "notified"))
    assert "delivered" not in tables  # derived from the cursors now
    assert store.db.execute("SELECT keys_floor FROM devices").fetchall() == [(7,)]
    fetched = store.apply(Batch(fetches=[Fetch(1, "b", "bd", 10, 100)])).fetched[1]
    assert [m.body for m in fetched] == [b"2"]  # after b's cursor
    assert kept(store.apply(Batch(messages=[msg("a", "b", b"3")])))[0].position == 3
    notes = store.apply(Batch(cursors={("b", "bd", "dm:a,b"): 3}, delivered={("dm:a,b", "b"): 3})).newly_delivered
    assert [n.position for n in notes] == [2, 3]  # after what was delivered before the rebuild
    store.close()


def test_the_poll_reports_what_another_process_changed(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = SqliteStore(path, checkpoint_interval=0)
    store.load_accounts()
    store.apply(Batch(accounts=accounts("own")))  # our own registration is no news
    assert store.apply(Batch(poll_accounts=True)).accounts == {}
    book = AccountBook(path)
    book.add("ann", "h1", "instructor")
    book.add("ben", "h2")
    changed = store.apply(Batch(poll_accounts=True)).accounts
    ann = changed["ann"]
    assert sorted(changed) == ["ann", "ben"] and ann is not None and ann.role == "instructor"
    assert store.apply(Batch(poll_accounts=True)).accounts == {}  # nothing new since
    book.set_password("ann", "h3")
    book.remove("ben")
    changed = store.apply(Batch(poll_accounts=True)).accounts
    ann = changed["ann"]
    assert ann is not None and changed == {"ann": Account("ann", "instructor", "h3", ann.created_us), "ben": None}
    book.close()


def test_retention_expires_the_same_way_in_both_stores(tmp_path: Path) -> None:
    from csce513msg.store import Refused

    for store in (MemoryStore(), SqliteStore(tmp_path / "db", checkpoint_interval=0)):
        old = [msg("a", "b", bytes([i]), client_id=i + 1, time_us=1000 + i) for i in range(3)]
        store.apply(Batch(logins=[LoginRead(1, "a", "d", 100, 1000)], messages=old))
        new = msg("a", "b", b"new", client_id=10, time_us=5000)
        result = store.apply(Batch(expire_before_us=2000, messages=[new, old[1]]))
        first, resent = result.stored
        assert isinstance(first, StoredMessage) and first.position == 4  # positions are never reused
        assert isinstance(resent, Refused)  # a resend of an expired message
        page = store.apply(Batch(history={1: ("dm:a,b", 0, 10, 1 << 20)})).history[1]
        assert [m.body for m in page] == [b"new"]
        fetched = store.apply(Batch(fetches=[Fetch(2, "b", "phone", 10, 100)])).fetched[2]
        assert [m.body for m in fetched] == [b"new"]


def round_of_batches(store: SqliteStore, start: int, count: int = TAIL_EVERY) -> list[Callable[[], None] | None]:
    """``count`` batches of one message each, and after each the store's maintenance job (None: none
    for the writer), as the hub asks for it."""
    jobs = []
    for i in range(start, start + count):
        store.apply(Batch(messages=[msg("a", f"u{i % 50}", b"x" * 200, time_us=i)]))
        jobs.append(store.maintenance())
    return jobs


def salts(wal: Path) -> bytes:
    """The WAL header's two salts: SQLite changes them each time it starts the WAL over."""
    return wal.read_bytes()[16:24]


def test_the_tail_is_checkpointed_beside_the_writer_until_the_wal_runs_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a checkpointer thread, the tail due every TAIL_EVERY batches is its job, on its own
    connection: no maintenance for the hub (no batch waits for the checkpoint's syncs). Once it
    found WAL_FRAMES_ALONE frames in the WAL (the checkpoints beside a writer that never pauses
    cannot start it over), the writer checkpoints it itself, between two transactions, the WAL
    starts over at the next commit, and the tail is the thread's again."""
    from csce513msg.store import checkpoints

    monkeypatch.setattr(checkpoints, "WAL_FRAMES_ALONE", 100)  # fewer than a round of batches writes
    store = SqliteStore(tmp_path / "db", checkpoint_interval=3600)  # the thread runs when asked, not on a timer
    wal = tmp_path / "db-wal"

    assert round_of_batches(store, 0) == [None] * TAIL_EVERY  # the tail was the thread's, woken at the last
    deadline = time.monotonic() + 30
    while store.checkpoints.wal_frames == 0 and time.monotonic() < deadline:  # the thread's checkpoint counted the WAL
        time.sleep(0.01)
    assert store.checkpoints.wal_frames >= 100  # a round of batches wrote more frames than the WAL may hold
    *before, last = round_of_batches(store, TAIL_EVERY)  # (the thread is not woken: these stay in the WAL)
    assert before == [None] * (TAIL_EVERY - 1) and last is not None
    old = salts(wal)
    last()  # the storage thread runs it, no batch beside it: every frame moved
    assert store.checkpoints.wal_frames == 0
    store.apply(Batch(messages=[msg("a", "b", b"after", time_us=1)]))
    assert salts(wal) != old  # the next commit started the WAL over
    assert round_of_batches(store, 2 * TAIL_EVERY + 1) == [None] * TAIL_EVERY  # the thread's again
    store.close()


class _CheckpointsFail:
    """The checkpointer thread's connection on a disk that cannot take the database's growth:
    its checkpoints fail as SQLite's do there (the writer's own connection is a real one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, parameters: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, parameters)

    def close(self) -> None:
        self.db.close()


def test_a_failing_checkpoint_beside_the_writer_is_logged_once_and_hands_the_tail_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from csce513msg.store import checkpoints, schema
    from csce513msg.store.checkpoints import WAL_FRAMES_ALONE

    real = schema.connect

    def connect(path: str) -> sqlite3.Connection:  # the checkpointer thread's (the writer's is the store's)
        return _CheckpointsFail(real(path))  # type: ignore[return-value]

    monkeypatch.setattr(checkpoints, "connect", connect)
    store = SqliteStore(tmp_path / "db", checkpoint_interval=3600)

    for start in (0, 2 * TAIL_EVERY):  # twice: the thread fails twice, a stretch of failures
        assert round_of_batches(store, start) == [None] * TAIL_EVERY  # the tail went to the thread, which fails
        deadline = time.monotonic() + 30
        while store.checkpoints.wal_frames < WAL_FRAMES_ALONE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.checkpoints.wal_frames == WAL_FRAMES_ALONE  # as if it had fallen behind: the writer's turn
        *before, last = round_of_batches(store, start + TAIL_EVERY)
        assert before == [None] * (TAIL_EVERY - 1) and last is not None
        last()  # the writer's own connection checkpoints, and every frame moved
        assert store.checkpoints.wal_frames == 0
    failures = [r for r in caplog.records if "beside the writer failed" in r.getMessage()]
    assert len(failures) == 1 and "disk is full" in failures[0].getMessage()  # once a stretch, not each time
    store.close()
    with sqlite3.connect(tmp_path / "db") as db:  # every batch stood: a checkpoint's failure costs none
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4 * TAIL_EVERY


def test_a_checkpointer_that_cannot_open_the_database_hands_the_tail_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpointer thread's own connection fails to open (out of descriptors, say): the
    thread says so and ends, and the writer checkpoints the tail from then on, so the WAL
    still starts over (a thread that died silently left it to grow without bound)."""
    from csce513msg.store import checkpoints
    from csce513msg.store.checkpoints import WAL_FRAMES_ALONE

    def connect(path: str) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(checkpoints, "connect", connect)
    store = SqliteStore(tmp_path / "db", checkpoint_interval=3600)
    deadline = time.monotonic() + 30
    while store.checkpoints.wal_frames < WAL_FRAMES_ALONE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("could not open the database" in r.getMessage() for r in caplog.records)
    *before, last = round_of_batches(store, 0)
    assert before == [None] * (TAIL_EVERY - 1) and last is not None  # the writer's own, every round
    old = salts(tmp_path / "db-wal")
    last()
    store.apply(Batch(messages=[msg("a", "b", b"after", time_us=1)]))
    assert salts(tmp_path / "db-wal") != old  # the WAL started over
    store.close()


def test_with_full_durability_the_writer_checkpoints_the_tail_itself(tmp_path: Path) -> None:
    """Every ``full`` commit syncs the WAL: a checkpoint's syncs beside it would only lengthen
    each commit's, so the tail is the writer's own every TAIL_EVERY batches, with no batch beside it."""

    store = SqliteStore(tmp_path / "db", durability="full", checkpoint_interval=3600)
    wal = tmp_path / "db-wal"
    jobs = round_of_batches(store, 0, 2 * TAIL_EVERY)
    due = [i for i, job in enumerate(jobs) if job is not None]
    assert due == [TAIL_EVERY - 1, 2 * TAIL_EVERY - 1]  # the hub's maintenance job, once a round
    old = salts(wal)
    last = jobs[-1]
    assert last is not None
    last()  # the storage thread runs it: everything moved
    store.apply(Batch(messages=[msg("a", "b", b"after", time_us=1)]))
    assert salts(wal) != old  # the next commit started the WAL over
    assert not store.checkpoints.tail.is_set()  # the checkpointer thread was never asked for the tail
    store.close()


def test_the_wal_stays_bounded_under_sustained_writes(tmp_path: Path) -> None:
    """Without a checkpointer thread the writer checkpoints the WAL's tail itself every
    TAIL_EVERY batches (``maintenance``, which the hub runs after a batch), so the WAL starts
    over instead of growing for as long as the load lasts (it reached 900 MB in 8 s). (With
    the thread, the test above: the writer takes over once the WAL runs long.)"""

    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)  # no background checkpoints at all
    wal = tmp_path / "db-wal"
    sizes = []
    for i in range(TAIL_EVERY * 8):
        store.apply(Batch(messages=[msg("a", f"u{(i * 7 + j) % 50}", b"x" * 200, time_us=i) for j in range(10)]))
        if (job := store.maintenance()) is not None:
            assert i % TAIL_EVERY == TAIL_EVERY - 1  # after every TAIL_EVERY batches, no more often
            job()
        if i % TAIL_EVERY == TAIL_EVERY - 1:
            sizes.append(wal.stat().st_size)
    assert sizes[-1] < 3 * sizes[0]  # it starts over: about one round of frames (11 times that without)
    store.close()


def test_delivered_receipts_from_memory_match_the_database(tmp_path: Path) -> None:
    """The writer answers most acks from its recent messages (no SELECT); what it answers
    must be what the database says: two-way traffic, partial and repeated acks, more
    messages than it keeps in memory (RECENT), and a reopened store (nothing in memory)."""
    from csce513msg.store.sqlite import RECENT

    def positions(store: MemoryStore | SqliteStore, acks: dict[tuple[str, str], int]) -> list[tuple[str, int]]:
        cursors = {(user, "dev", stream): pos for (stream, user), pos in acks.items()}  # as the hub sends them
        return [(n.sender, n.position) for n in store.apply(Batch(cursors=cursors, delivered=acks)).newly_delivered]

    path = tmp_path / "db"
    sqlite = SqliteStore(path, checkpoint_interval=0)
    for store in (MemoryStore(), sqlite):
        store.apply(Batch(messages=[msg("a", "b", b"1"), msg("b", "a", b"2"), msg("a", "b", b"3")]))
        assert positions(store, {("dm:a,b", "b"): 2}) == [("a", 1)]  # b's own message is not news to b
        assert positions(store, {("dm:a,b", "b"): 2}) == []  # a repeated ack
        assert positions(store, {("dm:a,b", "b"): 3, ("dm:a,b", "a"): 3}) == [("a", 3), ("b", 2)]
        assert positions(store, {("dm:a,b", "b"): 1}) == []  # an ack going back
        store.apply(Batch(messages=[msg("a", "b", bytes([i])) for i in range(RECENT + 5)]))  # b is away
        expected = [("a", p) for p in range(4, RECENT + 9)]
        assert positions(store, {("dm:a,b", "b"): RECENT + 8}) == expected  # older than memory holds
    sqlite.close()
    store = SqliteStore(path, checkpoint_interval=0)  # reopened: every answer from the database
    store.apply(Batch(messages=[msg("a", "b", b"late")]))
    assert positions(store, {("dm:a,b", "b"): RECENT + 9}) == [("a", RECENT + 9)]
    assert positions(store, {("dm:a,b", "a"): RECENT + 9}) == []  # everything after 3 was a's own
    store.close()


def test_positions_are_never_reused_after_every_message_expired(tmp_path: Path) -> None:
    """A stream's last position lives in its newest message; retention keeps it in `streams`
    before deleting, so a reopened store (nothing in memory) carries on from it."""
    path = tmp_path / "db"
    store = SqliteStore(path, checkpoint_interval=0)
    store.apply(Batch(messages=[msg("a", "b", bytes([i]), time_us=1000 + i) for i in range(3)]))
    store.apply(Batch(expire_before_us=10**9))  # everything
    assert store.db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    store.close()
    for expected in (4, 5):
        store = SqliteStore(path, checkpoint_interval=0)
        (stored,) = kept(store.apply(Batch(messages=[msg("b", "a", b"after", time_us=2 * 10**9)])))
        assert stored.position == expected
        store.close()


def test_missed_delivered_receipts_come_at_login_from_the_other_members_cursors(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    store.apply(Batch(logins=[LoginRead(1, "a", "laptop", 100, 1000)]))
    store.apply(Batch(messages=[msg("a", "b", b"1", device="laptop"), msg("a", "b", b"2", device="laptop")]))
    store.apply(Batch(cursors={("b", "phone", "dm:a,b"): 1}, delivered={("dm:a,b", "b"): 1}))
    store.apply(Batch(cursors={("a", "laptop", "dm:a,b"): 2}))  # a's own cursor is not b's delivery
    first = store.apply(Batch(logins=[LoginRead(2, "a", "laptop", 100, 1000)])).logins[2]
    assert [(n.sender, n.position) for n in first.receipts] == [("a", 1)]
    store.apply(Batch(cursors={("b", "tablet", "dm:a,b"): 2}, delivered={("dm:a,b", "b"): 2}))
    again = store.apply(Batch(logins=[LoginRead(3, "a", "laptop", 100, 1000)])).logins[3]
    assert [n.position for n in again.receipts] == [2]  # 1 was told already (notified)
    store.close()


def test_the_writer_s_caches_start_over_past_their_bound_and_answers_stay_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CACHED_STREAMS bounds the memory of delivered receipts; past it the caches are
    emptied and the next answers come from the database: the same answers."""
    from csce513msg.store import sqlite as module

    monkeypatch.setattr(module, "CACHED_STREAMS", 2)  # five streams: the caches start over every round
    peers = [f"p{i}" for i in range(5)]
    answers = []
    for store in (MemoryStore(), SqliteStore(tmp_path / "db", checkpoint_interval=0)):
        got, last = [], dict.fromkeys(peers, 0)  # peer -> last position of the stream a-peer
        for round_ in range(3):
            store.apply(Batch(messages=[msg("a", p, bytes([round_])) for p in peers]))
            store.apply(Batch(messages=[msg(p, "a", bytes([round_])) for p in peers[:2]]))
            last = {p: last[p] + 1 + (p in peers[:2]) for p in peers}
            acks = {(f"dm:a,{p}", p): last[p] for p in peers} | {(f"dm:a,{p}", "a"): last[p] for p in peers[:2]}
            cursors = {(user, "dev", stream): pos for (stream, user), pos in acks.items()}
            result = store.apply(Batch(cursors=cursors, delivered=acks))
            got.append(sorted((n.sender, n.stream, n.position) for n in result.newly_delivered))
        answers.append(got)
    assert answers[0] == answers[1]
    assert [len(notes) for notes in answers[0]] == [7, 7, 7]  # a's 5 messages, and the 2 replies


def test_catch_up_is_the_same_in_both_stores_across_streams_and_devices(tmp_path: Path) -> None:
    """Catch-up reads each stream from where the device stands and merges the streams by
    id: a cursor, no cursor (after the device's first login, which here falls inside a
    stream), the own-device filter, a new device's history, and the cap on the count."""
    answers = []
    for store in (MemoryStore(), SqliteStore(tmp_path / "db", checkpoint_interval=0)):
        t = iter(range(1000, 2000))
        store.apply(Batch(messages=[msg("a", "b", b"ab1", time_us=next(t)), msg("c", "b", b"cb1", time_us=next(t))]))
        store.apply(Batch(logins=[LoginRead(1, "b", "old", 100, 1000)]))  # "old" starts here
        later = [msg(s, "b", f"{s}b{i}".encode(), time_us=next(t)) for i in (2, 3) for s in ("a", "c")]
        later.append(msg("b", "a", b"ba", device="old", time_us=next(t)))  # from "old" itself
        store.apply(Batch(messages=later, cursors={("b", "acked", "dm:a,b"): 2}))
        got: list[list[bytes] | list[int]] = []
        for device, limit, history in [("old", 10, 0), ("old", 2, 0), ("acked", 10, 2), ("new", 10, 1)]:
            fetched = store.apply(Batch(fetches=[Fetch(1, "b", device, limit, history)])).fetched[1]
            got.append([m.body for m in fetched])
        counts = store.apply(Batch(logins=[LoginRead(2, "b", "old", 100, 3), LoginRead(3, "b", "new", 1, 1000)]))
        got.append([counts.logins[2].waiting, counts.logins[3].waiting])
        answers.append(got)
    assert answers[0] == answers[1]
    assert answers[0] == [
        [b"ab2", b"cb2", b"ab3", b"cb3"],  # after its first login, both streams by id, not its own "ba"
        [b"ab2", b"cb2"],
        [b"cb2", b"ab3", b"cb3", b"ba"],  # a-b after the cursor; c-b (no cursor) its last 2
        [b"cb3", b"ba"],  # a new device: the last message of each stream
        [3, 2],  # "old" has 4 waiting: counted up to 3
    ]


def _vm_steps(store: SqliteStore, batch: Batch) -> int:
    """SQLite virtual machine steps (in hundreds) to apply ``batch``: the work, not the time."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    store.db.set_progress_handler(tick, 100)
    try:
        store.apply(batch)
    finally:
        store.db.set_progress_handler(None, 100)
    return steps


def test_a_login_and_a_catch_up_cost_what_they_return_not_the_backlog(tmp_path: Path) -> None:
    """Issue 9: a user with 50,000 unacknowledged messages logging in over and over raised
    everyone's latency 172x: the count of waiting messages and the catch-up read (and
    sorted) the whole backlog, on the storage thread everyone shares. Now a backlog ten
    times longer costs the same work, counted in SQLite VM steps (not in time): bob's
    phone (no cursor on the stream) and tablet (a cursor), their logins and fetches. His
    missed delivered receipts (alice's phone read all she sent) are looked for once."""
    stream = "dm:alice,bob"
    costs, answers = {}, {}
    for backlog in (5_000, 50_000):
        store = SqliteStore(tmp_path / f"{backlog}.db", checkpoint_interval=0)
        store.apply(Batch(logins=[LoginRead(1, "bob", "phone", 100, 1000), LoginRead(2, "bob", "tablet", 100, 1000)]))
        for start in range(0, backlog, 1000):
            store.apply(Batch(messages=[msg("alice", "bob", b"x" * 100, time_us=start + i) for i in range(1000)]))
        store.apply(Batch(cursors={("bob", "tablet", stream): 1, ("alice", "phone", stream): backlog}))
        store.apply(Batch(logins=[LoginRead(3, "bob", "phone", 100, 1000), LoginRead(4, "bob", "tablet", 100, 1000)]))
        logins = [LoginRead(5, "bob", "phone", 100, 1000), LoginRead(6, "bob", "tablet", 100, 1000)]
        costs[backlog] = {
            "login, no cursor": _vm_steps(store, Batch(logins=logins[:1])),
            "login, cursor": _vm_steps(store, Batch(logins=logins[1:])),
            "fetch, no cursor": _vm_steps(store, Batch(fetches=[Fetch(8, "bob", "phone", 64, 100)])),
            "fetch, cursor": _vm_steps(store, Batch(fetches=[Fetch(9, "bob", "tablet", 64, 100)])),
        }
        waiting = [info.waiting for info in store.apply(Batch(logins=logins)).logins.values()]
        fetched = store.apply(Batch(fetches=[Fetch(7, "bob", "tablet", 64, 100)])).fetched[7]
        answers[backlog] = (waiting, [m.position for m in fetched])
        store.close()
    for what, small in costs[5_000].items():
        assert costs[50_000][what] <= small * 1.25 + 2, costs  # was 10x: 1,052 -> 10,502 for a login
    assert answers[5_000] == answers[50_000] == ([1000, 1000], list(range(2, 66)))  # the count is capped


def test_version_4_data_survives_the_device_tokens_migration(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = sqlite3.connect(path)
    for statement in [s for version in MIGRATIONS[:4] for s in version]:
        old.execute(statement)
    old.execute("INSERT INTO users VALUES ('a', 1, 'student', 'scrypt$1$1$1$c2FsdA$a2V5')")
    old.execute("PRAGMA user_version=4")
    old.commit()
    old.close()
    store = SqliteStore(path, checkpoint_interval=0)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert list(store.load_accounts()) == ["a"] and store.load_device_tokens() == {}


def test_a_history_page_stops_at_its_byte_budget_in_both_stores(tmp_path: Path) -> None:
    """A page carries at most ``max_bytes`` of bodies, the newest first, and at least one
    message: what it adds to a reader's output is bounded whatever the message sizes."""
    for store in (MemoryStore(), SqliteStore(tmp_path / "db", checkpoint_interval=0)):
        store.apply(Batch(accounts=accounts("a", "b"), messages=[msg("a", "b", bytes([i]) * 1000) for i in range(10)]))
        page = store.apply(Batch(history={1: ("dm:a,b", 0, 100, 3500)})).history[1]
        assert [m.position for m in page] == [8, 9, 10]  # three fit in 3,500 bytes, oldest first
        tiny = store.apply(Batch(history={1: ("dm:a,b", 8, 100, 10)})).history[1]
        assert [m.position for m in tiny] == [7]  # one, even over the budget: paging goes on


def test_on_the_loop_a_locked_database_is_refused_at_once_and_waited_for_off_it(tmp_path: Path) -> None:
    """``normal`` commits sync nothing: ``on_loop``, busy timeout 0. A writer in another
    process (here another connection) holds the lock: ``apply(wait=False)`` returns
    ``BatchResult(busy=True)`` at once having done nothing; ``apply(wait=True)`` (the storage thread)
    waits for the lock and stores the batch, and the loop's next batch again never waits.
    ``full`` syncs every commit: never on the loop."""
    path = tmp_path / "db"
    full = SqliteStore(tmp_path / "full.db", durability="full", checkpoint_interval=0)
    assert not full.on_loop
    full.close()
    store = SqliteStore(path, checkpoint_interval=0)
    assert store.on_loop
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert store.apply(Batch(messages=[msg("a", "b", b"1")]), wait=False) == BatchResult(busy=True)
    assert time.monotonic() - started < 1.0  # at once: not SQLite's 30 s busy timeout
    assert not store.db.in_transaction and store.last_id == 0
    release = threading.Timer(0.3, other.execute, ("ROLLBACK",))
    release.start()
    try:
        result = store.apply(Batch(messages=[msg("a", "b", b"1")]), wait=True)  # waits for the ROLLBACK
    finally:
        release.join()
    assert result.error is None and [m.position for m in result.stored if isinstance(m, StoredMessage)] == [1]
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # the loop's again
    other.execute("BEGIN IMMEDIATE")
    assert store.apply(Batch(messages=[msg("a", "b", b"2")]), wait=False).busy
    other.execute("ROLLBACK")
    other.close()
    second = store.apply(Batch(messages=[msg("a", "b", b"2")]), wait=False)
    assert [m.position for m in second.stored if isinstance(m, StoredMessage)] == [2]
    store.close()
