"""Files, encrypted in chunks: age's STREAM (C2SP age, "payload"; Hoang, Reyhanitabar, Rogaway, Vizár 2015).

A file can be larger than memory and travels in pieces that may stop and resume, so it is
not sealed in one piece: it is cut into chunks of ``CHUNK`` bytes, each sealed on its own
with ChaCha20-Poly1305 and a nonce that says *where* it is:

    nonce(i) = i as 11 bytes big-endian || 0x01 for the last chunk, 0x00 for every other

The position in the nonce makes a chunk moved elsewhere fail its tag; the last-chunk flag
makes a file cut at a chunk boundary fail too (its new end was not sealed as an end), and
makes a chunk added after the end fail (the decryptor stops at the flag). Every chunk but
the last is exactly ``CHUNK`` bytes; the last is shorter or full, and empty only when the
whole file is (an empty file is one empty last chunk). So a ciphertext is:

    salt (16 random bytes) | chunk 0 sealed | chunk 1 sealed | ... (each chunk + 16-byte tag)

The key: a random 32-byte *file key* per file, which the sender gives the recipients inside
a message (the ratchet or a sender key protects it); the chunks are sealed under
HKDF(file key, salt, info = ``INFO``). The fresh salt makes the payload key new for every
encryption even if a file key were used twice, so no (key, nonce) pair ever repeats: within
one file the chunk index never repeats, and ``Encryptor`` refuses to go past the last chunk.

Sizes are known in advance (``ciphertext_size``), and chunk i begins at ``chunk_offset(i)``,
so an interrupted download resumes at a chunk boundary: keep the plaintext of the chunks
already opened, fetch from ``chunk_offset(i)``, and open on with ``open_chunk(data, i)``.

Where we differ from age, and why: the file key is 32 bytes (age's is 16: its header wraps
it for each recipient, ours travels in an end-to-end message already keyed by 32-byte
secrets), the HKDF info is ours, and there is no age header (recipient stanzas and their
MAC): the message that carries the file key authenticates it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from .primitives import KEY, TAG, BadKeyError, DecryptError, hkdf, open_, random_bytes, seal

CHUNK = 64 * 1024  #: bytes of plaintext in every chunk but the last
SEALED = CHUNK + TAG  #: bytes of a full chunk in the ciphertext
SALT = 16  #: bytes of the header: the payload key's salt
INFO = b"csce513msg stream v1"  #: HKDF info of the payload key
COUNTER = 11  #: bytes of the chunk index in a nonce
MAX_CHUNKS = 2 ** (8 * COUNTER)  #: a file has fewer chunks than this (about 2**104 bytes)


class StreamError(DecryptError):
    """A file that did not check: a chunk damaged, moved, missing, or added after the end."""


def new_file_key() -> bytes:
    """A fresh random file key: one per file."""
    return random_bytes(KEY)


def payload_key(file_key: bytes, salt: bytes) -> bytes:
    """The key the chunks are sealed under."""
    if len(file_key) != KEY:
        raise BadKeyError(f"file key: {len(file_key)} bytes, expected {KEY}")
    return hkdf(file_key, salt=salt, info=INFO, length=KEY)


def nonce(index: int, last: bool) -> bytes:
    """Chunk ``index``'s nonce: the index, 11 bytes big-endian, then the last-chunk flag."""
    return index.to_bytes(COUNTER, "big") + (b"\x01" if last else b"\x00")


