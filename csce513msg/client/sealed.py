"""End-to-end encrypted files (protocol 1.7): the bytes an upload sends and a download keeps.

A file for an end-to-end conversation goes to the server as its STREAM ciphertext
(``crypto/stream.py``: a salt, then 64 KiB chunks each sealed with its index and a last-chunk
flag) under a fresh file key, which travels only inside the end-to-end offer. Neither side
ever holds more than a chunk or two of the file in memory:

- **sending**: ``SealedSource`` makes the ciphertext on demand, ``read(offset, length)`` at
  a time as ``transfer.Upload`` sends it, sealing each chunk from the file when it is first
  needed. Opening one reads the whole file once (``FileUpload`` must name the ciphertext's
  size and SHA-256 before the first byte goes; the offer names the plaintext's). A chunk's
  ciphertext depends only on the key, the salt, its index and its data, so an upload cut
  short resumes by sealing the same chunks again from the file, given its ``Sealing``. Only
  if the file is the same: other data sealed under an index already sent would repeat a
  nonce. So a resume re-hashes the file and refuses a changed one, and every chunk read
  checks the file's size and modification time against what the first read saw
  (``FileChangedError``).
- **receiving**: ``Deciphering`` takes the ciphertext in order as ``transfer.Download``
  fetches it, opens each chunk once it is whole, and writes only authenticated plaintext
  to the ``PartialDownload`` (which checks the plaintext's size and SHA-256 at the end, and
  gives the file its safe name). A chunk damaged, moved or missing, or a file cut at a
  chunk boundary, is a ``TransferError``: the download removes the partial file. A partial
  file from a download that stopped is resumed at its last whole chunk: the salt is
  fetched again, then the ciphertext from that chunk on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..crypto.primitives import TAG, random_bytes
from ..crypto.stream import (
    CHUNK,
    SALT,
    SEALED,
    Decryptor,
    Encryptor,
    StreamError,
    chunk_count,
    chunk_offset,
    ciphertext_size,
    new_file_key,
)
from ..protocol import Offer
from .downloads import PartialDownload, TransferError


class FileChangedError(TransferError):
    """The file is not the one the upload began with (or changed while it was read)."""


@dataclass(frozen=True, slots=True)
class Sealing:
    """An encrypted upload's secret: its file key and the stream's salt, and (once the file
    was read) its plaintext's size and SHA-256. Whoever holds it can read the file: keep it
    private, and only as long as the upload may need a resume."""

    key: bytes = field(repr=False)
    salt: bytes
    plain_size: int = -1  #: -1: not read yet
    plain_sha256: str = ""

    @classmethod
    def fresh(cls) -> Sealing:
        """A new file key and salt: one per file sent."""
        return cls(new_file_key(), random_bytes(SALT))


def sealed_length(plain_size: int, index: int) -> int:
    """Bytes of chunk ``index`` in the ciphertext of a file of ``plain_size`` bytes."""
    return min(CHUNK, plain_size - index * CHUNK) + TAG


class SealedSource:
    """The ciphertext of the file at ``path`` under ``sealing``, read by offset.

    ``size`` and ``sha256`` are the ciphertext's (for FileUpload), ``sealing`` is completed
    with the plaintext's size and SHA-256 (for the offer). Close it when the upload ends.

    Raises:
        OSError: the file cannot be read.
        FileChangedError: ``sealing`` names a plaintext and the file is no longer it.
    """

    def __init__(self, path: Path, sealing: Sealing) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._stamp = _stamp(self._fd)
            self._plain_size = self._stamp[0]
            self._count = chunk_count(self._plain_size)
            self._key, self._salt = sealing.key, sealing.salt
            plain_sha256, self.sha256 = self._measure()
        except BaseException:
            os.close(self._fd)
            raise
        if sealing.plain_sha256 and (self._plain_size, plain_sha256) != (sealing.plain_size, sealing.plain_sha256):
            self.close()
            raise FileChangedError(f"{path} is not the file this upload began with: start a new upload")
        self.sealing = Sealing(sealing.key, sealing.salt, self._plain_size, plain_sha256)
        self.size = ciphertext_size(self._plain_size)
        self._encryptor: Encryptor | None = None
        self._index = -1  #: the chunk in ``_sealed``
        self._sealed = b""

    def read(self, offset: int, length: int) -> bytes:
        """The ciphertext's bytes from ``offset`` (``length``, fewer at its end)."""
        end = min(offset + length, self.size)
        pieces = []
        while offset < end:
            if offset < SALT:
                piece = self._salt[offset:end]
            else:
                index = (offset - SALT) // SEALED
                start = offset - chunk_offset(index)
                piece = self._chunk(index)[start : start + end - offset]
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _measure(self) -> tuple[str, str]:
        """(plaintext SHA-256, ciphertext SHA-256), the file read and sealed once."""
        plain, sealed = hashlib.sha256(), hashlib.sha256(self._salt)
        encryptor = Encryptor(self._key, self._salt)
        for index in range(self._count):
            data = self._plain(index)
            plain.update(data)
            sealed.update(encryptor.seal_chunk(data, index == self._count - 1))
        return plain.hexdigest(), sealed.hexdigest()

    def _chunk(self, index: int) -> bytes:
        """Chunk ``index`` sealed (the last one made is kept: reads go forward)."""
        if index != self._index:
            encryptor = self._encryptor
            if encryptor is None or encryptor.next_index != index:
                encryptor = self._encryptor = Encryptor(self._key, self._salt, first=index)
            self._sealed = encryptor.seal_chunk(self._plain(index), index == self._count - 1)
            self._index = index
        return self._sealed

    def _plain(self, index: int) -> bytes:
        """Chunk ``index`` of the file, as it was when first read, else FileChangedError."""
        want = min(CHUNK, self._plain_size - index * CHUNK)
        data = os.pread(self._fd, want, index * CHUNK)
        if len(data) != want or _stamp(self._fd) != self._stamp:  # read, then check: what was read is that file
            raise FileChangedError(f"{self.path} changed while it was sent")
        return data


