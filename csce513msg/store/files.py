"""Uploads on the server's disk (protocol 1.6): the file lane's side of a transfer.

Every method here does file I/O and is called only in the ``file`` lane (one thread,
``backends/jobs.py``), never on the loop and never in the store lane, where it would
delay commits. The engine (``hub/files.py``) decides; this module reads and writes.

In ``directory`` (``DATA_DIR/files``, 0700), an upload ``ID`` is three names:

- ``ID.json``: its record (``UploadRecord``), written whole to a temporary name, fsynced,
  renamed: a crash leaves the old record or the new, never half of one;
- ``ID.part``: the bytes received so far, while it is receiving;
- ``ID``: the bytes, once every byte came and their size and SHA-256 matched the record
  (fsynced, then renamed from ``ID.part``; the record then says ``complete``).

Ids are random (the engine's ``secrets.token_urlsafe``) and checked against
``transfer.UPLOAD_ID`` before they name a path. Each upload is stored once, whoever and
however many download it, and never shared with another upload (no deduplication: it
would tell a student that someone else has the same file). The SHA-256 is of the bytes
as sent: the server never needs a file's name, type or plaintext to do its job.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("csce513msg.files")

HASH_BLOCK = 1 << 20  #: bytes read at a time to re-hash a partial upload


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An upload as the server keeps it: no name, no type, nothing of its content."""

    upload_id: str
    owner: str  #: the user who uploads it (its quota pays)
    stream: str  #: the conversation it is for: its members may download it
    size: int
    sha256: str  #: hex, of the bytes as uploaded
    created_us: int
    expires_us: int
    complete: bool = False


