"""The chat server's whole behaviour, as a state machine with no I/O.

A backend tells the engine what happened (a connection opened, bytes arrived, a
connection closed, time passed) and the engine answers with actions (bytes to
write to which connection, connections to close). It never touches a socket or a
clock: time comes in as ``now`` (monotonic seconds) and wall time for humans is
``now + wall_offset``. So the same engine runs under every backend, and the tests
drive it directly with a fixed clock.

Each connection has a session that moves through these states::

    AWAIT_HELLO --Hello--> AWAIT_LOGIN --Login/Register--> AUTHENTICATING --LoginAccepted--> READY
         (the Welcome is sent on connect; Ping is allowed before the login; while
          AUTHENTICATING every request is held; LoginRefused goes back to AWAIT_LOGIN)

``TRANSITIONS`` below is the whole table: what a client may send in each state, and
the login's answers; ``_move`` is the one place a state changes. A request missing
from it is refused with an error (``_refusal``), and the connection stays open unless
framing itself is lost.

Logging in and registering (the password hash runs in the ``hash`` lane) are in
``gate.py``; store and forward (receipts after the commit, offline catch-up,
delivered receipts, history) in ``delivery.py``; session state in ``session.py``.
"""

from __future__ import annotations

import logging

from ..protocol import (
    PRE_LOGIN_MAX_FRAME,
    VERSION_MAJOR,
    VERSION_MINOR,
    Ack,
    Error,
    ErrorCode,
    Feature,
    FrameDecoder,
    Hello,
    History,
    Login,
    Message,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    Register,
    RemoteProtocolError,
    Send,
    TargetKind,
    Welcome,
    Who,
    WhoReply,
    decode,
    encode,
)
from ..store import Account, DeviceToken, NewMessage, Store
from .actions import Action, Close, ConnId, Write
from .config import HubConfig, Visibility
from .delivery import HISTORY_QUEUE, Mailroom
from .gate import Gate, Passwords
from .session import AnyRequest, Handler, LoginAccepted, LoginRefused, Session, State, direct_stream

log = logging.getLogger("csce513msg.hub")

EXPIRY_INTERVAL = 600.0  #: seconds between deletions of messages past the retention period


