"""Conformance: coalescing (1.5, docs/protocol.md section 12), on the wire.

A raw client that asks for ``coalescing`` sends eight messages in one write and reads
them back as Receipts and Delivers frames, every field exact and in order; a 1.4 client
on the same server is sent only plain Receipt and Deliver frames, one a message. One
Acks frame acknowledges several streams at once, all or none."""

from __future__ import annotations

from csce513msg.protocol import (
    VERSION_MAJOR,
    Ack,
    Acks,
    Deliver,
    Delivers,
    ErrorCode,
    Hello,
    Message,
    Receipt,
    Receipts,
    ReceiptState,
    Register,
    Send,
    TargetKind,
)
from tests.conformance.wire import PASSWORD, RawConn
from tests.fixtures import Names, Server

EIGHT = 8


def raw_client(server: Server, user: str, minor: int, coalescing: bool) -> RawConn:
    """A logged-in raw connection of protocol 1.``minor`` (asking for coalescing, or not)."""
    conn = RawConn(server)
    welcome = conn.welcome()
    if minor >= 5:
        assert "coalescing" in welcome.features  # a 1.5 server offers it
    features = ("coalescing",) if coalescing else ()
    conn.send(Hello(VERSION_MAJOR, minor, features, request_id=1), Register(user, PASSWORD, user, request_id=2))
    conn.login_ok()
    return conn


def read_until(conn: RawConn, count: int, kind: type[Receipt] | type[Deliver]) -> list[Message]:
    """Frames until they carry ``count`` messages of ``kind`` (the frames, as they came)."""
    got: list[Message] = []
    carried = 0
    while carried < count:
        msg = conn.recv()
        if isinstance(msg, Receipts | Delivers):
            entries: tuple[Message, ...] = msg.receipts if isinstance(msg, Receipts) else msg.delivers
            assert all(isinstance(e, kind) for e in entries), msg
            carried += len(entries)
        elif isinstance(msg, kind):
            carried += 1
        else:
            continue  # e.g. a catch-up's nothing: only what was asked for counts
        got.append(msg)
    assert carried == count, got
    return got


def unpacked(frames: list[Message]) -> list[Message]:
    out: list[Message] = []
    for msg in frames:
        out.extend(msg.receipts if isinstance(msg, Receipts) else msg.delivers if isinstance(msg, Delivers) else [msg])
    return out


def send_eight(sender: RawConn, to: str) -> list[int]:
    """Eight Sends in one write; their request ids."""
    rids = list(range(10, 10 + EIGHT))
    sender.send(*(Send(TargetKind.USER, 0, 0, to, f"m{i}".encode(), request_id=rid) for i, rid in enumerate(rids)))
    return rids