class TransferError(Exception):
    """An upload broke a rule or hit the disk's limits; its files are removed already.
    ``no_space``: the disk (or the kept reserve) was the cause."""

    def __init__(self, message: str, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space


class FileGone(Exception):  # noqa: N818 - a condition (cancelled, expired), not a fault
    """The upload is not on the disk (any more)."""


@dataclass(slots=True)
class _Writing:
    """An upload being written: its open file and the SHA-256 of what it holds."""

    fd: int
    hasher: Any  # hashlib's object (its type is private)
    received: int


class FileShelf:
    """The uploads in ``directory``; ``reserve``: bytes of the disk kept free."""

    def __init__(self, directory: Path, reserve: int = 0) -> None:
        self.directory = directory
        self.reserve = reserve
        self._writing: dict[str, _Writing] = {}
        #: upload id -> bytes it will still write: the reserve is checked against all of them at
        #: once (uploads begun together must not each count the same free space)
        self._promised: dict[str, int] = {}

    # ---- at start (before the loop runs) ----------------------------------------------

    def load(self) -> dict[str, tuple[UploadRecord, int]]:
        """Every upload kept, with the bytes it holds (a partial one: its ``.part`` file's
        length). A data file with no record (a crash between the two) is removed."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found: dict[str, tuple[UploadRecord, int]] = {}
        for path in self.directory.glob("*.json"):
            try:
                record = UploadRecord(**json.loads(path.read_text()))
                if not record.complete and not self._part(record.upload_id).exists():
                    # a crash between the rename of its checked bytes and the record's update
                    record = dataclasses.replace(record, complete=True)
                held = self._data(record).stat().st_size
                found[record.upload_id] = (record, held)
                if not record.complete:
                    self._promised[record.upload_id] = record.size - held
            except (OSError, ValueError, TypeError) as exc:
                log.warning("upload record %s dropped: %s", path.name, exc)
                path.unlink(missing_ok=True)
        keep = {name for uid in found for name in (uid, f"{uid}.part", f"{uid}.json")}
        for path in self.directory.iterdir():
            if path.name not in keep and path.is_file():  # strays: data without a record, temporary files
                path.unlink(missing_ok=True)
        return found

    # ---- jobs of the file lane --------------------------------------------------------

    def create(self, record: UploadRecord) -> int:
        """Make a new upload: its record and an empty ``.part``; an empty file completes at once.

        Raises:
            TransferError: (no_space) the disk would have less than the reserve left.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        free, promised = self.free(), sum(self._promised.values())
        if free - promised - record.size < self.reserve:
            raise TransferError(
                f"the server keeps {self.reserve} bytes free and has {free}, {promised} of them promised to"
                f" uploads under way: no room for {record.size} bytes",
                no_space=True,
            )
        try:
            self._save(record)
            fd = os.open(self._part(record.upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            self.delete(record.upload_id)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError("the server's disk is full", no_space=True) from None
            raise
        self._writing[record.upload_id] = _Writing(fd, hashlib.sha256(), 0)
        self._promised[record.upload_id] = record.size
        if record.size == 0:
            self._finish(record)
        return 0

    def resume(self, record: UploadRecord) -> int:
        """Open an unfinished upload again and re-hash the bytes it holds (a hash state kept in
        memory may not have survived: the server restarted, or a write failed); returns them."""
        self._close(record.upload_id)
        try:
            fd = os.open(self._part(record.upload_id), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise FileGone(record.upload_id) from None
        hasher, received = hashlib.sha256(), 0
        while block := os.pread(fd, HASH_BLOCK, received):
            hasher.update(block)
            received += len(block)
        if received > record.size:  # cannot happen through write(); a hand-made file
            os.ftruncate(fd, 0)
            hasher, received = hashlib.sha256(), 0
        self._writing[record.upload_id] = _Writing(fd, hasher, received)
        self._promised[record.upload_id] = record.size - received
        return received

    def release(self, upload_id: str) -> None:
        """Close an unfinished upload's file until it is resumed (its writer went away)."""
        self._close(upload_id)

    def write(self, record: UploadRecord, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (the engine checked it is where the last write ended);
        returns the bytes held. The last byte checks size and hash, and completes the upload.

        Raises:
            FileGone: cancelled or expired meanwhile (or never resumed after a restart).
            TransferError: the disk is full, or the bytes do not match the hash (removed).
        """
        writing = self._writing.get(record.upload_id)
        if writing is None:
            raise FileGone(record.upload_id)
        if offset != writing.received:  # the engine's count and the disk's disagree: never guess
            self.delete(record.upload_id)
            raise TransferError(f"a chunk at {offset}, where {writing.received} bytes are held")
        try:
            done = 0
            while done < len(data):  # a short write (a disk nearly full) writes the rest, or fails
                done += os.pwrite(writing.fd, data[done:], offset + done)
        except OSError as exc:
            self.delete(record.upload_id)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError("the server's disk is full", no_space=True) from None
            raise
        writing.hasher.update(data)
        writing.received += len(data)
        self._promised[record.upload_id] = record.size - writing.received
        if writing.received == record.size:
            self._finish(record)
        return writing.received

    def read(self, upload_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes of a complete upload from ``offset`` (fewer at its end)."""
        try:
            fd = os.open(self.directory / upload_id, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise FileGone(upload_id) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def delete(self, upload_id: str) -> None:
        """Remove an upload, whatever its state (cancelled, expired, failed)."""
        self._close(upload_id)
        self._promised.pop(upload_id, None)
        for path in (self.directory / upload_id, self._part(upload_id), self._record(upload_id)):
            path.unlink(missing_ok=True)

    def free(self) -> int:
        """Bytes an unprivileged writer may still use on the files' disk."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    # ---- inside -----------------------------------------------------------------------

    def _finish(self, record: UploadRecord) -> None:
        writing = self._writing.pop(record.upload_id)
        self._promised.pop(record.upload_id, None)
        try:
            digest = writing.hasher.hexdigest()
            if digest != record.sha256:
                raise TransferError(f"the bytes' SHA-256 is {digest}, not the {record.sha256} the upload declared")
            os.fsync(writing.fd)
        except BaseException as exc:
            os.close(writing.fd)
            self.delete(record.upload_id)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError("the server's disk is full", no_space=True) from None
            raise
        os.close(writing.fd)
        os.rename(self._part(record.upload_id), self.directory / record.upload_id)
        self._save(dataclasses.replace(record, complete=True))

    def _save(self, record: UploadRecord) -> None:
        """The record, durably: a temporary file, fsync, rename, fsync of the directory."""
        path = self._record(record.upload_id)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, json.dumps(dataclasses.asdict(record)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close(self, upload_id: str) -> None:
        writing = self._writing.pop(upload_id, None)
        if writing is not None:
            os.close(writing.fd)

    def _data(self, record: UploadRecord) -> Path:
        return self.directory / record.upload_id if record.complete else self._part(record.upload_id)

    def _part(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.part"

    def _record(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.json"
