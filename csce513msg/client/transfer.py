"""File transfers (protocol 1.6) as the client drives them, without I/O of the network.

An ``Upload`` or a ``Download`` queues its requests on a ``ClientSession`` and is handed
every message the session decodes (``handle``: True when the message was its own). The
driver, blocking (``blocking.Client.send_file``) or multiplexed (``msg``), only moves
bytes. Both keep the chat usable: an upload has at most ``UPLOAD_WINDOW`` bytes on their
way, a download ``GETS_IN_FLIGHT`` requests of ``GET_SIZE`` bytes, so a chat message
queued meanwhile waits behind that much at most, never behind the whole file.

Resume: an ``Upload`` given the ``upload_id`` of an unfinished upload asks the server
where it stopped and goes on from there; a ``Download`` writes into a
``downloads.PartialDownload``, which re-hashes what an earlier attempt left on disk.

End-to-end encrypted files (1.7): an ``Upload`` with a ``sealed.Sealing`` sends the file's
STREAM ciphertext, a ``Download`` of an offer with a key opens it; ``sealed.py`` does both.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from ..crypto.stream import SALT
from ..protocol import (
    Error,
    FileData,
    FileState,
    FileStatus,
    Message,
    Offer,
    TargetKind,
)
from ..protocol.transfer import MAX_GET, STREAM_V1, UPLOAD_WINDOW, chunk_limit
from .downloads import PartialDownload, TransferError
from .sealed import Deciphering, FileChangedError, SealedSource, Sealing
from .session import ClientSession

GET_SIZE = MAX_GET  #: bytes one FileGet asks for
GETS_IN_FLIGHT = 2  #: FileGets a download keeps asked and unanswered (the server reads one chunk at a time)


def sha256_of(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file at ``path``, as read (``hashlib.file_digest`` reads it in blocks)."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()


class PlainSource:
    """The bytes of the file at ``path`` as they are, read by offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("rb")

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._file.fileno(), length, offset)
        if length and not data:  # the file shrank under us (else the server will say the hash is wrong)
            raise FileChangedError(f"{self.path} changed while it was sent")
        return data

    def close(self) -> None:
        self._file.close()


