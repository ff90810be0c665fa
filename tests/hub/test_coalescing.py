"""Coalescing (1.5, docs/protocol.md section 12): what one engine call writes to a session
that asked for it goes as few frames as order allows; any other session gets the plain
frames, byte for byte what it got before 1.5."""

from __future__ import annotations

from typing import Any

from csce513msg.hub import Action, Close, Write
from csce513msg.hub.outbox import COALESCED_BODIES, MAX_HEADER, Outbox, coalesced
from csce513msg.hub.session import Session
from csce513msg.protocol import (
    VERSION_MAJOR,
    Acks,
    Deliver,
    Delivers,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Login,
    Message,
    MsgType,
    Pong,
    Receipt,
    Receipts,
    ReceiptState,
    decode,
    encode,
)
from tests.hub.harness import PASSWORD, Harness, Peer


def recording(h: Harness) -> list[Action]:
    """Every action the engine returns from now on, in order (as well as applying it)."""
    seen: list[Action] = []
    apply = h.apply

    def record(actions: list[Action]) -> None:
        seen.extend(actions)
        apply(actions)

    h.apply = record  # type: ignore[method-assign]  # a spy on the harness, this test's only
    return seen


def writes_to(actions: list[Action], peer: Peer) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Write) and a.conn == peer.conn]


def frames(data: list[bytes]) -> list[Message]:
    decoder = FrameDecoder(1 << 24)
    return [decode(f) for chunk in data for f in decoder.feed(chunk)]


def send_eight(h: Harness, sender: Peer, to: str) -> list[int]:
    """Eight Sends in one write (one data_received), their request ids."""
    rids = [sender.session.send_text(to, f"m{i}") for i in range(8)]
    h.pump()
    return rids


def test_a_1_5_session_gets_one_receipts_frame_for_a_batch_and_one_delivers_frame() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    welcome = alice.session.welcome
    assert welcome is not None and "coalescing" in welcome.features
    actions = recording(h)
    rids = send_eight(h, alice, "bob")
    to_alice, to_bob = frames(writes_to(actions, alice)), frames(writes_to(actions, bob))
    receipts, delivered = to_alice  # the 8 stored receipts, then (bob's one Ack) the 8 delivered
    assert isinstance(receipts, Receipts) and isinstance(delivered, Receipts)
    assert [(r.state, r.request_id, r.position) for r in receipts.receipts] == [
        (ReceiptState.STORED, rid, i + 1) for i, rid in enumerate(rids)
    ]
    assert [(r.state, r.request_id, r.position) for r in delivered.receipts] == [
        (ReceiptState.DELIVERED, 0, i + 1) for i in range(8)
    ]
    (delivers,) = to_bob
    assert isinstance(delivers, Delivers)
    assert [d.body for d in delivers.delivers] == [f"m{i}".encode() for i in range(8)]
    assert [d.message_id for d in delivers.delivers] == [r.message_id for r in receipts.receipts]
    # and the client session unpacked them: its driver sees the plain messages it always saw
    assert [d.position for d in bob.of(Deliver)] == list(range(1, 9))
    assert len(alice.of(Receipt)) == 16 and not alice.session.pending


def test_a_1_4_session_and_one_that_did_not_ask_get_the_plain_frames_of_before() -> None:
    h = Harness()
    carol, dave = h.connect("carol", minor=4), h.connect("dave", coalescing=False)
    h.settle()
    actions = recording(h)
    send_eight(h, carol, "dave")
    for peer, minor in ((carol, 4), (dave, 5)):
        data = writes_to(actions, peer)
        msgs = frames(data)
        assert all(type(m) in (Receipt, Deliver) for m in msgs) and len(msgs) in (8, 16)
        # byte for byte what encoding each message alone gives: one Write, one frame, each
        assert data == [encode(m, minor) for m in msgs]
    assert [r.position for r in carol.of(Receipt) if r.state == ReceiptState.STORED] == list(range(1, 9))


def session(conn: int, coalescing: bool = True) -> Session:
    return Session(conn, "test", FrameDecoder(1 << 16), 0.0, 0.0, 0.0, 0.0, coalescing=coalescing, minor=5)


def receipt(position: int, rid: int = 0) -> Receipt:
    return Receipt(ReceiptState.STORED, position, 0, position, "dm:a,b", "", rid)


def deliver(position: int, body: bytes = b"x") -> Deliver:
    return Deliver(1, 0, position, 0, position, "a", "b", "dm:a,b", body)


def put(out: Outbox, to: Session, msg: Message) -> None:
    """Write ``msg`` as the Mailroom does to a session that coalesces: a Receipt or a live
    Deliver as its row (``Outbox.receipt``, ``Outbox.delivery``), anything else as itself."""
    if isinstance(msg, Receipt):
        out.receipt(to, row(msg))
    elif isinstance(msg, Deliver) and not msg.request_id:
        out.delivery(to, row(msg))
    else:
        out.write(to, msg)


