"""The key directory in the engine (1.7, hub/keys.py), with a fixed clock: an answer waits for
the commit that makes it true; a failed commit changes nothing and says so; a device's keys
expire ``key_days`` after its last login, and a login starts the count again."""

from __future__ import annotations

import os

from csce513msg.protocol import ErrorCode, KeyBundles, KeyFetch, KeyPublish, KeyState, bundles, publish_body
from csce513msg.store import Batch, BatchResult, MemoryStore
from tests.hub.harness import Harness, Peer, codes

PUBLISHED = os.urandom(128) + (5).to_bytes(4, "big") + os.urandom(96)
PREKEYS = [(i, os.urandom(32)) for i in range(1, 4)]
DAY = 86400.0


def publish(h: Harness, peer: Peer) -> None:
    peer.session.request(KeyPublish(len(PREKEYS), publish_body(PUBLISHED, PREKEYS)))
    h.pump()


def fetched(h: Harness, peer: Peer, user: str = "alice") -> dict[str, bytes]:
    peer.session.request(KeyFetch(user))
    h.pump()
    h.settle()
    return dict(bundles(peer.of(KeyBundles)[-1]))


def test_answers_wait_for_the_commit() -> None:
    h = Harness(auto_jobs=False)
    alice, bob = h.connect("alice", device="d1", e2e=True), h.connect("bob", device="b1", e2e=True)
    h.settle()
    assert [s.published for s in alice.of(KeyState)] == [0]  # told at login: nothing published yet
    publish(h, alice)
    assert len(alice.of(KeyState)) == 1 and len(h.jobs) == 1  # the batch is out; no answer before it commits
    h.settle()
    assert alice.of(KeyState)[-1].prekeys == 3
    bob.session.request(KeyFetch("alice"))
    h.pump()
    assert not bob.of(KeyBundles)  # the prekey handed out is deleted first
    h.settle()
    assert dict(bundles(bob.of(KeyBundles)[-1]))["d1"][228:232] == (1).to_bytes(4, "big")


class FailingKeys(MemoryStore):
    """A store whose batches with key directory records fail (a broken disk)."""

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
        if batch.keys:
            raise OSError("disk on fire")
        return super().apply(batch)


def test_a_failed_commit_changes_nothing_and_says_so() -> None:
    h = Harness(store=FailingKeys())
    alice, bob = h.connect("alice", device="d1", e2e=True), h.connect("bob", device="b1", e2e=True)
    h.settle()
    publish(h, alice)
    assert codes(alice) == [ErrorCode.STORE_FAILED]
    assert fetched(h, bob) == {}  # not applied in memory either: the server says what it holds


def test_keys_expire_after_key_days_unless_the_device_logs_in() -> None:
    h = Harness(key_days=2, idle_timeout=10 * DAY, account_poll=60.0)
    alice, bob = h.connect("alice", device="d1", e2e=True), h.connect("bob", device="b1", e2e=True)
    h.settle()
    publish(h, alice)
    h.settle()
    h.drop(alice)
    h.advance(1.5 * DAY)
    again = h.connect("alice", device="d1", e2e=True)  # seen again: two days from now
    h.settle()
    assert again.of(KeyState)[-1].prekeys == 3
    h.drop(again)
    h.advance(1.5 * DAY)
    assert list(fetched(h, bob)) == ["d1"]  # 3 days after publishing, 1.5 after the last login
    h.advance(1 * DAY)
    assert fetched(h, bob) == {}  # 2.5 days after the last login: gone
    assert isinstance(h.store, MemoryStore) and h.store.directory == {}  # from the store too