def _stamp(fd: int) -> tuple[int, int, int, int]:
    """What changes when a file is written: its size and modification time (and which file it is)."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


class Deciphering:
    """The ciphertext of an encrypted ``offer``, received in order, written as plaintext into
    ``partial`` a chunk at a time. ``first`` is where the ciphertext is to be fetched from,
    after the salt when ``needs_salt`` (a resumed download: the salt first, alone).

    Raises:
        TransferError: the offer's sizes disagree with each other.
    """

    def __init__(self, offer: Offer, partial: PartialDownload) -> None:
        if not offer.encrypted or offer.size != ciphertext_size(offer.plain_size):
            raise TransferError(f"{partial.name}: the offer's sizes disagree: {offer.size} bytes of ciphertext "
                                f"cannot hold {offer.plain_size} of plaintext")  # fmt: skip
        self.offer, self.partial = offer, partial
        self._count = chunk_count(offer.plain_size)
        received = partial.received
        if 0 < received == offer.plain_size:  # every chunk is on disk already: finish checks them
            self._index = self._count
        else:
            self._index = received // CHUNK
            partial.rewind(self._index * CHUNK)  # a chunk half written is fetched again
        self.needs_salt = 0 < self._index < self._count
        self.first = 0 if self._index == 0 else min(chunk_offset(self._index), offer.size)
        self._salt = bytearray()
        self._next = 0  #: the offset the next bytes must have
        self._buffer = bytearray()  #: ciphertext of the chunk being received
        self._decryptor: Decryptor | None = None

    def write(self, offset: int, data: bytes) -> None:
        """Take ciphertext bytes at ``offset``: they must follow the last ones taken.

        Raises:
            TransferError: out of place, past the end, or a chunk that does not authenticate.
        """
        if offset != self._next:
            raise TransferError(f"{self.partial.name}: ciphertext at byte {offset}, expected byte {self._next}")
        if self._decryptor is None:
            taken = data[: SALT - len(self._salt)]
            self._salt += taken
            data, self._next = data[len(taken) :], self._next + len(taken)
            if len(self._salt) < SALT:
                return
            self._decryptor = Decryptor(self.offer.key, bytes(self._salt))
            self._next = max(SALT, self.first)  # a resume goes on at its first chunk
            if data and self.first > SALT:
                raise TransferError(f"{self.partial.name}: ciphertext at byte {SALT}, expected byte {self.first}")
        self._next += len(data)
        self._buffer += data
        while self._index < self._count:
            size = sealed_length(self.offer.plain_size, self._index)
            if len(self._buffer) < size:
                return
            self._open(bytes(self._buffer[:size]))
            del self._buffer[:size]
        if self._buffer:
            raise TransferError(f"{self.partial.name}: data after the file's last chunk")

    def finish(self) -> Path:
        """Every chunk opened, the last one marked last: the plaintext's size and hash checked,
        then the file's safe name (``PartialDownload.finish``)."""
        if self._index < self._count:
            raise TransferError(f"{self.partial.name}: cut short: it ends at chunk {self._index} of {self._count}")
        return self.partial.finish()

    def _open(self, sealed: bytes) -> None:
        assert self._decryptor is not None
        last = self._index == self._count - 1
        try:
            data = self._decryptor.open_chunk(sealed, self._index)
        except StreamError as exc:
            raise TransferError(f"{self.partial.name}: {exc}") from None
        if last and not self._decryptor.finished:
            raise TransferError(f"{self.partial.name}: the file was cut: chunk {self._index} is not its last "
                                f"(the offer says {self._count} chunks)")  # fmt: skip
        if self._decryptor.finished and not last:
            raise TransferError(f"{self.partial.name}: chunk {self._index} ends the file, "
                                f"the offer says {self._count} chunks")  # fmt: skip
        self.partial.write(self._index * CHUNK, data)
        self._index += 1
