"""STREAM: files of every awkward size round-trip; cut, moved, damaged or extended ones do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from csce513msg.crypto import primitives as p
from csce513msg.crypto.stream import (
    CHUNK,
    SALT,
    SEALED,
    Decryptor,
    Encryptor,
    StreamError,
    chunk_count,
    chunk_offset,
    ciphertext_size,
    decrypt_file,
    encrypt_file,
    new_file_key,
    nonce,
    payload_key,
)

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


def sealed(data: bytes, key: bytes) -> bytes:
    """The whole ciphertext of ``data``, through the streaming API."""
    encryptor = Encryptor(key)
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    return encryptor.header() + b"".join(encryptor.seal_chunk(c, i == len(pieces) - 1) for i, c in enumerate(pieces))


def opened(ciphertext: bytes, key: bytes) -> bytes:
    """The plaintext, through the streaming API, chunk by chunk; StreamError unless it ends well."""
    decryptor = Decryptor(key, ciphertext[:SALT])
    out = []
    for offset in range(SALT, len(ciphertext), SEALED):
        out.append(decryptor.open_chunk(ciphertext[offset : offset + SEALED]))
    if not decryptor.finished:
        raise StreamError("no last chunk")
    return b"".join(out)


def test_known_answers() -> None:
    key = payload_key(bytes([0x40]) * 32, bytes(range(16)))
    assert key.hex() == "76c4d2007b957ebdb55de55703dd4419de003eebd430d63b3261c4f6e779e821"
    assert key == p.hkdf(bytes([0x40]) * 32, salt=bytes(range(16)), info=b"csce513msg stream v1", length=32)
    assert nonce(0x0102, True) == bytes(9) + b"\x01\x02\x01"
    assert nonce(5, False) == bytes(10) + b"\x05\x00"
    decryptor = Decryptor(bytes([0x40]) * 32, bytes(range(16)))
    assert decryptor.open_chunk(bytes.fromhex("66a75f030cdd9b999912e0ea03392621c94eb7d5331cc8f386c0")) == b"csce513msg"
    assert decryptor.finished


def test_sizes_and_offsets() -> None:
    assert [chunk_count(n) for n in SIZES] == [1, 1, 1, 1, 2, 4]
    assert [ciphertext_size(n) for n in SIZES] == [32, 33, 65_567, 65_568, 65_585, 196_693]
    assert [chunk_offset(i) for i in range(3)] == [16, 16 + SEALED, 16 + 2 * SEALED]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_in_memory(size: int) -> None:
    key, data = new_file_key(), os.urandom(size)
    ciphertext = sealed(data, key)
    assert len(ciphertext) == ciphertext_size(size)
    assert opened(ciphertext, key) == data


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_through_files(size: int, tmp_path: Path) -> None:
    key, data = new_file_key(), os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "sealed", key)
    assert (tmp_path / "sealed").stat().st_size == ciphertext_size(size)
    decrypt_file(tmp_path / "sealed", tmp_path / "out", key)
    assert (tmp_path / "out").read_bytes() == data
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o600
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "plain", "sealed"]  # no temporary left


def test_the_same_key_twice_seals_differently() -> None:
    """A fresh salt per encryption: a file key used twice still never repeats a (key, nonce)."""
    key = new_file_key()
    assert sealed(b"same", key) != sealed(b"same", key)


def damaged(tmp_path: Path, ciphertext: bytes, key: bytes) -> None:
    """Both ways of opening refuse ``ciphertext``, and decrypt_file leaves no output at all."""
    with pytest.raises(StreamError):
        opened(ciphertext, key)
    (tmp_path / "sealed").write_bytes(ciphertext)
    with pytest.raises(StreamError):
        decrypt_file(tmp_path / "sealed", tmp_path / "out", key)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sealed"]


@pytest.mark.parametrize("size", SIZES)
def test_truncation_is_detected(size: int, tmp_path: Path) -> None:
    key = new_file_key()
    ciphertext = sealed(os.urandom(size), key)
    cuts = {SALT, SALT - 1, len(ciphertext) - 1, len(ciphertext) - p.TAG} | {chunk_offset(i) for i in range(1, 4)}
    for cut in sorted(c for c in cuts if 0 <= c < len(ciphertext)):
        damaged(tmp_path, ciphertext[:cut], key)


def test_reordered_chunks_are_detected(tmp_path: Path) -> None:
    key = new_file_key()
    ciphertext = sealed(os.urandom(3 * CHUNK + 5), key)
    chunks = [ciphertext[chunk_offset(i) : chunk_offset(i + 1)] for i in range(4)]
    header = ciphertext[:SALT]
    damaged(tmp_path, header + chunks[1] + chunks[0] + chunks[2] + chunks[3], key)
    damaged(tmp_path, header + chunks[0] + chunks[2] + chunks[1] + chunks[3], key)
    damaged(tmp_path, header + chunks[0] + chunks[1] + chunks[3], key)  # one missing
    damaged(tmp_path, header + chunks[0] + chunks[0] + chunks[1] + chunks[2] + chunks[3], key)  # one twice
    other = sealed(os.urandom(3 * CHUNK + 5), key)  # same file key, another salt
    damaged(tmp_path, header + chunks[0] + other[chunk_offset(1) : chunk_offset(2)] + chunks[2] + chunks[3], key)


def test_every_byte_flipped_in_a_small_file_is_detected(tmp_path: Path) -> None:
    key = new_file_key()
    ciphertext = sealed(b"x", key)
    for position in range(len(ciphertext)):
        forged = bytearray(ciphertext)
        forged[position] ^= 0x01
        damaged(tmp_path, bytes(forged), key)


def test_flips_across_a_large_file_are_detected(tmp_path: Path) -> None:
    key = new_file_key()
    ciphertext = sealed(os.urandom(3 * CHUNK + 5), key)
    positions = {0, SALT - 1, len(ciphertext) - 1}
    for i in range(4):  # each chunk's first byte, a middle one, the last byte of its tag
        start, end = chunk_offset(i), min(chunk_offset(i + 1), len(ciphertext))
        positions |= {start, (start + end) // 2, end - 1}
    for position in sorted(positions):
        forged = bytearray(ciphertext)
        forged[position] ^= 0x80
        damaged(tmp_path, bytes(forged), key)
    damaged(tmp_path, ciphertext, new_file_key())  # the wrong key


@pytest.mark.parametrize("size", [0, CHUNK, CHUNK + 1])
def test_extension_is_detected(size: int, tmp_path: Path) -> None:
    key = new_file_key()
    encryptor = Encryptor(key)
    data = os.urandom(size)
    ciphertext = sealed(data, key)
    damaged(tmp_path, ciphertext + b"\0", key)
    damaged(tmp_path, ciphertext + ciphertext[SALT:], key)  # the stream again, after its end
    # a chunk sealed under this very key and the next index, after the last one
    header = encryptor.header()
    pieces = [data[:CHUNK], data[CHUNK:]] if size > CHUNK else [data]
    body = b"".join(encryptor.seal_chunk(c, i == len(pieces) - 1) for i, c in enumerate(pieces))
    extra = p.seal(payload_key(key, header), nonce(len(pieces), False), b"more", b"")
    damaged(tmp_path, header + body + extra, key)
    decryptor = Decryptor(key, header)
    for i in range(len(pieces)):
        decryptor.open_chunk(body[i * SEALED : (i + 1) * SEALED])
    assert decryptor.finished
    with pytest.raises(StreamError, match="after the last"):
        decryptor.open_chunk(extra)


def test_a_non_empty_file_never_ends_with_an_empty_chunk(tmp_path: Path) -> None:
    """A forger who could append an empty last chunk to a file cut at a boundary would make
    truncation invisible: the decryptor refuses one, as age's does, and the encryptor never makes one."""
    key = new_file_key()
    encryptor = Encryptor(key)
    first = encryptor.seal_chunk(os.urandom(CHUNK), last=False)
    with pytest.raises(ValueError, match="empty"):
        encryptor.seal_chunk(b"", last=True)
    empty_last = p.seal(payload_key(key, encryptor.header()), nonce(1, True), b"", b"")
    damaged(tmp_path, encryptor.header() + first + empty_last, key)


