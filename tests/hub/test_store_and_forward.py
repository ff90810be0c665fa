"""Hub scenarios of store and forward: commits before receipts, offline catch-up,
pacing by the window, resends, storage failures. Jobs run when the test says."""

from __future__ import annotations

from csce513msg.hub import Lane, Submit
from csce513msg.protocol import Deliver, Error, ErrorCode, Receipt, ReceiptState, Send, TargetKind
from csce513msg.store import Batch, BatchResult, MemoryStore
from tests.hub.harness import PASSWORD, Harness, batch_of


def test_receipt_and_delivery_wait_for_the_commit() -> None:
    h = Harness(auto_jobs=False)
    alice, bob = h.connect("alice", raw=False), h.connect("bob")
    h.settle()  # logins done: both are live
    alice.session.send_text("bob", "one")
    h.pump()
    assert not alice.of(Receipt) and not bob.of(Deliver)  # submitted, not committed
    assert [type(j) for j in h.jobs] == [Submit] and h.jobs[0].lane is Lane.LOOP
    h.run_jobs()
    h.pump()
    assert alice.of(Receipt)[0].state == ReceiptState.STORED
    assert bob.of(Deliver)[0].body == b"one"


def test_one_batch_in_flight_and_the_rest_waits_for_the_next() -> None:
    h = Harness(auto_jobs=False)
    alice, _bob = h.connect("alice"), h.connect("bob")
    h.settle()
    alice.session.send_text("bob", "1")
    h.pump()
    alice.session.send_text("bob", "2")
    alice.session.send_text("bob", "3")
    h.pump()
    assert len(h.jobs) == 1  # "2" and "3" wait: group commit
    h.run_jobs()
    h.pump()
    assert len(h.jobs) == 1  # now they go, together
    batch = batch_of(h.jobs[0])
    assert [m.body for m in batch.messages] == [b"2", b"3"]


def test_offline_messages_arrive_on_login_in_order_with_original_times() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    h.drop(bob)
    for i in range(5):
        alice.session.send_text("bob", f"m{i}")
        h.pump()
        h.now += 1.0
    bob = h.connect("bob")
    got = bob.of(Deliver)
    assert [d.body for d in got] == [f"m{i}".encode() for i in range(5)]
    sent_times = [r.time_us for r in alice.of(Receipt) if r.state == ReceiptState.STORED]
    assert [d.time_us for d in got] == sent_times
    h.drop(bob)
    again = h.connect("bob")  # acknowledged: nothing twice
    assert not again.of(Deliver)


def test_catch_up_is_paced_by_the_window() -> None:
    h = Harness(window=4)
    alice, bob = h.connect("alice"), h.connect("bob")
    h.drop(bob)
    for i in range(10):
        alice.session.send_text("bob", str(i))
    h.pump()
    bob = h.connect("bob", raw=True)  # a raw peer does not acknowledge by itself
    h.send_raw(bob, b"")
    from csce513msg.protocol import Hello, Login, encode

    h.send_raw(bob, encode(Hello(request_id=1)) + encode(Login("bob", PASSWORD, request_id=2)))
    assert len(bob.of(Deliver)) == 4  # the window, then it waits
    from csce513msg.protocol import Ack

    h.send_raw(bob, encode(Ack(4, "dm:alice,bob")))
    assert len(bob.of(Deliver)) == 8
    h.send_raw(bob, encode(Ack(8, "dm:alice,bob")))
    assert [d.body for d in bob.of(Deliver)] == [str(i).encode() for i in range(10)]


def test_a_paused_recipient_is_paced_then_catches_up() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    h.apply(h.engine.pause_writing(bob.conn, h.now))
    for i in range(3):
        alice.session.send_text("bob", str(i))
    h.pump()
    assert not bob.of(Deliver) and len(alice.of(Receipt)) == 3  # stored, held back
    h.apply(h.engine.resume_writing(bob.conn, h.now))
    h.pump()
    assert [d.body for d in bob.of(Deliver)] == [b"0", b"1", b"2"]


def test_a_resend_gets_the_original_id_and_is_not_delivered_twice() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    for _ in range(2):
        alice.session.request(Send(TargetKind.USER, 0, 77, "bob", b"once"))
        h.pump()
    first, second = [r for r in alice.of(Receipt) if r.state == ReceiptState.STORED]
    assert first.message_id == second.message_id
    assert len(bob.of(Deliver)) == 1


def test_storage_failure_reaches_the_sender_and_nothing_is_delivered() -> None:
    class BrokenStore(MemoryStore):
        def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
            if batch.messages:
                return BatchResult(error="storage error: disk full")
            return super().apply(batch)

    h = Harness(store=BrokenStore())
    alice, bob = h.connect("alice"), h.connect("bob")
    alice.session.send_text("bob", "lost?")
    h.pump()
    (error,) = alice.of(Error)
    assert error.code == ErrorCode.STORE_FAILED and not alice.of(Receipt)
    assert not bob.of(Deliver)


def test_acks_one_at_a_time_still_fetch_everything() -> None:
    """A small fetch that comes back full means more may wait: fetch again, don't go live."""
    h = Harness(window=2)
    from csce513msg.protocol import Ack, Hello, Login, encode

    reader = h.connect(raw=True)
    h.account("reader")
    h.send_raw(reader, encode(Hello(request_id=1)) + encode(Login("reader", PASSWORD, request_id=2)))
    flooder = h.connect("flooder")
    for i in range(8):
        flooder.session.send_text("reader", str(i))
        h.pump()
    stream = "dm:flooder,reader"
    for position in range(1, 9):  # one ack per delivery, each opening room for one more
        h.send_raw(reader, encode(Ack(position, stream)))
    assert [d.body for d in reader.of(Deliver)] == [str(i).encode() for i in range(8)]


