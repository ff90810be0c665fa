"""The SQLite store when things go wrong inside a batch: a value SQLite cannot hold, a
full disk, a checkpoint or a read that fails after the commit. Whatever fails, a batch
is all or nothing, its result says which, and the store serves the next batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import csce513msg.store.checkpoints as checkpoints_module
from csce513msg.store import Batch, Fetch
from csce513msg.store.sqlite import SqliteStore
from tests.fixtures import SmallDisk
from tests.store.test_sqlite import accounts, kept, msg


def dense(store: SqliteStore) -> dict[str, int]:
    """Each stream's message count, after checking its positions run 1..count."""
    counts = {}
    for stream, count, low, high in store.db.execute(
        "SELECT stream, count(*), min(position), max(position) FROM messages GROUP BY stream"
    ):
        assert (low, high) == (1, count), f"{stream}: positions {low}..{high} for {count} messages"
        counts[stream] = count
    return counts


def test_any_exception_in_a_batch_rolls_it_back_and_the_next_batch_works(tmp_path: Path) -> None:
    """An OverflowError (a client id of 2^63) used to leave the transaction open: every
    later batch failed, and a stream whose first message was rolled back lost its members."""
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    store.apply(Batch(accounts=accounts("a", "b")))
    failed = store.apply(Batch(messages=[msg("a", "b", b"first", 1), msg("a", "b", b"bad", 2**63)]))
    assert failed.error and "OverflowError" in failed.error and not failed.stored
    assert not store.db.in_transaction
    ok = store.apply(Batch(messages=[msg("a", "b", b"again", 1), msg("b", "a", b"reply")]))
    assert ok.error is None and [m.position for m in kept(ok)] == [1, 2]
    members = set(store.db.execute("SELECT user, stream FROM members"))
    direct = {("a", "dm:a,b"), ("b", "dm:a,b")}  # written with the stream's first message
    assert members == direct | {("a", "g:0"), ("b", "g:0")}  # and each account reads the announcements
    fetched = store.apply(Batch(fetches=[Fetch(1, "b", "bd", 10, 100)])).fetched[1]
    assert [m.body for m in fetched] == [b"again", b"reply"]  # b's own, from another device, too


def test_a_read_that_fails_after_the_commit_costs_only_itself(tmp_path: Path) -> None:
    """A History page SQLite cannot read (before = 2^64 - 1) used to report the committed
    batch as failed: its senders resent, and the resends were never delivered."""
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    result = store.apply(
        Batch(
            accounts=accounts("a", "b"),
            messages=[msg("a", "b", b"stored")],
            history={1: ("dm:a,b", 2**64 - 1, 10, 1 << 20), 2: ("dm:a,b", 0, 10, 1 << 20)},
        )
    )
    assert result.error is None and kept(result)[0].position == 1
    assert 1 not in result.history and [m.body for m in result.history[2]] == [b"stored"]


def test_a_failed_checkpoint_after_the_commit_leaves_the_batch_stored(
    small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real full disk (tmpfs): the WAL still has room for commits, but the checkpoint after
    them cannot grow the database file. A checkpoint inside the batch's ``try`` reported the
    committed batch as failed and rolled the position cache back, so every later message of
    that conversation failed (UNIQUE), also once space came back."""
    monkeypatch.setattr(checkpoints_module, "TAIL_EVERY", 1)  # the writer checkpoints after every batch
    disk = small_disk("4m")
    filler = disk / "filler"
    filler.write_bytes(b"\0" * 512 * 1024)
    store = SqliteStore(disk / "db", checkpoint_interval=0)
    store.apply(Batch(accounts=accounts("a", "b")))
    reported = {True: 0, False: 0}  # stored: how many batches said so
    failures_in_a_row = checkpoints = 0
    for i in range(3000):  # bounded: 4 MB fills after about a thousand
        result = store.apply(Batch(messages=[msg("a", "b", os.urandom(3000), i + 1)]))
        if (job := store.maintenance()) is not None:  # TAIL_EVERY 1: after every stored batch, as the hub runs it
            job()  # fails once the disk is full: logged, the batch before it stands
            checkpoints += 1
        reported[result.error is None] += 1
        failures_in_a_row = 0 if result.error is None else failures_in_a_row + 1
        if failures_in_a_row == 5:
            break
    assert failures_in_a_row == 5, "the disk never filled"
    assert checkpoints == reported[True]  # one after each stored batch
    assert dense(store) == {"dm:a,b": reported[True]}  # exactly what was reported stored
    filler.unlink()  # space comes back
    after = [store.apply(Batch(messages=[msg("a", "b", b"x" * 100, 10_000 + i)])) for i in range(20)]
    assert [r.error for r in after] == [None] * 20
    assert dense(store) == {"dm:a,b": reported[True] + 20}
    store.close()
