"""The key directory in the store (schema v10, protocol 1.7): a device's published keys and
one-time prekeys applied in the batch's transaction, a new identity dropping the old
prekeys, each prekey deleted once handed out, expiry, a removed account's devices, and
``load_keys`` at start. Both stores, which must agree."""

from __future__ import annotations

from csce513msg.store import Batch
from csce513msg.store.accounts import AccountBook
from csce513msg.store.interface import FORGET, PUBLISH, SEEN, TAKE_PREKEY, KeyNote, KeyRecord
from csce513msg.store.sqlite import SqliteStore
from tests.store.test_groups import AnyStore, store

__all__ = ["store"]  # the fixture (both stores)


def published(identity: int, spk: int) -> bytes:
    return bytes([identity]) * 128 + spk.to_bytes(4, "big") + bytes(96)


def pre(*ids: int) -> tuple[tuple[int, bytes], ...]:
    return tuple((i, bytes([i]) * 32) for i in ids)


def test_publish_take_rotate_and_a_new_identity(store: AnyStore) -> None:
    store.apply(Batch(keys=[KeyNote(PUBLISH, "alice", "d1", published(1, 1), pre(1, 2, 3), time_us=100)]))
    store.apply(Batch(keys=[KeyNote(PUBLISH, "alice", "d2", published(2, 1), pre(1), time_us=100)]))
    store.apply(Batch(keys=[KeyNote(TAKE_PREKEY, "alice", "d1", key_id=1)]))
    assert store.load_keys()[("alice", "d1")] == KeyRecord(published(1, 1), pre(2, 3), 100)
    # a rotation: the same identity, another signed prekey; new prekeys added, ids held ignored
    rotated = KeyNote(PUBLISH, "alice", "d1", published(1, 2), ((3, b"x" * 32), *pre(4)), time_us=200)
    store.apply(Batch(keys=[rotated, KeyNote(SEEN, "alice", "d2", time_us=300)]))
    found = store.load_keys()
    assert found[("alice", "d1")] == KeyRecord(published(1, 2), pre(2, 3, 4), 200)
    assert found[("alice", "d2")].seen_us == 300
    store.apply(Batch(keys=[KeyNote(PUBLISH, "alice", "d1", published(9, 1), pre(7), time_us=400)]))
    assert store.load_keys()[("alice", "d1")].prekeys == pre(7)  # a new identity: the old ones went
    store.apply(Batch(keys=[KeyNote(FORGET, "alice", "d2")]))
    assert list(store.load_keys()) == [("alice", "d1")]


def test_expiry_and_a_removed_account(store: AnyStore) -> None:
    store.apply(Batch(keys=[KeyNote(PUBLISH, "bob", "old", published(1, 1), pre(1), time_us=100)]))
    store.apply(Batch(keys=[KeyNote(PUBLISH, "bob", "new", published(2, 1), pre(1), time_us=500)]))
    store.apply(Batch(keys=[KeyNote(PUBLISH, "carol", "c", published(3, 1), pre(1, 2), time_us=500)]))
    store.apply(Batch(expire_keys_before_us=200))
    assert sorted(store.load_keys()) == [("bob", "new"), ("carol", "c")]
    if isinstance(store, SqliteStore):  # `msgsrv user remove`, in its own connection: a trigger
        book = AccountBook(store.path)
        book.remove("carol")
        book.close()
        assert sorted(store.load_keys()) == [("bob", "new")]
        (left,) = store.db.execute("SELECT count(*) FROM prekeys WHERE user = 'carol'").fetchone()
        assert left == 0
