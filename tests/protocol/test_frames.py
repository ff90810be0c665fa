"""Protocol unit tests: one case table drives the encoder and the decoder.

Each case is fed whole, one byte at a time, and followed by trailing data; the
malformed table maps bytes to error codes; hypothesis checks round trips and
re-chunking, and that garbage only ever raises ProtocolError.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csce513msg.protocol import (
    MAX_REQUEST_U64,
    Ack,
    Confirm,
    Confirmations,
    Confirmed,
    Deliver,
    Error,
    ErrorCode,
    FileChunk,
    Frame,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupDelete,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupJoin,
    GroupLeave,
    GroupList,
    GroupListReply,
    GroupMembers,
    GroupMembersReply,
    GroupMute,
    GroupRemove,
    GroupRename,
    GroupSlow,
    Hand,
    HandOp,
    HandPlace,
    HandQueue,
    HandQueueReply,
    HeaderCodec,
    Hello,
    History,
    LocalProtocolError,
    Login,
    LoginOk,
    Message,
    MsgType,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    QueueOp,
    Receipt,
    Redact,
    Register,
    RemoteProtocolError,
    Send,
    Welcome,
    Who,
    WhoReply,
    decode,
    encode,
    encode_fields,
    encode_frame,
)
from csce513msg.protocol import messages as messages_module

# (message, its exact bytes). The first is the byte-level example in docs/protocol.md.
CASES: list[tuple[Message, bytes]] = [
    (
        Send(1, 0, 0, "bob", b"hi", request_id=7),
        bytes.fromhex("000000110300000f00000007010000000000000000000003626f626869"),
    ),
    (Who(request_id=1), bytes.fromhex("000000000500000000000001")),
    (Ping(b"", request_id=2), bytes.fromhex("000000000600000000000002")),
    (
        Ack(3, "dm:a,b", request_id=0),
        bytes.fromhex("00000010040000100000000000000000000000030006" + b"dm:a,b".hex()),
    ),
    (
        Error(ErrorCode.USER_NOT_FOUND, "no", request_id=9),  # 1.4: retry_after_ms (0) at the end
        bytes.fromhex("0000000a8800000a00000009000800026e6f00000000"),
    ),
    (
        Error(ErrorCode.MUTED, "no", 1500, request_id=9),
        bytes.fromhex("0000000a8800000a00000009001d00026e6f000005dc"),
    ),
    (
        WhoReply(("a", "bc"), request_id=4),  # an empty N list is its count: 0000
        bytes.fromhex("0000000d8500000d0000000400020001610002626300000000"),
    ),
    (
        WhoReply(("a",), (2,), ("instructor",), request_id=4),  # N: u16 count, then u32 each
        bytes.fromhex("00000019850000190000000400010001610001000000020001000a" + b"instructor".hex()),
    ),
    (
        LoginOk(1, "al", "student", 3, "t0", request_id=2),  # 1.3: the device token at the end
        bytes.fromhex(
            "0000001d8200001d0000000200000000000000010002616c0007" + b"student".hex() + "000000030002" + b"t0".hex()
        ),
    ),
    (
        Login("al", "pw", "d", "t0", request_id=2),
        bytes.fromhex("0000000f0200000f000000020002616c000270770001640002" + b"t0".hex()),
    ),
    (
        Register("al", "pw", "d", request_id=2),
        bytes.fromhex("0000000b0800000b000000020002616c00027077000164"),
    ),
]
MORE: list[Message] = [
    Hello(1, 0, ("presence",), "msg", request_id=1),
    Login("alice", "", "", request_id=2),
    Welcome(1, 0, 65536, 16384, 64, 90000, ("presence",), "csce513msg"),
    LoginOk(1_700_000_000_000_000, "alice", request_id=2),
    Receipt(1, 2**64 - 1, 1_700_000_000_000_000, 1, "dm:alice,bob", "", request_id=3),
    Deliver(1, 0, 42, 1_700_000_000_000_000, 5, "alice", "bob", "dm:alice,bob", "ünïcode ✓".encode()),
    Presence(1, 1_700_000_000_000_000, "bob"),
    Pong(b"\x00\xff", request_id=5),
]


@pytest.mark.parametrize(("msg", "wire"), CASES, ids=lambda x: type(x).__name__ if not isinstance(x, bytes) else "")
def test_encode_gives_the_exact_bytes(msg: Message, wire: bytes) -> None:
    assert encode(msg) == wire


@pytest.mark.parametrize("msg", [c[0] for c in CASES] + MORE, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("chunking", ["whole", "byte-at-a-time", "with-trailing"])
def test_decode_in_any_chunking(msg: Message, chunking: str) -> None:
    wire = encode(msg)
    decoder = FrameDecoder(1 << 20)
    trailing = encode(Ping(b"next", request_id=99))
    if chunking == "whole":
        frames = list(decoder.feed(wire))
    elif chunking == "byte-at-a-time":
        frames = [f for i in range(len(wire)) for f in decoder.feed(wire[i : i + 1])]
    else:
        frames = list(decoder.feed(wire + trailing[:5]))
        assert decoder.buffered == 5
        frames += list(decoder.feed(trailing[5:]))
        assert decode(frames.pop()) == Ping(b"next", request_id=99)
    assert [decode(f) for f in frames] == [msg]
    assert decoder.buffered == 0


MALFORMED: dict[str, tuple[bytes, ErrorCode]] = {
    "declared length over the limit": (struct.pack("!IBBHI", 1025, 3, 0, 0, 1), ErrorCode.FRAME_TOO_LARGE),
    "header longer than frame": (struct.pack("!IBBHI", 2, 3, 0, 3, 1) + b"ab", ErrorCode.BAD_FRAME),
    "fixed fields cut short": (encode_frame(0x04, 1, b"\x00\x00\x00"), ErrorCode.BAD_FRAME),
    "string longer than header": (encode_frame(0x02, 1, b"\x00\x09abc"), ErrorCode.BAD_FRAME),
    "string not utf-8": (encode_frame(0x02, 1, b"\x00\x01\xff"), ErrorCode.BAD_FRAME),
    "list cut short": (encode_frame(0x85, 1, b"\x00\x02\x00\x01a"), ErrorCode.BAD_FRAME),
    "unknown type": (encode_frame(0x7E, 5, b""), ErrorCode.UNSUPPORTED),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_gives_its_error_code(case: str) -> None:
    wire, code = MALFORMED[case]
    decoder = FrameDecoder(1024)
    with pytest.raises(RemoteProtocolError) as err:
        for frame in decoder.feed(wire):
            decode(frame)
    assert err.value.code == code
    assert err.value.fatal == (code != ErrorCode.UNSUPPORTED)


def test_oversized_frame_is_refused_from_the_prefix_alone() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(RemoteProtocolError) as err:
        list(decoder.feed(struct.pack("!IBBHI", 101, 3, 0, 0, 1)))
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError):  # a broken decoder stays broken
        list(decoder.feed(b"more"))


def test_the_bulk_type_may_be_larger_than_max_frame_and_no_other() -> None:
    """1.8: a logged-in session's FileChunk frames may reach ``bulk_frame``; every other type
    keeps ``max_frame``, and past ``bulk_frame`` the bulk type is refused too, naming its limit."""
    decoder = FrameDecoder(100)
    decoder.bulk_type, decoder.bulk_frame = MsgType.FILE_CHUNK, 300
    chunk = FileChunk("u", 0, bytes(250), request_id=1)
    assert [decode(f) for f in decoder.feed(encode(chunk))] == [chunk]
    for ftype, length in ((MsgType.FILE_CHUNK, 301), (MsgType.PING, 101)):
        fresh = FrameDecoder(100)
        fresh.bulk_type, fresh.bulk_frame = MsgType.FILE_CHUNK, 300
        with pytest.raises(RemoteProtocolError) as err:
            list(fresh.feed(struct.pack("!IBBHI", length, ftype, 0, 0, 1)))
        assert err.value.code == ErrorCode.FRAME_TOO_LARGE
        assert f"over the limit of {300 if ftype == MsgType.FILE_CHUNK else 100}" in str(err.value)


def test_good_frames_before_a_bad_one_come_out_first() -> None:
    decoder = FrameDecoder(100)
    good = encode(Ping(b"1", request_id=1))
    out = []
    with pytest.raises(RemoteProtocolError):
        for frame in decoder.feed(good + struct.pack("!IBBHI", 500, 3, 0, 0, 1)):
            out.append(decode(frame))
    assert out == [Ping(b"1", request_id=1)]


def test_unknown_trailing_fields_are_ignored_and_missing_ones_take_defaults() -> None:
    codec = HeaderCodec("BQs")
    assert codec.decode(codec.encode([1, 2, "x"]) + b"\x00\x05extra") == [1, 2, "x"]
    assert codec.decode(codec.encode([1, 2, "x"])[:9]) == [1, 2, ""]  # an older peer: no string
    assert codec.decode(b"") == [0, 0, ""]


def test_flags_are_ignored_on_receipt() -> None:
    wire = bytearray(encode(Who(request_id=3)))
    wire[5] = 0xFF
    assert decode(next(iter(FrameDecoder(64).feed(bytes(wire))))) == Who(request_id=3)


@pytest.mark.parametrize(
    "req",
    [
        Send(1, 0, 2**63, "bob", b"hi", request_id=4),
        Ack(2**64 - 1, "dm:a,b", request_id=4),
        History(2**63, 10, 1, "bob", request_id=4),
    ],
)
def test_a_request_u64_at_or_over_2_63_is_a_bad_request_naming_it(req: Message) -> None:
    """Stores keep u64s as signed 64-bit integers: a larger value is a bad value (the
    connection stays open), refused by name before it can reach storage."""
    frame = next(iter(FrameDecoder(1024).feed(encode(req))))
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    assert caught.value.code == ErrorCode.BAD_REQUEST and not caught.value.fatal
    assert caught.value.request_id == 4 and type(req).__name__ in caught.value.message
    largest = _at_most(req)
    assert decode(next(iter(FrameDecoder(1024).feed(encode(largest))))) == largest


def _at_most(request: Message) -> Message:
    """``request`` with its u64 at the largest value a request may carry."""
    match request:
        case Send():
            return dataclasses.replace(request, client_msg_id=MAX_REQUEST_U64)
        case Ack():
            return dataclasses.replace(request, position=MAX_REQUEST_U64)
        case History():
            return dataclasses.replace(request, before=MAX_REQUEST_U64)
    raise AssertionError(f"no u64 field known in {request!r}")


# ---- properties --------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
u64 = st.integers(0, 2**64 - 1)
u63 = st.integers(0, MAX_REQUEST_U64)  # what a request may carry
u32 = st.integers(0, 2**32 - 1)
bodies = st.binary(max_size=300)
messages = st.one_of(
    st.builds(Send, st.integers(0, 255), st.integers(0, 255), u63, names, bodies, u32),
    st.builds(Deliver, st.integers(0, 255), st.integers(0, 255), u64, u64, u64, names, names, names, bodies, u32),
    st.builds(Receipt, st.integers(0, 255), u64, u64, u64, names, names, u32),
    st.builds(Hello, st.integers(0, 255), st.integers(0, 255), st.lists(names, max_size=4).map(tuple), names, u32),
    st.builds(
        WhoReply,
        st.lists(names, max_size=20).map(tuple),
        st.lists(u32, max_size=20).map(tuple),
        st.lists(names, max_size=20).map(tuple),
        u32,
    ),
    st.builds(LoginOk, u64, names, names, u32, names, u32),
    st.builds(Register, names, names, names, u32),
    st.builds(Login, names, names, names, names, u32),
    st.builds(Error, st.integers(0, 65535), names, u32),
    st.builds(Ack, u63, names, u32),
    st.builds(History, u63, u32, st.integers(0, 255), names, u32),
    st.builds(Ping, bodies, u32),
)


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_any_rechunking_decodes_to_the_same_messages(msgs: list[Message], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder(1 << 20)
    frames: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        frames.extend(decoder.feed(wire[start:end]))
    assert [decode(f) for f in frames] == msgs


@given(messages, st.integers(0, 9))
def test_encode_fields_gives_the_bytes_of_encode(msg: Message, minor: int) -> None:
    """The hub encodes receipts and deliveries from their fields, making no message: the
    same bytes as the message's, for a peer of any minor."""
    names = [f.name for f in dataclasses.fields(msg) if f.name not in ("body", "request_id")]
    values = [getattr(msg, name) for name in names]
    body = getattr(msg, "body", b"")
    assert encode_fields(type(msg), values, msg.request_id, body, minor) == encode(msg, minor)


