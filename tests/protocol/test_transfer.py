"""Protocol 1.6's frames (files) and the file offer's body: exact bytes (the example of
docs/protocol.md section 13), round trips, the minor-version gate, the Welcome's
appended limits, and hostile offers refused with BAD_REQUEST; 1.7's encrypted offer (its
exact JSON, its key read strictly, never shown in a repr)."""

from __future__ import annotations

import base64
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


KEY = bytes(range(32))
KEY64 = base64.b64encode(KEY).decode()  # "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
SEALED = Offer(UID, "hw3.py", 37, "ab" * 32, "stream-v1", KEY, 5, HELLO)


def test_an_encrypted_offer_s_exact_json() -> None:
    assert offer_body(SEALED) == (
        b'{"upload":"q8Vn0x1cTtGm4kQe5W2aYA","name":"hw3.py","size":37,"sha256":"' + b"ab" * 32 + b'",'
        b'"cipher":"stream-v1","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","plain_size":5,'
        b'"plain_sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}'
    )
    assert parse_offer(offer_body(SEALED)) == SEALED
    assert SEALED.encrypted and (SEALED.file_size, SEALED.file_sha256) == (5, HELLO)
    plain = Offer(UID, "hw3.py", 5, HELLO)
    assert not plain.encrypted and (plain.file_size, plain.file_sha256) == (5, HELLO)
    assert b"cipher" not in offer_body(plain)  # a 1.6 offer is the bytes it always was


def test_an_offer_s_repr_never_shows_its_key() -> None:
    assert KEY64 not in repr(SEALED) and repr(KEY) not in repr(SEALED) and "key" not in repr(SEALED)


@given(
    st.text(max_size=300),
    st.integers(0, 2**63 - 1),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_an_encrypted_offer_round_trips(name: str, size: int, key: bytes, digest: bytes) -> None:
    offer = Offer(UID, name, 2**63 - 1, digest.hex(), "stream-v1", key, size, digest[::-1].hex())
    assert parse_offer(offer_body(offer)) == offer


def sealed_doc(**changes: object) -> bytes:
    doc: dict[str, object] = json.loads(offer_body(SEALED))
    for name, value in changes.items():
        if value is None:
            del doc[name]
        else:
            doc[name] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "doc",
    [
        sealed_doc(cipher="stream-v2"),  # a cipher this client does not know: no guessing
        sealed_doc(cipher=None),  # a key, but no cipher
        sealed_doc(key=None),
        sealed_doc(plain_size=None),
        sealed_doc(plain_sha256=None),
        sealed_doc(key=base64.b64encode(KEY[:31]).decode()),
        sealed_doc(key=base64.b64encode(KEY + b"!").decode()),
        sealed_doc(key=KEY64.rstrip("=")),  # unpadded
        sealed_doc(key=base64.urlsafe_b64encode(b"\xff" * 32).decode()),  # the URL-safe alphabet
        sealed_doc(key=KEY64[:20] + "\n" + KEY64[20:]),
        sealed_doc(key=KEY64[:-2] + "9="),  # the last character's unused bits set: not canonical
        sealed_doc(key=KEY.hex()),
        sealed_doc(key=list(KEY)),
        sealed_doc(plain_size=-1),
        sealed_doc(plain_size=True),
        sealed_doc(plain_size=2**63),
        sealed_doc(plain_size="5"),
        sealed_doc(plain_sha256=HELLO.upper()),
        sealed_doc(plain_sha256=HELLO[:-1]),
        json.dumps({"upload": UID, "name": "a", "size": 1, "sha256": HELLO, "plain_size": 1}).encode(),
    ],
)
def test_a_hostile_encrypted_offer_is_a_bad_request(doc: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        parse_offer(doc)
    assert refused.value.code == ErrorCode.BAD_REQUEST