class Upload:
    """Send the file at ``path`` to the server for the conversation with ``target``.

    ``done`` once the server has every byte (``complete``) or refused (``error``). Then
    ``offer()`` is the file offer to post (``ClientSession.send_offer``).

    With ``sealing`` (1.7, ``Sealing.fresh()`` for a new upload, ``upload.sealing`` to resume
    one), the bytes sent are the file's STREAM ciphertext, made a chunk at a time
    (``sealed.SealedSource``, which reads the file once first for its hashes): ``size`` and
    ``sha256`` are the ciphertext's, and the offer carries the key.
    """

    def __init__(
        self, session: ClientSession, path: Path, target: str, kind: TargetKind = TargetKind.USER,
        upload_id: str = "", size: int | None = None, sha256: str | None = None, sealing: Sealing | None = None,
    ) -> None:  # fmt: skip
        self._source: PlainSource | SealedSource | None
        self.sealing: Sealing | None = None  #: the key and salt of an encrypted upload (private)
        if sealing is not None:
            sealed = self._source = SealedSource(path, sealing)
            size, sha256, self.sealing = sealed.size, sealed.sha256, sealed.sealing
        elif size is None or sha256 is None:
            size, sha256 = sha256_of(path)
        self.session = session
        self.path = path
        self.name = path.name
        self.target, self.kind = target, kind
        self.size, self.sha256 = size, sha256
        self.upload_id = upload_id
        self.acked = 0  #: bytes the server wrote
        self.sent = 0  #: bytes queued to it
        self.complete = False
        self.started = False  #: the server answered FileUpload: it said where to start
        self._cancel_when_started = False
        self.error: Error | None = None
        welcome = session.welcome
        assert welcome is not None
        # the frame's room (from 1.8 the Welcome's max_chunk), but never more than a quarter of
        # the window: four chunks on their way keep the server's file lane busy
        self.chunk = min(chunk_limit(session.minor, welcome.max_frame, welcome.max_chunk), UPLOAD_WINDOW // 4)
        if sealing is None:
            self._source = PlainSource(path)
        self._start = session.file_upload(size, sha256, target, kind, upload_id)
        self._rids = {self._start}
        self._chunks: dict[int, int] = {}  #: request id -> bytes of a chunk not yet answered

    @property
    def done(self) -> bool:
        return self.complete or self.error is not None

    def offer(self) -> Offer:
        """What the file offer says (its name is the file's own, as the sender sees it; for an
        encrypted upload, its key, and the plaintext's size and SHA-256)."""
        s = self.sealing
        if s is None:
            return Offer(self.upload_id, self.name, self.size, self.sha256)
        return Offer(self.upload_id, self.name, self.size, self.sha256, STREAM_V1, s.key, s.plain_size, s.plain_sha256)

    def handle(self, msg: Message) -> bool:
        """Take a reply of this upload's: a FileState moves it on, an Error ends it."""
        if msg.request_id not in self._rids or not isinstance(msg, (FileState, Error)):
            return False
        self._rids.discard(msg.request_id)
        self.session.upload_bytes -= self._chunks.pop(msg.request_id, 0)
        if isinstance(msg, Error):
            self.error = msg
            self.close()
            return True
        if msg.request_id == self._start:  # the server's answer to FileUpload: where to start
            self.upload_id = msg.upload_id
            self.sent = msg.received
            self.started = True
            if self._cancel_when_started:
                self.cancel()
                return True
        self.acked = max(self.acked, msg.received)
        if msg.state == FileStatus.COMPLETE:
            self.complete = True
            self.close()
        else:
            self.fill()
        return True

    def cancel(self) -> None:
        """Stop sending, and ask the server to remove what it has. Before the server named the
        upload, the cancel waits for its answer (``handle``): else the upload would hold its
        owner's quota until it expires, its id known to nobody."""
        if not self.started:
            self._cancel_when_started = True
            self.close()
            return
        if self.upload_id:
            self.session.file_cancel(self.upload_id)
        self.error = Error(0, "cancelled")
        self.close()

    def close(self) -> None:
        """Stop: the window its chunks held is free for the connection's other uploads."""
        self.session.upload_bytes -= sum(self._chunks.values())
        self._chunks.clear()
        if self._source is not None:
            self._source.close()
            self._source = None

    def _room(self) -> bool:
        return self.session.upload_bytes + self.chunk <= UPLOAD_WINDOW

    def fill(self) -> None:
        """Queue chunks while the connection's window has room (``msg`` calls it for every upload
        when one moves: another one's chunks may have freed room)."""
        session = self.session
        while self.started and self._source is not None and self.sent < self.size and self._room():
            try:
                data = self._source.read(self.sent, min(self.chunk, self.size - self.sent))
            except FileChangedError as exc:
                self.error = Error(0, str(exc))
                self.close()
                return
            rid = session.file_chunk(self.upload_id, self.sent, data)
            self._rids.add(rid)
            self._chunks[rid] = len(data)
            session.upload_bytes += len(data)
            self.sent += len(data)


class Download:
    """Fetch an offered file into ``partial`` (a ``PartialDownload``: resumes where it is).

    An encrypted offer's (1.7) ciphertext goes through ``sealed.Deciphering``: only plaintext
    that authenticated reaches the partial file, whose size and SHA-256 are the plaintext's
    (``Offer.file_size``, ``Offer.file_sha256``); a resume goes on at its last whole chunk."""

    def __init__(self, session: ClientSession, offer: Offer, partial: PartialDownload) -> None:
        self.session = session
        self.offer = offer
        self.partial = partial
        self.asked = partial.received  #: the next byte to ask for
        self.path: Path | None = None  #: the file, verified, once done
        self.error: str = ""
        self._gets: set[int] = set()
        self._sink: PartialDownload | Deciphering = partial
        if offer.encrypted:
            try:
                deciphering = self._sink = Deciphering(offer, partial)
            except TransferError as exc:
                self._fail(str(exc), keep=False)
                return
            self.asked = deciphering.first
            if deciphering.needs_salt:
                self._gets.add(session.file_get(offer.upload_id, 0, SALT))
        if offer.size == 0:
            self._gets.add(session.file_get(offer.upload_id, 0, 0))
        self._fill()
        if not self._gets:  # every byte is on disk already (a run that stopped before checking them)
            self._check()

    @property
    def received(self) -> int:
        return self.partial.received

    @property
    def done(self) -> bool:
        return self.path is not None or bool(self.error)

    def handle(self, msg: Message) -> bool:
        """Take a FileData (or an Error) of this download's FileGets."""
        if msg.request_id not in self._gets or not isinstance(msg, (FileData, Error)):
            return False
        if isinstance(msg, Error):
            self._gets.clear()
            self._fail(f"the server says: {msg.message}", keep=False)
            return True
        if msg.last:
            self._gets.discard(msg.request_id)
        try:
            if msg.size != self.offer.size:
                raise TransferError(f"the server holds {msg.size} bytes, the offer said {self.offer.size}")
            if msg.body:
                self._sink.write(msg.offset, msg.body)
            self._fill()
        except TransferError as exc:
            self._gets.clear()
            self._fail(str(exc), keep=False)
            return True
        if not self._gets:
            self._check()
        return True

    def cancel(self) -> None:
        """Stop and remove the partial file. The server is not asked anything: its answers to
        the (at most ``GETS_IN_FLIGHT``) ranges asked are left unread. (A FileCancel from the
        file's own sender would remove the upload for everyone: a second device of the sender
        cancelling its download must not.)"""
        self._gets.clear()
        self._fail("cancelled", keep=False)

    def _check(self) -> None:
        """Every range answered: the bytes' size and hash, then the file's final name."""
        try:
            self.path = self._sink.finish()
        except TransferError as exc:
            self._fail(str(exc), keep=False)

    def _fill(self) -> None:
        while len(self._gets) < GETS_IN_FLIGHT and self.asked < self.offer.size:
            length = min(GET_SIZE, self.offer.size - self.asked)
            self._gets.add(self.session.file_get(self.offer.upload_id, self.asked, length))
            self.asked += length

    def _fail(self, why: str, keep: bool) -> None:
        self.error = why
        if keep:
            self.partial.close()
        else:
            self.partial.abort()
