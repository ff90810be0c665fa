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

``Mailroom`` is a part of ``Engine``: it owns the batch, the reads and the deliveries;
it is given the sessions, the users online, the outbox it writes to, the engine's
rule of who sees whom (``sees``: a receipt's "offline" hint obeys ``--visibility``), and
the ``roster`` of groups (``groups.py``): in commit order, it applies each group event,
answers its requester and names the sessions a group message goes to; the Mailroom
encodes that Deliver once per minor and writes the same bytes to each of them (a direct
message's too, to the live sessions of both ends). Receipts and deliveries are encoded
from the stored message's fields (``encode_fields``): no frozen Receipt or Deliver is
made only to be encoded (CONTRIBUTING.md, the per-message path).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..protocol import Deliver, ErrorCode, HistoryEnd, Receipt, ReceiptState, RemoteProtocolError, encode_fields
from ..store import Batch, BatchResult, DeliveredNote, Fetch, NewMessage, Refused, Store, StoredMessage
from ..store.interface import ANNOUNCEMENTS, ASKS_CONFIRMATION, KeyNote, Note, is_group
from .actions import ConnId, Lane
from .config import HubConfig
from .outbox import Outbox
from .session import Session, StreamMark

log = logging.getLogger("csce513msg.hub")
HISTORY_PAGE = 100  #: the most messages one History request returns
HISTORY_DEFAULT = 20  #: the messages a History request with ``limit`` 0 (or none) returns
HISTORY_QUEUE = 16  #: History requests a connection may have waiting behind the one being read
NO_CONN: ConnId = -1  #: the "sender" of a message no connection asked for (a queued group change)
READS_PER_BATCH = 32  #: catch-up fetches and History pages one storage batch reads, at most


Committed = Callable[[Session | None], None]  #: what a key directory record does once committed

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


class Roster(Protocol):
    """What the Mailroom asks of the groups (``groups.Groups``) when a batch is committed."""

    def committed(self, sender: Session | None, rid: int, m: StoredMessage) -> Iterable[Session]:
        """Apply a committed group message's change; answer an event's requester; who gets it live."""
        ...

    def refused(self, session: Session, rid: int, new: NewMessage, why: str) -> None:
        """Answer a group message the store refused (``Refused.why``)."""
        ...

    def is_member(self, user: str, stream: str) -> bool:
        """Whether ``user`` is a member of the group ``stream`` now."""
        ...


class Notebook(Protocol):
    """What the Mailroom tells the classroom (``classroom.Classroom``) when a batch is committed."""

    def noted(self, session: Session | None, rid: int, note: Note, now: float) -> None:
        """A classroom note is committed: apply it, answer its requester, push to the others."""
        ...

    def announced(self, position: int) -> None:
        """An announcement that asks to be confirmed is committed at ``position`` of g:0."""
        ...


class Mailroom:
    """Batches for the store, and what their results turn into.

    Args:
        store: what ``apply`` runs on (as a job of the ``loop`` or ``store`` lane, never here).
        config: the hub's limits.
        sessions: every connection's session, by id (the engine's).
        online: user -> their logged-in sessions (the engine's).
        outbox: where everything to send goes.
        sees: whether a session may see that a user is online (``--visibility``).
        roster: the groups' side of a commit (None: a hub that serves no group).
        notebook: the classroom's side of a commit (``Batch.notes``; None: no classroom).
    """

    def __init__(
        self, store: Store, config: HubConfig, sessions: dict[ConnId, Session], online: dict[str, tuple[Session, ...]],
        outbox: Outbox, sees: Callable[[Session, str], bool], roster: Roster | None = None,
        notebook: Notebook | None = None,
    ) -> None:  # fmt: skip
        self.store, self.config, self.sessions, self.online = store, config, sessions, online
        self.out = outbox
        self._sees = sees
        self.roster = roster
        self.notebook = notebook
        self.batch = self._new_batch()  # what the store must do next: one job per loop pass
        self._senders: list[tuple[ConnId, int]] = []  # (conn, request id) of each batch message
        self._noters: list[tuple[ConnId, int]] = []  # (conn, request id) of each batch note
        self._noters_in_flight: list[tuple[ConnId, int]] = []  # ... of the batch in flight
        #: (conn, request id, what to do once committed) of each key directory record (1.7)
        self._keyers: list[tuple[ConnId, int, Committed | None]] = []
        self._keyers_in_flight: list[tuple[ConnId, int, Committed | None]] = []
        self._fetchers: dict[int, ConnId] = {}  # catch-up fetch key -> the session waiting for it
        self._history_waiters: dict[int, tuple[ConnId, int, str]] = {}  # key -> (session, request id, stream)
        self._reads: deque[Fetch | PageRead] = deque()  # reads waiting for a batch with room (READS_PER_BATCH)
        #: the batch the store is working on: (job id, the batch, (conn, request id) of its messages)
        self._in_flight: tuple[int, Batch, list[tuple[ConnId, int]]] | None = None
        #: the job id of the store's maintenance (a checkpoint) on the storage thread: no batch meanwhile
        self.maintaining: int | None = None
        self._retry = 0  # the job id of a batch the loop found busy, waiting on the storage thread
        self.stored_count = 0  # messages stored since start
        self.delivered_count = 0  # deliveries written since start
        #: published at flush, at most every SNAPSHOT_EVERY seconds, for another thread to read
        #: (`msgsrv --stats`): one immutable object, replaced whole, never the engine's own state
        self.snapshot = Snapshot(0, 0, 0, 0)
        self._next_snapshot = 0.0
        self.acks_due: float | None = None  # when a batch of acknowledgements only must be written
        self._polls_submitted = 0  # batches that carried an accounts poll, submitted so far
        self.polls_done = 0  # ... and back (logins wait for the first poll after they arrived)
        self.stopping = False  # set by Engine.shutdown: no batch waits any more

    # ---- what the requests ask for ----------------------------------------------------

    def store_message(self, session: Session, new: NewMessage, rid: int) -> None:
        """A Send, checked: stored in the next batch; the receipt waits for the commit."""
        self.batch.messages.append(new)
        self._senders.append((session.conn, rid))

    def store_queued(self, new: NewMessage | str, queue_id: int) -> None:
        """A change ``msgsrv group`` queued: its event stored in the next batch, which closes the
        queued row in the same transaction (nobody waits for a receipt); or, refused by the
        engine's checks (``new`` the reason), the row closed with that reason."""
        if isinstance(new, str):
            self.batch.queue_outcomes[queue_id] = new
            return
        self.batch.queued[len(self.batch.messages)] = queue_id
        self.batch.messages.append(new)
        self._senders.append((NO_CONN, 0))

    def take_note(self, session: Session, note: Note, rid: int) -> None:
        """A classroom request, checked: its note in the next batch; the answer waits for the commit."""
        self.batch.notes.append(note)
        self._noters.append((session.conn, rid))

    def take_key_note(self, session: Session, note: KeyNote, rid: int, then: Committed | None = None) -> None:
        """A key directory record (1.7, ``hub/keys.py``) in the next batch; once it is committed,
        ``then(session)`` (the session None if it has gone meanwhile). If the batch fails, its
        requester gets STORE_FAILED (when ``rid`` is not 0) and ``then`` is not called."""
        self.batch.keys.append(note)
        self._keyers.append((session.conn, rid, then))

    def acknowledged(self, session: Session, acks: Sequence[tuple[str, int]], rid: int) -> None:
        """An Ack, or the entries of an Acks (1.5): for each (stream, position), the device's
        cursor moves and the senders learn what was delivered; then a session catching up
        reads its next window once everything sent is acknowledged. All or none: every
        entry is checked before any is applied.

        Raises:
            RemoteProtocolError: BAD_REQUEST for a position beyond what was delivered.
        """
        marks = session.streams
        for stream, position in acks:
            mark = marks.get(stream)
            if mark is None or position > mark.delivered:
                raise RemoteProtocolError(
                    ErrorCode.BAD_REQUEST, f"ack of {stream}:{position} is beyond what was delivered", request_id=rid
                )
        assert session.user is not None
        batch = self.batch
        for stream, position in acks:
            mark = marks[stream]
            if position <= mark.acked:
                continue  # an old ack (or a repeat): nothing moves
            mark.acked = position
            pending = mark.unacked
            mark.unacked = left = [p for p in pending if p > position]
            session.in_flight -= len(pending) - len(left)
            batch.cursors[(session.user, session.device, stream)] = position
            key = (stream, session.user)  # and so, for the senders: delivered
            batch.delivered[key] = max(batch.delivered.get(key, 0), position)
        self.maybe_fetch(session)

    def ask_history(self, session: Session, rid: int, stream: str, before: int, limit: int) -> None:
        """A History request, checked: it waits its turn behind the session's others.

        Raises:
            RemoteProtocolError: RATE_LIMITED past ``HISTORY_QUEUE`` waiting.
        """
        if len(session.histories) >= HISTORY_QUEUE:
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED, f"over {HISTORY_QUEUE} History requests wait already: read their answers",
                request_id=rid,
            )  # fmt: skip
        session.histories.append((rid, stream, before, limit))
        self.next_history(session)

    # ---- the store's answers ------------------------------------------------------------

    def batch_done(self, job_id: int, result: object, now: float = 0.0) -> tuple[Batch, BatchResult] | None:
        """A storage batch finished: receipts and deliveries, now that it is committed; then
        the classroom's notes, in order (``now``: for the seconds a hand has waited). None: it
        was not applied (the loop found the database busy) and went to the storage thread."""
        assert self._in_flight is not None and self._in_flight[0] == job_id, "one batch in flight"
        _, batch, senders = self._in_flight
        if isinstance(result, BatchResult) and result.busy:
            if job_id != self._retry:  # another process writes: the storage thread waits for it, not the loop
                self._wait_off_loop(batch, senders)
                return None
            result = BatchResult(error="the database stayed locked by another process")  # (waited already)
        self._in_flight = None
        self.polls_done += batch.poll_accounts
        if not isinstance(result, BatchResult):  # the store raised: a bug or a broken disk
            result = BatchResult(error=f"storage failed: {result!r}")
        if result.error:
            log.warning("%s (%d messages not stored)", result.error, len(senders))
        for i, ((conn, rid), stored) in enumerate(itertools.zip_longest(senders, result.stored)):
            session = self.sessions.get(conn)
            if stored is None:
                if session is not None:
                    self.out.error(session, ErrorCode.STORE_FAILED, "the message was not stored; send it again", rid)
            elif isinstance(stored, Refused):
                if session is None:
                    pass
                elif stored.why and self.roster is not None:  # a group rule, at the message's turn
                    self.roster.refused(session, rid, batch.messages[i], stored.why)
                else:
                    code = ErrorCode.BAD_REQUEST if stored.reused else ErrorCode.RESEND_TOO_OLD
                    self.out.error(session, code, stored.reason, rid)
            elif is_group(stored.stream):
                self._stored_in_group(session, rid, stored)
            else:
                self._stored(session, rid, stored)
        noters, self._noters_in_flight = self._noters_in_flight, []
        for (conn, rid), record in zip(noters, batch.notes, strict=True):
            session = self.sessions.get(conn)
            if result.error:
                if session is not None:
                    self.out.error(session, ErrorCode.STORE_FAILED, "it was not recorded; try again", rid)
            elif self.notebook is not None:
                self.notebook.noted(session, rid, record, now)
        keyers, self._keyers_in_flight = self._keyers_in_flight, []
        for conn, rid, then in keyers:
            session = self.sessions.get(conn)
            if result.error:
                if session is not None and rid:
                    self.out.error(session, ErrorCode.STORE_FAILED, "the key directory was not changed; try again", rid)
            elif then is not None:
                then(session)
        for key, found in result.fetched.items():
            if (session := self.sessions.get(self._fetchers.pop(key))) is not None:
                self._caught_up(session, found)
        for note in result.newly_delivered:  # acknowledged by a device of the recipient
            if is_group(note.stream):  # only to sessions that know groups, of a sender still a member
                if self.roster is not None and self.roster.is_member(note.sender, note.stream):
                    for sender in self.online.get(note.sender, ()):
                        if sender.groups:
                            self.delivered_receipt(sender, note)
                continue
            for sender in self.online.get(note.sender, ()):
                self.delivered_receipt(sender, note)
        for key, page in result.history.items():
            conn, rid, stream = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                for m in page:  # carrying the request id: history, not new mail (no ack)
                    self.out.write_encoded(session, _deliver_bytes(m, rid, session.minor))
                self.out.write(session, HistoryEnd(page[0].position if page else 0, len(page), stream, rid))
                session.reading_history = False
                self.next_history(session)
        if batch.history or batch.fetches:
            self._reads_failed(batch, result)
        if (job := self.store.maintenance()) is not None:  # a checkpoint: on the storage thread, no batch meanwhile
            self.maintaining = self.out.new_id()
            self.out.submit(self.maintaining, job, Lane.STORE)
        return batch, result

    def maintained(self) -> None:
        """The store's maintenance job finished (a failure is its own: logged by the job runner)."""
        self.maintaining = None

    def _wait_off_loop(self, batch: Batch, senders: list[tuple[ConnId, int]]) -> None:
        """The loop found the database locked: the same batch, as the same slot's job, goes to
        the storage thread, which waits for the lock (nothing of it was applied)."""
        self._retry = self.out.new_id()
        self._in_flight = (self._retry, batch, senders)
        self.out.submit(self._retry, functools.partial(self.store.apply, batch, True), Lane.STORE)

    def _reads_failed(self, batch: Batch, result: BatchResult) -> None:
        """The reads of a failed batch never ran: answer or release whoever waits for them."""
        for key in batch.history.keys() - result.history.keys():
            conn, rid, _ = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                self.out.error(session, ErrorCode.STORE_FAILED, "history could not be read; try again", rid)
                session.reading_history = False
                self.next_history(session)
        for key in {f.key for f in batch.fetches} - result.fetched.keys():
            if (session := self.sessions.get(self._fetchers.pop(key))) is not None:
                session.fetching = False  # the next ack or resume tries again

    def flush(self, now: float) -> None:
        """End of a loop pass: if no batch is in flight, submit what accumulated (group commit).
        A batch of acknowledgements only waits up to ``ack_delay`` for company: at a light,
        steady load that halves the commits (one per message, not one per message and ack)."""
        if now >= self._next_snapshot:
            self.snapshot = Snapshot(len(self.sessions), len(self.online), self.stored_count, self.delivered_count)
            self._next_snapshot = now + SNAPSHOT_EVERY
        if self._in_flight is not None or self.maintaining is not None:
            return
        if self._reads:
            self._take_reads(self.batch)
        if not self.batch:
            return  # nothing to store or read (or the reads were of connections gone meanwhile)
        if self.batch.can_wait() and not self.stopping:
            if self.acks_due is None:
                self.acks_due = now + self.config.ack_delay
            if now < self.acks_due:
                return  # the engine's next_deadline() brings a pass at acks_due
        self.acks_due = None
        job_id = self.out.new_id()
        batch, self.batch = self.batch, self._new_batch()
        self._in_flight = (job_id, batch, self._senders)
        self._senders = []
        self._noters_in_flight, self._noters = self._noters, []
        self._keyers_in_flight, self._keyers = self._keyers, []
        self._polls_submitted += batch.poll_accounts
        if self.store.on_loop and not batch.may_be_long():  # the loop applies it itself, never waiting
            self.out.submit(job_id, functools.partial(self.store.apply, batch, False), Lane.LOOP)
        else:
            self.out.submit(job_id, functools.partial(self.store.apply, batch), Lane.STORE)

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
                if is_group(read.page[0]) and session.user is not None:
                    batch.readers[read.key] = session.user  # a group page: only what this reader could read
                room -= 1
        self._reads.extendleft(reversed(waiting))

    def next_history(self, session: Session) -> None:
        """Read the session's next History page: one at a time, and only while its output is
        below the high-water mark; a page's bodies add up to at most ``page_bytes``, which the
        server sets to what its hard limit has room for above that mark (``check_limits``)."""
        if session.reading_history or session.paused or not session.histories or session.closing:
            return
        rid, stream, before, limit = session.histories.pop(0)
        key = self.out.new_id()
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
            self._receipt(sender, ReceiptState.STORED, m.message_id, m.time_us, m.position, m.stream, detail, rid)
        if m.duplicate:
            return  # a resend of a stored message: it was delivered (or is queued) already
        self.stored_count += 1
        encoded: dict[int, bytes] = {}  # minor -> the Deliver's bytes, encoded once for its sessions
        for session in (*recipients, *self.online.get(m.sender, ())) if m.sender != m.target else recipients:
            if not session.live or (session.user == m.sender and session.device == m.device):
                continue  # catching up (it will read this from the store), or the device that sent it
            if session.inflight() < self.config.window:
                self._deliver(session, m, encoded)
            else:  # a full window: it catches up from the store as it acknowledges
                session.live = False
        if log.isEnabledFor(logging.INFO):
            log.info("message %s -> %s, %d bytes, id %d", m.sender, m.target, len(m.body), m.message_id)

    def delivered_receipt(self, session: Session, note: DeliveredNote) -> None:
        """Tell ``session`` (a device of the sender) that ``note``'s message was delivered."""
        state = ReceiptState.DELIVERED
        self._receipt(session, state, note.message_id, note.time_us, note.position, note.stream, "", 0)
        key = (note.sender, session.device, note.stream)  # this device has been told
        self.batch.notified[key] = max(self.batch.notified.get(key, 0), note.position)

    def _receipt(
        self, session: Session, state: ReceiptState, message_id: int, time_us: int, position: int, stream: str,
        detail: str, rid: int,
    ) -> None:  # fmt: skip
        """Write a Receipt, encoded from its fields: no Receipt is made only to be encoded
        (but for a session that coalesces (1.5), whose outbox collects them)."""
        if session.coalescing:
            self.out.receipt(session, (state, rid, message_id, time_us, position, stream, detail))
            return
        values = (state, message_id, time_us, position, stream, detail)
        self.out.write_encoded(session, encode_fields(Receipt, values, rid, minor=session.minor))

    def _deliver(self, session: Session, m: StoredMessage, encoded: dict[int, bytes] | None = None) -> None:
        """Deliver ``m`` to ``session`` (``encoded``: minor -> its Deliver's bytes, shared by
        the sessions of one message, so it is encoded once for each minor)."""
        mark = session.streams.get(m.stream)
        if mark is not None and m.position <= mark.delivered:
            return  # already on its way to this session (a live delivery met a catch-up)
        if session.coalescing:  # its outbox collects the deliveries (1.5), and encodes them
            self.out.delivery(session, (m.target_kind, m.content_type, m.message_id, m.time_us, m.position, m.sender,
                                        m.target, m.stream, m.body))  # fmt: skip
        else:
            encoded = {} if encoded is None else encoded
            if (data := encoded.get(session.minor)) is None:
                data = encoded[session.minor] = _deliver_bytes(m, 0, session.minor)
            self.out.write_encoded(session, data)
        self.delivered_count += 1
        if mark is None:  # (made once the Deliver is written: a mark always holds a delivery)
            mark = session.streams[m.stream] = StreamMark()
        mark.delivered = m.position
        mark.unacked.append(m.position)
        session.in_flight += 1

    def maybe_fetch(self, session: Session) -> None:
        """Catch-up, paced: once everything delivered is acknowledged (so the stored cursor is
        where this session stands), ask the store for the next window of messages."""
        if session.live or session.fetching or session.paused or session.user is None or session.inflight():
            return
        key = self.out.new_id()
        session.fetching = True
        self._fetchers[key] = session.conn
        window, history = self.config.window, self.config.new_device_history
        self._reads.append(Fetch(key, session.user, session.device, window, history, session.groups))

    def _caught_up(self, session: Session, found: list[StoredMessage]) -> None:
        session.fetching = False
        for m in found:
            self._deliver(session, m)
        if len(found) < self.config.window and not session.paused:  # a full window: maybe more
            session.live = True  # nothing older is left: from now on, deliver as stored
        else:
            self.maybe_fetch(session)

    def _stored_in_group(self, sender: Session | None, rid: int, m: StoredMessage) -> None:
        """A group message is committed: the roster applies its change (an event) and answers
        it with GroupInfo; a post's sender gets its receipt; then the members' live sessions
        get the Deliver, encoded once per minor, the same bytes object for each session."""
        stored = ReceiptState.STORED
        if m.duplicate:  # a resend of a stored post: its receipt again, delivered already
            if sender is not None:
                self._receipt(sender, stored, m.message_id, m.time_us, m.position, m.stream, "", rid)
            return
        assert self.roster is not None  # a group message was stored: the engine has groups
        recipients = self.roster.committed(sender, rid, m)
        if m.stream == ANNOUNCEMENTS and m.content_type == ASKS_CONFIRMATION and self.notebook is not None:
            self.notebook.announced(m.position)
        if m.change is None and sender is not None:
            self._receipt(sender, stored, m.message_id, m.time_us, m.position, m.stream, "", rid)
        self.stored_count += 1
        window = self.config.window
        encoded: dict[int, bytes] = {}  # minor -> the Deliver's bytes (one minor until 1.5 appends fields)
        for session in recipients:
            if not session.live or (session.user == m.sender and session.device == m.device):
                continue  # catching up (it reads this from the store), or the device that sent it
            if session.in_flight >= window:
                session.live = False  # a full window: it catches up from the store as it acknowledges
                continue
            mark = session.streams.get(m.stream)
            if mark is not None and m.position <= mark.delivered:
                continue  # already on its way (a live delivery met a catch-up)
            data = encoded.get(session.minor)
            if data is None:
                data = encoded[session.minor] = _deliver_bytes(m, 0, session.minor)
            self.out.write_encoded(session, data)
            self.delivered_count += 1
            if mark is None:
                mark = session.streams[m.stream] = StreamMark()
            mark.delivered = m.position
            mark.unacked.append(m.position)
            session.in_flight += 1
        if log.isEnabledFor(logging.INFO):
            log.info("message %s -> %s (%s), %d bytes, id %d", m.sender, m.target, m.stream, len(m.body), m.message_id)

    def _new_batch(self) -> Batch:
        return Batch(max_group_members=self.config.max_group_members)

    def polls_due(self) -> int:
        """The number of the next accounts poll to be submitted (the current batch's)."""
        return self._polls_submitted + 1


def _deliver_bytes(m: StoredMessage, request_id: int, minor: int) -> bytes:
    """A stored message's Deliver, encoded from its fields (no Deliver is made)."""
    values = (m.target_kind, m.content_type, m.message_id, m.time_us, m.position, m.sender, m.target, m.stream)
    return encode_fields(Deliver, values, request_id, m.body, minor)
