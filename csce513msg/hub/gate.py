"""Logging in and registering: the engine's front door, a part of ``Engine``.

A password hash costs tens of milliseconds by design, so it never runs on the loop:
Login (or Register) submits the KDF as a job in the ``hash`` lane and the session
waits in AUTHENTICATING; whatever else the client sends meanwhile is held, in order,
and handled once the answer is known. A good password is not the end yet: the
login then reads, in the next storage batch, how many messages wait for the device
and which delivered receipts it missed (``LoginRead``); LoginOk follows the commit.

::

    Login ──accounts poll──> queue (admission.py) ──hash lane──> verified?
        ──storage batch─> LoginOk (READY, with a device token) ──> catch-up
                 └── no: AUTH_FAILED (AWAIT_LOGIN), counted by the throttles

Logins wait for a hash in a fair, bounded queue (``admission.LoginQueue``: devices that
logged in before first, then the addresses in turn). Failed logins are throttled per
account and per address, counted as each attempt is admitted to hashing
(``admission.Throttle``): past the limit, a login is refused at once, without hashing.
A login that carries a valid device token for its account (LoginOk hands one to every
device) is throttled in a bucket of that token alone, so guesses against an account
or from an address never lock out its own devices. Accounts changed by ``msgsrv
user`` in another process reach the hub through the store's poll
(``accounts_changed``); a removed account or a new password ends its sessions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from ..protocol import (
    PRE_LOGIN_MAX_FRAME,
    WAITING_CAP,
    ErrorCode,
    Login,
    LoginOk,
    Message,
    MsgType,
    Register,
    RemoteProtocolError,
)
from ..protocol.names import checked_name
from ..protocol.transfer import BULK_MINOR, CHUNK_HEADROOM
from ..store import TOKENS_PER_USER, Account, Batch, BatchResult, DeviceToken, LoginRead
from .actions import ConnId, Lane
from .admission import LoginQueue, Pending, QueueFull, Throttle
from .config import HubConfig
from .delivery import Mailroom
from .outbox import Outbox, retry_ms
from .session import LoginAccepted, LoginRefused, Session

log = logging.getLogger("csce513msg.hub")
MAX_HELD = 64  #: requests a client may pipeline behind a Login still being checked
MAX_DEVICE_ID = 64  #: bytes of a Login's or Register's device_id (kept with every cursor)


TOKEN_LIFETIME_US = 180 * 86400 * 1_000_000  #: a device token is valid for 180 days from its making


class Passwords(Protocol):
    """Password hashing and rules (``crypto.passwords.Scrypt``). The hub only hands
    ``hash`` and ``verify`` to the ``hash`` lane; it never runs them itself."""

    def hash(self, password: str) -> str: ...

    def verify(self, password: str, stored: str) -> bool: ...

    def decoy(self) -> str: ...

    def problem(self, password: str) -> str | None: ...


class Front(Protocol):
    """What the gate asks of the engine it is a part of."""

    def dispatch(self, session: Session, msg: Message, now: float, charged: bool = False) -> None:
        """Handle a request (one held behind a login, once it is answered)."""

    def move(self, session: Session, event: type) -> None:
        """Change the session's state, as the state table says for ``event``."""

    def refuse(self, session: Session, exc: RemoteProtocolError) -> None:
        """Answer a refused request with its error (and close, if it is fatal)."""

    def came_online(self, session: Session, now: float) -> None:
        """The session logged in as ``session.user``: online, presence, subscriptions."""

    def wall_us(self, now: float) -> int:
        """Wall time, in µs since the epoch, for monotonic ``now``."""