def test_nothing_is_written_to_a_connection_after_its_close() -> None:
    """A Send and then a broken frame in one read: the commit comes after the Close."""
    from csce513msg.protocol import Hello, Login, encode, encode_frame

    h = Harness(auto_jobs=False)
    h.connect("bob")
    peer = h.connect(raw=True)
    h.account("alice")
    h.send_raw(peer, encode(Hello(request_id=1)) + encode(Login("alice", PASSWORD, request_id=2)))
    h.settle()
    send = encode(Send(TargetKind.USER, 0, 0, "bob", b"hi", request_id=3))
    h.send_raw(peer, send + encode_frame(0x02, 4, b"\x00\x09ab"))  # then a malformed Login
    assert peer.closed == "bad_frame"
    h.run_jobs()  # the message commits after the Close: no receipt may follow it (Harness asserts)
    h.pump()
    assert not peer.of(Receipt)


def test_delivered_receipts_reach_the_sender_live_and_after_being_away() -> None:
    h = Harness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.session.send_text("bob", "live")
    h.pump()
    assert [r.state for r in alice.of(Receipt)] == [ReceiptState.STORED, ReceiptState.DELIVERED]
    h.drop(bob)
    alice.session.send_text("bob", "later")
    h.pump()
    h.drop(alice)  # alice leaves before bob reads it
    bob = h.connect("bob")  # bob catches up and acknowledges
    assert [d.body for d in bob.of(Deliver)] == [b"later"]
    alice = h.connect("alice")
    (late,) = alice.of(Receipt)  # on alice's next login
    assert late.state == ReceiptState.DELIVERED and late.position == 2
    h.drop(alice)
    again = h.connect("alice")
    assert not again.of(Receipt)  # told once per device


def test_history_pages_back_without_gaps_or_duplicates() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    for i in range(7):
        (alice if i % 2 else bob).session.send_text("bob" if i % 2 else "alice", f"m{i}")
        h.pump()
    from csce513msg.protocol import History, HistoryEnd

    seen: list[bytes] = []
    before = 0
    while True:
        alice.events.clear()
        alice.session.request(History(before, 3, TargetKind.USER, "bob"))
        h.pump()
        page = [e for e in alice.events if isinstance(e, Deliver) and e.request_id]
        (end,) = alice.of(HistoryEnd)
        seen = [d.body for d in page] + seen
        if end.count < 3:
            break
        before = end.first
    assert seen == [f"m{i}".encode() for i in range(7)]
    alice.session.request(History(0, 3, TargetKind.USER, "nobody"))
    h.pump()
    assert alice.of(Error)[-1].code == ErrorCode.USER_NOT_FOUND


def test_retention_deletes_old_messages_and_refuses_their_resends() -> None:
    from csce513msg.protocol import ErrorCode, HistoryEnd

    h = Harness(retention_days=10 / 86400, idle_timeout=3600)  # ten seconds of history
    alice, bob = h.connect("alice", device="laptop"), h.connect("bob")
    old = Send(TargetKind.USER, 0, 7, "bob", b"old news", request_id=0)
    alice.session.request(old)
    h.pump()
    h.advance(700)  # expiry runs with the account poll, at most every EXPIRY_INTERVAL (600 s)
    alice.session.request(Send(TargetKind.USER, 0, 8, "bob", b"fresh", request_id=0))
    alice.session.request(old)  # the same client id as the expired message: a resend, refused
    bob.session.history("alice", 10)
    h.pump()
    assert [e.code for e in alice.of(Error)] == [ErrorCode.RESEND_TOO_OLD]
    assert [d.body for d in bob.of(Deliver) if d.request_id] == [b"fresh"]
    assert bob.of(HistoryEnd)[0].first == 2  # positions are never reused


def test_once_stopping_a_batch_of_acknowledgements_goes_at_once() -> None:
    """A backend stops once the last batches are committed: none may wait for the ack delay."""
    h = Harness(ack_delay=30.0, auto_jobs=False)
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    alice.session.send_text("bob", "one")
    h.pump()
    h.run_jobs()
    h.pump()  # bob's ack is in the next batch, waiting up to 30 s for company
    assert bob.of(Deliver) and not h.jobs
    h.apply(h.engine.shutdown(h.now))
    for peer in (alice, bob):
        h.drop(peer)
    assert len(h.jobs) == 1 and batch_of(h.jobs[0]).cursors


def test_acknowledgements_alone_wait_for_company_up_to_the_ack_delay() -> None:
    h = Harness(ack_delay=0.05, auto_jobs=False)
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    alice.session.send_text("bob", "one")
    h.pump()
    h.run_jobs()  # the message's batch: receipt and delivery; bob acknowledges it
    h.pump()
    assert bob.of(Deliver) and not h.jobs  # the ack alone is not worth a commit yet
    assert h.engine.next_deadline() == h.now + 0.05
    h.advance(0.05)  # the timer pass flushes it
    assert len(h.jobs) == 1 and batch_of(h.jobs[0]).cursors
    h.settle()
    assert [r.state for r in alice.of(Receipt)] == [ReceiptState.STORED, ReceiptState.DELIVERED]
