"""Protocol 1.6's frames (files) and the file offer's body: exact bytes (the example of
docs/protocol.md section 13), round trips, the minor-version gate, the Welcome's
appended limits, and hostile offers refused with BAD_REQUEST."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csce513msg.protocol import (
    ErrorCode,
    FileCancel,
    FileChunk,
    FileData,
    FileGet,
    FileState,
    FileUpload,
    FrameDecoder,
    LocalProtocolError,
    Message,
    Offer,
    RemoteProtocolError,
    Welcome,
    decode,
    encode,
    offer_body,
    parse_offer,
)

UID = "q8Vn0x1cTtGm4kQe5W2aYA"
HELLO = hashlib.sha256(b"hello").hexdigest()
FRAMES: list[Message] = [
    FileUpload(5, HELLO, 1, "bob", request_id=9),
    FileUpload(5, HELLO, 2, "lab", UID, request_id=9),
    FileChunk(UID, 0, b"hello", request_id=10),
    FileGet(UID, 0, 5, request_id=4),
    FileCancel(UID, request_id=11),
    FileState(UID, 1, 5, 0, 1765000000000000, request_id=9),
    FileData(UID, 0, 5, 1, b"hello", request_id=4),
]


def frame_of(data: bytes) -> object:
    (frame,) = FrameDecoder(1 << 20).feed(data)
    return frame


def test_the_spec_s_byte_level_example() -> None:
    """docs/protocol.md section 13, byte for byte."""
    assert encode(FRAMES[0]).hex(" ").startswith("00 00 00 52 30 00 00 52 00 00 00 09 00 00 00 00 00 00 00 05 00 40")
    prefix = bytes.fromhex("00000025310000200000000a")  # length 37, FileChunk, hlen 32, id 10
    assert encode(FRAMES[2]) == prefix + b"\x00\x16" + UID.encode() + bytes(8) + b"hello"
    assert len(encode(FRAMES[0])) == 94 and len(encode(FRAMES[5])) == 61
    assert len(encode(FRAMES[3])) == 48 and len(encode(FRAMES[6])) == 58


@pytest.mark.parametrize("msg", FRAMES, ids=lambda m: type(m).__name__)
def test_a_file_frame_round_trips_for_a_1_6_peer_and_exists_for_no_older_one(msg: Message) -> None:
    data = encode(msg, 6)
    frame = frame_of(data)
    assert decode(frame, 6) == msg  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode(msg, 5)  # never sent to a 1.5 peer
    with pytest.raises(RemoteProtocolError) as refused:
        decode(frame, 5)  # type: ignore[arg-type]  # nor taken from one
    assert refused.value.code == ErrorCode.UNSUPPORTED and not refused.value.fatal


def test_the_welcome_s_file_limits_are_left_out_for_a_1_5_peer() -> None:
    welcome = Welcome(1, 6, 65536, 16384, 64, 90000, ("files",), "s", 1 << 28, 1 << 30, 1 << 29, 7)
    older = decode(frame_of(encode(welcome, 5)), 5)  # type: ignore[arg-type]
    assert isinstance(older, Welcome) and (older.max_file, older.file_quota, older.disk_reserve, older.file_days) == (
        0,
        0,
        0,
        0,
    )
    assert decode(frame_of(encode(welcome, 6)), 6) == welcome  # type: ignore[arg-type]


@given(st.text(max_size=300), st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32))
def test_an_offer_round_trips(name: str, size: int, digest: bytes) -> None:
    offer = Offer(UID, name, size, digest.hex())
    assert parse_offer(offer_body(offer)) == offer


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        json.dumps({"upload": UID, "name": "a", "size": 1}).encode(),  # no sha256
        json.dumps({"upload": "../../etc", "name": "a", "size": 1, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": "a" * 1025, "size": 1, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": "a", "size": -1, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": "a", "size": True, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": "a", "size": 1.5, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": 7, "size": 1, "sha256": HELLO}).encode(),
        json.dumps({"upload": UID, "name": "a", "size": 1, "sha256": HELLO.upper()}).encode(),
        b"\xff\xfe",
        b"[" * 8000,  # nesting deep enough for a RecursionError
        b"[" * 16000,  # over the size an offer may have
        b'{"upload":"' + UID.encode() + b'","name":"\\ud800.txt","size":1,"sha256":"' + HELLO.encode() + b'"}',
    ],
)
def test_a_hostile_offer_is_a_bad_request(doc: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        parse_offer(doc)
    assert refused.value.code == ErrorCode.BAD_REQUEST


def test_an_offer_with_more_keys_is_read() -> None:
    doc = {"upload": UID, "name": "a.txt", "size": 3, "sha256": HELLO, "type": "text/plain"}
    assert parse_offer(json.dumps(doc).encode()).name == "a.txt"
