"""Which lane a storage batch takes (docs/design.md, "The store on the loop"): the loop's
own for a store that never waits on the disk, the storage thread's otherwise; a busy
database moves the batch to the storage thread; the store's maintenance runs there too,
with no batch beside it."""

from __future__ import annotations

from collections.abc import Callable

from csce513msg.hub import Lane, Submit
from csce513msg.protocol import Deliver, Receipt, ReceiptState
from csce513msg.store import Batch, BatchResult, MemoryStore
from tests.hub.harness import Harness, Peer


class ThreadStore(MemoryStore):
    """A store that says it may wait on the disk (as SQLite with ``--durability full``)."""

    on_loop = False


class CheckpointingStore(MemoryStore):
    """A store with a maintenance job after every other batch; counts what ran."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = 0
        self.checkpoints = 0

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
        self.applied += 1
        return super().apply(batch, wait)

    def maintenance(self) -> Callable[[], object] | None:
        return self._checkpoint if self.applied % 2 == 0 else None

    def _checkpoint(self) -> None:
        self.checkpoints += 1


class BusyOnceStore(MemoryStore):
    """The first batch applied without waiting finds the database locked by another process."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = True
        self.calls: list[bool] = []  # the ``wait`` of each apply

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
        self.calls.append(wait)
        if self.busy and not wait:
            self.busy = False
            return BatchResult(busy=True)
        return super().apply(batch, wait)


def stored(peer: Peer) -> int:
    """The "stored" receipts ``peer`` had."""
    return sum(r.state == ReceiptState.STORED for r in peer.of(Receipt))


def storage_jobs(h: Harness) -> list[Submit]:
    return [j for j in h.jobs if j.lane in (Lane.STORE, Lane.LOOP)]


def test_a_store_that_never_waits_is_applied_by_the_loop_and_one_that_may_by_the_thread() -> None:
    for store, lane in ((MemoryStore(), Lane.LOOP), (ThreadStore(), Lane.STORE)):
        h = Harness(store, auto_jobs=False)
        alice, bob = h.connect("alice"), h.connect("bob")
        h.settle()
        alice.session.send_text("bob", "hi")
        h.pump()
        (job,) = storage_jobs(h)
        assert job.lane is lane
        h.settle()
        assert stored(alice) == 1 and bob.of(Deliver)[-1].body == b"hi"


def test_a_busy_database_sends_the_batch_to_the_storage_thread_which_waits() -> None:
    store = BusyOnceStore()
    h = Harness(store, auto_jobs=False)
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    store.busy, store.calls = True, []
    alice.session.send_text("bob", "locked")
    h.pump()
    (first,) = storage_jobs(h)
    assert first.lane is Lane.LOOP
    h.run_jobs()  # busy: nothing applied, nothing answered
    h.pump()
    assert stored(alice) == 0 and not [d for d in bob.of(Deliver) if d.body == b"locked"]
    (again,) = storage_jobs(h)
    assert again.lane is Lane.STORE and again.job_id != first.job_id  # the same batch, waiting this time
    alice.session.send_text("bob", "next")  # meanwhile: waits for the slot, not a second batch in flight
    h.pump()
    assert storage_jobs(h) == [again]
    h.run_jobs()
    h.pump()
    assert store.calls[:2] == [False, True]
    h.settle()
    assert [d.body for d in bob.of(Deliver)][-2:] == [b"locked", b"next"]  # nothing lost, in order
    assert stored(alice) == 2


def test_maintenance_runs_on_the_storage_thread_with_no_batch_beside_it() -> None:
    store = CheckpointingStore()
    h = Harness(store, auto_jobs=False)
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    store.applied, store.checkpoints = 1, 0  # the next batch is the second: a checkpoint follows it
    alice.session.send_text("bob", "one")
    h.pump()
    h.run_jobs()  # the batch: its receipt, and the checkpoint submitted
    h.pump()
    (checkpoint,) = storage_jobs(h)
    assert checkpoint.lane is Lane.STORE and h.engine.mail.maintaining == checkpoint.job_id
    alice.session.send_text("bob", "two")
    h.pump()
    assert storage_jobs(h) == [checkpoint]  # "two" waits for the checkpoint
    h.run_jobs()
    h.pump()
    assert store.checkpoints == 1 and h.engine.mail.maintaining is None
    (batch,) = storage_jobs(h)
    assert batch.lane is Lane.LOOP
    h.settle()
    assert [d.body for d in bob.of(Deliver)][-2:] == [b"one", b"two"]