@given(messages)
def test_the_codec_s_fast_path_agrees_with_its_general_path(msg: Message) -> None:
    """A header of fixed-width fields then strings is packed and unpacked by a plan made once
    (``HeaderCodec._simple``); the general path, a step per field, must agree with it on
    every header: whole, followed by unknown bytes, or cut at any byte (an older peer, or a
    malformed frame: the same error, with the same words)."""
    fast = HeaderCodec(messages_module._BY_CLASS[type(msg)].codec.kinds)
    general = HeaderCodec(fast.kinds)
    general._simple = False  # the general path for every header, as for a shape with lists
    header = next(iter(FrameDecoder(1 << 20).feed(encode(msg)))).header
    values = general.decode(header)
    assert fast.encode(values) == general.encode(values) == header
    for variant in [header + b"\x00\x05extra", *(header[:cut] for cut in range(len(header)))]:
        outcomes: list[object] = []
        for codec in (fast, general):
            try:
                outcomes.append(codec.decode(variant))
            except RemoteProtocolError as exc:
                outcomes.append((exc.code, exc.message, exc.fatal))
        assert outcomes[0] == outcomes[1], variant


@given(st.binary(max_size=600))
def test_garbage_raises_only_protocol_errors(garbage: bytes) -> None:
    decoder = FrameDecoder(256)
    try:
        for frame in decoder.feed(garbage):
            decode(frame)
    except ProtocolError:
        pass


