"""Protocol 1.5's coalesced frames: Receipts (0xA0), Delivers (0xA1) and Acks (0x20), byte for byte,
round trips in any chunking, and every malformed header a BAD_FRAME (docs/protocol.md,
section 12)."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csce513msg.protocol import (
    Ack,
    Acks,
    Deliver,
    Delivers,
    ErrorCode,
    Frame,
    FrameDecoder,
    LocalProtocolError,
    Message,
    MsgType,
    Receipt,
    Receipts,
    RemoteProtocolError,
    acks_frames,
    decode,
    encode,
)

RECEIPTS = Receipts((Receipt(2, 7, 1000, 1, "dm:a,b", "b is offline", 11), Receipt(3, 8, 1001, 2, "dm:a,b", "", 0)))
DELIVERS = Delivers(
    (Deliver(1, 0, 7, 1000, 1, "a", "b", "dm:a,b", b"hi"), Deliver(1, 0, 8, 1001, 2, "a", "b", "dm:a,b", b"there"))
)


def _frame(wire: bytes) -> Frame:
    (frame,) = FrameDecoder(1 << 24).feed(wire)
    return frame


def _decode(wire: bytes) -> Message:
    return decode(_frame(wire))


def _str(text: str) -> bytes:
    return struct.pack("!H", len(text.encode())) + text.encode()


def test_receipts_have_the_documented_layout() -> None:
    """count u16, entry size u16, the entries' fixed parts, then each entry's strings."""
    header = (
        struct.pack("!HH", 2, 29)
        + struct.pack("!BIQQQ", 2, 11, 7, 1000, 1)
        + struct.pack("!BIQQQ", 3, 0, 8, 1001, 2)
        + _str("dm:a,b")
        + _str("b is offline")
        + _str("dm:a,b")
        + _str("")
    )
    assert encode(RECEIPTS) == struct.pack("!IBBHI", len(header), 0xA0, 0, len(header), 0) + header


def test_delivers_have_the_documented_layout() -> None:
    """The same shape, each fixed part ending with its body's length; the bodies back to back."""
    header = (
        struct.pack("!HH", 2, 30)
        + struct.pack("!BBQQQI", 1, 0, 7, 1000, 1, 2)
        + struct.pack("!BBQQQI", 1, 0, 8, 1001, 2, 5)
        + b"".join(_str(s) for s in ("a", "b", "dm:a,b") * 2)
    )
    body = b"hithere"
    prefix = struct.pack("!IBBHI", len(header) + len(body), 0xA1, 0, len(header), 0)
    assert encode(DELIVERS) == prefix + header + body


@pytest.mark.parametrize("msg", [RECEIPTS, DELIVERS], ids=lambda m: type(m).__name__)
def test_a_coalesced_frame_round_trips_whole_and_byte_at_a_time(msg: Message) -> None:
    wire = encode(msg)
    decoder = FrameDecoder(1 << 20)
    frames = [f for i in range(len(wire)) for f in decoder.feed(wire[i : i + 1])]
    assert [decode(f) for f in frames] == [msg]
    assert decode(next(iter(FrameDecoder(1 << 20).feed(wire)))) == msg


def test_delivers_carry_the_frame_s_request_id_and_receipts_their_own() -> None:
    page = Delivers(tuple(Deliver(1, 0, i, 0, i, "a", "b", "dm:a,b", b"x", 5) for i in (1, 2)), 5)
    got, receipts = _decode(encode(page)), _decode(encode(RECEIPTS))
    assert isinstance(got, Delivers) and [d.request_id for d in got.delivers] == [5, 5]
    assert isinstance(receipts, Receipts) and [r.request_id for r in receipts.receipts] == [11, 0]


def test_a_1_4_peer_is_neither_sent_nor_taken_a_coalesced_frame() -> None:
    with pytest.raises(LocalProtocolError):
        encode(RECEIPTS, 4)
    with pytest.raises(RemoteProtocolError) as err:
        decode(_frame(encode(DELIVERS)), 4)
    assert err.value.code == ErrorCode.UNSUPPORTED