class Gate:
    """Login, registration, accounts and device tokens.

    Args:
        config: the hub's limits.
        passwords: hashes and checks passwords (in the ``hash`` lane, never here).
        accounts: every account, by name (the gate keeps it current).
        device_tokens: the device tokens in force, by digest.
        sessions: every connection's session, by id (the engine's).
        outbox: where everything to send goes.
        mail: the mailroom, whose batch records logins and whose polls they wait for.
        front: the engine, for what a login changes beyond the gate.
    """

    def __init__(
        self, config: HubConfig, passwords: Passwords, accounts: dict[str, Account],
        device_tokens: dict[str, DeviceToken], sessions: dict[ConnId, Session], outbox: Outbox, mail: Mailroom,
        front: Front,
    ) -> None:  # fmt: skip
        self.config, self.sessions, self.out, self.mail, self.front = config, sessions, outbox, mail, front
        self.passwords = passwords
        self.accounts = accounts
        self.device_tokens = device_tokens  #: digest -> the device token's record, valid for its user
        self._decoy = passwords.decoy()  # an unknown user's password is checked against this
        cfg = self.config
        self.account_throttle = Throttle(cfg.login_failures_per_account, cfg.login_failure_window)
        self.address_throttle = Throttle(cfg.login_failures_per_address, cfg.login_failure_window)
        self.token_throttle = Throttle(cfg.login_failures_per_account, cfg.login_failure_window)
        self.registrations = Throttle(cfg.registrations_per_address, 3600.0)  # accounts made per address an hour
        self.queue = LoginQueue(cfg.max_pending_logins)  # waiting for their check
        self.checking: dict[int, tuple[Pending, str]] = {}  # hash job id -> (login, the hash it is checked against)
        self._trusted: set[str] = set()  # accounts with a login in the trusted lane, waiting or being checked
        self._registering: set[str] = set()  # names whose registration is under way
        self._login_reads: dict[int, tuple[ConnId, int, str]] = {}  # LoginRead key -> (conn, request id, token)

    # ---- the requests ----------------------------------------------------------------

    def on_login(self, session: Session, msg: Login, now: float) -> None:
        user = checked_name(msg.user, msg.request_id)
        _check_device_id(msg.device_id, msg.request_id)
        digest = _digest(msg.device_token) if msg.device_token else ""
        if not self._valid_token(digest, user, now):
            digest = ""  # unknown, another account's, revoked or expired: an ordinary login
        trusted = bool(digest) and user not in self._trusted  # one at a time per account goes first
        login = Pending(session.conn, msg, user, _host(session.peer), digest, trusted, self.mail.polls_due())
        self._check_throttles(session, login, now)
        self._enqueue(session, login, now)
        if trusted:
            self._trusted.add(user)

    def on_register(self, session: Session, msg: Register, now: float) -> None:
        rid = msg.request_id
        if not self.config.self_register:
            raise RemoteProtocolError(
                ErrorCode.REGISTRATION_CLOSED, "this server does not take registrations: ask your instructor",
                request_id=rid,
            )  # fmt: skip
        user = checked_name(msg.user, rid)
        _check_device_id(msg.device_id, rid)
        if user in self.accounts or user in self._registering:
            raise RemoteProtocolError(ErrorCode.NAME_TAKEN, f"the name {user!r} is taken", request_id=rid)
        if problem := self.passwords.problem(msg.password):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, problem, request_id=rid)
        login = Pending(session.conn, msg, user, _host(session.peer), "", False, self.mail.polls_due())
        self._check_throttles(session, login, now)  # an address that keeps failing cannot register either
        self._enqueue(session, login, now)
        self._registering.add(user)

    def _enqueue(self, session: Session, login: Pending, now: float) -> None:
        """Wait for the check in the fair queue, after the store's next news of accounts (one
        cheap check when nothing changed), so a login never misses an account `msgsrv
        user` has just added, changed or removed. The frame limit stays small until LoginOk:
        a Login, right or wrong, vouches for nothing."""
        try:
            dropped = self.queue.push(login)
        except QueueFull:
            raise RemoteProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many logins from your address wait already: try again in a few seconds",
                request_id=login.msg.request_id,
            ) from None
        self.mail.batch.poll_accounts = True
        if dropped is None:
            return
        self._gone_from_queue(dropped)
        if (other := self.sessions.get(dropped.conn)) is not None:  # it lost its place: it tries again later
            busy = "too many logins wait: try again in a few seconds"
            # (this cannot come back here: what ``other`` held is dispatched in AWAIT_LOGIN, where a
            # held Login is a new attempt that takes a place or is refused, never evicts ``other``)
            self._not_logged_in(other, ErrorCode.RATE_LIMITED, busy, dropped.msg.request_id, now)

    def _gone_from_queue(self, login: Pending) -> None:
        """A login left the queue without a check (evicted, or its connection closed)."""
        if isinstance(login.msg, Register):
            self._registering.discard(login.user)
        if login.trusted:
            self._trusted.discard(login.user)

    def admit(self, now: float) -> None:
        """Check the next logins in turn while slots are free: each one's accounts poll is
        back and its throttle buckets have room (else it waits; a blocked bucket refuses)."""
        polled = self.mail.polls_done
        while len(self.checking) < self.config.hash_slots:
            login = self.queue.take(lambda p: p.poll_needed <= polled and not self._must_wait(p, now))
            if login is None:
                return
            session = self.sessions.get(login.conn)
            if session is None or session.closing:
                self._gone_from_queue(login)
                continue
            if login.token_digest and not self._valid_token(login.token_digest, login.user, now):
                login.token_digest = ""  # revoked while it waited (a new password): an ordinary login
            try:  # the events may have reached the limit while it waited
                self._check_throttles(session, login, now)
            except RemoteProtocolError as exc:
                self._gone_from_queue(login)
                self._not_logged_in(session, exc.code, exc.message, login.msg.request_id, now, exc.retry_after_ms)
                continue
            if isinstance(login.msg, Register):
                if login.user in self.accounts:  # `msgsrv user add` took the name meanwhile
                    self._gone_from_queue(login)
                    taken = f"the name {login.user!r} is taken"
                    self._not_logged_in(session, ErrorCode.NAME_TAKEN, taken, login.msg.request_id, now)
                    continue
                job: Callable[[], object] = functools.partial(self.passwords.hash, login.msg.password)
                checked = ""
            else:
                account = self.accounts.get(login.user)
                checked = account.password_hash if account is not None else self._decoy  # the same work either way
                job = functools.partial(self.passwords.verify, login.msg.password, checked)
            for throttle, key in self._buckets(login):
                throttle.start(key)  # counted from now, not when the answer comes
            job_id = self.out.new_id()
            self.checking[job_id] = (login, checked)
            self.out.submit(job_id, job, Lane.HASH)

    def _buckets(self, login: Pending) -> list[tuple[Throttle, str]]:
        """The throttles an attempt counts in: its device token's alone, if it has a valid
        one (so guesses by others never lock a device out), else its account's and its
        address's; a registration also in its address's registrations."""
        if login.token_digest:
            return [(self.token_throttle, login.token_digest)]
        buckets = [(self.account_throttle, login.user), (self.address_throttle, login.host)]
        if isinstance(login.msg, Register):
            buckets.append((self.registrations, login.host))
        return buckets

    def _must_wait(self, login: Pending, now: float) -> bool:
        """A bucket of it has no room for one more attempt now. A blocked bucket is another
        matter: its login goes now, to be refused at once, without a hash."""
        buckets = self._buckets(login)
        if any(throttle.wait(key, now) for throttle, key in buckets):
            return False
        return any(throttle.full(key, now) for throttle, key in buckets)

    def sweep(self, now: float) -> None:
        """Forget the throttles' events older than their windows (from the engine's timer)."""
        for throttle in (self.account_throttle, self.address_throttle, self.token_throttle, self.registrations):
            throttle.sweep(now)

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
            what = "new accounts" if isinstance(login.msg, Register) and self.registrations.wait(login.host, now) else (
                "failed logins"
            )  # fmt: skip
            raise RemoteProtocolError(
                ErrorCode.AUTH_THROTTLED, f"too many {what}: try again in {wait:.0f} s",
                request_id=login.msg.request_id, retry_after_ms=retry_ms(wait),
            )  # fmt: skip

    def _valid_token(self, digest: str, user: str, now: float) -> bool:
        record = self.device_tokens.get(digest)
        oldest = self.front.wall_us(now) - TOKEN_LIFETIME_US
        return record is not None and record.user == user and record.created_us >= oldest

    # ---- answers from the lanes ------------------------------------------------------------

    def hash_done(self, job_id: int, result: object, now: float) -> None:
        """The check finished: a login is verified (True/False), a registration hashed (str).
        (The engine admits the next logins after this.)"""
        login, checked = self.checking.pop(job_id)
        if login.trusted:
            self._trusted.discard(login.user)
        registered = isinstance(login.msg, Register) and isinstance(result, str)
        ok = self._settle(login, checked, result, registered, now)
        session = self.sessions.get(login.conn)
        if isinstance(login.msg, Register):
            self._registering.discard(login.user)
        if session is None or session.closing:
            return  # gone while we checked
        rid = login.msg.request_id
        if isinstance(result, BaseException):  # the hash lane raised: a bug, not a wrong password
            return self._not_logged_in(session, ErrorCode.INTERNAL, "the login could not be checked", rid, now)
        if isinstance(login.msg, Register):
            if login.user in self.accounts:  # `msgsrv user add` took the name meanwhile
                taken = f"the name {login.user!r} is taken"
                return self._not_logged_in(session, ErrorCode.NAME_TAKEN, taken, rid, now)
            account = Account(login.user, "student", str(result), self.front.wall_us(now))
            self.accounts[login.user] = account
            self.mail.batch.accounts.append(account)
            log.info("registered %s from %s", login.user, session.peer)
        elif not ok:
            log.warning("auth failed: %s from %s", login.user, session.peer)
            failed = "auth failed: wrong user name or password"
            return self._not_logged_in(session, ErrorCode.AUTH_FAILED, failed, rid, now)
        self._log_in(session, login, checked or str(result), now)

    def _settle(self, login: Pending, checked: str, result: object, registered: bool, now: float) -> bool:
        """The throttles' side of an answered attempt; return whether the login succeeded.
        A failure counts in its buckets; one that blocks its device token revokes it (a
        stolen laptop gets a few guesses with it, then is an ordinary stranger)."""
        account = self.accounts.get(login.user)  # checked against an empty hash (no password set): never ok
        ok = not isinstance(login.msg, Register) and result is True
        ok = ok and account is not None and account.password_hash == checked
        failed = not isinstance(login.msg, Register) and not ok and not isinstance(result, BaseException)
        for throttle, key in self._buckets(login):
            throttle.finish(key, failed if throttle is not self.registrations else registered, now)
        if ok:
            (self.token_throttle if login.token_digest else self.account_throttle).clear(
                login.token_digest or login.user
            )
        elif login.token_digest and self.token_throttle.wait(login.token_digest, now):
            log.warning("device token of %s revoked after %d failed logins", login.user, self.token_throttle.limit)
            del self.device_tokens[login.token_digest]
            self.mail.batch.revoked_tokens.append(login.token_digest)
        return ok

    def _log_in(self, session: Session, login: Pending, password_hash: str, now: float) -> None:
        """The password is right: record the device (and give it a device token, or a fresh
        one for a token half-way through its life) in the next batch; LoginOk follows it."""
        msg = login.msg
        user = self.accounts[login.user].name  # the account's own string: one a user, not one a session
        token = msg.device_token if isinstance(msg, Login) and login.token_digest else ""
        record = self.device_tokens.get(login.token_digest)
        if not token or record is None or record.created_us < self.front.wall_us(now) - TOKEN_LIFETIME_US // 2:
            token = secrets.token_hex(16)  # 128 random bits
            new = DeviceToken(_digest(token), user, msg.device_id, self.front.wall_us(now), password_hash)
            self.mail.batch.device_tokens.append(new)
        key = self.out.new_id()
        self._login_reads[key] = (login.conn, msg.request_id, token)
        session.user, session.device = user, msg.device_id  # not online until LoginOk
        history = self.config.new_device_history
        self.mail.batch.logins.append(LoginRead(key, user, msg.device_id, history, WAITING_CAP, session.groups))

    def logins_done(self, batch: Batch, result: BatchResult, now: float) -> None:
        """The login reads of a batch are back (or failed with it): answer each login."""
        if result.error is None:
            for new in batch.device_tokens:
                self._keep_token(new)
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
                    self.mail.delivered_receipt(session, note)

    def _keep_token(self, new: DeviceToken) -> None:
        """Remember a token the store kept: the store did what is done here (docs/storage.md)."""
        account = self.accounts.get(new.user)
        if account is None or account.password_hash != new.password_hash:
            return  # the password changed while this login was checked: the store did not keep it
        mine = [t for t in self.device_tokens.values() if t.user == new.user]
        for old in mine:
            if old.device == new.device:
                del self.device_tokens[old.digest]  # one token per device
        self.device_tokens[new.digest] = dataclasses.replace(new, password_hash="")  # used, not kept
        mine = sorted((t for t in self.device_tokens.values() if t.user == new.user), key=lambda t: t.created_us)
        for old in mine[:-TOKENS_PER_USER]:
            del self.device_tokens[old.digest]

    def _logged_in(self, session: Session, user: str, waiting: int, rid: int, token: str, now: float) -> None:
        self.front.move(session, LoginAccepted)
        session.decoder.max_frame = self.config.max_frame
        if session.files and session.minor >= BULK_MINOR:  # its chunks may be larger than a frame (1.8)
            session.decoder.bulk_type = MsgType.FILE_CHUNK
            session.decoder.bulk_frame = self.config.max_chunk + CHUNK_HEADROOM
        self.out.write(session, LoginOk(self.front.wall_us(now), user, self.accounts[user].role, waiting, token, rid))
        self.front.came_online(session, now)
        self.mail.maybe_fetch(session)  # what arrived while this device was away
        self._release_held(session, now)

    def _not_logged_in(
        self, session: Session, code: ErrorCode, message: str, rid: int, now: float, retry_after_ms: int = 0
    ) -> None:
        session.user = None
        self.front.move(session, LoginRefused)
        session.decoder.max_frame = min(PRE_LOGIN_MAX_FRAME, self.config.max_frame)
        self.out.error(session, code, message, rid, retry_after_ms)
        self._release_held(session, now)

    def hold(self, session: Session, msg: Message, now: float) -> None:
        """A request behind a Login still being checked: keep it for later, in order."""
        if len(session.held) >= MAX_HELD:
            raise RemoteProtocolError(
                ErrorCode.BAD_STATE, "wait for the answer to your login", request_id=msg.request_id
            )
        session.held.append(msg)

    def _release_held(self, session: Session, now: float) -> None:
        if not session.held:
            return  # (most logins: no new empty list for every session)
        held, session.held = session.held, []
        for msg in held:
            if session.closing:
                return
            try:
                self.front.dispatch(session, msg, now, charged=True)
            except RemoteProtocolError as exc:
                self.front.refuse(session, exc)

    # ---- accounts changed by an admin --------------------------------------------------------

    def accounts_changed(self, changes: dict[str, Account | None], now: float) -> None:
        for name, account in changes.items():
            old = self.accounts.get(name)
            if account is None:
                self.accounts.pop(name, None)
                log.warning("account %s removed", name)
                self.forget_tokens(name)
                self._end_sessions(name, "your account was removed")
            else:
                self.accounts[name] = account
                if old is None:
                    log.warning("account %s added (%s)", name, account.role)
                elif old.password_hash != account.password_hash:
                    log.warning("account %s: password changed", name)
                    self.forget_tokens(name)  # `msgsrv user passwd` deleted them from the database
                    self._end_sessions(name, "your password was changed: log in again")
                elif old.role != account.role:
                    log.warning("account %s is now %s", name, account.role)

    def expire_tokens(self, now: float) -> int:
        """Forget the device tokens past their lifetime; return the time (µs) before which
        the store deletes them too."""
        before = self.front.wall_us(now) - TOKEN_LIFETIME_US
        for digest in [d for d, t in self.device_tokens.items() if t.created_us < before]:
            del self.device_tokens[digest]
        return before

    def forget_tokens(self, user: str) -> None:
        for digest in [d for d, t in self.device_tokens.items() if t.user == user]:
            del self.device_tokens[digest]

    def login_gone(self, conn: ConnId) -> None:
        """A connection closed: its login, if one waits in the queue, leaves it (with its password)."""
        if (login := self.queue.remove(conn)) is not None:
            self._gone_from_queue(login)

    def _end_sessions(self, user: str, why: str) -> None:
        for session in [s for s in self.sessions.values() if s.user == user]:  # online, or logging in
            if not session.closing:
                self.out.error(session, ErrorCode.ACCOUNT_CHANGED, why, 0)
                self.out.close(session, "account changed")


def _check_device_id(device_id: str, rid: int) -> None:
    if len(device_id.encode()) > MAX_DEVICE_ID:
        raise RemoteProtocolError(
            ErrorCode.BAD_REQUEST, f"device_id is over {MAX_DEVICE_ID} bytes (a UUID is 36)", request_id=rid
        )


def _digest(token: str) -> str:
    """What the server keeps of a device token: its SHA-256 (a stolen database holds no token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _host(peer: str) -> str:
    """The address of "host:port" or "[v6]:port", as logins are throttled and queued: per
    IPv4 address, and per IPv6 /64 (one host's share of a network: it has 2^64 of them)."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
