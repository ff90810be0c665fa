"""Receiving a file: where its bytes go on disk, and under which name.

Everything about a received file is untrusted: another student chose its name (or
crafted it: ``../../.bashrc``, ``con.txt``, an escape sequence, a right-to-left override),
announced its size and SHA-256, and sends its bytes in chunks that may stop anywhere.
This module is the client's disk side of receiving one (protocol 1.6), with no network:

- ``safe_name`` makes the announced name one harmless path component;
- ``PartialDownload`` receives the bytes into a hidden file named from the upload id
  only (``.csce513msg-<upload_id>.part``), so nothing the sender chose names a file
  until every byte is there and the SHA-256 matches. Then the file takes its safe name
  without ever replacing one: ``report.pdf``, else ``report (1).pdf``, ``report (2).pdf``.
  A safe name never starts with a dot, so it never meets a partial file's name;
- a transfer cut short leaves its partial file: opened again, its bytes are hashed again
  (a saved hash state would be one more thing to trust) and it resumes at their end;
- ``parse_size`` reads ``msg --auto-download SIZE``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import unicodedata
from pathlib import Path
from types import TracebackType

from ..paths import client_data_dir
from .sanitize import UNSAFE_IN_NAME

#: A name's limit in UTF-8 bytes: 255 (the usual file system's) less room for a " (N)"
#: and a temporary prefix that a program saving it again may add.
MAX_NAME_BYTES = 200
MAX_EXTENSION_BYTES = 16  #: a longer suffix (dot included) is shortened with the stem
MAX_COPIES = 1000  #: ``name``, ``name (1)`` ... ``name (999)``: then finish gives up
CHUNK = 1 << 20  #: bytes read at a time when hashing a partial file again or copying it

_SURROGATE = re.compile("[\ud800-\udfff]")  # a name decoded with surrogateescape: not UTF-8
_WINDOWS_INVALID = re.compile('[<>:"|?*]')
#: Windows' device names: ``con.txt`` there is the console, whatever the extension.
_RESERVED = re.compile(r"CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|(?:COM|LPT)[0-9¹²³]", re.IGNORECASE | re.ASCII)
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class TransferError(Exception):
    """A received file cannot be kept, or a chunk does not fit it; the text says why."""


def default_downloads_dir() -> Path:
    """Where received files go unless the user names a directory: ``downloads`` in the
    client's data directory (``paths.client_data_dir``: ``$MSG_DATA_DIR``, else
    ``$XDG_DATA_HOME/csce513msg/client``, else ``~/.local/share/csce513msg/client``).
    Not ``~/Downloads``: what a classmate sends lands apart from what the user chose to
    fetch, in a directory only its owner can read (``PartialDownload.open`` makes it 0700).
    """
    return client_data_dir() / "downloads"


def partial_name(upload_id: str) -> str:
    """The hidden name a download is received under: from the upload id alone."""
    return f".csce513msg-{upload_id}.part"


def safe_name(name: str) -> str:
    """``name``, announced by a sender, made one safe file name (a single path component).

    Invisible and control characters go (``sanitize.UNSAFE_IN_NAME``), then the name is
    NFC-normalized; only its last ``/`` or ``\\`` part is kept; leading dots and spaces go
    (no hidden file, no ``..``), trailing ones too (Windows drops them); ``<>:"|?*``
    become ``_``; a Windows device name gets a ``_`` in front; the result fits
    ``MAX_NAME_BYTES`` of UTF-8, keeping a short extension. Nothing left: ``"file"``.
    ``safe_name(safe_name(x)) == safe_name(x)``: that is why characters are removed
    before NFC, never after (``e``, NUL, an acute accent would compose on a second pass).
    """
    name = unicodedata.normalize("NFC", _SURROGATE.sub("", UNSAFE_IN_NAME.sub("", name)))
    name = next((part for part in reversed(re.split(r"[/\\]", name)) if part), "")
    name = _WINDOWS_INVALID.sub("_", name).strip(". ")
    if _RESERVED.fullmatch(name.split(".")[0].rstrip(" ")):
        name = "_" + name
    return _fit(name) or "file"


def _split(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; a name whose only dot is its first has no extension."""
    dot = name.rfind(".")
    return (name[:dot], name[dot:]) if dot > 0 else (name, "")