def test_longer_entries_and_trailing_bytes_of_a_later_minor_are_skipped() -> None:
    """Rule 1 for an array: a later minor's entry is longer (the reader takes the fields it
    knows); rule 2: bytes after the arrays are ignored."""
    header = (
        struct.pack("!HH", 2, 29 + 3)
        + struct.pack("!BIQQQ", 2, 11, 7, 1000, 1)
        + b"new"
        + struct.pack("!BIQQQ", 3, 0, 8, 1001, 2)
        + b"new"
        + _str("dm:a,b")
        + _str("b is offline")
        + _str("dm:a,b")
        + _str("")
        + b"a later array"
    )
    assert decode(Frame(MsgType.RECEIPTS, 0, 0, header, b"")) == RECEIPTS


def test_every_cut_of_a_coalesced_header_is_a_bad_frame_naming_the_frame() -> None:
    for msg in (RECEIPTS, DELIVERS):
        frame = _frame(encode(msg))
        for cut in range(len(frame.header)):
            with pytest.raises(RemoteProtocolError) as err:
                decode(Frame(frame.type, 0, 9, frame.header[:cut], frame.body))
            assert (err.value.code, err.value.fatal, err.value.request_id) == (ErrorCode.BAD_FRAME, True, 9), cut


MALFORMED = {
    "an entry shorter than a Receipt's": (MsgType.RECEIPTS, struct.pack("!HH", 1, 28) + bytes(28 + 4), b""),
    "fewer entries than counted": (MsgType.RECEIPTS, struct.pack("!HH", 3, 29) + bytes(29 * 2 + 12), b""),
    "a string not UTF-8": (MsgType.RECEIPTS, struct.pack("!HH", 1, 29) + bytes(29) + b"\x00\x01\xff" + bytes(2), b""),
    "an entry shorter than a Deliver's": (MsgType.DELIVERS, struct.pack("!HH", 1, 29) + bytes(29 + 6), b""),
    "bodies longer than the body": (MsgType.DELIVERS, bytes(_frame(encode(DELIVERS)).header), b"hither"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_coalesced_header_is_a_bad_frame(case: str) -> None:
    ftype, header, body = MALFORMED[case]
    with pytest.raises(RemoteProtocolError) as err:
        decode(Frame(ftype, 0, 0, header, body))
    assert err.value.code == ErrorCode.BAD_FRAME and err.value.fatal


def test_an_empty_coalesced_frame_decodes_to_no_messages() -> None:
    """Count 0 is well formed (this server never sends one)."""
    assert decode(Frame(MsgType.RECEIPTS, 0, 0, struct.pack("!HH", 0, 29), b"")) == Receipts(())


texts = st.text(max_size=20)
u64 = st.integers(0, 2**64 - 1)
receipts = st.builds(Receipt, st.integers(0, 255), u64, u64, u64, texts, texts, st.integers(0, 2**32 - 1))
delivers = st.builds(
    Deliver, st.integers(0, 255), st.integers(0, 255), u64, u64, u64, texts, texts, texts, st.binary(max_size=40)
)


@given(st.lists(receipts, max_size=12))
def test_any_receipts_round_trip(entries: list[Receipt]) -> None:
    msg = Receipts(tuple(entries))
    assert _decode(encode(msg)) == msg


@given(st.lists(delivers, max_size=12), st.integers(0, 2**32 - 1))
def test_any_delivers_round_trip(entries: list[Deliver], rid: int) -> None:
    msg = Delivers(tuple(dataclasses.replace(d, request_id=rid) for d in entries), rid)
    assert _decode(encode(msg)) == msg


@given(
    st.sampled_from([MsgType.RECEIPTS, MsgType.DELIVERS, MsgType.ACKS]), st.binary(max_size=200), st.binary(max_size=40)
)
def test_any_coalesced_header_decodes_or_is_a_bad_frame(ftype: int, header: bytes, body: bytes) -> None:
    try:
        decode(Frame(ftype, 0, 0, header, body))
    except RemoteProtocolError as exc:  # (an Acks' position over 2^63: a bad request, not a broken frame)
        assert exc.code == ErrorCode.BAD_FRAME or (ftype == MsgType.ACKS and exc.code == ErrorCode.BAD_REQUEST)


ACKS = Acks(("dm:a,b", "g:7"), (3, 2**63 - 1), request_id=5)


def test_acks_have_the_documented_layout() -> None:
    """count u16, entry size u16 (8), each position u64, then each entry's stream."""
    header = struct.pack("!HH", 2, 8) + struct.pack("!QQ", 3, 2**63 - 1) + _str("dm:a,b") + _str("g:7")
    wire = encode(ACKS)
    assert wire == struct.pack("!IBBHI", len(header), 0x20, 0, len(header), 5) + header
    assert _decode(wire) == ACKS


def test_an_acks_position_over_2_63_is_a_bad_request_not_a_broken_frame() -> None:
    header = struct.pack("!HH", 1, 8) + struct.pack("!Q", 2**63) + _str("dm:a,b")
    with pytest.raises(RemoteProtocolError) as err:
        decode(Frame(MsgType.ACKS, 0, 4, header, b""))
    assert (err.value.code, err.value.fatal, err.value.request_id) == (ErrorCode.BAD_REQUEST, False, 4)


def test_every_cut_of_an_acks_header_is_a_bad_frame_and_a_1_4_peer_may_not_send_one() -> None:
    frame = _frame(encode(ACKS))
    for cut in range(len(frame.header)):
        with pytest.raises(RemoteProtocolError) as err:
            decode(Frame(frame.type, 0, 9, frame.header[:cut], b""))
        assert (err.value.code, err.value.fatal) == (ErrorCode.BAD_FRAME, True), cut
    with pytest.raises(RemoteProtocolError) as err:
        decode(frame, 4)
    assert err.value.code == ErrorCode.UNSUPPORTED
    with pytest.raises(ValueError):
        encode(Acks(("a",), (1, 2)))  # a stream for each position


@given(st.lists(st.tuples(texts, st.integers(0, 2**63 - 1)), max_size=12), st.integers(0, 2**32 - 1))
def test_any_acks_round_trip(entries: list[tuple[str, int]], rid: int) -> None:
    msg = Acks(tuple(s for s, _ in entries), tuple(p for _, p in entries), rid)
    assert _decode(encode(msg)) == msg


def test_acks_frames_fit_the_server_s_max_frame_and_window_and_keep_the_order() -> None:
    """The review's case: 60 streams with long names to a server of --max-frame 4096 made
    one Acks of 4,216 bytes (FRAME_TOO_LARGE, and the device could never catch up)."""
    acks = {f"dm:{'a' * 32},{i:032d}": i + 1 for i in range(60)}
    for max_frame, window in ((4096, 64), (65536, 8), (65536, 64), (100, 64)):
        wires = acks_frames(acks, max_frame, window)
        got: list[tuple[str, int]] = []
        for wire in wires:
            frame = _frame(wire)
            assert len(frame.header) <= max_frame or len(wires) == len(acks)  # (one plain Ack each at 100)
            msg = decode(frame)
            if isinstance(msg, Acks):
                assert len(msg.streams) <= window
                got += zip(msg.streams, msg.positions, strict=True)
            else:
                assert isinstance(msg, Ack)
                got.append((msg.stream, msg.position))
        assert got == list(acks.items()), (max_frame, window)
    assert [type(decode(_frame(w))) for w in acks_frames({"dm:a,b": 3}, 4096, 64)] == [Ack]