def test_encryptor_misuse_is_refused() -> None:
    encryptor = Encryptor(new_file_key())
    with pytest.raises(ValueError):
        encryptor.seal_chunk(b"short", last=False)
    with pytest.raises(ValueError):
        encryptor.seal_chunk(bytes(CHUNK + 1), last=True)
    encryptor.seal_chunk(b"the end", last=True)
    assert encryptor.finished
    with pytest.raises(ValueError, match="closed"):
        encryptor.seal_chunk(b"more", last=True)
    with pytest.raises(p.BadKeyError):
        Encryptor(bytes(16))
    with pytest.raises(StreamError):
        Decryptor(new_file_key(), bytes(SALT - 1))


def test_a_download_resumes_at_a_chunk_boundary(tmp_path: Path) -> None:
    """Read two chunks, stop (the process dies), then fetch from ``chunk_offset(2)`` and open on."""
    key, data = new_file_key(), os.urandom(3 * CHUNK + 5)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "sealed", key)
    with open(tmp_path / "sealed", "rb") as source:
        header = source.read(SALT)
        first = Decryptor(key, header)
        kept = first.open_chunk(source.read(SEALED)) + first.open_chunk(source.read(SEALED))
    assert not first.finished
    with open(tmp_path / "sealed", "rb") as source:  # a new connection, from the offset
        source.seek(chunk_offset(2))
        second = Decryptor(key, header)
        rest = second.open_chunk(source.read(SEALED), index=2)
        rest += second.open_chunk(source.read(SEALED))
    assert second.finished and kept + rest == data
    with open(tmp_path / "sealed", "rb") as source:  # resuming at the wrong index fails
        source.seek(chunk_offset(2))
        with pytest.raises(StreamError):
            Decryptor(key, header).open_chunk(source.read(SEALED), index=1)


def test_a_failed_decryption_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    key = new_file_key()
    (tmp_path / "sealed").write_bytes(sealed(b"secret", key)[:-1])
    (tmp_path / "out").write_bytes(b"what was there")
    with pytest.raises(StreamError):
        decrypt_file(tmp_path / "sealed", tmp_path / "out", key)
    assert (tmp_path / "out").read_bytes() == b"what was there"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "sealed"]


@pytest.mark.parametrize("size", SIZES)
def test_an_encryption_is_made_again_from_its_salt_and_any_chunk(size: int) -> None:
    """An upload cut short resumes by sealing the same chunks again: same key, salt, index and
    data give the same bytes, from any chunk on."""
    key, data = new_file_key(), os.urandom(size)
    original = sealed(data, key)
    salt = original[:SALT]
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    for first in range(len(pieces)):
        again = Encryptor(key, salt=salt, first=first)
        assert again.header() == salt and again.next_index == first
        tail = b"".join(again.seal_chunk(c, i == len(pieces) - 1) for i, c in enumerate(pieces) if i >= first)
        assert tail == original[chunk_offset(first) :]
        assert again.finished


def test_a_given_salt_or_first_chunk_is_checked() -> None:
    with pytest.raises(ValueError, match="salt"):
        Encryptor(new_file_key(), salt=bytes(SALT - 1))
    with pytest.raises(ValueError, match="chunk"):
        Encryptor(new_file_key(), first=-1)