def row(msg: Receipt | Deliver) -> Any:
    """A message's row, as the outbox keeps it."""
    if isinstance(msg, Receipt):
        return (msg.state, msg.request_id, msg.message_id, msg.time_us, msg.position, msg.stream, msg.detail)
    return (msg.target_kind, msg.content_type, msg.message_id, msg.time_us, msg.position, msg.sender, msg.target,
            msg.stream, msg.body)  # fmt: skip


def from_c(position: int) -> Deliver:
    """A delivery of another stream than ``receipt``'s and ``deliver``'s."""
    return Deliver(1, 0, position, 0, position, "c", "a", "dm:a,c", b"x")


def test_receipts_and_deliveries_each_go_in_one_frame_and_anything_else_closes_both_runs() -> None:
    """A session's receipts join one frame, its live deliveries another (they may pass each
    other: they are about different messages); any other frame closes both runs, so nothing
    else moves, and what follows starts new runs."""
    out = Outbox()
    a, b = session(1), session(2)
    put(out, a, receipt(1))
    put(out, b, deliver(1))  # another session's writes do not touch a's runs
    put(out, a, receipt(2))
    out.error(a, ErrorCode.BAD_REQUEST, "no", 7)  # this closes them
    put(out, a, receipt(3))
    put(out, a, from_c(5))  # the other kind: a run of its own
    put(out, a, receipt(4))  # joins receipt 3's frame, ahead of delivery 5 (another stream)
    put(out, a, from_c(6))
    put(out, b, Deliver(1, 0, 9, 0, 9, "a", "b", "dm:a,b", b"page", 3))  # a history page: plain, closes b's runs
    put(out, b, deliver(2))
    actions = out.take()
    got = [(a.conn, decode(f)) for a in actions if isinstance(a, Write) for f in FrameDecoder(1 << 20).feed(a.data)]
    assert got == [
        (1, Receipts((receipt(1), receipt(2)))),
        (2, deliver(1)),  # a run of one: the plain frame
        (1, Error(ErrorCode.BAD_REQUEST, "no", 0, 7)),
        (1, Receipts((receipt(3), receipt(4)))),
        (1, Delivers((from_c(5), from_c(6)))),
        (2, Deliver(1, 0, 9, 0, 9, "a", "b", "dm:a,b", b"page", 3)),
        (2, deliver(2)),
    ]
    assert out.take() == []  # and the runs are forgotten
    put(out, a, receipt(1))
    put(out, a, receipt(2))
    out.close(a, "bye")  # a run ended, and none left open at take: it is coalesced all the same
    first, close = out.take()
    assert isinstance(first, Write) and first.data == encode(Receipts((receipt(1), receipt(2))))
    assert close == Close(1, "bye")


def test_a_session_that_did_not_ask_is_written_at_once() -> None:
    out = Outbox()
    old = session(1, coalescing=False)
    out.write(old, receipt(1))
    out.write(old, receipt(2))
    assert out.take() == [Write(1, encode(receipt(1))), Write(1, encode(receipt(2)))]