@given(st.integers(0, 255), st.binary(max_size=64), st.binary(max_size=64))
def test_any_type_and_header_decode_or_raise_protocol_error(ftype: int, header: bytes, body: bytes) -> None:
    frame = next(iter(FrameDecoder(1024).feed(encode_frame(ftype, 1, header, body))))
    try:
        decode(frame)
    except ProtocolError:
        pass


def test_a_frame_taken_is_consumed_even_if_iteration_stops() -> None:
    decoder = FrameDecoder(1024)
    wire = encode(Ping(b"a", request_id=1)) + encode(Ping(b"b", request_id=2))
    first = next(iter(decoder.feed(wire)))  # the caller stops after one frame (e.g. a Close)
    assert decode(first) == Ping(b"a", request_id=1)
    assert [decode(f) for f in decoder.feed(b"")] == [Ping(b"b", request_id=2)]
    assert decoder.buffered == 0


def test_a_broken_decoder_holds_nothing() -> None:
    """A connection refused for its frame lingers until the peer closes (up to the close
    timeout): its decoder must not keep the bytes, nor an exception whose traceback
    would. (5,000 such connections once held 190 kB each.)"""
    decoder = FrameDecoder(4096)
    first = encode(Ping(b"x" * 60_000, request_id=1))[:30_000]
    with pytest.raises(RemoteProtocolError) as one:
        list(decoder.feed(first))
    assert one.value.code == ErrorCode.FRAME_TOO_LARGE and one.value.fatal
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError) as two:
        list(decoder.feed(b"more"))
    assert two.value is not one.value and two.value.code == one.value.code and decoder.buffered == 0


