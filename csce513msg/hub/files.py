"""Files (protocol 1.6, docs/protocol.md section 13): the engine's part that decides.

The bytes never touch the loop: every read and write is a job in the ``file`` lane (one
thread, ``store/files.py`` ``FileShelf``), and this part keeps what the loop must know
to answer at once: which uploads exist, whose they are, for which conversation, how far
each got, and each connection's downloads.

**Upload.** ``FileUpload`` checks the limits (largest file, the owner's quota) before any
chunk is sent, then a ``create`` job makes the upload (the disk's reserve is checked
there) and ``FileState`` hands its id to the sender, whose connection becomes its
*writer*. Chunks must come in order from the writer, and at most ``UPLOAD_WINDOW`` bytes
of them unacknowledged: each is acknowledged by a ``FileState`` once written, so a fast
sender is paced by the disk and the server's memory per upload stays bounded. A chunk
out of place or past the size, or bytes whose hash does not match at the end, remove
the upload (``TRANSFER_FAILED``). ``FileUpload`` with the id resumes: a ``resume`` job
re-hashes what the disk holds and says from where.

**Download.** A member of the upload's conversation sends ``FileGet``; the range is read
a chunk at a time, at most ``READS`` (2) of a connection in the lane, and the next read
waits while the connection's output is paused (past its high-water mark): chat written
meanwhile is queued between chunks, never behind a whole file, and the lane serves every
transfer in turn. Anyone else gets ``FILE_NOT_FOUND``, as for an id that
does not exist: a guessed id learns nothing.
"""

from __future__ import annotations

import functools
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..protocol import ErrorCode, RemoteProtocolError, encode_fields
from ..protocol.transfer import (
    BULK_MINOR,
    CHUNK_HEADROOM,
    MAX_GET,
    MIN_CHUNK,
    SHA256_HEX,
    UPLOAD_ID,
    UPLOAD_WINDOW,
    FileCancel,
    FileChunk,
    FileData,
    FileGet,
    FileState,
    FileStatus,
    FileUpload,
    chunk_limit,
)
from ..store.files import FileGone, FileShelf, TransferError, UploadRecord
from ..store.interface import ANNOUNCEMENTS, is_group
from .actions import ConnId, Lane
from .config import HubConfig
from .outbox import Outbox
from .session import Session

#: (session, target kind, target, request id) -> the conversation's stream, or a refusal
Conversation = Callable[[Session, int, str, int], str]
#: (user, group stream) -> whether the user is a member of it now
Membership = Callable[[str, str], bool]
Done = Callable[[object], None]


@dataclass(slots=True)
class Upload:
    """An upload as the loop sees it."""

    record: UploadRecord
    received: int  #: bytes on the disk (acknowledged)
    accepted: int  #: bytes taken from the writer (some still on their way to the disk)
    writer: ConnId | None = None  #: the connection whose chunks it takes (after its FileUpload)
    ready: bool = False  #: the file lane has it open and hashed: chunks may come
    resuming: bool = False  #: a resume's re-hash is in the lane (another waits for it: one at a time)
    #: chunk bytes of this upload in the lane, counted in its writer's window; ``era`` changes when
    #: they stop counting there (the upload dropped, or another connection resumed it)
    unwritten: int = 0
    era: int = 0


@dataclass(slots=True, eq=False)
class _Get:  # compared by identity: two FileGets of the same range are two
    upload_id: str
    asked: int  #: the next byte to read
    end: int
    request_id: int
    dropped: bool = False  #: cancelled, or a read failed: its reads in the lane are ignored


@dataclass(slots=True)
class _Reader:
    """One connection's downloads: its FileGets in order (``gets``: those with bytes still to
    read; ``open``: those not yet answered to their last byte), at most ``READS`` reads in the lane."""

    gets: deque[_Get] = field(default_factory=deque)
    open: list[_Get] = field(default_factory=list)
    reading: int = 0


#: uploads one user may hold at once, and of them unfinished (each is files on the disk, an open
#: descriptor while written, and work in the one file lane: the quota alone, in bytes, would let
#: a user keep a million 1-byte uploads)
MAX_UPLOADS, MAX_UNFINISHED = 500, 16
#: reads of one connection in the file lane at once: two, so the lane reads the next chunk while
#: the loop sends this one (one left the lane idle for every round trip: 231 MB/s against 357)
READS = 2