class Engine(Gate, Mailroom):
    """The pure chat core behind the engine contract (see shared/STYLE.md).

    Args:
        store: keeps accounts, streams and cursors.
        config: the hub's limits.
        wall_offset: ``time.time() - time.monotonic()``, measured once at start.
        passwords: hashes and checks passwords (run in the ``hash`` lane, never here).
        accounts: every account, from ``store.load_accounts()``.
        tokens: the device tokens in force, by digest, from ``store.load_device_tokens()``.
    """

    def __init__(
        self, store: Store, config: HubConfig, wall_offset: float, passwords: Passwords,
        accounts: dict[str, Account] | None = None, tokens: dict[str, DeviceToken] | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.config = config
        self.wall_offset = wall_offset
        self.sessions: dict[ConnId, Session] = {}
        self.online: dict[str, list[Session]] = {}  # user -> their logged-in sessions
        self.subscribers: set[Session] = set()  # sessions that asked for presence
        Mailroom.__init__(self)  # the storage batch and the output
        Gate.__init__(self, passwords, dict(accounts or {}), dict(tokens or {}))  # logins, accounts, device tokens
        self._shown_role: dict[str, str] = {}  # user online -> its role when presence announced it
        self._next_sweep: float | None = None
        self._next_poll: float | None = None  # when to ask the store for accounts changed by an admin
        self._next_expiry = 0.0  # when to delete messages past the retention period next
        self._pre_login_frame = min(PRE_LOGIN_MAX_FRAME, config.max_frame)
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
        decoder = FrameDecoder(self._pre_login_frame)  # the Welcome's max_frame from the Login on
        session = Session(conn, peer, decoder, now, now, float(self.config.burst), now)
        self.sessions[conn] = session
        log.info("connect #%d from %s", conn, peer)
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_interval()
        if self._next_poll is None:  # accounts may have changed while nobody was connected: look now
            self._batch.poll_accounts = True
            self._next_poll = now + self.config.account_poll
        return [Write(conn, self._welcome)]

    def data_received(self, conn: ConnId, data: bytes, now: float) -> list[Action]:
        """Bytes arrived: decode the frames and answer each request."""
        session = self.sessions[conn]
        if session.closing:
            return []
        session.last_seen = now
        complete = False
        try:
            for frame in session.decoder.feed(data):
                complete = True
                try:
                    self._dispatch(session, decode(frame), now)
                except RemoteProtocolError as exc:
                    self._refuse(session, exc)
                if session.closing:
                    break
        except RemoteProtocolError as exc:  # the stream itself is broken
            self._refuse(session, exc)
        if not session.decoder.buffered:
            session.partial_since = None
        elif complete or session.partial_since is None:  # a new frame began in these bytes
            session.partial_since = now
        return self._take()

    def connection_lost(self, conn: ConnId, now: float) -> list[Action]:
        """The connection is gone (closed, reset, aborted): forget it, tell subscribers."""
        session = self.sessions.pop(conn)
        self.subscribers.discard(session)
        self._login_gone(conn)
        sessions = self.online.get(session.user or "", [])
        if session in sessions:
            sessions.remove(session)
            log.info("logout %s (#%d), %d sessions left", session.user, conn, len(sessions))
            if not sessions:
                del self.online[session.user]  # type: ignore[arg-type]
                self._broadcast_presence(session.user, 0, now)  # type: ignore[arg-type]
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
        self._next_history(session)
        return []

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next run (monotonic seconds), or None."""
        deadlines = [d for d in (self._next_sweep, self._next_poll, self._acks_due) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        """Close connections silent for longer than the idle timeout; poll for account changes."""
        if self._next_poll is not None and now >= self._next_poll:
            self._batch.poll_accounts = True
            if now >= self._next_expiry:  # retention, at most every 10 min
                if self.config.retention_days:
                    self._batch.expire_before_us = self._wall_us(now - self.config.retention_days * 86400)
                self._batch.expire_tokens_before_us = self._expire_tokens(now)
                self._next_expiry = now + EXPIRY_INTERVAL
            self._next_poll = now + self.config.account_poll if self.sessions else None
            for throttle in (self.account_throttle, self.address_throttle, self.token_throttle):
                throttle.sweep(now)
            self.registrations.sweep(now)
        if self._next_sweep is None or now < self._next_sweep:
            return self._take()
        for session in list(self.sessions.values()):
            if not session.closing and (overdue := self._overdue(session, now)):
                reason, message = overdue
                log.info("%s #%d (%s)", reason, session.conn, session.user or session.peer)
                self._error(session, ErrorCode.IDLE_TIMEOUT, message, 0)
                self._close(session, reason)  # a vanished peer never drains: the close timeout aborts it
        self._next_sweep = now + self._sweep_interval() if self.sessions else None
        return self._take()

    def shutdown(self, now: float) -> list[Action]:
        """The server is stopping: say goodbye to everyone, then close. From now on a batch
        never waits (``ack_delay``): the backend stops once the last one is committed."""
        self.stopping = True
        for session in self.sessions.values():
            if not session.closing:
                self._error(session, ErrorCode.SHUTTING_DOWN, "the server is shutting down", 0)
                self._close(session, "shutdown")
        return self._take()

    def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
        """A job finished: a password hash (``gate.py``) or a storage batch (``delivery.py``)."""
        if job_id in self._checking:
            self._hash_done(job_id, result, now)
            self._admit(now)  # a slot is free (after the answer: a good login clears its account's count)
        else:
            batch, stored = self._batch_done(job_id, result)
            self._logins_done(batch, stored, now)
            self._accounts_changed(stored.accounts, now)
            self._admit(now)  # logins that waited for this batch's news of accounts
        return self._take()

    def server_full(self) -> bytes:
        """The bytes for a connection the backend cannot take (it then closes it)."""
        return encode(Error(ErrorCode.SERVER_FULL, "server full: no room for another connection"))

    # ---- requests ---------------------------------------------------------------

    def _dispatch(self, session: Session, msg: Message, now: float, charged: bool = False) -> None:
        """Handle one request (``charged``: its rate token was taken when it was held)."""
        if not charged and not self._take_token(session, now):  # every request, refused ones too
            raise RemoteProtocolError(ErrorCode.RATE_LIMITED, "too many requests: slow down", request_id=msg.request_id)
        event: type = type(msg)
        if (session.state, event) not in TRANSITIONS:
            event = AnyRequest  # (only AUTHENTICATING takes any request: it holds them)
        handler, _ = TRANSITIONS.get((session.state, event), (None, session.state))
        if handler is None:
            raise _refusal(session.state, msg)
        handler(self, session, msg, now)  # raises RemoteProtocolError to refuse: the state stays
        self._move(session, event)

    def _move(self, session: Session, event: type) -> None:
        """The one place a session changes state: as ``TRANSITIONS`` says for ``event`` (a
        request's type, or a login's answer). A pair missing from the table is a bug."""
        session.state = TRANSITIONS[(session.state, event)][1]

    def _on_hello(self, session: Session, msg: Hello, now: float) -> None:
        if msg.version_major != VERSION_MAJOR:
            raise RemoteProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"server speaks protocol {VERSION_MAJOR}.x, client {msg.version_major}.{msg.version_minor}",
                request_id=msg.request_id,
                fatal=True,
            )
        session.presence = Feature.PRESENCE.value in msg.features
        session.minor = msg.version_minor  # what it is sent: the frames and fields of its version

    def _on_send(self, session: Session, msg: Send, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "only user targets exist before 1.4", request_id=rid)
        if len(msg.body) > self.config.max_text:
            raise RemoteProtocolError(
                ErrorCode.TEXT_TOO_LONG,
                f"message of {len(msg.body)} bytes is over the limit of {self.config.max_text}",
                request_id=rid,
            )
        target = self._valid_name(msg.target, rid)  # a malformed name is INVALID_NAME, not "no user"
        if target not in self.accounts:
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
            left = [p for p in pending if p > msg.position]
            session.unacked[msg.stream] = left
            session.in_flight -= len(pending) - len(left)
            assert session.user is not None
            self._batch.cursors[(session.user, session.device, msg.stream)] = msg.position
            key = (msg.stream, session.user)  # and so, for the senders: delivered
            self._batch.delivered[key] = max(self._batch.delivered.get(key, 0), msg.position)
        self._maybe_fetch(session)

    def _on_history(self, session: Session, msg: History, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "only user targets exist before 1.4", request_id=rid)
        target = self._valid_name(msg.target, rid)
        if target not in self.accounts:
            raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {target!r}", request_id=rid)
        assert session.user is not None
        if len(session.histories) >= HISTORY_QUEUE:
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED, f"over {HISTORY_QUEUE} History requests wait already: read their answers",
                request_id=rid,
            )  # fmt: skip
        session.histories.append((rid, direct_stream(session.user, target), msg.before, msg.limit))
        self._next_history(session)

    def _on_who(self, session: Session, msg: Who, now: float) -> None:
        users = sorted(u for u in self.online if self._sees(session, u))
        counts = tuple(len(self.online[u]) for u in users)
        roles = tuple(self.accounts[u].role if u in self.accounts else "" for u in users)
        self._write(session, WhoReply(tuple(users), counts, roles, msg.request_id))

    def _on_ping(self, session: Session, msg: Ping, now: float) -> None:
        self._write(session, Pong(msg.body, msg.request_id))

    # ---- helpers ------------------------------------------------------------------

    def _broadcast_presence(self, user: str, online: int, now: float, skip: Session | None = None) -> None:
        # who heard that ``user`` came online hears that it left, whatever its role is by then
        role = self._shown_role.pop(user, None) if not online else _role(self.accounts, user)
        if online:
            self._shown_role[user] = role or ""
        if not self.subscribers:
            return
        data = encode(Presence(online, self._wall_us(now), user))
        for sub in self.subscribers:
            if sub is not skip and not sub.closing and self._sees(sub, user, role):
                self._out.append(Write(sub.conn, data))

    def _sees(self, session: Session | None, user: str, role: str | None = None) -> bool:
        """Whether ``session`` may see that ``user`` is online (``--visibility``); ``role``:
        the role ``user`` had when it came online, if not its role now."""
        if self.config.visibility is Visibility.CLASS or session is None or user == session.user:
            return True
        role = _role(self.accounts, user) if role is None else role
        return role == "instructor" or _role(self.accounts, session.user) == "instructor"

    def _refuse(self, session: Session, exc: RemoteProtocolError) -> None:
        log.info("refused #%d (%s): %s %s", session.conn, session.user or session.peer, exc.code.name, exc)
        self._error(session, exc.code, exc.message, exc.request_id)
        if exc.fatal:
            self._close(session, exc.code.name.lower())

    def _close(self, session: Session, reason: str) -> None:
        session.closing = True
        self._out.append(Close(session.conn, reason))

    def _take_token(self, session: Session, now: float) -> bool:
        """Token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""
        cfg = self.config
        session.tokens = min(float(cfg.burst), session.tokens + (now - session.last_token) * cfg.rate)
        session.last_token = now
        if session.tokens < 1.0:
            return False
        session.tokens -= 1.0
        return True

    def _overdue(self, session: Session, now: float) -> tuple[str, str] | None:
        """(reason, message) if ``session`` has run out of time: silence, no login yet, or a
        frame begun and never finished (each holds memory a client could keep for ever)."""
        cfg = self.config
        if session.last_seen < now - cfg.idle_timeout:
            return "idle timeout", "no data for the idle timeout"
        if session.state is not State.READY and session.connected < now - cfg.login_timeout:
            return "login timeout", f"not logged in within {cfg.login_timeout:g} s of connecting"
        if session.partial_since is not None and session.partial_since < now - cfg.frame_timeout:
            return "frame timeout", f"a frame was left unfinished for {cfg.frame_timeout:g} s"
        return None

    def _sweep_interval(self) -> float:
        cfg = self.config
        return min(1.0, max(0.05, min(cfg.idle_timeout, cfg.login_timeout, cfg.frame_timeout) / 4))

    def _wall_us(self, now: float) -> int:
        return int((now + self.wall_offset) * 1_000_000)


def _role(accounts: dict[str, Account], user: str | None) -> str:
    account = accounts.get(user or "")
    return account.role if account is not None else ""


def _refusal(state: State, msg: Message) -> ProtocolError:
    """The error for a message that ``TRANSITIONS`` does not allow in ``state``."""
    rid = msg.request_id
    name = type(msg).__name__
    if msg.TYPE >= 0x80:  # type: ignore[union-attr]
        return RemoteProtocolError(ErrorCode.UNSUPPORTED, f"{name} is not a request", request_id=rid)
    if state is State.AWAIT_HELLO:
        return RemoteProtocolError(ErrorCode.BAD_STATE, f"send Hello before {name}", request_id=rid)
    if isinstance(msg, (Login, Register)):
        return RemoteProtocolError(ErrorCode.ALREADY_LOGGED_IN, "this connection is logged in", request_id=rid)
    if state is State.AWAIT_LOGIN and not isinstance(msg, Hello):
        return RemoteProtocolError(ErrorCode.NOT_LOGGED_IN, f"log in before {name}", request_id=rid)
    return RemoteProtocolError(ErrorCode.BAD_STATE, f"{name} is not allowed now", request_id=rid)


#: Every state change of a session: (state, event) -> (who handles it, the state after
#: it). An event is a request's type (what a client may send in that state; anything
#: else is refused by ``_refusal`` with an error naming the request, and the state
#: stays), ``AnyRequest`` (every request), or a login's answer (no handler: the gate
#: calls ``_move``). ``Engine._move`` is the only place ``session.state`` changes (a
#: test checks), and ``hub/diagram.py`` draws this table, ``CLOSES`` and ``INITIAL``
#: for docs/protocol.md (``python -m csce513msg.hub.diagram``).
TRANSITIONS: dict[tuple[State, type], tuple[Handler | None, State]] = {
    (State.AWAIT_HELLO, Hello): (Engine._on_hello, State.AWAIT_LOGIN),
    (State.AWAIT_HELLO, Ping): (Engine._on_ping, State.AWAIT_HELLO),
    (State.AWAIT_LOGIN, Login): (Engine._on_login, State.AUTHENTICATING),
    (State.AWAIT_LOGIN, Register): (Engine._on_register, State.AUTHENTICATING),
    (State.AWAIT_LOGIN, Ping): (Engine._on_ping, State.AWAIT_LOGIN),
    (State.READY, Send): (Engine._on_send, State.READY),
    (State.READY, Ack): (Engine._on_ack, State.READY),
    (State.READY, Who): (Engine._on_who, State.READY),
    (State.READY, History): (Engine._on_history, State.READY),
    (State.READY, Ping): (Engine._on_ping, State.READY),
    (State.AUTHENTICATING, AnyRequest): (Engine._hold, State.AUTHENTICATING),  # handled once answered
    (State.AUTHENTICATING, LoginAccepted): (None, State.READY),
    (State.AUTHENTICATING, LoginRefused): (None, State.AWAIT_LOGIN),
}
INITIAL = State.AWAIT_HELLO  #: a new connection's state; the Welcome is sent at once
#: How a connection ends in each state (it then leaves the table: no state, no session)
CLOSES: dict[State, str] = {
    State.AWAIT_HELLO: "close, reset, login or frame timeout, shutdown",
    State.AWAIT_LOGIN: "close, reset, login or frame timeout, shutdown",
    State.AUTHENTICATING: "close, reset, login or frame timeout, shutdown",
    State.READY: "close, reset, idle or frame timeout, shutdown, account changed",
}