@pytest.mark.parametrize(
    ("msg_type", "header", "expected"),
    [
        (0x07, struct.pack("!Q", 9), History(9, 0, 0, "", request_id=5)),  # only `before`
        (0x07, struct.pack("!QI", 9, 3), History(9, 3, 0, "", request_id=5)),
        (0x01, struct.pack("!B", 1), Hello(1, 0, (), "", request_id=5)),  # only version_major
        (0x03, struct.pack("!BB", 1, 0), Send(1, 0, 0, "", b"", request_id=5)),
    ],
)
def test_a_header_cut_at_a_field_boundary_takes_defaults(msg_type: int, header: bytes, expected: Message) -> None:
    """Section 3, rule 3: a field missing at the end (an older peer) takes its default, also
    inside a run of fixed-width fields, which are packed together."""
    frame = next(iter(FrameDecoder(1024).feed(encode_frame(msg_type, 5, header))))
    assert decode(frame) == expected


def test_a_field_cut_in_its_middle_is_a_bad_frame() -> None:
    frame = next(iter(FrameDecoder(1024).feed(encode_frame(0x07, 5, struct.pack("!Q", 9) + b"\x00\x00"))))
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    assert caught.value.code == ErrorCode.BAD_FRAME and caught.value.fatal


def test_encode_for_an_older_minor_leaves_out_the_fields_added_since() -> None:
    ok = LoginOk(1, "al", "student", 3, "tok", request_id=2)
    sizes = {minor: len(encode(ok, minor)) for minor in (1, 2, 3, 9)}
    assert sizes[1] < sizes[2] < sizes[3] == sizes[9]  # 1.1: no role/waiting; 1.2: no token
    old = decode(next(iter(FrameDecoder(1024).feed(encode(ok, 2)))))
    assert old == LoginOk(1, "al", "student", 3, "", request_id=2)
    who = WhoReply(("a",), (2,), ("instructor",), request_id=4)
    assert decode(next(iter(FrameDecoder(1024).feed(encode(who, 1))))) == WhoReply(("a",), request_id=4)


def test_the_module_s_table_of_types_lists_every_msg_type() -> None:
    """The type table in messages.py's docstring drifted once (0x07, 0x08, 0x89 were missing)."""
    import re

    from csce513msg.protocol import MsgType, messages

    listed = {int(code, 16): name for code, name in re.findall(r"0x([0-9a-f]{2}) (\w+)", messages.__doc__ or "")}
    assert listed == {t.value: messages._BY_TYPE[t].cls.__name__ for t in MsgType}


