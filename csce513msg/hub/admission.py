"""Who gets a password check next: logins wait here, fairly, in a bounded queue.

A password hash costs tens of milliseconds of a hash thread by design, so a server
checks only a few logins at a time (``HubConfig.hash_slots``) and the rest wait. Waiting
must not be where a flood wins: with one first-come list capped at 64, a guessing flood
from 100 addresses refused 19 of 20 real logins, and after a restart 30-45 % of 100
reconnecting clients were refused. So:

1. a login that carries a valid *device token* for its account (a device that has
   logged in before; OWASP's "device cookies") goes first, one per account at a time
   (a second one, or a replayed token, waits with everyone else);
2. every other login waits in its address's line, and the addresses take turns (round
   robin): a flood from some addresses slows those addresses down, not the others, and
   a class behind one NAT address gets its turn like any other address;
3. the queue holds at most ``capacity`` logins. When it is full, a newcomer takes the
   place of the newest login of the address with the most waiting (the longest line
   pays), unless its own address has as many; a trusted newcomer only ever takes a
   place from a line of two or more. The login that loses its place gets RATE_LIMITED,
   and its client tries again a little later.

Which login is ready to go is the gate's decision (the accounts poll it waits for, the
room in its throttle buckets); the queue keeps the order. Throttles count an attempt
when it is admitted to the check, not when its answer comes (``Throttle.start``):
counted at the end, 64 concurrent guesses once passed a limit of 5.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import Login, Register
from .actions import ConnId


@dataclass(slots=True, eq=False)
class Pending:
    """A login (or registration) waiting for its password check."""

    conn: ConnId
    msg: Login | Register
    user: str  #: the account's name, folded to lower case
    host: str  #: the address it came from (throttled and queued per address; an IPv6 /64)
    token_digest: str  #: the digest of a device token valid for ``user``, else ""
    trusted: bool  #: it goes in the trusted lane (a valid token, the account's only one there)
    poll_needed: int  #: the accounts poll it waits for (a login never misses an account just added)


class QueueFull(Exception):  # noqa: N818 - flow control, not a fault: named as asyncio.QueueFull and queue.Full
    """No place can be made for this login: its client should try again later."""


class Throttle:
    """Attempts per key (an account, an address, a device token) in a sliding window.

    ``events`` are what counts against a key within the last ``window`` seconds (failed
    logins; for registrations, accounts made); ``checking`` are attempts admitted and not
    yet answered. A key is *blocked* at ``limit`` events (its attempts are refused at
    once, without a hash) and *full* at ``limit`` events and attempts together (its next
    attempt waits until one is answered)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.events: dict[str, collections.deque[float]] = {}
        self.checking: collections.Counter[str] = collections.Counter()
        self.reported: dict[str, float] = {}  # key -> end of the blocked stretch already logged

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` is no longer blocked (0: it is not)."""
        times = self.events.get(key)
        if not times or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - now)

    def full(self, key: str, now: float) -> bool:
        """Whether one more attempt now could pass the limit."""
        recent = sum(1 for t in self.events.get(key, ()) if t > now - self.window)
        return recent + self.checking[key] >= self.limit

    def start(self, key: str) -> None:
        """An attempt is admitted to the check: it counts from now."""
        self.checking[key] += 1

    def finish(self, key: str, counts: bool, now: float) -> None:
        """The attempt is answered; if it ``counts`` (it failed), it stays counted for the window."""
        self.checking[key] -= 1
        if self.checking[key] <= 0:
            del self.checking[key]
        if counts:
            self.record(key, now)

    def record(self, key: str, now: float) -> None:
        self.events.setdefault(key, collections.deque(maxlen=self.limit)).append(now)

    def clear(self, key: str) -> None:
        self.events.pop(key, None)

    def first_refusal(self, key: str, now: float, wait: float) -> bool:
        """True once per blocked stretch of ``key``: the refusal worth a line in the log (an
        attacker hammering a throttled account must not fill the server window)."""
        if self.reported.get(key, 0.0) > now:
            return False
        self.reported[key] = now + wait
        return True

    def sweep(self, now: float) -> None:
        """Forget keys whose events are all older than the window."""
        old = now - self.window
        for key in [k for k, times in self.events.items() if times[-1] < old]:
            del self.events[key]
        for key in [k for k, until in self.reported.items() if until < now]:
            del self.reported[key]


class LoginQueue:
    """Logins waiting for a check: the trusted lane first, the others round robin by address."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.trusted: collections.deque[Pending] = collections.deque()
        #: address -> its waiting logins; the dict's order is the turn order (served: to the back)
        self.hosts: dict[str, collections.deque[Pending]] = {}
        self.by_conn: dict[ConnId, Pending] = {}

    def __len__(self) -> int:
        return len(self.by_conn)

    def push(self, login: Pending) -> Pending | None:
        """Queue ``login``; return the login that lost its place to make room, if one did.

        Raises:
            QueueFull: no place can be made for ``login`` (its own line is the longest).
        """
        dropped = None
        if len(self.by_conn) >= self.capacity:
            longest = max(self.hosts.values(), key=len, default=collections.deque())
            enough = 2 if login.trusted else len(self.hosts.get(login.host, ())) + 2
            if len(longest) < enough:
                raise QueueFull
            dropped = longest.pop()
            self._forget(dropped)
        if login.trusted:
            self.trusted.append(login)
        else:
            self.hosts.setdefault(login.host, collections.deque()).append(login)
        self.by_conn[login.conn] = login
        return dropped

    def take(self, ready: Callable[[Pending], bool]) -> Pending | None:
        """The next login whose turn it is and that is ``ready``: the first trusted one,
        else the first address in turn whose oldest login is ready (that address then goes
        to the back of the turn order)."""
        if self.trusted and ready(self.trusted[0]):
            login = self.trusted.popleft()
            del self.by_conn[login.conn]
            return login
        for host, waiting in self.hosts.items():
            if ready(waiting[0]):
                login = waiting.popleft()
                del self.hosts[host]  # iteration stops here: we return at once
                if waiting:
                    self.hosts[host] = waiting
                del self.by_conn[login.conn]
                return login
        return None

    def remove(self, conn: ConnId) -> Pending | None:
        """Take out the login of a connection that closed while it waited (it holds a password)."""
        login = self.by_conn.get(conn)
        if login is not None:
            (self.trusted if login.trusted else self.hosts[login.host]).remove(login)
            self._forget(login)
        return login

    def _forget(self, login: Pending) -> None:
        del self.by_conn[login.conn]
        if not login.trusted and not self.hosts[login.host]:
            del self.hosts[login.host]
