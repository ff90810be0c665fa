"""End-to-end encrypted files on the client's disk (``client/sealed.py``), on real files in ``tmp_path``:
the ciphertext an upload sends is the file's STREAM ciphertext whichever pieces it is read in, a
resume refuses another file, and a download writes only plaintext that authenticated, resuming
at its last whole chunk."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from csce513msg.client.downloads import PartialDownload, TransferError, partial_name
from csce513msg.client.sealed import Deciphering, FileChangedError, SealedSource, Sealing, sealed_length
from csce513msg.crypto.primitives import TAG
from csce513msg.crypto.stream import CHUNK, SALT, SEALED, Encryptor, chunk_offset, ciphertext_size, decrypt_file
from csce513msg.protocol import Offer
from csce513msg.protocol.transfer import STREAM_V1

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
UID = "q8Vn0x1cTtGm4kQe5W2aYA"


def reference(data: bytes, sealing: Sealing) -> bytes:
    """The ciphertext of ``data`` under ``sealing``, sealed in one go."""
    encryptor = Encryptor(sealing.key, sealing.salt)
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    return sealing.salt + b"".join(encryptor.seal_chunk(c, i == len(pieces) - 1) for i, c in enumerate(pieces))


def a_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "plain.bin"
    path.write_bytes(data)
    return path, data


# ---- sending ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_the_source_reads_the_stream_ciphertext_in_any_pieces(tmp_path: Path, size: int) -> None:
    path, data = a_file(tmp_path, size)
    sealing = Sealing.fresh()
    expected = reference(data, sealing)
    source = SealedSource(path, sealing)
    assert (source.size, source.sha256) == (ciphertext_size(size), hashlib.sha256(expected).hexdigest())
    assert source.sealing == Sealing(sealing.key, sealing.salt, size, hashlib.sha256(data).hexdigest())
    for piece in (7, SALT, 1000, SEALED, 3 * SEALED + 11, 1 << 20):
        got = b"".join(source.read(offset, piece) for offset in range(0, source.size, piece))
        assert got == expected, piece
    for offset in reversed(range(0, source.size, 5000)):  # backwards too (a chunk sealed again)
        assert source.read(offset, 300) == expected[offset : offset + 300]
    assert source.read(source.size, 10) == b""
    source.close()
    (tmp_path / "sealed").write_bytes(expected)
    decrypt_file(tmp_path / "sealed", tmp_path / "opened", sealing.key)
    assert (tmp_path / "opened").read_bytes() == data


def test_a_resume_refuses_another_file_under_the_same_key(tmp_path: Path) -> None:
    path, data = a_file(tmp_path, 2 * CHUNK + 3)
    first = SealedSource(path, Sealing.fresh())
    first.close()
    assert SealedSource(path, first.sealing).sha256 == first.sha256  # the same file: the same ciphertext
    changed = bytearray(data)
    changed[CHUNK + 5] ^= 1
    path.write_bytes(changed)  # same size, one bit
    with pytest.raises(FileChangedError, match="not the file this upload began with"):
        SealedSource(path, first.sealing)


def test_a_file_that_changes_while_it_is_sent_is_refused(tmp_path: Path) -> None:
    path, _ = a_file(tmp_path, 3 * CHUNK)
    source = SealedSource(path, Sealing.fresh())
    source.read(0, 1000)
    with path.open("r+b") as f:  # the same size, other bytes, a later modification time
        f.seek(2 * CHUNK)
        f.write(b"edited")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(FileChangedError, match="changed while it was sent"):
        source.read(chunk_offset(2), 1000)
    source.close()
    grown = SealedSource(path, Sealing.fresh())
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(FileChangedError):
        grown.read(0, 100)
    grown.close()


def test_a_sealing_never_shows_its_key() -> None:
    sealing = Sealing.fresh()
    assert sealing.key.hex() not in repr(sealing) and repr(sealing.key) not in repr(sealing)
    assert len(sealing.key) == 32 and len(sealing.salt) == SALT and Sealing.fresh().key != sealing.key


# ---- receiving --------------------------------------------------------------------------


def offer_of(data: bytes, sealing: Sealing) -> tuple[Offer, bytes]:
    ciphertext = reference(data, sealing)
    offer = Offer(
        UID, "notes.txt", len(ciphertext), hashlib.sha256(ciphertext).hexdigest(),
        STREAM_V1, sealing.key, len(data), hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    return offer, ciphertext


def partial_for(tmp_path: Path, offer: Offer) -> PartialDownload:
    return PartialDownload.open(tmp_path / "in", offer.upload_id, offer.name, offer.file_size, offer.file_sha256)


def feed(sink: Deciphering, ciphertext: bytes, start: int, piece: int) -> None:
    for offset in range(start, len(ciphertext), piece):
        sink.write(offset, ciphertext[offset : offset + piece])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, SEALED, 1 << 18])
def test_the_plaintext_comes_out_whatever_pieces_the_ciphertext_came_in(tmp_path: Path, size: int, piece: int) -> None:
    data = os.urandom(size)
    offer, ciphertext = offer_of(data, Sealing.fresh())
    sink = Deciphering(offer, partial_for(tmp_path, offer))
    assert (sink.first, sink.needs_salt) == (0, False)
    feed(sink, ciphertext, 0, piece)
    assert sink.finish().read_bytes() == data


def test_only_plaintext_that_authenticated_is_written(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    offer, ciphertext = offer_of(data, Sealing.fresh())
    damaged = bytearray(ciphertext)
    damaged[chunk_offset(2) + 9] ^= 0x10
    partial = partial_for(tmp_path, offer)
    sink = Deciphering(offer, partial)
    with pytest.raises(TransferError, match="chunk 2 did not authenticate"):
        feed(sink, bytes(damaged), 0, 1000)
    assert partial.received == 2 * CHUNK  # chunks 0 and 1, not a byte of chunk 2
    assert partial.path.read_bytes() == data[: 2 * CHUNK]


def test_bytes_out_of_place_after_the_end_or_missing_are_refused(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 5)
    offer, ciphertext = offer_of(data, Sealing.fresh())
    sink = Deciphering(offer, partial_for(tmp_path, offer))
    sink.write(0, ciphertext[:100])
    with pytest.raises(TransferError, match="at byte 200, expected byte 100"):
        sink.write(200, ciphertext[200:300])
    sink.write(100, ciphertext[100:-1])
    with pytest.raises(TransferError, match="cut short"):
        sink.finish()
    with pytest.raises(TransferError, match="after the file's last chunk"):
        sink.write(len(ciphertext) - 1, ciphertext[-1:] + b"more")


def test_an_offer_whose_sizes_disagree_is_refused_before_any_byte(tmp_path: Path) -> None:
    offer, _ = offer_of(b"hello", Sealing.fresh())
    for wrong in (
        Offer(UID, "a", offer.size + 1, offer.sha256, STREAM_V1, offer.key, 5, offer.plain_sha256),
        Offer(UID, "a", offer.size, offer.sha256, STREAM_V1, offer.key, 6, offer.plain_sha256),
        Offer(UID, "a", offer.size, offer.sha256),  # not encrypted at all
    ):
        with partial_for(tmp_path, wrong) as partial, pytest.raises(TransferError, match="sizes disagree"):
            Deciphering(wrong, partial)


def test_a_download_resumes_at_its_last_whole_chunk(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK + 77)
    offer, ciphertext = offer_of(data, Sealing.fresh())
    first = partial_for(tmp_path, offer)
    feed(Deciphering(offer, first), ciphertext[: chunk_offset(2) + 500], 0, 4096)  # 2 chunks and a bit
    first.close()
    with (tmp_path / "in" / partial_name(UID)).open("ab") as f:
        f.write(b"half of chunk 2")  # as if a run died writing it
    again = partial_for(tmp_path, offer)
    sink = Deciphering(offer, again)
    assert again.received == 2 * CHUNK and (sink.first, sink.needs_salt) == (chunk_offset(2), True)
    sink.write(0, ciphertext[:SALT])  # the salt, fetched alone
    with pytest.raises(TransferError, match="expected byte"):
        sink.write(SALT, ciphertext[SALT:100])  # not where the resume goes on
    feed(sink, ciphertext, chunk_offset(2), 3000)
    assert sink.finish().read_bytes() == data


def test_a_file_whole_on_disk_is_checked_without_a_byte_fetched(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 1)
    offer, ciphertext = offer_of(data, Sealing.fresh())
    partial = partial_for(tmp_path, offer)
    feed(Deciphering(offer, partial), ciphertext, 0, SEALED)
    partial.close()  # every chunk written, the run died before the final name
    sink = Deciphering(offer, partial_for(tmp_path, offer))
    assert (sink.first, sink.needs_salt) == (offer.size, False)
    assert sink.finish().read_bytes() == data


def test_sealed_lengths() -> None:
    assert [sealed_length(3 * CHUNK + 5, i) for i in range(4)] == [SEALED] * 3 + [5 + TAG]
    assert sealed_length(0, 0) == TAG


def test_neither_side_holds_the_file_in_memory(tmp_path: Path) -> None:
    """16 MiB sealed, read in an upload's pieces and opened as a download's come: the Python
    memory at its peak stays under 2 MiB (a chunk or two, and the pieces on their way)."""
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        for _ in range(16):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        source = SealedSource(path, Sealing.fresh())
        offer = Offer(
            UID, "big.bin", source.size, source.sha256,
            STREAM_V1, source.sealing.key, source.sealing.plain_size, source.sealing.plain_sha256,
        )  # fmt: skip
        with partial_for(tmp_path, offer) as partial:
            sink = Deciphering(offer, partial)
            for offset in range(0, source.size, 256 << 10):
                sink.write(offset, source.read(offset, 256 << 10))
            source.close()
            assert sink.finish().stat().st_size == 16 << 20
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
