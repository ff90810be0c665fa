"""Reads are bounded: History pages one at a time per connection and only while its
output is below the high-water mark, a bounded queue behind them, and at most
READS_PER_BATCH reads in one storage batch. (1,000 History requests in one write once
took a server from 49 MB to 3.2 GB.)"""

from __future__ import annotations

from csce513msg.hub.delivery import HISTORY_QUEUE, READS_PER_BATCH
from csce513msg.protocol import Error, ErrorCode, History, HistoryEnd, TargetKind
from tests.hub.harness import Harness, Peer, batch_of


def pages_in(h: Harness) -> list[int]:
    """How many History pages each submitted storage batch reads."""
    return [len(batch_of(job).history) for job in h.jobs]


def ask(peer: Peer, count: int) -> list[int]:
    return [peer.session.request(History(0, 100, TargetKind.USER, "bob")) for _ in range(count)]


def conversation(h: Harness) -> tuple[Peer, Peer]:
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    for i in range(5):
        alice.session.send_text("bob", f"m{i}")
    h.pump()
    h.settle()
    return alice, bob


def test_pipelined_history_requests_are_read_one_at_a_time_in_order() -> None:
    h = Harness(auto_jobs=False)
    alice, _ = conversation(h)
    rids = ask(alice, 4)
    h.pump()
    assert pages_in(h) == [1]  # one page per connection in a batch, the others wait
    answered = []
    while h.jobs:
        h.run_jobs()
        h.pump()
        answered = [e.request_id for e in alice.of(HistoryEnd)]
    assert answered == rids  # every one answered, in the order asked
    assert all(e.count == 5 for e in alice.of(HistoryEnd))


def test_a_connection_may_queue_only_so_many_history_requests() -> None:
    h = Harness(auto_jobs=False)
    alice, _ = conversation(h)
    rids = ask(alice, HISTORY_QUEUE + 5)
    h.pump()
    refused = [e.request_id for e in alice.of(Error) if e.code == ErrorCode.RATE_LIMITED]
    assert refused == rids[HISTORY_QUEUE + 1 :]  # one being read, HISTORY_QUEUE waiting
    h.settle()
    assert [e.request_id for e in alice.of(HistoryEnd)] == rids[: HISTORY_QUEUE + 1]


def test_no_page_is_read_while_the_connection_s_output_is_backed_up() -> None:
    h = Harness(auto_jobs=False)
    alice, _ = conversation(h)
    h.apply(h.engine.pause_writing(alice.conn, h.now))  # its outbound queue passed the high-water mark
    ask(alice, 2)
    h.pump()
    assert pages_in(h) == []  # nothing is produced for a connection that is not reading
    h.apply(h.engine.resume_writing(alice.conn, h.now))
    h.pump()
    assert pages_in(h) == [1]
    h.settle()
    assert len(alice.of(HistoryEnd)) == 2


def test_a_batch_carries_at_most_reads_per_batch_and_the_rest_wait_their_turn() -> None:
    h = Harness(auto_jobs=False)
    conversation(h)
    readers = [h.connect(f"reader{i}") for i in range(READS_PER_BATCH + 8)]
    h.settle()
    for peer in readers:
        ask(peer, 1)
    h.pump()
    assert pages_in(h) == [READS_PER_BATCH]
    h.run_jobs()
    h.pump()
    assert pages_in(h) == [8]
    h.settle()
    assert all(len(p.of(HistoryEnd)) == 1 for p in readers)


def test_reads_of_a_connection_gone_are_dropped_not_run() -> None:
    h = Harness(auto_jobs=False)
    alice, _ = conversation(h)
    blocker = h.connect("carol")
    h.settle()
    blocker.session.send_text("bob", "occupies the store")
    h.pump()  # a batch in flight: the page below waits for the next one
    ask(alice, 3)
    h.pump()
    h.drop(alice)
    h.run_jobs()
    h.pump()
    assert sum(pages_in(h)) == 0  # alice's pages were never read
    h.settle()
    assert not h.engine.mail._history_waiters and not h.engine.mail._reads


def test_a_page_waits_if_the_output_backs_up_after_it_was_asked_for() -> None:
    """The next page is queued as soon as a page is written; the backend's pause_writing
    comes after it performed that write. The queued page must then wait, not be read."""
    h = Harness(auto_jobs=False)
    alice, _ = conversation(h)
    ask(alice, 2)
    h.pump()
    h.run_jobs()  # page 1 read and written; page 2 queued for the next batch
    h.apply(h.engine.pause_writing(alice.conn, h.now))  # ... which backed alice's output up
    h.pump()
    assert sum(pages_in(h)) == 0
    h.run_jobs()
    h.apply(h.engine.resume_writing(alice.conn, h.now))
    h.pump()
    assert pages_in(h) == [1]
    h.settle()
    assert len(alice.of(HistoryEnd)) == 2
