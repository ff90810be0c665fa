"""The chat server's whole behaviour, as a state machine with no I/O.

A backend tells the engine what happened (a connection opened, bytes arrived, a
connection closed, time passed) and the engine answers with actions (bytes to
write to which connection, connections to close). It never touches a socket or a
clock: time comes in as ``now`` (monotonic seconds) and wall time for humans is
``now + wall_offset``. So the same engine runs under every backend, and the tests
drive it directly with a fixed clock.

Each connection has a session that moves through three states::

    AWAIT_HELLO --Hello--> AWAIT_LOGIN --Login--> READY
         (the Welcome is sent on connect; Ping is allowed in every state)

``TRANSITIONS`` below is the whole table of what a client may send in each state;
anything missing from it is refused with an error (``_refusal``), and the
connection stays open unless framing itself is lost.

Store and forward. A Send is not answered at once: it joins the loop pass's
storage ``Batch``. At ``flush`` (the end of the pass) the engine hands the batch to
the backend as one job in the ``store`` lane, at most one in flight (group commit).
In ``job_done``, with the batch committed, the sender gets a ``Receipt`` (STORED)
and a live recipient a ``Deliver`` stamped with sender, time, message id, and its
place in the conversation's stream (``dm:alice,bob``), which the recipient
acknowledges with a cumulative ``Ack``. A recipient who is offline, slow (a full
window, or output backed up), or just logged in is "catching up": the engine asks
the store for the next window of messages after the device's cursor each time all
it delivered is acknowledged. An unknown recipient gets an error; nothing is
dropped silently.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import (
    VERSION_MAJOR,
    VERSION_MINOR,
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Feature,
    FrameDecoder,
    Hello,
    History,
    HistoryEnd,
    Login,
    LoginOk,
    Message,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    Receipt,
    ReceiptState,
    RemoteProtocolError,
    Send,
    TargetKind,
    Welcome,
    Who,
    WhoReply,
    decode,
    encode,
)
from ..store import Batch, BatchResult, DeliveredNote, Fetch, NewMessage, Store, StoredMessage
from .actions import Action, Close, ConnId, Submit, Write
from .config import HubConfig

log = logging.getLogger("csce513msg.hub")

#: User names: 1-32 characters, letters, digits, "_", "." and "-", not starting with
#: "." or "-". Names are case-insensitive: the hub folds them to lower case.
HISTORY_PAGE = 100  #: the most messages one History request returns
NAME_RULE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,31}")


class State(enum.Enum):
    """Where a session is in the handshake."""

    AWAIT_HELLO = "await-hello"
    AWAIT_LOGIN = "await-login"
    READY = "ready"


@dataclass(slots=True, eq=False)
class Session:
    """What the hub knows of one connection."""

    conn: ConnId
    peer: str
    decoder: FrameDecoder
    last_seen: float  #: monotonic time of the last bytes received
    tokens: float  #: rate limiter: requests this connection may still send now
    last_token: float  #: when ``tokens`` was last topped up
    state: State = State.AWAIT_HELLO
    user: str | None = None
    presence: bool = False  #: subscribed to presence events
    paused: bool = False  #: the backend's outbound queue is past its high-water mark
    closing: bool = False  #: a Close was issued; ignore further input
    device: str = ""  #: the client's device id ("" : one anonymous device per user)
    live: bool = False  #: caught up: new messages are delivered as they are stored
    fetching: bool = False  #: a catch-up read is queued or in flight
    acked: dict[str, int] = field(default_factory=dict)  #: stream -> acknowledged position
    delivered: dict[str, int] = field(default_factory=dict)  #: stream -> last delivered
    unacked: dict[str, list[int]] = field(default_factory=dict)  #: stream -> positions delivered, not acked

    def inflight(self) -> int:
        """Deliveries sent and not yet acknowledged: the window counts these."""
        return sum(len(p) for p in self.unacked.values())


Handler = Callable[..., None]  # (engine, session, message, now)


def direct_stream(a: str, b: str) -> str:
    """Return the stream name of the direct conversation between users a and b."""
    return "dm:" + ",".join(sorted((a, b)))


class Engine:
    """The pure chat core behind the engine contract (see shared/STYLE.md).

    Args:
        store: keeps stream positions and assigns message ids.
        config: the hub's limits.
        wall_offset: ``time.time() - time.monotonic()``, measured once at start.
    """

    def __init__(
        self, store: Store, config: HubConfig, wall_offset: float, known_users: set[str] | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.wall_offset = wall_offset
        self.sessions: dict[ConnId, Session] = {}
        self.online: dict[str, Session] = {}  # user -> their session
        self.known_users: set[str] = set(known_users or ())  # from the store, plus new logins
        self.subscribers: set[Session] = set()  # sessions that asked for presence
        self._batch = Batch()  # what the store must do next: one job per loop pass
        self._senders: list[tuple[ConnId, int]] = []  # (conn, request id) of each batch message
        self._fetchers: dict[int, tuple[ConnId, int]] = {}  # fetch key -> (session, limit asked)
        self._receipt_waiters: dict[int, ConnId] = {}  # receipt fetch key -> the session logging in
        self._history_waiters: dict[int, tuple[ConnId, int, str]] = {}  # key -> (session, request id, stream)
        #: the batch the store is working on: (job id, the batch, (conn, request id) of its messages)
        self._in_flight: tuple[int, Batch, list[tuple[ConnId, int]]] | None = None
        self._ids = itertools.count(1)
        self._out: list[Action] = []
        self._next_sweep: float | None = None
        self._welcome = encode(
            Welcome(
                VERSION_MAJOR,
                VERSION_MINOR,
                config.max_frame,
                config.max_text,
                config.window,
                int(config.idle_timeout * 1000),
                (Feature.PRESENCE.value,),
                config.server_name,
            )
        )

    # ---- the engine contract ---------------------------------------------------

    def connection_made(self, conn: ConnId, peer: str, now: float) -> list[Action]:
        """A connection was accepted: greet it with the Welcome (the handshake)."""
        session = Session(conn, peer, FrameDecoder(self.config.max_frame), now, float(self.config.burst), now)
        self.sessions[conn] = session
        log.info("connect #%d from %s", conn, peer)
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_interval()
        return [Write(conn, self._welcome)]

    def data_received(self, conn: ConnId, data: bytes, now: float) -> list[Action]:
        """Bytes arrived: decode the frames and answer each request."""
        session = self.sessions[conn]
        if session.closing:
            return []
        session.last_seen = now
        try:
            for frame in session.decoder.feed(data):
                try:
                    self._dispatch(session, decode(frame), now)
                except RemoteProtocolError as exc:
                    self._refuse(session, exc)
                if session.closing:
                    break
        except RemoteProtocolError as exc:  # the stream itself is broken
            self._refuse(session, exc)
        return self._take()

    def connection_lost(self, conn: ConnId, now: float) -> list[Action]:
        """The connection is gone (closed, reset, aborted): forget it, tell subscribers."""
        session = self.sessions.pop(conn)
        self.subscribers.discard(session)
        if session.user is not None and self.online.get(session.user) is session:
            del self.online[session.user]
            log.info("logout %s (#%d)", session.user, conn)
            self._broadcast_presence(session.user, 0, now)
        log.info("disconnect #%d", conn)
        return self._take()

    def pause_writing(self, conn: ConnId, now: float) -> list[Action]:
        """The outbound queue passed its high-water mark: stop live delivery, so a
        recipient who does not read is paced (it catches up later), not aborted."""
        session = self.sessions[conn]
        session.paused = True
        session.live = False
        return []

    def resume_writing(self, conn: ConnId, now: float) -> list[Action]:
        """The outbound queue drained below its low-water mark: catch up again."""
        session = self.sessions[conn]
        session.paused = False
        self._maybe_fetch(session)
        return []

    def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
        """A storage batch finished: receipts and deliveries, now that it is committed."""
        assert self._in_flight is not None and self._in_flight[0] == job_id, "one batch in flight"
        _, batch, senders = self._in_flight
        self._in_flight = None
        if not isinstance(result, BatchResult):  # the store raised: a bug or a broken disk
            result = BatchResult(error=f"storage failed: {result!r}")
        if result.error:
            log.warning("%s (%d messages not stored)", result.error, len(senders))
        for (conn, rid), stored in itertools.zip_longest(senders, result.stored):
            session = self.sessions.get(conn)
            if stored is None:
                if session is not None:
                    self._error(session, ErrorCode.STORE_FAILED, "the message was not stored; send it again", rid)
            else:
                self._stored(session, rid, stored)
        for key, found in result.fetched.items():
            conn, limit = self._fetchers.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                self._caught_up(session, found, limit)
        for note in result.newly_delivered:  # acknowledged by a device of the recipient
            if (sender := self.online.get(note.sender)) is not None:
                self._delivered_receipt(sender, note)
        for key, notes in result.receipts.items():  # for a device that was away
            if (session := self.sessions.get(self._receipt_waiters.pop(key))) is not None:
                for note in notes:
                    self._delivered_receipt(session, note)
        for key, page in result.history.items():
            conn, rid, stream = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                for m in page:  # carrying the request id: history, not new mail (no ack)
                    self._write(session, _deliver_of(m, rid))
                self._write(session, HistoryEnd(page[0].position if page else 0, len(page), stream, rid))
        self._reads_failed(batch, result)
        return self._take()

    def _reads_failed(self, batch: Batch, result: BatchResult) -> None:
        """The reads of a failed batch never ran: answer or release whoever waits for them."""
        for key in batch.history.keys() - result.history.keys():
            conn, rid, _ = self._history_waiters.pop(key)
            if (session := self.sessions.get(conn)) is not None:
                self._error(session, ErrorCode.STORE_FAILED, "history could not be read; try again", rid)
        for fetch in batch.fetches:
            if fetch.key not in result.fetched:
                conn, _ = self._fetchers.pop(fetch.key)
                if (session := self.sessions.get(conn)) is not None:
                    session.fetching = False  # the next ack or resume tries again
        for key in batch.receipt_fetches.keys() - result.receipts.keys():
            self._receipt_waiters.pop(key)

    def flush(self, now: float) -> list[Action]:
        """End of a loop pass: if no batch is in flight, submit what accumulated (group commit)."""
        if self._in_flight is not None or not self._batch:
            return []
        job_id = next(self._ids)
        batch, self._batch = self._batch, Batch()
        self._in_flight = (job_id, batch, self._senders)
        self._senders = []
        return [Submit(job_id, functools.partial(self.store.apply, batch), "store")]

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next run (monotonic seconds), or None."""
        return self._next_sweep

    def handle_timer(self, now: float) -> list[Action]:
        """Close connections silent for longer than the idle timeout."""
        if self._next_sweep is None or now < self._next_sweep:
            return []
        limit = now - self.config.idle_timeout
        for session in list(self.sessions.values()):
            if session.last_seen < limit and not session.closing:
                log.info("idle timeout #%d (%s)", session.conn, session.user or session.peer)
                self._error(session, ErrorCode.IDLE_TIMEOUT, "no data for the idle timeout", 0)
                self._close(session, "idle timeout")  # a vanished peer never drains: the close timeout aborts it
        self._next_sweep = now + self._sweep_interval() if self.sessions else None
        return self._take()

    def shutdown(self, now: float) -> list[Action]:
        """The server is stopping: say goodbye to everyone, then close."""
        for session in self.sessions.values():
            if not session.closing:
                self._error(session, ErrorCode.SHUTTING_DOWN, "the server is shutting down", 0)
                self._close(session, "shutdown")
        return self._take()

    def server_full(self) -> bytes:
        """The bytes for a connection the backend cannot take (it then closes it)."""
        return encode(Error(ErrorCode.SERVER_FULL, "server full: no room for another connection"))

    # ---- requests ---------------------------------------------------------------

    def _dispatch(self, session: Session, msg: Message, now: float) -> None:
        rule = TRANSITIONS.get((session.state, type(msg)))
        if rule is None:
            raise _refusal(session.state, msg)
        if not self._take_token(session, now):
            raise RemoteProtocolError(ErrorCode.RATE_LIMITED, "too many requests: slow down", request_id=msg.request_id)
        handler, next_state = rule
        handler(self, session, msg, now)  # raises RemoteProtocolError to refuse: the state stays
        session.state = next_state

    def _on_hello(self, session: Session, msg: Hello, now: float) -> None:
        if msg.version_major != VERSION_MAJOR:
            raise RemoteProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"server speaks protocol {VERSION_MAJOR}.x, client {msg.version_major}.{msg.version_minor}",
                request_id=msg.request_id,
                fatal=True,
            )
        session.presence = Feature.PRESENCE.value in msg.features

    def _on_login(self, session: Session, msg: Login, now: float) -> None:
        user = msg.user.lower()
        if not NAME_RULE.fullmatch(user):
            raise RemoteProtocolError(
                ErrorCode.INVALID_NAME,
                f"invalid name {msg.user!r}: use 1-32 letters, digits, '_', '.', '-'",
                request_id=msg.request_id,
            )
        if user in self.online:
            log.info("refused login %s (#%d): name taken", user, session.conn)
            raise RemoteProtocolError(ErrorCode.NAME_TAKEN, f"{user} is online already", request_id=msg.request_id)
        session.user = user
        session.device = msg.device_id
        self.online[user] = session
        self._batch.devices.append((user, msg.device_id))  # its first login marks where it starts
        if user not in self.known_users:  # without accounts, a first login makes the user
            self.known_users.add(user)
            self._batch.users.append((user, self._wall_us(now)))
        log.info("login %s (#%d from %s)", user, session.conn, session.peer)
        self._write(session, LoginOk(self._wall_us(now), user, msg.request_id))
        self._broadcast_presence(user, 1, now, skip=session)
        if session.presence:
            self.subscribers.add(session)
        self._maybe_fetch(session)  # what arrived while this device was away
        key = next(self._ids)  # and the delivered receipts it missed
        self._receipt_waiters[key] = session.conn
        self._batch.receipt_fetches[key] = (user, msg.device_id)

    def _on_send(self, session: Session, msg: Send, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "only user targets exist in v1", request_id=rid)
        if len(msg.body) > self.config.max_text:
            raise RemoteProtocolError(
                ErrorCode.TEXT_TOO_LONG,
                f"message of {len(msg.body)} bytes is over the limit of {self.config.max_text}",
                request_id=rid,
            )
        target = msg.target.lower()
        if target not in self.known_users:
            raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {target!r}", request_id=rid)
        sender = session.user
        assert sender is not None  # READY implies a user
        members = tuple(sorted({sender, target}))
        stream = direct_stream(sender, target)
        wall_us = self._wall_us(now)
        new = NewMessage(stream, members, sender, session.device, msg.client_msg_id, TargetKind.USER, target,
                         msg.content_type, wall_us, msg.body)  # fmt: skip
        self._batch.messages.append(new)
        self._senders.append((session.conn, rid))  # the receipt waits for the commit

    def _on_ack(self, session: Session, msg: Ack, now: float) -> None:
        delivered = session.delivered.get(msg.stream)
        if delivered is None or msg.position > delivered:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST,
                f"ack of {msg.stream}:{msg.position} is beyond what was delivered",
                request_id=msg.request_id,
            )
        if msg.position > session.acked.get(msg.stream, 0):
            session.acked[msg.stream] = msg.position
            pending = session.unacked.get(msg.stream, [])
            session.unacked[msg.stream] = [p for p in pending if p > msg.position]
            assert session.user is not None
            self._batch.cursors[(session.user, session.device, msg.stream)] = msg.position
            key = (msg.stream, session.user)  # and so, for the senders: delivered
            self._batch.delivered[key] = max(self._batch.delivered.get(key, 0), msg.position)
        self._maybe_fetch(session)

    # ---- store and forward ----------------------------------------------------------

    def _stored(self, sender: Session | None, rid: int, m: StoredMessage) -> None:
        """A message is committed: receipt to its sender, delivery to live recipients."""
        recipient = self.online.get(m.target)
        if sender is not None:
            detail = "" if recipient is not None else f"{m.target} is offline"
            self._write(
                sender, Receipt(ReceiptState.STORED, m.message_id, m.time_us, m.position, m.stream, detail, rid)
            )
        if m.duplicate:
            return  # a resend of a stored message: it was delivered (or is queued) already
        if recipient is not None and recipient.live:
            if recipient.inflight() < self.config.window:
                self._deliver(recipient, m)
            else:  # a full window: it catches up from the store as it acknowledges
                recipient.live = False
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
        session.delivered[m.stream] = m.position
        session.unacked.setdefault(m.stream, []).append(m.position)

    def _maybe_fetch(self, session: Session) -> None:
        """Catch-up, paced: once everything delivered is acknowledged (so the stored cursor is
        where this session stands), ask the store for the next window of messages."""
        room = self.config.window
        if session.live or session.fetching or session.paused or session.user is None or session.inflight():
            return
        key = next(self._ids)
        session.fetching = True
        self._fetchers[key] = (session.conn, room)
        self._batch.fetches.append(Fetch(key, session.user, session.device, room, self.config.new_device_history))

    def _caught_up(self, session: Session, found: list[StoredMessage] | None, limit: int) -> None:
        session.fetching = False
        if found is None:
            return  # the read failed; the next ack or resume tries again
        for m in found:
            self._deliver(session, m)
        if len(found) < limit and not session.paused:
            session.live = True  # nothing older is left: from now on, deliver as stored
        else:
            self._maybe_fetch(session)

    def _on_history(self, session: Session, msg: History, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "only user targets exist in v1", request_id=rid)
        target = msg.target.lower()
        if target not in self.known_users:
            raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {target!r}", request_id=rid)
        assert session.user is not None
        stream = direct_stream(session.user, target)
        key = next(self._ids)
        self._history_waiters[key] = (session.conn, rid, stream)
        self._batch.history[key] = (stream, msg.before, max(1, min(msg.limit, HISTORY_PAGE)))

    def _on_who(self, session: Session, msg: Who, now: float) -> None:
        self._write(session, WhoReply(tuple(sorted(self.online)), msg.request_id))

    def _on_ping(self, session: Session, msg: Ping, now: float) -> None:
        self._write(session, Pong(msg.body, msg.request_id))

    # ---- helpers ------------------------------------------------------------------

    def _broadcast_presence(self, user: str, online: int, now: float, skip: Session | None = None) -> None:
        if not self.subscribers:
            return
        data = encode(Presence(online, self._wall_us(now), user))
        for sub in self.subscribers:
            if sub is not skip and not sub.closing:
                self._out.append(Write(sub.conn, data))

    def _refuse(self, session: Session, exc: RemoteProtocolError) -> None:
        log.info("refused #%d (%s): %s %s", session.conn, session.user or session.peer, exc.code.name, exc)
        self._error(session, exc.code, exc.message, exc.request_id)
        if exc.fatal:
            self._close(session, exc.code.name.lower())

    def _error(self, session: Session, code: ErrorCode, message: str, request_id: int) -> None:
        self._write(session, Error(code, message, request_id))

    def _close(self, session: Session, reason: str) -> None:
        session.closing = True
        self._out.append(Close(session.conn, reason))

    def _write(self, session: Session, msg: Message) -> None:
        if session.closing:
            return  # e.g. a receipt whose commit came after the connection was told to close
        self._out.append(Write(session.conn, encode(msg)))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _take_token(self, session: Session, now: float) -> bool:
        """Token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""
        cfg = self.config
        session.tokens = min(float(cfg.burst), session.tokens + (now - session.last_token) * cfg.rate)
        session.last_token = now
        if session.tokens < 1.0:
            return False
        session.tokens -= 1.0
        return True

    def _sweep_interval(self) -> float:
        return min(1.0, max(0.05, self.config.idle_timeout / 4))

    def _wall_us(self, now: float) -> int:
        return int((now + self.wall_offset) * 1_000_000)


def _deliver_of(m: StoredMessage, request_id: int) -> Deliver:
    return Deliver(m.target_kind, m.content_type, m.message_id, m.time_us, m.position, m.sender, m.target,
                   m.stream, m.body, request_id)  # fmt: skip


def _refusal(state: State, msg: Message) -> ProtocolError:
    """The error for a message that ``TRANSITIONS`` does not allow in ``state``."""
    rid = msg.request_id
    name = type(msg).__name__
    if msg.TYPE >= 0x80:  # type: ignore[union-attr]
        return RemoteProtocolError(ErrorCode.UNSUPPORTED, f"{name} is not a request", request_id=rid)
    if state is State.AWAIT_HELLO:
        return RemoteProtocolError(ErrorCode.BAD_STATE, f"send Hello before {name}", request_id=rid)
    if isinstance(msg, Login):
        return RemoteProtocolError(ErrorCode.ALREADY_LOGGED_IN, "this connection is logged in", request_id=rid)
    if state is State.AWAIT_LOGIN and not isinstance(msg, Hello):
        return RemoteProtocolError(ErrorCode.NOT_LOGGED_IN, f"log in before {name}", request_id=rid)
    return RemoteProtocolError(ErrorCode.BAD_STATE, f"{name} is not allowed now", request_id=rid)


#: What a client may send in each state: who handles it, and the state after it
#: succeeds. Anything else is refused by ``_refusal`` with an error naming the
#: request. docs/protocol.md draws this table (``python -m csce513msg.hub.diagram``).
TRANSITIONS: dict[tuple[State, type], tuple[Handler, State]] = {
    (State.AWAIT_HELLO, Hello): (Engine._on_hello, State.AWAIT_LOGIN),
    (State.AWAIT_HELLO, Ping): (Engine._on_ping, State.AWAIT_HELLO),
    (State.AWAIT_LOGIN, Login): (Engine._on_login, State.READY),
    (State.AWAIT_LOGIN, Ping): (Engine._on_ping, State.AWAIT_LOGIN),
    (State.READY, Send): (Engine._on_send, State.READY),
    (State.READY, Ack): (Engine._on_ack, State.READY),
    (State.READY, Who): (Engine._on_who, State.READY),
    (State.READY, History): (Engine._on_history, State.READY),
    (State.READY, Ping): (Engine._on_ping, State.READY),
}
