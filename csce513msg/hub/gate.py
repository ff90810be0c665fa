"""Logging in and registering: the engine's front door, a mixin of ``Engine``.

A password hash costs tens of milliseconds by design, so it never runs on the loop:
Login (or Register) submits the KDF as a job in the ``hash`` lane and the session
waits in AUTHENTICATING; whatever else the client sends meanwhile is held, in order,
and handled once the answer is known. A good password is not the end yet: the
login then reads, in the next storage batch, how many messages wait for the device
and which delivered receipts it missed (``LoginRead``); LoginOk follows the commit.

::

    Login ──hash lane──> verified? ──store lane──> LoginOk (READY) ──> catch-up
                 └── no: AUTH_FAILED (AWAIT_LOGIN), counted by the throttles

Failed logins are throttled per account and per address (``Throttle``): past the
limit, a login is refused at once, without hashing. Accounts changed by ``msgsrv
user`` in another process reach the hub through the store's poll
(``_accounts_changed``); a removed account or a new password ends its sessions.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..protocol import WAITING_CAP, ErrorCode, Login, LoginOk, Message, Register, RemoteProtocolError
from ..store import Account, Batch, BatchResult, DeliveredNote, LoginRead
from .actions import Action, ConnId, Submit
from .config import HubConfig
from .session import Session, State

log = logging.getLogger("csce513msg.hub")
MAX_HELD = 64  #: requests a client may pipeline behind a Login still being checked
#: User names: 1-32 characters, letters, digits, "_", "." and "-", not starting with
#: "." or "-". Names are case-insensitive: the hub folds them to lower case.
NAME_RULE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,31}")


class Passwords(Protocol):
    """Password hashing and rules (``crypto.passwords.Scrypt``). The hub only hands
    ``hash`` and ``verify`` to the ``hash`` lane; it never runs them itself."""

    def hash(self, password: str) -> str: ...

    def verify(self, password: str, stored: str) -> bool: ...

    def decoy(self) -> str: ...

    def problem(self, password: str) -> str | None: ...


class Throttle:
    """Failed logins per key (an account, an address) in a sliding window of ``window`` s."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, collections.deque[float]] = {}
        self.reported: dict[str, float] = {}  # key -> end of the blocked stretch already logged

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self.failures.get(key)
        if not times or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - now)

    def fail(self, key: str, now: float) -> None:
        times = self.failures.setdefault(key, collections.deque(maxlen=self.limit))
        times.append(now)

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)

    def first_refusal(self, key: str, now: float, wait: float) -> bool:
        """True once per blocked stretch of ``key``: the refusal worth a line in the log (an
        attacker hammering a throttled account must not fill the server window)."""
        if self.reported.get(key, 0.0) > now:
            return False
        self.reported[key] = now + wait
        return True

    def sweep(self, now: float) -> None:
        """Forget keys whose failures are all older than the window."""
        old = now - self.window
        for key in [k for k, times in self.failures.items() if times[-1] < old]:
            del self.failures[key]
        for key in [k for k, until in self.reported.items() if until < now]:
            del self.reported[key]