def test_a_long_run_is_cut_below_the_header_limit_and_the_bodies_budget() -> None:
    long_stream = "dm:" + "a" * 32 + "," + "b" * 32
    many = [Receipt(2, i, 0, i, long_stream, "b" * 32 + " is offline", i) for i in range(1, 2001)]
    data = coalesced(Receipt, [row(r) for r in many], 5)
    got = list(FrameDecoder(1 << 24).feed(data))
    assert len(got) > 1 and all(len(f.header) <= MAX_HEADER for f in got)
    assert all(f.type == MsgType.RECEIPTS for f in got)
    assert [r for f in got for r in _messages(decode(f))] == many
    big = [deliver(i, b"x" * (COALESCED_BODIES // 3)) for i in range(1, 8)]
    frames_of_big = list(FrameDecoder(1 << 24).feed(coalesced(Deliver, [row(d) for d in big], 5)))
    assert all(len(f.body) <= COALESCED_BODIES for f in frames_of_big) and len(frames_of_big) == 3
    unpacked = [m for f in frames_of_big for m in _messages(decode(f))]
    assert unpacked == big
    (alone,) = FrameDecoder(1 << 24).feed(coalesced(Deliver, [row(deliver(1, b"y" * (COALESCED_BODIES + 1)))], 5))
    assert alone.type == MsgType.DELIVER  # larger than the budget: alone, plain


def test_a_ping_between_sends_keeps_its_place() -> None:
    """Ping answers are written at once; receipts come later, after the commit: each in order."""
    h = Harness()
    alice, _bob = h.connect("alice"), h.connect("bob")
    h.settle()
    actions = recording(h)
    alice.session.send_text("bob", "1")
    alice.session.ping()
    alice.session.send_text("bob", "2")
    h.pump()
    msgs = frames(writes_to(actions, alice))
    assert isinstance(msgs[0], Pong) and isinstance(msgs[1], Receipts)


def _messages(msg: Message) -> tuple[Message, ...]:
    if isinstance(msg, Receipts):
        return msg.receipts
    if isinstance(msg, Delivers):
        return msg.delivers
    return (msg,)


def test_a_receipt_never_passes_a_delivery_of_its_own_stream_nor_a_delivery_a_receipt() -> None:
    """alice's laptop is sent a message her phone sent (a Deliver of stream s) and bob's
    delivered receipt for it (a Receipt of s): they keep their order, as plain frames would.
    Of another stream, they may pass each other (the review's case, and its opposite)."""
    out = Outbox()
    a = session(1)
    other = Receipt(ReceiptState.STORED, 1, 0, 1, "dm:a,c", "", 4)
    put(out, a, receipt(1))  # stream dm:a,b
    put(out, a, deliver(2))  # dm:a,b too
    put(out, a, Receipt(ReceiptState.DELIVERED, 2, 0, 2, "dm:a,b", "", 0))  # may not pass it
    put(out, a, other)  # another stream: joins the newest receipts run
    got = [decode(f) for w in out.take() if isinstance(w, Write) for f in FrameDecoder(1 << 20).feed(w.data)]
    assert got == [receipt(1), deliver(2), Receipts((Receipt(ReceiptState.DELIVERED, 2, 0, 2, "dm:a,b", "", 0), other))]
    put(out, a, Receipt(ReceiptState.STORED, 5, 0, 5, "dm:a,c", "", 9))
    put(out, a, deliver(3))  # dm:a,b
    put(out, a, receipt(6))  # dm:a,b: after delivery 3 -> a new run
    put(out, a, deliver(4))  # dm:a,b: the receipt 6 of its stream came after its run opened -> new run
    got = [decode(f) for w in out.take() if isinstance(w, Write) for f in FrameDecoder(1 << 20).feed(w.data)]
    assert got == [Receipt(ReceiptState.STORED, 5, 0, 5, "dm:a,c", "", 9), deliver(3), receipt(6), deliver(4)]


def test_one_acks_frame_acknowledges_two_streams_and_a_bad_entry_refuses_it_whole() -> None:
    """The client's side of 1.5: bob (a raw peer: it acknowledges only what the test says)
    read one message from alice and one from carol. An Acks whose second entry is beyond
    what was delivered is refused whole: its first entry moves no cursor. Then one Acks of
    both streams: both cursors move, and alice and carol each get a delivered receipt."""
    h = Harness()
    h.account("bob")
    alice, carol = h.connect("alice"), h.connect("carol")
    bob = h.connect(raw=True)
    hello = Hello(VERSION_MAJOR, 5, ("coalescing",), request_id=1)
    h.send_raw(bob, encode(hello) + encode(Login("bob", PASSWORD, "dev", request_id=2)))
    h.settle()
    alice.session.send_text("bob", "a1")
    carol.session.send_text("bob", "c1")
    h.pump()
    got = [d for m in bob.of(Delivers) for d in m.delivers] + bob.of(Deliver)  # (one frame, or two)
    streams = {d.sender: d.stream for d in got}
    assert set(streams) == {"alice", "carol"}
    session = h.engine.sessions[bob.conn]
    h.send_raw(bob, encode(Acks((streams["alice"], streams["carol"]), (1, 9), request_id=77)))
    h.settle()
    assert [(e.code, e.request_id) for e in bob.of(Error)] == [(ErrorCode.BAD_REQUEST, 77)]
    assert all(m.acked == 0 for m in session.streams.values()) and not bob.closed  # neither applied; it goes on
    h.send_raw(bob, encode(Acks((streams["alice"], streams["carol"]), (1, 1), request_id=78)))
    h.settle()
    assert {s: m.acked for s, m in session.streams.items()} == {streams["alice"]: 1, streams["carol"]: 1}
    for peer in (alice, carol):
        assert [r.position for r in peer.of(Receipt) if r.state == ReceiptState.DELIVERED] == [1]
    # more entries than the window: refused before any is looked at (one token must not buy thousands)
    window = h.engine.config.window
    many = Acks(tuple(f"dm:bob,x{i}" for i in range(window + 1)), (1,) * (window + 1), request_id=79)
    h.send_raw(bob, encode(many))
    h.settle()
    assert [(e.code, e.request_id) for e in bob.of(Error)][-1] == (ErrorCode.BAD_REQUEST, 79)