class Files:
    """The uploads and transfers (built only when the server keeps files: ``shelf``)."""

    def __init__(
        self, config: HubConfig, shelf: FileShelf, loaded: dict[str, tuple[UploadRecord, int]],
        sessions: dict[ConnId, Session], out: Outbox, conversation: Conversation, member: Membership,
        wall_us: Callable[[float], int],
    ) -> None:  # fmt: skip
        self.config = config
        self.shelf = shelf
        self.sessions = sessions
        self.out = out
        self.conversation = conversation
        self.member = member
        self.wall_us = wall_us
        self.uploads = {uid: Upload(rec, size, size) for uid, (rec, size) in loaded.items()}
        #: connection -> the uploads it writes (``gone`` looks at those, not at every upload)
        self.writing: dict[ConnId, set[str]] = {}
        self.jobs: dict[int, Done] = {}  #: job id -> what to do with its result
        self.readers: dict[ConnId, _Reader] = {}
        #: connection -> chunk bytes taken and not yet written: at most ``UPLOAD_WINDOW``, over all
        #: its uploads (a client with many small uploads could otherwise queue its whole quota)
        self.unwritten: dict[ConnId, int] = {}
        old, bulk = config.max_frame - CHUNK_HEADROOM, chunk_limit(BULK_MINOR, config.max_frame, config.max_chunk)
        #: bytes of a FileData frame's body, by the session's minor: from 1.8 its chunk limit
        #: where ``READS`` reads of it fit in the outbound room left for them (``read_room``),
        #: else ``max_frame`` less 1024, as before 1.8
        self.data_chunk = (old, bulk if READS * (bulk + CHUNK_HEADROOM) <= config.read_room else old)
        self._bulk = bulk  #: the most a 1.8 session's FileChunk carries

    # ---- requests ---------------------------------------------------------------------

    def upload(self, session: Session, msg: FileUpload, now: float) -> None:
        """Begin an upload, or resume one (``msg.upload_id``)."""
        rid, user = msg.request_id, session.user
        assert user is not None
        sha256 = msg.sha256.lower()
        if not SHA256_HEX.fullmatch(sha256):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "sha256: 64 hex digits", request_id=rid)
        if msg.upload_id:
            self._resume(session, msg, sha256)
            return
        stream = self.conversation(session, msg.target_kind, msg.target, rid)  # may we post there?
        cfg = self.config
        if msg.size > cfg.max_file:
            too_large = f"a file of {msg.size} bytes is over the largest this server keeps ({cfg.max_file})"
            raise RemoteProtocolError(ErrorCode.FILE_TOO_LARGE, too_large, request_id=rid)
        mine = [u for u in self.uploads.values() if u.record.owner == user]  # a scan: FileUpload is rare
        held = sum(u.record.size for u in mine)
        if held + msg.size > cfg.file_quota:
            over = f"you hold {held} bytes of uploads; {msg.size} more would pass your quota of {cfg.file_quota}"
            raise RemoteProtocolError(ErrorCode.QUOTA_EXCEEDED, over, request_id=rid)
        unfinished = sum(1 for u in mine if not u.record.complete)
        if len(mine) >= MAX_UPLOADS or unfinished >= MAX_UNFINISHED:  # each is files, an fd while open, lane work
            many = f"you hold {len(mine)} uploads ({unfinished} unfinished): at most {MAX_UPLOADS} ({MAX_UNFINISHED})"
            raise RemoteProtocolError(ErrorCode.QUOTA_EXCEEDED, many, request_id=rid)
        created = self.wall_us(now)
        expires = created + int(cfg.file_days * 86_400_000_000)
        record = UploadRecord(secrets.token_urlsafe(16), user, stream, msg.size, sha256, created, expires)
        upload = self.uploads[record.upload_id] = Upload(record, 0, 0)
        self._attach(upload, session.conn)

        def created_(result: object) -> None:
            if isinstance(result, BaseException):
                self._drop(upload)
                self._fail(session, result, rid, upload.record.upload_id)
            elif self.uploads.get(record.upload_id) is upload:
                upload.ready = True
                if not record.size:  # an empty file is complete at once (the job checked its hash)
                    upload.record = replace(record, complete=True)
                self._state(session, upload, rid)

        self._job(functools.partial(self.shelf.create, record), created_)

    def take_chunk(self, session: Session, msg: FileChunk, now: float) -> None:
        """Bytes of an upload: in order, from its writer, within the window."""
        rid = msg.request_id
        upload = self._own(session, msg.upload_id, rid)
        if upload.record.complete:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "that upload is complete", request_id=rid)
        if upload.writer != session.conn or not upload.ready:
            wait = "send FileUpload with its id (and wait for the FileState) before its chunks"
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, wait, request_id=rid)
        size, end = upload.record.size, msg.offset + len(msg.body)
        why = ""
        if msg.offset != upload.accepted:
            why = f"a chunk at {msg.offset}: the next byte is {upload.accepted}"
        elif end > size:
            why = f"a chunk to byte {end} of a {size}-byte file"
        elif len(msg.body) < MIN_CHUNK and end != size:  # a job per chunk: tiny ones would flood the lane
            why = f"a chunk of {len(msg.body)} bytes: at least {MIN_CHUNK}, but for the last"
        elif session.minor >= BULK_MINOR and len(msg.body) > (most := self._bulk):  # (before 1.8: the frame's limit)
            why = f"a chunk of {len(msg.body)} bytes: at most {most}"
        elif self.unwritten.get(session.conn, 0) + len(msg.body) > UPLOAD_WINDOW:
            why = f"more than {UPLOAD_WINDOW} bytes sent and not acknowledged"
        if why:
            self._drop(upload)
            self._job(functools.partial(self.shelf.delete, msg.upload_id), _ignore)
            raise RemoteProtocolError(ErrorCode.TRANSFER_FAILED, why + ": the upload is removed", request_id=rid)
        upload.accepted = end
        conn, taken, era = session.conn, len(msg.body), upload.era
        self.unwritten[conn] = self.unwritten.get(conn, 0) + taken
        upload.unwritten += taken
        record, offset, data = upload.record, msg.offset, msg.body  # as they are now: the job runs later

        def written(result: object) -> None:
            if upload.era == era:  # still counted in this connection's window
                upload.unwritten -= taken
                self.unwritten[conn] = self.unwritten.get(conn, 0) - taken
            if isinstance(result, FileGone) or self.uploads.get(record.upload_id) is not upload:
                if self.sessions.get(conn) is session:  # cancelled or expired meanwhile: every chunk is answered
                    self.out.error(session, ErrorCode.FILE_NOT_FOUND, "that upload is gone", rid)
                return
            if isinstance(result, BaseException):
                self._drop(upload)
                self._fail(session, result, rid, upload.record.upload_id)
                return
            assert isinstance(result, int)
            upload.received = result
            if result == size:
                upload.record = replace(upload.record, complete=True)
            self._state(session, upload, rid)

        self._job(functools.partial(self.shelf.write, record, offset, data), written)

    def get(self, session: Session, msg: FileGet, now: float) -> None:
        """Queue a range of a complete upload for this connection."""
        rid = msg.request_id
        upload = self._readable(session, msg.upload_id, rid, now)
        if msg.offset > upload.record.size or msg.length > MAX_GET:
            size = upload.record.size
            bad = f"a FileGet of {msg.length} bytes at {msg.offset}: at most {MAX_GET}, within the file's {size}"
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, bad, request_id=rid)
        reader = self.readers.setdefault(session.conn, _Reader())
        if len(reader.open) >= 8:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "at most 8 FileGets in flight", request_id=rid)
        get = _Get(msg.upload_id, msg.offset, min(msg.offset + msg.length, upload.record.size), rid)
        reader.gets.append(get)
        reader.open.append(get)
        self._pump(session)

    def cancel(self, session: Session, msg: FileCancel, now: float) -> None:
        """Its owner removes an upload; anyone else drops this connection's FileGets of it."""
        rid = msg.request_id
        upload = self._readable(session, msg.upload_id, rid, now, partial=True)
        reader = self.readers.get(session.conn)
        if reader is not None:
            for get in [g for g in reader.open if g.upload_id == msg.upload_id]:
                self._end(reader, get)
        if upload.record.owner == session.user:
            self._drop(upload)
            self._job(functools.partial(self.shelf.delete, msg.upload_id), _ignore)
        record = upload.record
        self.out.write(
            session,
            FileState(record.upload_id, FileStatus.CANCELLED, record.size, upload.received, record.expires_us, rid),
        )

    # ---- events -----------------------------------------------------------------------

    def job_done(self, job_id: int, result: object) -> None:
        self.jobs.pop(job_id)(result)

    def resume_writing(self, session: Session) -> None:
        self._pump(session)

    def gone(self, session: Session) -> None:
        """The connection closed: its downloads end; its uploads wait for a resume (their files
        closed meanwhile: an unfinished upload must not hold a descriptor for days)."""
        self.readers.pop(session.conn, None)
        for upload_id in list(self.writing.get(session.conn, ())):
            upload = self.uploads[upload_id]
            self._detach(upload)
            if not upload.record.complete:
                self._job(functools.partial(self.shelf.release, upload_id), _ignore)
        self.unwritten.pop(session.conn, None)

    def expire(self, now: float) -> None:
        """Delete the uploads past their time (``--file-days``), with their bytes."""
        now_us = self.wall_us(now)
        for upload in [u for u in self.uploads.values() if u.record.expires_us <= now_us]:
            self._drop(upload)
            self._job(functools.partial(self.shelf.delete, upload.record.upload_id), _ignore)

    # ---- inside -----------------------------------------------------------------------

    def _resume(self, session: Session, msg: FileUpload, sha256: str) -> None:
        rid = msg.request_id
        upload = self._own(session, msg.upload_id, rid)
        record = upload.record
        if (record.size, record.sha256) != (msg.size, sha256):
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, "that upload was begun with another size or hash", request_id=rid
            )
        if record.complete:
            self._state(session, upload, rid)
            return
        if upload.resuming:  # a re-hash reads the whole partial file: one at a time, not a lane's worth
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a resume of it is under way", request_id=rid)
        self._detach(upload)  # the last writer's chunks are refused from now
        self._attach(upload, session.conn)
        upload.resuming = True

        def resumed(result: object) -> None:
            upload.resuming = False
            if self.uploads.get(record.upload_id) is not upload:
                if self.sessions.get(session.conn) is session:
                    self.out.error(session, ErrorCode.FILE_NOT_FOUND, "that upload is gone", rid)
            elif upload.record.complete:  # its last chunk was written while this waited in the lane
                self._state(session, upload, rid)
            elif isinstance(result, BaseException):
                self._drop(upload)
                self._fail(session, result, rid, upload.record.upload_id)
            elif upload.writer == session.conn:
                assert isinstance(result, int)
                upload.received = upload.accepted = result
                upload.ready = True
                self._state(session, upload, rid)
            else:  # another connection resumed it meanwhile: that one is its writer
                self.out.error(session, ErrorCode.BAD_REQUEST, "resumed from another connection", rid)

        self._job(functools.partial(self.shelf.resume, record), resumed)

    def _pump(self, session: Session) -> None:
        """Read the next chunks of this connection's FileGets, up to ``READS`` in the lane, unless
        its output is paused (``resume_writing`` calls again)."""
        reader = self.readers.get(session.conn)
        if reader is None or session.closing:
            return
        while reader.gets and reader.reading < READS and not session.paused:
            get = reader.gets[0]
            upload = self.uploads.get(get.upload_id)
            if upload is None:  # cancelled or expired meanwhile
                self._end(reader, get)
                self.out.error(session, ErrorCode.FILE_NOT_FOUND, "that file is gone", get.request_id)
                continue
            size, offset = upload.record.size, get.asked
            if offset == get.end:  # an empty range: one empty frame says so
                self._end(reader, get)
                self._data(session, get, size, b"", offset, last=True)
                continue
            length = min(self.data_chunk[session.minor >= BULK_MINOR], get.end - offset)
            get.asked += length
            if get.asked == get.end:
                reader.gets.popleft()  # every byte asked for; answered as the reads come back
            reader.reading += 1

            def read(
                result: object, get: _Get = get, offset: int = offset, length: int = length, size: int = size
            ) -> None:
                reader.reading -= 1
                if self.readers.get(session.conn) is not reader:
                    return  # the connection went away
                if get.dropped:
                    pass  # cancelled, or an earlier read of it failed: on with the next one
                elif not isinstance(result, bytes) or len(result) != length:
                    self._end(reader, get)
                    self.out.error(session, ErrorCode.FILE_NOT_FOUND, "that file is gone", get.request_id)
                else:
                    last = offset + length == get.end
                    if last:
                        self._end(reader, get)
                    self._data(session, get, size, result, offset, last)
                self._pump(session)

            self._job(functools.partial(self.shelf.read, get.upload_id, offset, length), read)

    def _end(self, reader: _Reader, get: _Get) -> None:
        """A FileGet is answered (or cancelled, or failed): its reads still in the lane are ignored."""
        get.dropped = True
        if get in reader.open:
            reader.open.remove(get)
        if get in reader.gets:
            reader.gets.remove(get)

    def _data(self, session: Session, get: _Get, size: int, body: bytes, offset: int, last: bool) -> None:
        values = (get.upload_id, offset, size, int(last))
        self.out.write_encoded(session, encode_fields(FileData, values, get.request_id, body, session.minor))

    def _own(self, session: Session, upload_id: str, rid: int) -> Upload:
        upload = self.uploads.get(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if upload is None or upload.record.owner != session.user:
            raise RemoteProtocolError(ErrorCode.FILE_NOT_FOUND, "no such upload of yours", request_id=rid)
        return upload

    def _readable(self, session: Session, upload_id: str, rid: int, now: float, partial: bool = False) -> Upload:
        """The upload, if ``session``'s user may read it: a member of its conversation (its
        owner, for one still receiving). Else FILE_NOT_FOUND, as for no upload at all."""
        upload = self.uploads.get(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        user = session.user or ""
        if upload is not None and upload.record.expires_us > self.wall_us(now):
            record = upload.record
            if record.owner == user and (partial or record.complete):
                return upload
            if record.complete and self._member(user, record.stream):
                return upload
        raise RemoteProtocolError(ErrorCode.FILE_NOT_FOUND, "no such file", request_id=rid)

    def _member(self, user: str, stream: str) -> bool:
        if is_group(stream):
            return stream == ANNOUNCEMENTS or self.member(user, stream)
        return user in stream.partition(":")[2].split(",")  # dm:alice,bob

    def _state(self, session: Session, upload: Upload, rid: int) -> None:
        if self.sessions.get(session.conn) is not session:
            return  # the connection went away while the job ran: its resume asks again
        record = upload.record
        status = FileStatus.COMPLETE if record.complete else FileStatus.RECEIVING
        values = (record.upload_id, status, record.size, upload.received, record.expires_us)
        self.out.write_encoded(session, encode_fields(FileState, values, rid, b"", session.minor))

    def _fail(self, session: Session, exc: BaseException, rid: int, upload_id: str) -> None:
        """A job of an upload failed: the upload is forgotten (``_drop``); its sender hears why."""
        if not isinstance(exc, (TransferError, FileGone)):  # an unexpected failure of the disk
            self._job(functools.partial(self.shelf.delete, upload_id), _ignore)
        if self.sessions.get(session.conn) is not session:
            return
        if isinstance(exc, TransferError):
            code = ErrorCode.NO_SPACE if exc.no_space else ErrorCode.TRANSFER_FAILED
            self.out.error(session, code, f"{exc}: the upload is removed", rid)
        elif isinstance(exc, FileGone):
            self.out.error(session, ErrorCode.FILE_NOT_FOUND, "that upload is gone", rid)
        else:  # an unexpected failure of the disk: said, and the upload removed (above)
            self.out.error(session, ErrorCode.TRANSFER_FAILED, f"the server could not write it ({exc})", rid)

    def _drop(self, upload: Upload) -> None:
        """Forget an upload (its files are deleted by a job, or were by the failing one)."""
        record = upload.record
        if self.uploads.pop(record.upload_id, None) is upload:
            self._detach(upload)

    @property
    def held(self) -> dict[str, int]:
        """User -> bytes of its uploads kept on the server (what its quota counts)."""
        held: dict[str, int] = {}
        for upload in self.uploads.values():
            held[upload.record.owner] = held.get(upload.record.owner, 0) + upload.record.size
        return held

    def _attach(self, upload: Upload, conn: ConnId) -> None:
        """``conn`` writes the upload from now on (after its FileUpload, new or a resume)."""
        upload.writer = conn
        self.writing.setdefault(conn, set()).add(upload.record.upload_id)

    def _detach(self, upload: Upload) -> None:
        """The upload has no writer any more: its chunks in the lane stop counting in that
        connection's window (their results are answered, or dropped, all the same)."""
        if upload.writer is not None:
            if upload.writer in self.unwritten:
                self.unwritten[upload.writer] -= upload.unwritten
            mine = self.writing.get(upload.writer)
            if mine is not None:
                mine.discard(upload.record.upload_id)
                if not mine:
                    del self.writing[upload.writer]
        upload.unwritten, upload.era = 0, upload.era + 1
        upload.writer, upload.ready = None, False

    def _job(self, job: Callable[[], object], done: Done) -> None:
        job_id = self.out.new_id()
        self.jobs[job_id] = done
        self.out.submit(job_id, job, Lane.FILE)


def _ignore(result: object) -> None:
    """A job whose result changes nothing (a deletion)."""
