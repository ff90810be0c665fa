"""Store and forward: the half of the engine that talks to the store.

A Send is not answered at once: it joins the loop pass's storage ``Batch``. At
``flush`` (the end of the pass) the batch goes to the backend as ONE job in the
``store`` lane, at most one in flight (group commit). In ``job_done``, with the batch
committed, the sender gets ``Receipt{stored}`` and a live recipient the ``Deliver``.
A recipient who is offline, slow (a full window, or output backed up) or just
logged in is *catching up*: each time everything delivered to it is acknowledged,
the next window of messages after its device's cursor is read from the store. An
Ack also marks the others' messages *delivered*, which their senders hear of (at
once, or at their next login). History pages are reads of the same batch.

``Mailroom`` is a mixin of ``Engine``: it holds the batch and the output helpers.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol import Deliver, Error, ErrorCode, HistoryEnd, Message, Receipt, ReceiptState, encode
from ..store import Batch, BatchResult, DeliveredNote, Fetch, Refused, Store, StoredMessage
from .actions import Action, ConnId, Lane, Submit, Write
from .config import HubConfig
from .session import Session

log = logging.getLogger("csce513msg.hub")
HISTORY_PAGE = 100  #: the most messages one History request returns
HISTORY_DEFAULT = 20  #: the messages a History request with ``limit`` 0 (or none) returns
HISTORY_QUEUE = 16  #: History requests a connection may have waiting behind the one being read
READS_PER_BATCH = 32  #: catch-up fetches and History pages one storage batch reads, at most


SNAPSHOT_EVERY = 0.25  #: seconds between the snapshots flush publishes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The engine's figures at one flush, for a reader on another thread (``msgsrv --stats``)."""

    connections: int
    users_online: int
    stored: int  #: messages stored since start
    delivered: int  #: deliveries written since start


@dataclass(slots=True)
class PageRead:
    """A History page waiting for a batch with room."""

    key: int  #: its key in the batch, and in ``_history_waiters``
    page: tuple[str, int, int, int]  #: (stream, before, limit, max_bytes), as ``Batch.history`` takes it