def chunk_count(plaintext_size: int) -> int:
    """How many chunks a file of ``plaintext_size`` bytes is (an empty one is one chunk)."""
    return max(1, -(-plaintext_size // CHUNK))


def ciphertext_size(plaintext_size: int) -> int:
    """Bytes of the ciphertext of a file of ``plaintext_size`` bytes: salt, data, a tag per chunk."""
    return SALT + plaintext_size + TAG * chunk_count(plaintext_size)


def chunk_offset(index: int) -> int:
    """Where chunk ``index`` begins in the ciphertext."""
    return SALT + index * SEALED


class Encryptor:
    """Seals one file, chunk by chunk: send ``header()`` first, then each ``seal_chunk``.

    ``salt`` and ``first`` make the same ciphertext again from chunk ``first`` on (an upload
    resumed where the server stopped): a chunk's bytes depend only on the key, the salt, its
    index and its data. Only for the *same* file: sealing other data under an index used
    before repeats a nonce (the caller checks the file did not change, ``client/sealed.py``).
    """

    def __init__(self, file_key: bytes, salt: bytes | None = None, first: int = 0) -> None:
        if salt is not None and len(salt) != SALT:
            raise ValueError(f"a stream's salt is {SALT} bytes, not {len(salt)}")
        if not 0 <= first < MAX_CHUNKS:
            raise ValueError(f"no chunk {first} in a stream")
        self._salt = random_bytes(SALT) if salt is None else salt
        self._key = payload_key(file_key, self._salt)
        self.next_index = first
        self.finished = False  #: the last chunk has been sealed

    def header(self) -> bytes:
        """The bytes that go before the first chunk (the salt)."""
        return self._salt

    def seal_chunk(self, data: bytes, last: bool) -> bytes:
        """The next chunk sealed: exactly ``CHUNK`` bytes unless ``last``; nothing after the last."""
        if self.finished:
            raise ValueError("the last chunk was sealed: the stream is closed")
        if len(data) > CHUNK or (not last and len(data) != CHUNK):
            raise ValueError(f"a chunk is {CHUNK} bytes (the last one at most), not {len(data)}")
        if last and not data and self.next_index > 0:
            raise ValueError("only an empty file ends with an empty chunk: mark the previous chunk last")
        if self.next_index >= MAX_CHUNKS:
            raise ValueError("a stream has fewer than 2**88 chunks")
        sealed = seal(self._key, nonce(self.next_index, last), data, b"")
        self.next_index += 1
        self.finished = last
        return sealed


class Decryptor:
    """Opens one file chunk by chunk; ``finished`` says the last chunk was seen. Until it is,
    the plaintext so far may be a truncated file: do not use it as the whole."""

    def __init__(self, file_key: bytes, header: bytes) -> None:
        if len(header) != SALT:
            raise StreamError(f"a stream header is {SALT} bytes, not {len(header)}")
        self._key = payload_key(file_key, header)
        self.next_index = 0
        self.finished = False  #: the last chunk has been opened

    def open_chunk(self, ciphertext: bytes, index: int | None = None) -> bytes:
        """The plaintext of the next chunk (or of chunk ``index``, to resume a download
        there), else ``StreamError``. A full-size chunk may be the last: it is tried as
        either, as age does."""
        if self.finished:
            raise StreamError("a chunk after the last one")
        i = self.next_index if index is None else index
        if not 0 <= i < MAX_CHUNKS or not TAG <= len(ciphertext) <= SEALED:
            raise StreamError(f"chunk {i}: {len(ciphertext)} bytes is no sealed chunk")
        for last in (False, True) if len(ciphertext) == SEALED else (True,):
            try:
                data = open_(self._key, nonce(i, last), ciphertext, b"")
            except DecryptError:
                continue
            if last and not data and i > 0:
                raise StreamError("an empty last chunk after others")  # the encryptor never makes one
            self.next_index, self.finished = i + 1, last
            return data
        raise StreamError(f"chunk {i} did not authenticate: damaged, moved, or the file was cut")


def encrypt_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], file_key: bytes) -> None:
    """``src`` encrypted into ``dst``, a chunk at a time (``dst`` appears whole or not at all)."""
    encryptor = Encryptor(file_key)
    with open(src, "rb") as source, _Replacing(dst) as out:
        out.write(encryptor.header())
        chunk = _read(source, CHUNK)
        while not encryptor.finished:
            following = _read(source, CHUNK) if len(chunk) == CHUNK else b""  # one chunk ahead, to know the last
            last = not following
            out.write(encryptor.seal_chunk(chunk, last))
            chunk = following


def decrypt_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], file_key: bytes) -> None:
    """``src`` decrypted into ``dst``, a chunk at a time. ``StreamError`` if any of it does
    not check, and then no ``dst`` is left (not even part of the plaintext)."""
    with open(src, "rb") as source, _Replacing(dst) as out:
        decryptor = Decryptor(file_key, _read(source, SALT))
        while not decryptor.finished:
            sealed = _read(source, SEALED)
            if not sealed:
                raise StreamError("the file ends before its last chunk")
            out.write(decryptor.open_chunk(sealed))
        if source.read(1):
            raise StreamError("data after the last chunk")


def _read(source: BinaryIO, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the file."""
    parts: list[bytes] = []
    while size > 0 and (part := source.read(size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class _Replacing:
    """A private temporary file beside ``path`` that becomes ``path`` (fsync, rename, fsync of
    the directory) when the ``with`` block ends well, and is removed when it does not."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")  # 0600
        self.temp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if kind is None:
                os.replace(self.temp, self.path)
                directory = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        finally:
            self.temp.unlink(missing_ok=True)  # gone already if renamed