def test_a_coalescing_client_reads_receipts_and_delivers_frames_exactly(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = raw_client(server, alice, 5, True), raw_client(server, bob, 5, True)
    rids = send_eight(a, bob)
    receipt_frames = read_until(a, EIGHT, Receipt)
    receipts = unpacked(receipt_frames)
    stream = "dm:" + ",".join(sorted((alice, bob)))
    assert all(isinstance(r, Receipt) for r in receipts)
    assert [(r.state, r.request_id, r.position, r.stream) for r in receipts if isinstance(r, Receipt)] == [
        (ReceiptState.STORED, rid, i + 1, stream) for i, rid in enumerate(rids)
    ]
    ids = [r.message_id for r in receipts if isinstance(r, Receipt)]
    assert len(set(ids)) == EIGHT
    # one write of eight is one commit here: fewer frames than messages (one, unless the
    # server read the write in pieces)
    assert len(receipt_frames) < EIGHT and any(isinstance(f, Receipts) for f in receipt_frames)
    deliver_frames = read_until(b, EIGHT, Deliver)
    delivers = [d for d in unpacked(deliver_frames) if isinstance(d, Deliver)]
    assert [(d.message_id, d.position, d.sender, d.target, d.stream, d.body, d.request_id) for d in delivers] == [
        (ids[i], i + 1, alice, bob, stream, f"m{i}".encode(), 0) for i in range(EIGHT)
    ]
    assert len(deliver_frames) < EIGHT and any(isinstance(f, Delivers) for f in deliver_frames)
    # one cumulative Ack: the eight delivered receipts, coalesced too, each its message's own
    b.send(Ack(EIGHT, stream))
    delivered = [r for r in unpacked(read_until(a, EIGHT, Receipt)) if isinstance(r, Receipt)]
    assert [(r.state, r.request_id, r.message_id, r.position) for r in delivered] == [
        (ReceiptState.DELIVERED, 0, ids[i], i + 1) for i in range(EIGHT)
    ]
    a.close()
    b.close()


def test_a_1_4_client_and_one_that_did_not_ask_get_plain_frames(server: Server, names: Names) -> None:
    carol, dave = names("carol"), names("dave")
    c, d = raw_client(server, carol, 4, False), raw_client(server, dave, 5, False)
    rids = send_eight(c, dave)
    receipts = read_until(c, EIGHT, Receipt)
    assert [type(r) for r in receipts] == [Receipt] * EIGHT
    assert [(r.request_id, r.position) for r in receipts if isinstance(r, Receipt)] == [
        (rid, i + 1) for i, rid in enumerate(rids)
    ]
    delivers = read_until(d, EIGHT, Deliver)
    assert [type(m) for m in delivers] == [Deliver] * EIGHT
    assert [m.body for m in delivers if isinstance(m, Deliver)] == [f"m{i}".encode() for i in range(EIGHT)]
    c.close()
    d.close()


def test_a_1_4_client_asking_for_coalescing_is_not_given_it(server: Server, names: Names) -> None:
    """The feature is 1.5's: a Hello of 1.4 that names it gets the plain frames."""
    erin, frank = names("erin"), names("frank")
    e, f = raw_client(server, erin, 4, True), raw_client(server, frank, 4, True)
    send_eight(e, frank)
    assert [type(r) for r in read_until(e, EIGHT, Receipt)] == [Receipt] * EIGHT
    assert [type(m) for m in read_until(f, EIGHT, Deliver)] == [Deliver] * EIGHT
    e.close()
    f.close()


def test_one_acks_frame_acknowledges_several_streams_all_or_none(server: Server, names: Names) -> None:
    """Bob reads a message from each of two senders and acknowledges both in one Acks (1.5):
    each sender gets its delivered receipt. An Acks with an entry beyond what was delivered
    is refused (BAD_REQUEST, the connection stays; tests/hub: nothing of it applied)."""
    gina, hank, bob = names("gina"), names("hank"), names("ivan")
    g, h, b = (raw_client(server, user, 5, True) for user in (gina, hank, bob))
    g.send(Send(TargetKind.USER, 0, 0, bob, b"from g", request_id=5))
    h.send(Send(TargetKind.USER, 0, 0, bob, b"from h", request_id=6))
    delivers = [d for d in unpacked(read_until(b, 2, Deliver)) if isinstance(d, Deliver)]
    streams = {d.sender: d.stream for d in delivers}
    assert set(streams) == {gina, hank}
    b.send(Acks((streams[gina], streams[hank]), (2, 1), request_id=7))  # gina's: beyond what came
    b.expect_error(ErrorCode.BAD_REQUEST, 7)  # not fatal: the connection goes on
    b.send(Acks((streams[gina], streams[hank]), (1, 1), request_id=8))
    for sender, conn in ((gina, g), (hank, h)):
        receipts = [r for r in unpacked(read_until(conn, 2, Receipt)) if isinstance(r, Receipt)]
        assert [(r.state, r.position, r.stream) for r in receipts] == [
            (ReceiptState.STORED, 1, streams[sender]),
            (ReceiptState.DELIVERED, 1, streams[sender]),
        ], sender
    for conn in (g, h, b):
        conn.close()