# ---- 1.4: group frames, assigned ahead of the server that serves them --------------------

GROUP_FRAMES: list[Message] = [
    GroupCreate("lab-1", 1),
    GroupJoin("g:7"),
    GroupLeave("lab-1"),
    GroupAdd("lab-1", ("alice", "bob")),
    GroupRemove("lab-1", ("bob",)),
    GroupRename("g:7", "lab-2"),
    GroupList(0),
    GroupMembers("lab-1"),
    GroupDelete("lab-1"),
    GroupMute("lab-1", ("bob", "carol"), 600),
    GroupSlow("g:7", 30),
    Redact("lab-1", 2**63 - 1),
    GroupInfo("g:7", "lab-1", "alice", 0, 2, 41, 1),
    GroupListReply(("g:7",), ("lab-1",), ("alice",), (2,), (3,)),
    GroupMembersReply("g:7", ("alice", "bob"), ("instructor", "student"), (1, 0)),
    Confirm(5),
    Confirmed(0),
    Hand(HandOp.RAISE, "how do I close a socket?"),
    HandQueue(QueueOp.TAKE),
    Confirmations(5, ("alice",), ("bob", "carol")),
    HandPlace(2, 3, "how do I close a socket?", ""),
    HandQueueReply("bob", ("carol", "dan"), ("q1", "q2"), (30, 5)),
]


@pytest.mark.parametrize("msg", GROUP_FRAMES, ids=lambda m: type(m).__name__)
def test_a_group_frame_round_trips_for_a_1_4_peer_and_exists_for_no_older_one(msg: Message) -> None:
    data = encode(msg, 4)
    (frame,) = FrameDecoder(65536).feed(data)
    with pytest.raises(RemoteProtocolError):
        decode(frame, 4, ours=3)  # a side that speaks 1.3 takes no 1.4 frame, whatever the peer says
    assert decode(frame, 4) == msg
    with pytest.raises(LocalProtocolError):
        encode(msg, 3)  # never sent to a peer of 1.3
    with pytest.raises(RemoteProtocolError) as refused:
        decode(frame, 3)  # nor taken from one
    assert refused.value.code == ErrorCode.UNSUPPORTED and not refused.value.fatal


def test_a_group_event_body_round_trips() -> None:
    event = GroupEvent(GroupEventKind.ADDED, ("alice", "bob"), "lab-1")
    assert GroupEvent.decode(event.encode()) == event
    assert GroupEvent.decode(b"\x06") == GroupEvent(GroupEventKind.RENAMED)  # cut at a field: defaults
    with pytest.raises(RemoteProtocolError):
        GroupEvent.decode(event.encode()[:3])  # cut in the middle of a field


def test_a_moderation_event_carries_its_value_and_an_older_body_reads_as_value_0() -> None:
    removed = GroupEvent(GroupEventKind.REMOVED_MESSAGE, ("bob",), "lab-1", 41)
    assert GroupEvent.decode(removed.encode()) == removed
    assert removed.encode()[-8:] == (41).to_bytes(8, "big")  # "BLsQ": the value appended
    three = bytes.fromhex("040002000362" + "6f6200056361726f6c00056c61622d31")  # section 11's "added" body
    assert GroupEvent.decode(three) == GroupEvent(GroupEventKind.ADDED, ("bob", "carol"), "lab-1", 0)
    kinds = [(k.name, k.value) for k in GroupEventKind if k.value > 6]
    assert kinds == [("DELETED", 7), ("MUTED", 8), ("UNMUTED", 9), ("SLOW", 10), ("REMOVED_MESSAGE", 11)]


def test_an_error_s_retry_after_is_left_out_for_a_1_3_peer_and_reads_as_0_from_one() -> None:
    error = Error(ErrorCode.RATE_LIMITED, "slow down", 250, request_id=3)
    old = encode(error, 3)
    assert len(old) == len(encode(error, 4)) - 4
    (frame,) = FrameDecoder(65536).feed(old)
    assert decode(frame, 3) == Error(ErrorCode.RATE_LIMITED, "slow down", 0, request_id=3)
    (frame,) = FrameDecoder(65536).feed(encode(error, 4))
    assert decode(frame, 4) == error
    assert [(c.name, c.value) for c in ErrorCode if 29 <= c.value <= 31] == [
        ("MUTED", 29),
        ("SLOW_MODE", 30),
        ("NO_SUCH_MESSAGE", 31),
    ]
