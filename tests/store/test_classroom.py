"""The classroom in the store (schema v9, docs/groups-plan.md step 6): the announcements
``g:0`` (every account a reader from position 1, whenever it was made, however), the
classroom's notes applied in the batch's transaction and loaded at start. Both stores."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from csce513msg.store import Batch, LoginRead
from csce513msg.store.accounts import AccountBook
from csce513msg.store.interface import CONFIRM, LOWER, RAISE, TAKE, Hand, NewMessage, Note, StoredMessage
from csce513msg.store.schema import MIGRATIONS
from csce513msg.store.sqlite import SqliteStore
from tests.store.test_groups import AnyStore, ack, event, fetch, one, page, store, stored

__all__ = ["store"]  # the fixture (both stores)
from tests.store.test_sqlite import accounts, msg


def announce(sender: str, body: bytes, asks: bool = False) -> NewMessage:
    return NewMessage("g:0", (), sender, "d", 0, 2, "announcements", 4 if asks else 0, 1000, body)


def test_every_account_reads_every_announcement_whenever_it_was_made(store: AnyStore) -> None:
    """Made before or after them, by the server or (SQLite) by another process: catch-up from
    position 1 on a new device (not ``new_device_history`` back), and History."""
    for i in range(5):
        stored(store, announce("alice", f"a{i}".encode(), asks=i == 4))
    if isinstance(store, SqliteStore):
        store.apply(Batch(accounts=accounts("erin")))  # registered over the wire
        book = AccountBook(store.path)  # `msgsrv user add`, in its own connection
        book.add("fred", "")
        book.close()
    else:
        store.apply(Batch(accounts=accounts("erin", "fred")))
    for user in ("bob", "erin", "fred"):
        assert fetch(store, user, "new", history=2) == [1, 2, 3, 4, 5], user
        assert page(store, "g:0", user) == [1, 2, 3, 4, 5], user
    assert fetch(store, "bob", "new", groups=False) == []  # a session without groups: none
    assert store.load_groups()["g:0"].members == ("alice", "bob", "carol", "dan", "erin", "fred")
    assert store.load_classroom().asks == (5,)


def test_retention_keeps_the_announcements(store: AnyStore) -> None:
    """Every account reads every announcement, whenever it was made: retention, which expires
    every other stream's old messages, keeps them."""
    stored(store, announce("alice", b"exam friday"))
    stored(store, msg("bob", "alice", b"old"))
    store.apply(Batch(expire_before_us=2**62))  # everything is older than this
    assert page(store, "g:0", "bob") == [1] and page(store, "dm:alice,bob", "bob") == []


def test_the_announcements_take_posts_only_and_give_no_receipts(store: AnyStore) -> None:
    """No event is stored there (the engine refuses them first: FORBIDDEN); an ack of an
    announcement delivers nothing to anyone; the waiting count includes them."""
    refused = one(store, event("alice", "g:0", 2))
    assert not isinstance(refused, StoredMessage) and refused.why == "bad_change"
    stored(store, announce("alice", b"hello"))
    assert ack(store, "bob", "g:0", 1) == []
    login = LoginRead(1, "carol", "laptop", 0, 100, groups=True)
    assert store.apply(Batch(logins=[login])).logins[1].waiting == 1


def test_notes_apply_in_order_and_load_at_start(store: AnyStore) -> None:
    """Confirmations once per person; a second raise keeps its place with the new question; a
    lower of nobody's hand changes nothing; a take takes the hand the engine named (the first)."""
    stored(store, announce("alice", b"read me", asks=True))
    notes = [
        Note(CONFIRM, "bob", 1, time_us=10),
        Note(CONFIRM, "bob", 1, time_us=11),
        Note(CONFIRM, "carol", 1, time_us=12),
        Note(RAISE, "dan", question="q1", time_us=20),
        Note(RAISE, "bob", question="q2", time_us=21),
        Note(RAISE, "carol", question="q3", time_us=22),
        Note(RAISE, "dan", question="q1 again", time_us=23),
        Note(LOWER, "erin"),
        Note(TAKE, "alice", student="dan"),  # the engine names the first: dan
        Note(LOWER, "carol"),
        Note(TAKE, "alice", student="carol"),  # lowered meanwhile: nothing
    ]
    assert store.apply(Batch(notes=notes)).error is None
    loaded = store.load_classroom()
    assert loaded.confirmations == {1: ("bob", "carol")}
    assert loaded.hands == (Hand("bob", "q2", 21),)
    assert loaded.asks == (1,)


def test_a_failed_batch_keeps_no_note(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db", checkpoint_interval=0)
    store.apply(Batch(accounts=accounts("alice", "bob")))
    failed = store.apply(Batch(notes=[Note(RAISE, "bob", question="q", time_us=1), Note("bogus", "bob")]))
    assert failed.error is not None
    assert store.load_classroom().hands == ()
    store.close()


def test_version_9_renames_a_group_named_announcements_and_enrolls_every_account(tmp_path: Path) -> None:
    """A real version-8 file with accounts, a direct stream and a group named announcements."""
    path = tmp_path / "v8.db"
    old = sqlite3.connect(path)
    for statement in [s for version in MIGRATIONS[:8] for s in version]:
        old.execute(statement)
    old.execute("PRAGMA user_version=8")
    old.executemany("INSERT INTO users (name, created_us) VALUES (?, 0)", [("ann",), ("bo",)])
    old.execute("INSERT INTO groups (name, owner, created_us) VALUES ('announcements-2', 'ann', 0)")  # g:1
    old.execute("INSERT INTO groups (name, owner, created_us) VALUES ('announcements', 'ann', 0)")  # g:2
    old.execute("INSERT INTO members VALUES ('ann', 'g:2', 1, NULL)")
    old.execute("INSERT INTO members VALUES ('ann', 'dm:ann,bo', 1, NULL), ('bo', 'dm:ann,bo', 1, NULL)")
    old.commit()
    old.close()
    store = SqliteStore(path, checkpoint_interval=0)
    groups = store.load_groups()
    renamed = groups["g:2"].name  # a random tail: the plain `announcements-2` is taken
    assert re.fullmatch(r"announcements-2-[0-9a-f]{6}", renamed), renamed
    assert {s: (g.name, g.owner, g.invite_only, g.members) for s, g in groups.items()} == {
        "g:0": ("announcements", "", True, ("ann", "bo")),
        "g:1": ("announcements-2", "ann", False, ()),
        "g:2": (renamed, "ann", False, ("ann",)),
    }
    created = store.apply(Batch(messages=[event("ann", "g:", 1, name="club")])).stored[0]
    assert isinstance(created, StoredMessage) and created.stream == "g:3"  # ids go on after the old ones
    book = AccountBook(path)
    book.remove("bo")
    book.close()
    assert store.load_groups()["g:0"].members == ("ann",)  # a removed account reads no more
    store.close()
