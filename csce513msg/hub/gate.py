"""Logging in and registering: the engine's front door, a mixin of ``Engine``.

A password hash costs tens of milliseconds by design, so it never runs on the loop:
Login (or Register) submits the KDF as a job in the ``hash`` lane and the session
waits in AUTHENTICATING; whatever else the client sends meanwhile is held, in order,
and handled once the answer is known. A good password is not the end yet: the
login then reads, in the next storage batch, how many messages wait for the device
and which delivered receipts it missed (``LoginRead``); LoginOk follows the commit.

::

    Login ──accounts poll──> queue (admission.py) ──hash lane──> verified?
        ──store lane──> LoginOk (READY, with a device token) ──> catch-up
                 └── no: AUTH_FAILED (AWAIT_LOGIN), counted by the throttles

Logins wait for a hash in a fair, bounded queue (``admission.LoginQueue``: devices that
logged in before first, then the addresses in turn). Failed logins are throttled per
account and per address, counted as each attempt is admitted to hashing
(``admission.Throttle``): past the limit, a login is refused at once, without hashing.
A login that carries a valid device token for its account (LoginOk hands one to every
device) is throttled in a bucket of that token alone, so guesses against an account
or from an address never lock out its own devices. Accounts changed by ``msgsrv
user`` in another process reach the hub through the store's poll
(``_accounts_changed``); a removed account or a new password ends its sessions.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..protocol import (
    PRE_LOGIN_MAX_FRAME,
    WAITING_CAP,
    ErrorCode,
    Login,
    LoginOk,
    Message,
    Register,
    RemoteProtocolError,
)
from ..store import Account, Batch, BatchResult, DeliveredNote, DeviceToken, LoginRead
from .actions import Action, ConnId, Submit
from .admission import HASH_SLOTS, LoginQueue, Pending, Throttle
from .config import HubConfig
from .session import Session, State

log = logging.getLogger("csce513msg.hub")
MAX_HELD = 64  #: requests a client may pipeline behind a Login still being checked
#: User names: 1-32 characters, letters, digits, "_", "." and "-", not starting with
#: "." or "-". Names are case-insensitive: the hub folds them to lower case.
NAME_RULE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,31}")
TOKEN_LIFETIME_US = 180 * 86400 * 1_000_000  #: a device token is valid for 180 days from its making


class Passwords(Protocol):
    """Password hashing and rules (``crypto.passwords.Scrypt``). The hub only hands
    ``hash`` and ``verify`` to the ``hash`` lane; it never runs them itself."""

    def hash(self, password: str) -> str: ...

    def verify(self, password: str, stored: str) -> bool: ...

    def decoy(self) -> str: ...

    def problem(self, password: str) -> str | None: ...


class Gate:
    """Login, registration and accounts, for ``Engine``."""

    config: HubConfig
    sessions: dict[ConnId, Session]
    online: dict[str, list[Session]]

    def __init__(
        self, passwords: Passwords, accounts: dict[str, Account], tokens: dict[str, DeviceToken]
    ) -> None:  # fmt: skip
        self.passwords = passwords
        self.accounts = accounts
        self.tokens = tokens  #: device token digest -> the token's record (valid for its user)
        self._decoy = passwords.decoy()  # an unknown user's password is checked against this
        cfg = self.config
        self.account_throttle = Throttle(cfg.login_failures_per_account, cfg.login_failure_window)
        self.address_throttle = Throttle(cfg.login_failures_per_address, cfg.login_failure_window)
        self.token_throttle = Throttle(cfg.login_failures_per_account, cfg.login_failure_window)
        self.registrations = Throttle(cfg.registrations_per_address, 3600.0)  # accounts made per address an hour
        self._queue = LoginQueue(cfg.max_pending_logins)  # waiting for their hash
        self._hashing: dict[int, tuple[Pending, str]] = {}  # hash job id -> (login, the hash it is checked against)
        self._registering: set[str] = set()  # names whose registration is under way
        self._login_reads: dict[int, tuple[ConnId, int, str]] = {}  # LoginRead key -> (conn, request id, token)

    # ---- the requests ----------------------------------------------------------------

    def _on_login(self, session: Session, msg: Login, now: float) -> None:
        user = self._valid_name(msg.user, msg.request_id)
        token = _digest(msg.device_token) if msg.device_token else ""
        record = self.tokens.get(token)
        if record is None or record.user != user or record.created_us < self._wall_us(now) - TOKEN_LIFETIME_US:
            token = ""  # unknown, another account's, or expired: an ordinary login
        login = Pending(session.conn, msg, user, _host(session.peer), token, self._polls_due())
        self._check_throttles(session, login, now)
        self._enqueue(session, login, now)

    def _on_register(self, session: Session, msg: Register, now: float) -> None:
        rid = msg.request_id
        if not self.config.self_register:
            raise RemoteProtocolError(
                ErrorCode.REGISTRATION_CLOSED, "this server does not take registrations: ask your instructor",
                request_id=rid,
            )  # fmt: skip
        user = self._valid_name(msg.user, rid)
        if user in self.accounts or user in self._registering:
            raise RemoteProtocolError(ErrorCode.NAME_TAKEN, f"the name {user!r} is taken", request_id=rid)
        if problem := self.passwords.problem(msg.password):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, problem, request_id=rid)
        login = Pending(session.conn, msg, user, _host(session.peer), "", self._polls_due())
        self._check_throttles(session, login, now)  # an address that keeps failing cannot register either
        if wait := self.registrations.wait(_host(session.peer), now):
            log.warning("registration throttled: %s from %s", user, session.peer)
            raise RemoteProtocolError(
                ErrorCode.AUTH_THROTTLED, f"too many new accounts from your address: try again in {wait:.0f} s",
                request_id=rid,
            )  # fmt: skip
        self._enqueue(session, login, now)
        self._registering.add(user)

    def _enqueue(self, session: Session, login: Pending, now: float) -> None:
        """Wait for a hash in the fair queue, after the store's next news of accounts (one
        cheap check when nothing changed), so a login never misses an account `msgsrv
        user` has just added, changed or removed."""
        if (dropped := self._queue.push(login)) is login:
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED, "too many logins from your address wait already: try again in a few seconds",
                request_id=login.msg.request_id,
            )  # fmt: skip
        self._batch.poll_accounts = True
        session.decoder.max_frame = self.config.max_frame  # requests pipelined behind it may be large
        if dropped is None:
            return
        if isinstance(dropped.msg, Register):
            self._registering.discard(dropped.user)
        if (other := self.sessions.get(dropped.conn)) is not None:  # it lost its place: it tries again later
            busy = "too many logins wait: try again in a few seconds"
            self._not_logged_in(other, ErrorCode.RATE_LIMITED, busy, dropped.msg.request_id, now)

    def _admit(self, now: float) -> None:
        """Hash the next logins in turn while slots are free: each one's accounts poll is
        back and its throttle buckets have room (else it waits; a blocked bucket refuses)."""
        polled = self._polls_done
        while len(self._hashing) < HASH_SLOTS:
            login = self._queue.take(lambda p: p.after <= polled and not self._full(p, now))
            if login is None:
                return
            session = self.sessions.get(login.conn)
            if session is None or session.closing:
                if isinstance(login.msg, Register):
                    self._registering.discard(login.user)
                continue  # gone while it waited
            if isinstance(login.msg, Register):
                if login.user in self.accounts:  # `msgsrv user add` took the name meanwhile
                    self._registering.discard(login.user)
                    taken = f"the name {login.user!r} is taken"
                    self._not_logged_in(session, ErrorCode.NAME_TAKEN, taken, login.msg.request_id, now)
                    continue
                job: Callable[[], object] = functools.partial(self.passwords.hash, login.msg.password)
                checked = ""
            else:
                try:  # the failures may have reached the limit while it waited
                    self._check_throttles(session, login, now)
                except RemoteProtocolError as exc:
                    self._not_logged_in(session, exc.code, exc.message, login.msg.request_id, now)
                    continue
                account = self.accounts.get(login.user)
                checked = account.password_hash if account is not None else self._decoy  # the same work either way
                job = functools.partial(self.passwords.verify, login.msg.password, checked)
            for throttle, key in self._buckets(login):
                throttle.start(key)  # counted from now, not when the hash is done
            job_id = self._new_id()
            self._hashing[job_id] = (login, checked)
            self._out.append(Submit(job_id, job, "hash"))

    def _buckets(self, login: Pending) -> list[tuple[Throttle, str]]:
        """The throttles an attempt counts in: its device token's alone, if it has a valid
        one (so guesses by others never lock a device out), else its account's and address's."""
        if login.token:
            return [(self.token_throttle, login.token)]
        return [(self.account_throttle, login.user), (self.address_throttle, login.host)]

    def _full(self, login: Pending, now: float) -> bool:
        """Its buckets have no room for one more attempt now (blocked ones do: to refuse it)."""
        buckets = self._buckets(login)
        if any(throttle.wait(key, now) for throttle, key in buckets):
            return False  # blocked: taken, to be refused at once
        return any(throttle.full(key, now) for throttle, key in buckets)

    def _check_throttles(self, session: Session, login: Pending, now: float) -> None:
        """Refuse at once, without a hash, a login whose buckets are blocked."""
        waits = [(throttle, key, throttle.wait(key, now)) for throttle, key in self._buckets(login)]
        wait = max(w for _, _, w in waits)
        if wait > 0:
            first = False
            for throttle, key, w in waits:
                first |= w > 0 and throttle.first_refusal(key, now, w)
            if first:
                log.warning(
                    "login throttled: %s from %s (%.0f s; more refusals not logged)", login.user, session.peer, wait
                )
            raise RemoteProtocolError(
                ErrorCode.AUTH_THROTTLED, f"too many failed logins: try again in {wait:.0f} s",
                request_id=login.msg.request_id,
            )  # fmt: skip

    def _valid_name(self, name: str, rid: int) -> str:
        user = name.lower()
        if not NAME_RULE.fullmatch(user):
            raise RemoteProtocolError(
                ErrorCode.INVALID_NAME, f"invalid name {name!r}: use 1-32 letters, digits, '_', '.', '-'",
                request_id=rid,
            )  # fmt: skip
        return user

    # ---- answers from the lanes ------------------------------------------------------------

    def _hash_done(self, job_id: int, result: object, now: float) -> None:
        """The KDF finished: a login is verified (True/False), a registration hashed (str)."""
        login, checked = self._hashing.pop(job_id)
        user, rid = login.user, login.msg.request_id
        registering = isinstance(login.msg, Register)
        if registering:
            self._registering.discard(user)
        session = self.sessions.get(login.conn)
        account = self.accounts.get(user)  # checked against an empty hash (no password set): never ok
        ok = not registering and result is True and account is not None and account.password_hash == checked
        for throttle, bucket in self._buckets(login):
            throttle.finish(bucket, failed=not registering and not ok, now=now)
        self._admit(now)  # a slot is free
        if session is None or session.closing:
            return  # gone while we hashed
        if not registering:
            if not ok:
                log.warning("auth failed: %s from %s", user, session.peer)
                return self._not_logged_in(
                    session, ErrorCode.AUTH_FAILED, "auth failed: wrong user name or password", rid, now
                )  # fmt: skip
            if login.token:
                self.token_throttle.clear(login.token)
            else:
                self.account_throttle.clear(user)
        elif isinstance(result, str):  # a registration
            if user in self.accounts:  # `msgsrv user add` took the name meanwhile
                return self._not_logged_in(session, ErrorCode.NAME_TAKEN, f"the name {user!r} is taken", rid, now)
            self.registrations.record(login.host, now)  # accounts made per address
            account = Account(user, "student", result, self._wall_us(now))
            self.accounts[user] = account
            self._batch.accounts.append(account)
            log.info("registered %s from %s", user, session.peer)
        else:  # the hash lane raised: a bug
            return self._not_logged_in(session, ErrorCode.INTERNAL, "the login could not be checked", rid, now)
        token = login.msg.device_token if login.token and isinstance(login.msg, Login) else ""
        if not token:  # a device new to this account: its token, stored with the login
            token = secrets.token_hex(16)
            self._batch.device_tokens.append(DeviceToken(_digest(token), user, self._wall_us(now)))
        key = self._new_id()
        self._login_reads[key] = (login.conn, rid, token)
        session.user, session.device = user, login.msg.device_id  # not online until LoginOk
        self._batch.logins.append(
            LoginRead(key, user, login.msg.device_id, self.config.new_device_history, WAITING_CAP)
        )

    def _logins_done(self, batch: Batch, result: BatchResult, now: float) -> None:
        """The login reads of a batch are back (or failed with it): answer each login."""
        if result.error is None:
            self.tokens.update((t.digest, t) for t in batch.device_tokens)
        for login in batch.logins:
            conn, rid, token = self._login_reads.pop(login.key)
            session = self.sessions.get(conn)
            info = result.logins.get(login.key)
            if info is None:  # the batch failed, a registration in it too
                if any(a.name == login.user for a in batch.accounts):
                    self.accounts.pop(login.user, None)
                if session is not None:
                    session.user = None
                    self._not_logged_in(session, ErrorCode.STORE_FAILED, "the login could not be recorded", rid, now)
            elif session is not None and not session.closing:
                self._logged_in(session, login.user, info.waiting, rid, token, now)
                for note in info.receipts:
                    self._delivered_receipt(session, note)

    def _logged_in(self, session: Session, user: str, waiting: int, rid: int, token: str, now: float) -> None:
        account = self.accounts[user]
        sessions = self.online.setdefault(user, [])
        sessions.append(session)
        session.state = State.READY
        log.info("login %s (#%d from %s, session %d)", user, session.conn, session.peer, len(sessions))
        self._write(session, LoginOk(self._wall_us(now), user, account.role, waiting, token, rid))
        if len(sessions) == 1:
            self._broadcast_presence(user, 1, now, skip=session)
        if session.presence:
            self.subscribers.add(session)
        self._maybe_fetch(session)  # what arrived while this device was away
        self._release_held(session, now)

    def _not_logged_in(self, session: Session, code: ErrorCode, message: str, rid: int, now: float) -> None:
        session.user = None
        session.state = State.AWAIT_LOGIN
        session.decoder.max_frame = min(PRE_LOGIN_MAX_FRAME, self.config.max_frame)
        self._error(session, code, message, rid)
        self._release_held(session, now)

    def _hold(self, session: Session, msg: Message) -> None:
        """A request behind a Login still being checked: keep it for later, in order."""
        if len(session.held) >= MAX_HELD:
            raise RemoteProtocolError(
                ErrorCode.BAD_STATE, "wait for the answer to your login", request_id=msg.request_id
            )
        session.held.append(msg)

    def _release_held(self, session: Session, now: float) -> None:
        held, session.held = session.held, []
        for msg in held:
            if session.closing:
                return
            try:
                self._dispatch(session, msg, now)
            except RemoteProtocolError as exc:
                self._refuse(session, exc)

    # ---- accounts changed by an admin --------------------------------------------------------

    def _accounts_changed(self, changes: dict[str, Account | None], now: float) -> None:
        for name, account in changes.items():
            old = self.accounts.get(name)
            if account is None:
                self.accounts.pop(name, None)
                log.warning("account %s removed", name)
                self._forget_tokens(name)
                self._end_sessions(name, "your account was removed")
            else:
                self.accounts[name] = account
                if old is None:
                    log.warning("account %s added (%s)", name, account.role)
                elif old.password_hash != account.password_hash:
                    log.warning("account %s: password changed", name)
                    self._forget_tokens(name)  # `msgsrv user passwd` deleted them from the database
                    self._end_sessions(name, "your password was changed: log in again")
                elif old.role != account.role:
                    log.warning("account %s is now %s", name, account.role)

    def _expire_tokens(self, now: float) -> int:
        """Forget the device tokens past their lifetime; return the time (µs) before which
        the store deletes them too."""
        before = self._wall_us(now) - TOKEN_LIFETIME_US
        for digest in [d for d, t in self.tokens.items() if t.created_us < before]:
            del self.tokens[digest]
        return before

    def _forget_tokens(self, user: str) -> None:
        for digest in [d for d, t in self.tokens.items() if t.user == user]:
            del self.tokens[digest]

    def _end_sessions(self, user: str, why: str) -> None:
        for session in [s for s in self.sessions.values() if s.user == user]:  # online, or logging in
            if not session.closing:
                self._error(session, ErrorCode.ACCOUNT_CHANGED, why, 0)
                self._close(session, "account changed")

    if TYPE_CHECKING:  # the engine's, used above
        _batch: Batch
        _out: list[Action]
        _polls_done: int
        subscribers: set[Session]

        def _polls_due(self) -> int: ...
        def _new_id(self) -> int: ...
        def _wall_us(self, now: float) -> int: ...
        def _write(self, session: Session, msg: Message) -> None: ...
        def _error(self, session: Session, code: ErrorCode, message: str, request_id: int) -> None: ...
        def _close(self, session: Session, reason: str) -> None: ...
        def _dispatch(self, session: Session, msg: Message, now: float) -> None: ...
        def _refuse(self, session: Session, exc: RemoteProtocolError) -> None: ...
        def _maybe_fetch(self, session: Session) -> None: ...
        def _delivered_receipt(self, session: Session, note: DeliveredNote) -> None: ...
        def _broadcast_presence(self, user: str, online: int, now: float, skip: Session | None = None) -> None: ...


def _digest(token: str) -> str:
    """What the server keeps of a device token: its SHA-256 (a stolen database holds no token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _host(peer: str) -> str:
    """The address part of "host:port" (IPv6 too): failures are counted per address."""
    return peer.rsplit(":", 1)[0]