class Gate:
    """Login, registration and accounts, for ``Engine``."""

    config: HubConfig
    sessions: dict[ConnId, Session]
    online: dict[str, list[Session]]

    def __init__(self, passwords: Passwords, accounts: dict[str, Account]) -> None:
        self.passwords = passwords
        self.accounts = accounts
        self._decoy = passwords.decoy()  # an unknown user's password is checked against this
        cfg = self.config
        self.account_throttle = Throttle(cfg.login_failures_per_account, cfg.login_failure_window)
        self.address_throttle = Throttle(cfg.login_failures_per_address, cfg.login_failure_window)
        self.registrations = Throttle(cfg.registrations_per_address, 3600.0)  # accounts made per address an hour
        #: hash job id -> (conn, user, device, request id, the stored hash it was checked against or
        #: "" for a registration)
        self._hashing: dict[int, tuple[ConnId, str, str, int, str]] = {}
        self._registering: set[str] = set()  # names whose registration is under way
        self._unpolled: list[tuple[ConnId, Login | Register]] = []  # logins for the next batch's poll
        self._polling: list[tuple[ConnId, Login | Register]] = []  # logins in the batch in flight
        self._login_reads: dict[int, tuple[ConnId, int]] = {}  # LoginRead key -> (conn, request id)

    # ---- the requests ----------------------------------------------------------------

    def _on_login(self, session: Session, msg: Login, now: float) -> None:
        user = self._valid_name(msg.user, msg.request_id)
        self._check_throttles(session, user, msg.request_id, now)
        self._after_poll(session, msg)

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
        self._check_throttles(session, user, rid, now)  # an address that keeps failing cannot register either
        if wait := self.registrations.wait(_host(session.peer), now):
            log.warning("registration throttled: %s from %s", user, session.peer)
            raise RemoteProtocolError(
                ErrorCode.AUTH_THROTTLED, f"too many new accounts from your address: try again in {wait:.0f} s",
                request_id=rid,
            )  # fmt: skip
        self._after_poll(session, msg)
        self._registering.add(user)

    def _after_poll(self, session: Session, msg: Login | Register) -> None:
        """First, the store's news of accounts (one cheap check when nothing changed), so a
        login never misses an account `msgsrv user` has just added, changed or removed."""
        busy = len(self._hashing) + len(self._unpolled) + len(self._polling)
        if busy >= self.config.max_pending_logins:
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED, "too many logins at once: try again", request_id=msg.request_id
            )
        self._unpolled.append((session.conn, msg))
        self._batch.poll_accounts = True

    def _polled(self, now: float) -> None:
        """The batch with the accounts' poll is back: hash what waited for it."""
        waiting, self._polling = self._polling, []
        for conn, msg in waiting:
            user = msg.user.lower()
            session = self.sessions.get(conn)
            if isinstance(msg, Register):
                if session is None or session.closing or user in self.accounts:
                    self._registering.discard(user)
                    if session is not None:  # `msgsrv user add` took the name meanwhile
                        taken = f"the name {user!r} is taken"
                        self._not_logged_in(session, ErrorCode.NAME_TAKEN, taken, msg.request_id, now)
                    continue
                job: Callable[[], object] = functools.partial(self.passwords.hash, msg.password)
                checked = ""
            elif session is None or session.closing:
                continue
            else:
                account = self.accounts.get(user)
                checked = account.password_hash if account is not None else self._decoy  # the same work either way
                job = functools.partial(self.passwords.verify, msg.password, checked)
            job_id = self._new_id()
            self._hashing[job_id] = (conn, user, msg.device_id, msg.request_id, checked)
            self._out.append(Submit(job_id, job, "hash"))

    def _check_throttles(self, session: Session, user: str, rid: int, now: float) -> None:
        host = _host(session.peer)
        by_account, by_address = self.account_throttle.wait(user, now), self.address_throttle.wait(host, now)
        wait = max(by_account, by_address)
        if wait > 0:
            first = by_account > 0 and self.account_throttle.first_refusal(user, now, by_account)
            first |= by_address > 0 and self.address_throttle.first_refusal(host, now, by_address)
            if first:
                log.warning("login throttled: %s from %s (%.0f s; more refusals not logged)", user, session.peer, wait)
            raise RemoteProtocolError(
                ErrorCode.AUTH_THROTTLED, f"too many failed logins: try again in {wait:.0f} s", request_id=rid
            )

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
        conn, user, device, rid, checked = self._hashing.pop(job_id)
        if not checked:
            self._registering.discard(user)
        session = self.sessions.get(conn)
        if session is None or session.closing:
            return  # gone while we hashed
        if checked:  # a login
            account = self.accounts.get(user)
            ok = result is True and account is not None and account.password_hash == checked
            if not ok:
                return self._auth_failed(session, user, rid, now)
            self.account_throttle.clear(user)
        elif isinstance(result, str):  # a registration
            if user in self.accounts:  # `msgsrv user add` took the name meanwhile
                return self._not_logged_in(session, ErrorCode.NAME_TAKEN, f"the name {user!r} is taken", rid, now)
            self.registrations.fail(_host(session.peer), now)  # counted like a failure: per address
            account = Account(user, "student", result, self._wall_us(now))
            self.accounts[user] = account
            self._batch.accounts.append(account)
            log.info("registered %s from %s", user, session.peer)
        else:  # the hash lane raised: a bug
            return self._not_logged_in(session, ErrorCode.INTERNAL, "the login could not be checked", rid, now)
        key = self._new_id()
        self._login_reads[key] = (conn, rid)
        session.user, session.device = user, device  # not online until LoginOk
        self._batch.logins.append(LoginRead(key, user, device, self.config.new_device_history, WAITING_CAP))

    def _auth_failed(self, session: Session, user: str, rid: int, now: float) -> None:
        self.account_throttle.fail(user, now)
        self.address_throttle.fail(_host(session.peer), now)
        log.warning("auth failed: %s from %s", user, session.peer)
        self._not_logged_in(session, ErrorCode.AUTH_FAILED, "auth failed: wrong user name or password", rid, now)

    def _logins_done(self, batch: Batch, result: BatchResult, now: float) -> None:
        """The login reads of a batch are back (or failed with it): answer each login."""
        for login in batch.logins:
            conn, rid = self._login_reads.pop(login.key)
            session = self.sessions.get(conn)
            info = result.logins.get(login.key)
            if info is None:  # the batch failed, a registration in it too
                if any(a.name == login.user for a in batch.accounts):
                    self.accounts.pop(login.user, None)
                if session is not None:
                    session.user = None
                    self._not_logged_in(session, ErrorCode.STORE_FAILED, "the login could not be recorded", rid, now)
            elif session is not None and not session.closing:
                self._logged_in(session, login.user, info.waiting, rid, now)
                for note in info.receipts:
                    self._delivered_receipt(session, note)

    def _logged_in(self, session: Session, user: str, waiting: int, rid: int, now: float) -> None:
        account = self.accounts[user]
        sessions = self.online.setdefault(user, [])
        sessions.append(session)
        session.state = State.READY
        log.info("login %s (#%d from %s, session %d)", user, session.conn, session.peer, len(sessions))
        self._write(session, LoginOk(self._wall_us(now), user, account.role, waiting, rid))
        if len(sessions) == 1:
            self._broadcast_presence(user, 1, now, skip=session)
        if session.presence:
            self.subscribers.add(session)
        self._maybe_fetch(session)  # what arrived while this device was away
        self._release_held(session, now)

    def _not_logged_in(self, session: Session, code: ErrorCode, message: str, rid: int, now: float) -> None:
        session.user = None
        session.state = State.AWAIT_LOGIN
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
                self._end_sessions(name, "your account was removed")
            else:
                self.accounts[name] = account
                if old is None:
                    log.warning("account %s added (%s)", name, account.role)
                elif old.password_hash != account.password_hash:
                    log.warning("account %s: password changed", name)
                    self._end_sessions(name, "your password was changed: log in again")
                elif old.role != account.role:
                    log.warning("account %s is now %s", name, account.role)

    def _end_sessions(self, user: str, why: str) -> None:
        for session in [s for s in self.sessions.values() if s.user == user]:  # online, or logging in
            if not session.closing:
                self._error(session, ErrorCode.ACCOUNT_CHANGED, why, 0)
                self._close(session, "account changed")

    if TYPE_CHECKING:  # the engine's, used above
        _batch: Batch
        _out: list[Action]
        subscribers: set[Session]

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


def _host(peer: str) -> str:
    """The address part of "host:port" (IPv6 too): failures are counted per address."""
    return peer.rsplit(":", 1)[0]
