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
the login's answers; ``move`` is the one place a state changes. A request missing
from it is refused with an error (``_refusal``), and the connection stays open unless
framing itself is lost.

The engine is made of parts, each given what it needs and nothing more::

    Engine ── sessions, presence, timers, the state table, the requests' checks
      ├── Outbox    (outbox.py)   what one call has to say: every part writes there
      ├── Mailroom  (delivery.py) the storage batch, receipts, deliveries, catch-up, history
      ├── Gate      (gate.py)     logins, registration, accounts, device tokens, throttles
      ├── Groups    (groups.py)   the committed groups: the requests' checks, who gets a group message
      ├── Classroom (classroom.py) announcements' confirmations, office hours' queue (as committed)
      ├── Files     (files.py)    uploads and downloads (1.6): the bytes move in the file lane
      └── Keys      (keys.py)     the key directory of end-to-end encryption (1.7)

The Gate reaches back only through ``gate.Front`` (dispatch a held request, move a
state, a user came online, the wall time); the Mailroom only through ``sees`` (who may
see whom online), its ``roster`` (the Groups, at a commit) and its ``notebook`` (the
Classroom, at a commit); the Groups and the Classroom not at all (what a request should
store, they return). Session state is in ``session.py``.

The hub serves protocol 1.``config.max_minor`` (the protocol's ``VERSION_MINOR`` unless a
test says otherwise); groups from 1.4, to a session whose Hello asked for ``groups``;
coalesced receipts and deliveries from 1.5, to one that asked for ``coalescing`` (outbox.py);
files from 1.6, to one that asked for ``files``, on a server given a ``FileShelf``; the key
directory from 1.7, to one that asked for ``e2e`` (messages themselves are content type 2,
forwarded unread like any other).
"""

from __future__ import annotations

import logging
import math

from ..protocol import (
    PRE_LOGIN_MAX_FRAME,
    VERSION_MAJOR,
    Ack,
    Acks,
    Confirm,
    Confirmed,
    ContentType,
    Error,
    ErrorCode,
    Feature,
    FileCancel,
    FileChunk,
    FileGet,
    FileUpload,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupDelete,
    GroupJoin,
    GroupLeave,
    GroupList,
    GroupMembers,
    GroupMute,
    GroupRemove,
    GroupRename,
    GroupSlow,
    Hand,
    HandQueue,
    Hello,
    History,
    KeyFetch,
    KeyForget,
    KeyPublish,
    Login,
    Message,
    Ping,
    Pong,
    Presence,
    ProtocolError,
    Redact,
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
from ..protocol.names import checked_name, direct_stream
from ..protocol.publickeys import E2E_MINOR
from ..protocol.transfer import FILES_MINOR
from ..store import Account, DeviceToken, NewMessage, Store
from ..store.files import FileShelf, UploadRecord
from ..store.interface import ANNOUNCEMENTS, ClassroomRecord, GroupRecord, KeyRecord, is_staff
from .actions import Action, ConnId, Write
from .classroom import Classroom, ClassroomRequest
from .config import HubConfig, Visibility
from .delivery import Mailroom, Snapshot
from .files import Files
from .gate import Gate, Passwords
from .groups import GROUPS_MINOR, GroupRequest, Groups
from .keys import Keys
from .outbox import COALESCING_MINOR, Outbox, fitting, retry_ms
from .session import AnyRequest, Handler, LoginAccepted, LoginRefused, Session, State

log = logging.getLogger("csce513msg.hub")

EXPIRY_INTERVAL = 600.0  #: seconds between deletions of messages past the retention period


class Engine:
    """The pure chat core behind the engine contract (see shared/STYLE.md).

    Args:
        store: keeps accounts, streams and cursors.
        config: the hub's limits.
        wall_offset: ``time.time() - time.monotonic()``, measured once at start.
        passwords: hashes and checks passwords (run in the ``hash`` lane, never here).
        accounts: every account, from ``store.load_accounts()``.
        tokens: the device tokens in force, by digest, from ``store.load_device_tokens()``.
        groups: every group, by stream, from ``store.load_groups()`` (served from 1.4).
        classroom: the confirmations and raised hands, from ``store.load_classroom()``.
        shelf: where uploads live (1.6); None: the server offers no files.
        uploads: the uploads kept, from ``shelf.load()``.
        keys: the key directory, from ``store.load_keys()`` (served from 1.7).
    """

    def __init__(
        self, store: Store, config: HubConfig, wall_offset: float, passwords: Passwords,
        accounts: dict[str, Account] | None = None, tokens: dict[str, DeviceToken] | None = None,
        groups: dict[str, GroupRecord] | None = None, classroom: ClassroomRecord | None = None,
        shelf: FileShelf | None = None, uploads: dict[str, tuple[UploadRecord, int]] | None = None,
        keys: dict[tuple[str, str], KeyRecord] | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.config = config
        self.wall_offset = wall_offset
        self.sessions: dict[ConnId, Session] = {}
        #: user -> their logged-in sessions: a tuple, replaced whole at a login or a logout (rare),
        #: read at every delivery (a list of one was 90 bytes a user online, a tuple 48)
        self.online: dict[str, tuple[Session, ...]] = {}
        self.subscribers: set[Session] = set()  # sessions that asked for presence
        self.out = Outbox()
        known = dict(accounts or {})  # the gate keeps it current; the groups read roles in it
        self.groups = Groups(config, known, self.online, self.out, self._sees, self.wall_us, groups or {})
        self.classroom = Classroom(known, self.online, self.out, self.wall_us, classroom)
        self.mail = Mailroom(
            store, config, self.sessions, self.online, self.out, self._sees, self.groups, self.classroom
        )  # fmt: skip
        self.gate = Gate(config, passwords, known, dict(tokens or {}), self.sessions, self.out, self.mail, self)
        self.files: Files | None = None
        if shelf is not None and config.max_minor >= FILES_MINOR:
            self.files = Files(
                config, shelf, uploads or {}, self.sessions, self.out, self._conversation, self.groups.is_member,
                self.wall_us,
            )  # fmt: skip
        self.keys = Keys(config.key_days, known, self.online, self.out, self.mail, self.wall_us, keys or {})
        self._shown_role: dict[str, str] = {}  # user online -> its role when presence announced it
        self._next_sweep: float | None = None
        self._next_poll: float | None = None  # when to ask the store for accounts changed by an admin
        self._next_expiry = 0.0  # when to delete messages past the retention period next
        self._pre_login_frame = min(PRE_LOGIN_MAX_FRAME, config.max_frame)
        features: tuple[str, ...] = (Feature.PRESENCE.value,)
        if config.max_minor >= GROUPS_MINOR:
            features += (Feature.GROUPS.value,)
        if config.max_minor >= COALESCING_MINOR:
            features += (Feature.COALESCING.value,)
        if self.files is not None:
            features += (Feature.FILES.value,)
        if config.max_minor >= E2E_MINOR:
            features += (Feature.E2E.value,)
        files = (
            (config.max_file, config.file_quota, config.disk_reserve, math.ceil(config.file_days), config.max_chunk)
            if self.files
            else (0, 0, 0, 0, 0)  # 0: "no files"
        )
        self._welcome = encode(
            Welcome(
                VERSION_MAJOR,
                config.max_minor,
                config.max_frame,
                config.max_text,
                config.window,
                int(config.idle_timeout * 1000),
                features,
                config.server_name,
                *files,
            ),
            config.max_minor,
        )

    # ---- the engine contract ---------------------------------------------------

    def connection_made(self, conn: ConnId, peer: str, now: float) -> list[Action]:
        """A connection was accepted: greet it with the Welcome (the handshake)."""
        decoder = FrameDecoder(self._pre_login_frame)  # the Welcome's max_frame from the Login on
        session = Session(conn, peer, decoder, now, now, float(self.config.burst), now, minor=self.config.max_minor)
        self.sessions[conn] = session
        log.info("connect #%d from %s", conn, peer)
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_interval()
        if self._next_poll is None:  # accounts may have changed while nobody was connected: look now
            self.mail.batch.poll_accounts = True
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
                    self.dispatch(session, decode(frame, session.minor, self.config.max_minor), now)
                except RemoteProtocolError as exc:
                    self.refuse(session, exc)
                if session.closing:
                    break
        except RemoteProtocolError as exc:  # the stream itself is broken
            self.refuse(session, exc)
        if not session.decoder.buffered:
            session.partial_since = None
        elif complete or session.partial_since is None:  # a new frame began in these bytes
            session.partial_since = now
        return self.out.take()

    def connection_lost(self, conn: ConnId, now: float) -> list[Action]:
        """The connection is gone (closed, reset, aborted): forget it, tell subscribers."""
        session = self.sessions.pop(conn)
        self.subscribers.discard(session)
        self.gate.login_gone(conn)
        user = session.user or ""
        sessions = self.online.get(user, ())
        if self.files is not None:
            self.files.gone(session)
        if session in sessions:
            self.groups.gone(session)
            sessions = tuple(s for s in sessions if s is not session)
            log.info("logout %s (#%d), %d sessions left", user, conn, len(sessions))
            if sessions:
                self.online[user] = sessions
            else:
                del self.online[user]
                self._broadcast_presence(user, 0, now)
        log.info("disconnect #%d", conn)
        return self.out.take()

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
        self.mail.maybe_fetch(session)
        self.mail.next_history(session)
        if self.files is not None:
            self.files.resume_writing(session)
        return self.out.take()

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next run (monotonic seconds), or None."""
        deadlines = [d for d in (self._next_sweep, self._next_poll, self.mail.acks_due) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        """Close connections silent for longer than the idle timeout; poll for account changes."""
        if self._next_poll is not None and now >= self._next_poll:
            batch = self.mail.batch
            batch.poll_accounts = True
            if now >= self._next_expiry:  # retention, at most every 10 min
                if self.config.retention_days:
                    batch.expire_before_us = self.wall_us(now - self.config.retention_days * 86400)
                batch.expire_tokens_before_us = self.gate.expire_tokens(now)
                if self.files is not None:
                    self.files.expire(now)
                batch.expire_keys_before_us = self.keys.expire(now)
                self._next_expiry = now + EXPIRY_INTERVAL
            self._next_poll = now + self.config.account_poll if self.sessions else None
            self.gate.sweep(now)
        if self._next_sweep is None or now < self._next_sweep:
            return self.out.take()
        for session in list(self.sessions.values()):
            if not session.closing and (overdue := self._overdue(session, now)):
                reason, message = overdue
                log.info("%s #%d (%s)", reason, session.conn, session.user or session.peer)
                self.out.error(session, ErrorCode.IDLE_TIMEOUT, message, 0)
                self.out.close(session, reason)  # a vanished peer never drains: the close timeout aborts it
        self._next_sweep = now + self._sweep_interval() if self.sessions else None
        return self.out.take()

    def shutdown(self, now: float) -> list[Action]:
        """The server is stopping: say goodbye to everyone, then close. From now on a batch
        never waits (``ack_delay``): the backend stops once the last one is committed."""
        self.mail.stopping = True
        for session in self.sessions.values():
            if not session.closing:
                self.out.error(session, ErrorCode.SHUTTING_DOWN, "the server is shutting down", 0)
                self.out.close(session, "shutdown")
        return self.out.take()

    def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
        """A job finished: a file transfer's read or write (``files.py``), a password hash
        (``gate.py``) or a storage batch (``delivery.py``)."""
        if self.files is not None and job_id in self.files.jobs:  # a file transfer's read or write
            self.files.job_done(job_id, result)
        elif job_id in self.gate.checking:
            self.gate.hash_done(job_id, result, now)
            self.gate.admit(now)  # a slot is free (after the answer: a good login clears its account's count)
        elif job_id == self.mail.maintaining:  # the store's checkpoint: the next batch may go
            self.mail.maintained()
        elif (done := self.mail.batch_done(job_id, result, now)) is not None:  # (None: busy, retried off the loop)
            batch, stored = done
            if stored.error is None:  # accounts made (Register) or changed (`msgsrv user`): g:0's readers
                self.groups.accounts_changed({a.name: a for a in batch.accounts})
            self.groups.accounts_changed(stored.accounts)
            self.classroom.accounts_changed(stored.accounts, now)  # a removed account's hand
            self.keys.accounts_changed(stored.accounts)  # a removed account's devices
            self.gate.logins_done(batch, stored, now)
            self.gate.accounts_changed(stored.accounts, now)
            # `msgsrv group add|remove`, applied as its actor's request: after this poll's accounts,
            # so a user added (or an instructor made) just before the change is known to it
            for change in stored.queued:
                self.mail.store_queued(self.groups.queued(change, now), change.id)
            self.gate.admit(now)  # logins that waited for this batch's news of accounts
        return self.out.take()

    def server_full(self) -> bytes:
        """The bytes for a connection the backend cannot take (it then closes it)."""
        return encode(Error(ErrorCode.SERVER_FULL, "server full: no room for another connection"))

    def flush(self, now: float) -> list[Action]:
        """End of a loop pass: the mailroom submits the storage batch, if none is in flight."""
        self.mail.flush(now)
        return self.out.take()

    @property
    def snapshot(self) -> Snapshot:
        """The figures published at the last flush, safe to read from another thread."""
        return self.mail.snapshot

    # ---- for the parts (gate.Front) ----------------------------------------------

    def dispatch(self, session: Session, msg: Message, now: float, charged: bool = False) -> None:
        """Handle one request (``charged``: its rate token was taken when it was held).

        Raises:
            RemoteProtocolError: the request is refused (the state stays as it was).
        """
        # every request takes a token, refused ones too; not a transfer's chunks and ranges (READY
        # only): the upload window and the 8 FileGets in flight pace them (files.py), and a token
        # each would cap a transfer at rate x chunk (500/s x 256 KiB: 131 MB/s, once the burst is spent)
        paced = msg.__class__ in _PACED and session.state is State.READY
        if not charged and not paced and not self._take_token(session, now):
            wait = (1.0 - session.tokens) / self.config.rate if self.config.rate > 0 else 0.0
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED, "too many requests: slow down", request_id=msg.request_id,
                retry_after_ms=retry_ms(wait) if wait > 0 else 0,
            )  # fmt: skip
        event: type = type(msg)
        rule = TRANSITIONS.get((session.state, event))
        if rule is None:  # only AUTHENTICATING takes any request: it holds them
            event = AnyRequest
            rule = TRANSITIONS.get((session.state, event))
        if rule is None:
            raise _refusal(session.state, msg)
        handler = rule[0]
        assert handler is not None  # a request's rule has a handler
        handler(self, session, msg, now)  # raises RemoteProtocolError to refuse: the state stays
        self.move(session, event)

    def move(self, session: Session, event: type) -> None:
        """The one place a session changes state: as ``TRANSITIONS`` says for ``event`` (a
        request's type, or a login's answer). A pair missing from the table is a bug."""
        session.state = TRANSITIONS[(session.state, event)][1]

    def refuse(self, session: Session, exc: RemoteProtocolError) -> None:
        """Answer a refused request with its error; a fatal one closes the connection."""
        log.info("refused #%d (%s): %s %s", session.conn, session.user or session.peer, exc.code.name, exc)
        self.out.error(session, exc.code, exc.message, exc.request_id, exc.retry_after_ms)
        if exc.fatal:
            self.out.close(session, exc.code.name.lower())

    def came_online(self, session: Session, now: float) -> None:
        """``session`` logged in as ``session.user``: it is online, and if it is the user's
        first session, the subscribers hear so; it hears presence if its Hello asked."""
        user = session.user
        assert user is not None
        sessions = self.online[user] = (*self.online.get(user, ()), session)
        self.groups.came_online(session)
        log.info("login %s (#%d from %s, session %d)", user, session.conn, session.peer, len(sessions))
        if len(sessions) == 1:
            self._broadcast_presence(user, 1, now, skip=session)
        if session.presence:
            self.subscribers.add(session)
        if session.e2e:
            self.keys.came_online(session, now)

    def wall_us(self, now: float) -> int:
        """Wall time in µs since the epoch for monotonic ``now`` (the engine reads no clock)."""
        return int((now + self.wall_offset) * 1_000_000)

    # ---- requests ---------------------------------------------------------------

    def _on_hello(self, session: Session, msg: Hello, now: float) -> None:
        if msg.version_major != VERSION_MAJOR:
            raise RemoteProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"server speaks protocol {VERSION_MAJOR}.x, client {msg.version_major}.{msg.version_minor}",
                request_id=msg.request_id,
                fatal=True,
            )
        session.presence = Feature.PRESENCE.value in msg.features
        session.minor = min(msg.version_minor, self.config.max_minor)  # it is sent its version's frames and fields
        session.groups = session.minor >= GROUPS_MINOR and Feature.GROUPS.value in msg.features
        session.coalescing = session.minor >= COALESCING_MINOR and Feature.COALESCING.value in msg.features
        session.files = self.files is not None and session.minor >= FILES_MINOR and Feature.FILES.value in msg.features
        session.e2e = session.minor >= E2E_MINOR and Feature.E2E.value in msg.features

    def _on_login(self, session: Session, msg: Login, now: float) -> None:
        self.gate.on_login(session, msg, now)

    def _on_register(self, session: Session, msg: Register, now: float) -> None:
        self.gate.on_register(session, msg, now)

    def _hold(self, session: Session, msg: Message, now: float) -> None:
        self.gate.hold(session, msg, now)

    def _on_send(self, session: Session, msg: Send, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            self._group_target(session, msg.target_kind, rid)
        if msg.content_type == ContentType.GROUP_EVENT:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, "content type 3 is the server's (group events)", request_id=rid
            )  # fmt: skip
        if msg.content_type == ContentType.ASKS_CONFIRMATION and msg.target_kind != TargetKind.GROUP:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, "content type 4 is for the announcements only", request_id=rid
            )  # fmt: skip
        if len(msg.body) > self.config.max_text:
            raise RemoteProtocolError(
                ErrorCode.TEXT_TOO_LONG,
                f"message of {len(msg.body)} bytes is over the limit of {self.config.max_text}",
                request_id=rid,
            )
        if msg.target_kind == TargetKind.GROUP:
            self.mail.store_message(session, self.groups.post(session, msg, now), rid)  # receipt after the commit
            return
        target = self._known_user(msg.target, rid)
        sender = session.user
        assert sender is not None  # READY implies a user
        members = tuple(sorted({sender, target}))
        new = NewMessage(direct_stream(sender, target), members, sender, session.device, msg.client_msg_id,
                         TargetKind.USER, target, msg.content_type, self.wall_us(now), msg.body)  # fmt: skip
        self.mail.store_message(session, new, rid)  # the receipt waits for the commit

    def _on_ack(self, session: Session, msg: Ack, now: float) -> None:
        self.mail.acknowledged(session, ((msg.stream, msg.position),), msg.request_id)

    def _on_acks(self, session: Session, msg: Acks, now: float) -> None:
        """Several Acks (1.5). No more entries than the window: a client never has more
        streams unacknowledged than deliveries, and one rate token must not buy thousands."""
        if len(msg.streams) > self.config.window:
            too_many = f"an Acks of {len(msg.streams)} entries: at most {self.config.window} (the window)"
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, too_many, request_id=msg.request_id)
        self.mail.acknowledged(session, list(zip(msg.streams, msg.positions, strict=True)), msg.request_id)

    def _on_history(self, session: Session, msg: History, now: float) -> None:
        rid = msg.request_id
        if msg.target_kind != TargetKind.USER:
            self._group_target(session, msg.target_kind, rid)
            stream = self.groups.readable(session, msg.target, rid)
            self.mail.ask_history(session, rid, stream, msg.before, msg.limit)
            return
        target = self._known_user(msg.target, rid)
        assert session.user is not None
        self.mail.ask_history(session, rid, direct_stream(session.user, target), msg.before, msg.limit)

    def _on_group(self, session: Session, msg: GroupRequest, now: float) -> None:
        if not session.groups:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED, f"{type(msg).__name__}: ask for the groups feature in Hello",
                request_id=msg.request_id,
            )  # fmt: skip
        new = self.groups.request(session, msg, now)
        if new is not None:
            self.mail.store_message(session, new, msg.request_id)  # GroupInfo after the commit

    def _on_classroom(self, session: Session, msg: ClassroomRequest, now: float) -> None:
        if not session.groups:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED, f"{type(msg).__name__}: ask for the groups feature in Hello",
                request_id=msg.request_id,
            )  # fmt: skip
        note = self.classroom.request(session, msg, now)
        if note is not None:
            self.mail.take_note(session, note, msg.request_id)  # answered after the commit

    def _on_file(self, session: Session, msg: FileUpload | FileChunk | FileGet | FileCancel, now: float) -> None:
        files = self.files
        if files is None or not session.files:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED, f"{type(msg).__name__}: ask for the files feature in Hello",
                request_id=msg.request_id,
            )  # fmt: skip
        if isinstance(msg, FileChunk):
            files.take_chunk(session, msg, now)
        elif isinstance(msg, FileUpload):
            files.upload(session, msg, now)
        elif isinstance(msg, FileGet):
            files.get(session, msg, now)
        else:
            files.cancel(session, msg, now)

    def _on_keys(self, session: Session, msg: KeyPublish | KeyFetch | KeyForget, now: float) -> None:
        if not session.e2e:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED, f"{type(msg).__name__}: ask for the e2e feature in Hello",
                request_id=msg.request_id,
            )  # fmt: skip
        if isinstance(msg, KeyPublish):
            self.keys.publish(session, msg, now)
        elif isinstance(msg, KeyFetch):
            self.keys.fetch(session, msg, now)
        else:
            self.keys.forget(session, msg, now)

    def _conversation(self, session: Session, kind: int, target: str, rid: int) -> str:
        """The stream of the conversation ``session``'s user may post ``target`` (an upload's):
        a user's direct one, or a group it is a member of (the announcements: staff only)."""
        user = session.user
        assert user is not None
        if kind == TargetKind.USER:
            return direct_stream(user, self._known_user(target, rid))
        self._group_target(session, kind, rid)
        group = self.groups.find(target, rid)
        if group.stream == ANNOUNCEMENTS:
            allowed = is_staff(_role(self.gate.accounts, user))
        else:
            allowed = self.groups.is_member(user, group.stream)
        if not allowed:
            raise RemoteProtocolError(ErrorCode.NOT_A_MEMBER, f"you cannot post to {group.name}", request_id=rid)
        return group.stream

    def _on_who(self, session: Session, msg: Who, now: float) -> None:
        users = sorted(u for u in self.online if self._sees(session, u))
        roles = [_role(self.gate.accounts, u) for u in users]
        # cut to fit one header (2,000 users online with long names would not): the first by name
        fit = fitting((2 + len(u) + 4 + 2 + len(r) for u, r in zip(users, roles, strict=True)), 6)
        users, roles = users[:fit], roles[:fit]
        counts = tuple(len(self.online[u]) for u in users)
        self.out.write(session, WhoReply(tuple(users), counts, tuple(roles), msg.request_id))

    def _on_ping(self, session: Session, msg: Ping, now: float) -> None:
        self.out.write(session, Pong(msg.body, msg.request_id))

    # ---- helpers ------------------------------------------------------------------

    def _group_target(self, session: Session, kind: int, rid: int) -> None:
        """A Send's or History's target kind, when not a user: a group, for a session that asked."""
        if kind == TargetKind.GROUP and session.groups:
            return
        if not session.groups:
            why = "only user targets exist before 1.4 (groups: announce 1.4 and the groups feature in Hello)"
        else:
            why = f"unknown target kind {kind}"
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, why, request_id=rid)

    def _known_user(self, name: str, rid: int) -> str:
        """A Send's or History's target, folded: a malformed name is INVALID_NAME, one with
        no account USER_NOT_FOUND."""
        target = checked_name(name, rid)
        if target not in self.gate.accounts:
            raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {target!r}", request_id=rid)
        return target

    def _broadcast_presence(self, user: str, online: int, now: float, skip: Session | None = None) -> None:
        # who heard that ``user`` came online hears that it left, whatever its role is by then
        role = self._shown_role.pop(user, None) if not online else _role(self.gate.accounts, user)
        if online:
            self._shown_role[user] = role or ""
        if not self.subscribers:
            return
        data = encode(Presence(online, self.wall_us(now), user))
        for sub in self.subscribers:
            if sub is not skip and not sub.closing and self._sees(sub, user, role):
                self.out.write_bytes(sub.conn, data)

    def _sees(self, session: Session | None, user: str, role: str | None = None) -> bool:
        """Whether ``session`` may see that ``user`` is online (``--visibility``); ``role``:
        the role ``user`` had when it came online, if not its role now."""
        if self.config.visibility is Visibility.CLASS or session is None or user == session.user:
            return True
        accounts = self.gate.accounts
        role = _role(accounts, user) if role is None else role
        return is_staff(role) or is_staff(_role(accounts, session.user))  # staff: instructors and assistants

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