class Mailroom:
    """Batches for the store, and what their results turn into."""

    store: Store
    config: HubConfig
    sessions: dict[ConnId, Session]
    online: dict[str, list[Session]]  #: user -> their sessions (one per client logged in)

    def __init__(self) -> None:
        self._out: list[Action] = []  # actions gathered during one engine call
        self._batch = Batch()  # what the store must do next: one job per loop pass
        self._senders: list[tuple[ConnId, int]] = []  # (conn, request id) of each batch message
        self._fetchers: dict[int, ConnId] = {}  # catch-up fetch key -> the session waiting for it
        self._history_waiters: dict[int, tuple[ConnId, int, str]] = {}  # key -> (session, request id, stream)
        self._reads: deque[Fetch | PageRead] = deque()  # reads waiting for a batch with room (READS_PER_BATCH)
        #: the batch the store is working on: (job id, the batch, (conn, request id) of its messages)
        self._in_flight: tuple[int, Batch, list[tuple[ConnId, int]]] | None = None
        self._ids = itertools.count(1)
        self.stored_count = 0  # messages stored since start
        self.delivered_count = 0  # deliveries written since start
        #: published at flush, at most every SNAPSHOT_EVERY seconds, for another thread to read
        #: (`msgsrv --stats`): one immutable object, replaced whole, never the engine's own state
        self.snapshot = Snapshot(0, 0, 0, 0)
        self._next_snapshot = 0.0
        self._acks_due: float | None = None  # when a batch of acknowledgements only must be written
        self._polls_submitted = 0  # batches that carried an accounts poll, submitted so far
        self._polls_done = 0  # ... and back (logins wait for the first poll after they arrived)
        self.stopping = False  # set by Engine.shutdown

    def _batch_done(self, job_id: int, result: object) -> tuple[Batch, BatchResult]:
        """A storage batch finished: receipts and deliveries, now that it is committed."""
        assert self._in_flight is not None and self._in_flight[0] == job_id, "one batch in flight"
        _, batch, senders = self._in_flight
        self._in_flight = None
        self._polls_done += batch.poll_accounts
        if not isinstance(result, BatchResult):  # the store raised: a bug or a broken disk
            result = BatchResult(error=f"storage failed: {result!r}")
        if result.error:
            log.warning("%s (%d messages not stored)", result.error, len(senders))
        for (conn, rid), stored in itertools.zip_longest(senders, result.stored):
            session = self.sessions.get(conn)
            if stored is None:
                if session is not None:
                    self._error(session, ErrorCode.STORE_FAILED, "the message was not stored; send it again", rid)
            elif isinstance(stored, Refused):
                if session is not None:
                    code = ErrorCode.BAD_REQUEST if stored.reused else ErrorCode.RESEND_TOO_OLD
                    self._error(session, code, stored.reason, rid)
            else:
                self._stored(session, rid, stored)
        for key, found in result.fetched.items():
            if (session := self.sessions.get(self._fetchers.pop(key))) is not None:
                self._caught_up(session, found)
        for note in result.newly_delivered:  # acknowledged by a device of the recipient
            for sender in self.online.get(note.sender, ()):
                self._delivered_receipt(sender, note)
        for key, page in result.history.items():
            conn, rid, stream = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                for m in page:  # carrying the request id: history, not new mail (no ack)
                    self._write(session, _deliver_of(m, rid))
                self._write(session, HistoryEnd(page[0].position if page else 0, len(page), stream, rid))
                session.reading_history = False
                self._next_history(session)
        self._reads_failed(batch, result)
        return batch, result

    def _reads_failed(self, batch: Batch, result: BatchResult) -> None:
        """The reads of a failed batch never ran: answer or release whoever waits for them."""
        for key in batch.history.keys() - result.history.keys():
            conn, rid, _ = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                self._error(session, ErrorCode.STORE_FAILED, "history could not be read; try again", rid)
                session.reading_history = False
                self._next_history(session)
        for key in {f.key for f in batch.fetches} - result.fetched.keys():
            if (session := self.sessions.get(self._fetchers.pop(key))) is not None:
                session.fetching = False  # the next ack or resume tries again

    def flush(self, now: float) -> list[Action]:
        """End of a loop pass: if no batch is in flight, submit what accumulated (group commit).
        A batch of acknowledgements only waits up to ``ack_delay`` for company: at a light,
        steady load that halves the commits (one per message, not one per message and ack)."""
        if now >= self._next_snapshot:
            self.snapshot = Snapshot(len(self.sessions), len(self.online), self.stored_count, self.delivered_count)
            self._next_snapshot = now + SNAPSHOT_EVERY
        if self._in_flight is not None or not (self._batch or self._reads):
            return []
        self._take_reads(self._batch)
        if not self._batch:
            return []  # the reads were of connections gone meanwhile
        if self._batch.can_wait() and not self.stopping:
            if self._acks_due is None:
                self._acks_due = now + self.config.ack_delay
            if now < self._acks_due:
                return []  # next_deadline() brings a pass at _acks_due
        self._acks_due = None
        job_id = self._new_id()
        batch, self._batch = self._batch, Batch()
        self._in_flight = (job_id, batch, self._senders)
        self._senders = []
        self._polls_submitted += batch.poll_accounts
        return [Submit(job_id, functools.partial(self.store.apply, batch), Lane.STORE)]

    def _take_reads(self, batch: Batch) -> None:
        """Move waiting reads into ``batch``, at most READS_PER_BATCH in all, oldest first.
        A read whose session has gone is dropped; a page for a session whose output is
        backed up (paused since it was asked for) waits in its place."""
        room = READS_PER_BATCH - len(batch.fetches) - len(batch.history)
        waiting: list[Fetch | PageRead] = []
        while room > 0 and self._reads:
            read = self._reads.popleft()
            if isinstance(read, Fetch):
                if read.key in self._fetchers and self._fetchers[read.key] in self.sessions:
                    batch.fetches.append(read)
                    room -= 1
                else:
                    self._fetchers.pop(read.key, None)
                continue
            session = self.sessions.get(self._history_waiters[read.key][0])
            if session is None:
                del self._history_waiters[read.key]
            elif session.paused:
                waiting.append(read)
            else:
                batch.history[read.key] = read.page
                room -= 1
        self._reads.extendleft(reversed(waiting))

    def _next_history(self, session: Session) -> None:
        """Read the session's next History page: one at a time, and only while its output is
        below the high-water mark; a page's bodies add up to at most ``page_bytes``, which the
        server sets to what its hard limit has room for above that mark (``check_limits``)."""
        if session.reading_history or session.paused or not session.histories or session.closing:
            return
        rid, stream, before, limit = session.histories.pop(0)
        key = self._new_id()
        session.reading_history = True
        self._history_waiters[key] = (session.conn, rid, stream)
        page = (stream, before, min(limit or HISTORY_DEFAULT, HISTORY_PAGE), self.config.page_bytes)
        self._reads.append(PageRead(key, page))

    # ---- store and forward ----------------------------------------------------------

    def _stored(self, sender: Session | None, rid: int, m: StoredMessage) -> None:
        """A message is committed: receipt to its sender, delivery to the live sessions of
        the recipient, and of the sender on its other devices (alice's GUI sees what she
        typed on her laptop)."""
        recipients = self.online.get(m.target, ())
        if sender is not None:
            offline = not recipients and self._sees(sender, m.target)  # --visibility: no hint otherwise
            detail = f"{m.target} is offline" if offline else ""
            self._write(
                sender, Receipt(ReceiptState.STORED, m.message_id, m.time_us, m.position, m.stream, detail, rid)
            )
        if m.duplicate:
            return  # a resend of a stored message: it was delivered (or is queued) already
        self.stored_count += 1
        for session in (*recipients, *self.online.get(m.sender, ())) if m.sender != m.target else recipients:
            if not session.live or (session.user == m.sender and session.device == m.device):
                continue  # catching up (it will read this from the store), or the device that sent it
            if session.inflight() < self.config.window:
                self._deliver(session, m)
            else:  # a full window: it catches up from the store as it acknowledges
                session.live = False
        if log.isEnabledFor(logging.INFO):
            log.info("message %s -> %s, %d bytes, id %d", m.sender, m.target, len(m.body), m.message_id)

    def _delivered_receipt(self, session: Session, note: DeliveredNote) -> None:
        state = ReceiptState.DELIVERED
        self._write(session, Receipt(state, note.message_id, note.time_us, note.position, note.stream, "", 0))
        key = (note.sender, session.device, note.stream)  # this device has been told
        self._batch.notified[key] = max(self._batch.notified.get(key, 0), note.position)

    def _deliver(self, session: Session, m: StoredMessage) -> None:
        if m.position <= session.delivered.get(m.stream, 0):
            return  # already on its way to this session (a live delivery met a catch-up)
        self._write(session, _deliver_of(m, 0))
        self.delivered_count += 1
        session.delivered[m.stream] = m.position
        session.unacked.setdefault(m.stream, []).append(m.position)
        session.in_flight += 1

    def _maybe_fetch(self, session: Session) -> None:
        """Catch-up, paced: once everything delivered is acknowledged (so the stored cursor is
        where this session stands), ask the store for the next window of messages."""
        if session.live or session.fetching or session.paused or session.user is None or session.inflight():
            return
        key = self._new_id()
        session.fetching = True
        self._fetchers[key] = session.conn
        window, history = self.config.window, self.config.new_device_history
        self._reads.append(Fetch(key, session.user, session.device, window, history))

    def _caught_up(self, session: Session, found: list[StoredMessage]) -> None:
        session.fetching = False
        for m in found:
            self._deliver(session, m)
        if len(found) < self.config.window and not session.paused:  # a full window: maybe more
            session.live = True  # nothing older is left: from now on, deliver as stored
        else:
            self._maybe_fetch(session)

    # ---- output ---------------------------------------------------------------------

    def _error(self, session: Session, code: ErrorCode, message: str, request_id: int) -> None:
        self._write(session, Error(code, message, request_id))

    def _write(self, session: Session, msg: Message) -> None:
        if session.closing:
            return  # e.g. a receipt whose commit came after the connection was told to close
        self._out.append(Write(session.conn, encode(msg, session.minor)))  # the fields its version knows

    def _polls_due(self) -> int:
        """The number of the next accounts poll to be submitted (the current batch's)."""
        return self._polls_submitted + 1

    if TYPE_CHECKING:  # the engine's

        def _sees(self, session: Session | None, user: str, role: str | None = None) -> bool: ...

    def _new_id(self) -> int:
        """A fresh key for a job or a read."""
        return next(self._ids)

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out


def _deliver_of(m: StoredMessage, request_id: int) -> Deliver:
    return Deliver(m.target_kind, m.content_type, m.message_id, m.time_us, m.position, m.sender, m.target,
                   m.stream, m.body, request_id)  # fmt: skip