def _fit(name: str) -> str:
    """``name`` cut to ``MAX_NAME_BYTES`` of UTF-8 at a character's end, extension kept."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, ext = _split(name)
    if len(ext.encode()) > MAX_EXTENSION_BYTES:
        stem, ext = name, ""
    room = MAX_NAME_BYTES - len(ext.encode())
    # "ignore" drops the one character the cut split, if it split one: the rest is whole UTF-8
    return stem.encode()[:room].decode(errors="ignore").rstrip(". ") + ext


class PartialDownload:
    """One file being received into a directory: ``open``, ``write`` each chunk in
    order, then ``finish`` (or ``abort``; or ``close`` to resume it later).

    ``write``, ``finish`` and ``abort`` raise OSError for what the file system refuses
    besides a full disk (a read-only directory, an I/O error).
    """

    def __init__(self, directory: Path, upload_id: str, name: str, size: int, sha256: str, fd: int) -> None:
        """Use ``open``: this takes the partial file's descriptor, open and locked."""
        self.directory, self.upload_id, self.name = directory, upload_id, safe_name(name)
        self.size, self.sha256 = size, sha256.lower()
        self.path = directory / partial_name(upload_id)
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self.received = 0
        if os.fstat(fd).st_size > size:  # not this file's bytes: start over
            os.ftruncate(fd, 0)
        while chunk := os.pread(fd, CHUNK, self.received):
            self._hash.update(chunk)
            self.received += len(chunk)

    @classmethod
    def open(cls, directory: Path, upload_id: str, name: str, size: int, sha256: str) -> PartialDownload:
        """Start receiving upload ``upload_id`` (or resume it) in ``directory``.

        Raises:
            ValueError: an upload id not 1-64 of ``[A-Za-z0-9_-]``, a negative size, a
                SHA-256 not 64 hex digits.
            TransferError: a symbolic link or anything but a file at the partial
                file's name, or another process receiving the same upload.
        """
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        if size < 0 or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a file's size and SHA-256: {size}, {sha256!r}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / partial_name(upload_id)
        try:  # O_NOFOLLOW: a symbolic link planted at the name is refused, never written through
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise TransferError(f"{path} is a symbolic link: refused") from exc
            if exc.errno == errno.EISDIR:
                raise TransferError(f"{path} is not a regular file: refused") from exc
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TransferError(f"{path} is not a regular file: refused")
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes
            return cls(directory, upload_id, name, size, sha256, fd)
        except BlockingIOError:
            os.close(fd)
            raise TransferError(f"upload {upload_id} is being received by another process") from None
        except BaseException:
            os.close(fd)
            raise

    def write(self, offset: int, data: bytes) -> None:
        """Add a chunk that starts at byte ``offset``, which must be ``received``; a full
        disk removes the partial file. A TransferError otherwise leaves it as it was."""
        fd = self._open_fd()
        if offset != self.received:
            raise TransferError(f"{self.name}: a chunk at byte {offset}, expected one at byte {self.received}")
        if offset + len(data) > self.size:
            raise TransferError(f"{self.name}: a chunk ends at byte {offset + len(data)}, past its size {self.size}")
        view = memoryview(data)
        try:
            while view:  # pwrite may write less than asked: write the rest
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            self._fail_if_disk_full(exc)
            raise
        self._hash.update(data)
        self.received += len(data)

    def rewind(self, size: int) -> None:
        """Keep only the first ``size`` bytes received (an encrypted file resumes at a chunk's
        start: a chunk half written by a run that stopped is dropped), hashed again."""
        fd = self._open_fd()
        if not 0 <= size <= self.received:
            raise ValueError(f"cannot rewind {self.received} bytes to {size}")
        os.ftruncate(fd, size)
        self._hash, self.received = hashlib.sha256(), 0
        while self.received < size and (chunk := os.pread(fd, min(CHUNK, size - self.received), self.received)):
            self._hash.update(chunk)
            self.received += len(chunk)

    def finish(self) -> Path:
        """Check the size and the SHA-256, then give the file its safe name in the
        directory, never replacing a file. Returns the final path. A wrong size or hash
        removes the partial file and raises TransferError, as a full disk does."""
        fd = self._open_fd()
        if self.received != self.size:
            self.abort()
            raise TransferError(f"{self.name}: size mismatch: {self.received} bytes received, {self.size} announced")
        if (digest := self._hash.hexdigest()) != self.sha256:
            self.abort()
            raise TransferError(f"{self.name}: hash mismatch: SHA-256 {digest} received, {self.sha256} announced")
        stem, ext = _split(self.name)
        try:
            os.fsync(fd)  # the bytes are on disk before any name says the file is whole
            for n in range(MAX_COPIES):
                final = self.directory / (f"{stem} ({n}){ext}" if n else self.name)
                try:
                    _claim(self.path, fd, final)
                    break
                except FileExistsError:
                    continue
            else:
                self.abort()
                raise TransferError(f"{self.name}: {MAX_COPIES} files of that name already in {self.directory}")
        except OSError as exc:
            self._fail_if_disk_full(exc)
            raise
        self.path.unlink(missing_ok=True)
        self.close()
        return final

    def abort(self) -> None:
        """Stop receiving and remove the partial file (cancelled, hash mismatch, disk full)."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Stop receiving but keep the partial file: ``open`` resumes it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PartialDownload:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise TransferError(f"{self.name}: this download is closed")
        return self._fd

    def _fail_if_disk_full(self, exc: OSError) -> None:
        if exc.errno in _DISK_FULL:
            self.abort()
            raise TransferError(f"{self.name}: no space left on the disk ({self.directory}): download removed") from exc


def _claim(partial: Path, fd: int, final: Path) -> None:
    """Give the received bytes the name ``final``; FileExistsError if it is taken.

    A hard link fails when the name exists (even as a symbolic link), so no file is ever
    replaced; a file system without hard links gets a copy in a file created with
    O_EXCL, which fails the same way.
    """
    try:
        os.link(partial, final, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _copy_to_new(fd, final)


def _copy_to_new(fd: int, final: Path) -> None:
    """Copy the file open at ``fd`` to ``final``, a new file (FileExistsError if not)."""
    out = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while chunk := os.pread(fd, CHUNK, offset):
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            offset += len(chunk)
        os.fsync(out)
    except BaseException:
        os.close(out)
        final.unlink()  # half a copy is no file
        raise
    os.close(out)