#: requests paced by their own limits, not the rate's bucket (files.py): an upload's chunks, a download's ranges
_PACED = frozenset((FileChunk, FileGet))


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
#: calls ``move``). ``Engine.move`` is the only place ``session.state`` changes (a
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
    (State.READY, Acks): (Engine._on_acks, State.READY),  # 1.5
    (State.READY, Who): (Engine._on_who, State.READY),
    (State.READY, History): (Engine._on_history, State.READY),
    (State.READY, Ping): (Engine._on_ping, State.READY),
    (State.READY, GroupCreate): (Engine._on_group, State.READY),  # 1.4, to a session that asked for groups
    (State.READY, GroupJoin): (Engine._on_group, State.READY),
    (State.READY, GroupLeave): (Engine._on_group, State.READY),
    (State.READY, GroupAdd): (Engine._on_group, State.READY),
    (State.READY, GroupRemove): (Engine._on_group, State.READY),
    (State.READY, GroupRename): (Engine._on_group, State.READY),
    (State.READY, GroupList): (Engine._on_group, State.READY),
    (State.READY, GroupMembers): (Engine._on_group, State.READY),
    (State.READY, GroupDelete): (Engine._on_group, State.READY),  # 1.4, the classroom's moderation
    (State.READY, GroupMute): (Engine._on_group, State.READY),
    (State.READY, GroupSlow): (Engine._on_group, State.READY),
    (State.READY, Redact): (Engine._on_group, State.READY),
    (State.READY, Confirm): (Engine._on_classroom, State.READY),  # 1.4, the classroom, with groups
    (State.READY, Confirmed): (Engine._on_classroom, State.READY),
    (State.READY, Hand): (Engine._on_classroom, State.READY),
    (State.READY, HandQueue): (Engine._on_classroom, State.READY),
    (State.READY, FileUpload): (Engine._on_file, State.READY),  # 1.6, to a session that asked for files
    (State.READY, FileChunk): (Engine._on_file, State.READY),
    (State.READY, FileGet): (Engine._on_file, State.READY),
    (State.READY, FileCancel): (Engine._on_file, State.READY),
    (State.READY, KeyPublish): (Engine._on_keys, State.READY),  # 1.7, to a session that asked for e2e
    (State.READY, KeyFetch): (Engine._on_keys, State.READY),
    (State.READY, KeyForget): (Engine._on_keys, State.READY),
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
