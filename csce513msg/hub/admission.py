"""Who gets a password hash next: logins wait here, fairly, in a bounded queue.

A password hash costs tens of milliseconds of a hash thread by design, so a server
checks only a few logins at a time (``HASH_SLOTS``) and the rest wait. Waiting must not
be where a flood wins: with one first-come queue capped at 64, a guessing flood from
100 addresses refused 19 of 20 real logins, and after a restart 30-45 % of 100
reconnecting clients were refused. So:

1. a login that carries a valid *device token* for its account (a device that has
   logged in before; OWASP's "device cookies") goes first, in arrival order;
2. every other login waits in its address's queue, and the addresses take turns
   (round robin): a flood from some addresses slows each of them down, not the others,
   and a class behind one NAT address gets its turn like any other address;
3. the queue holds at most ``capacity`` logins; when it is full a newcomer takes the
   place of the newest login of the address with the most waiting (the longest queue
   pays), unless its own address has the most; a trusted login is never dropped for
   an untrusted one. The login dropped (or refused) gets RATE_LIMITED, and its client
   tries again a little later.

Which login is ready to go is the gate's decision (the accounts poll it waits for, the
throttles' room); the queue only keeps the order. Throttles count an attempt when it is
admitted to hashing, not when its hash is done (``Throttle.start``): counted at the
end, 64 concurrent guesses once passed a limit of 5.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import Login, Register
from .actions import ConnId

HASH_SLOTS = 4  #: logins hashed at once (the hash lane's 2 threads, and one queued behind each)


@dataclass(slots=True, eq=False)
class Pending:
    """A login (or registration) waiting for its hash."""

    conn: ConnId
    msg: Login | Register
    user: str  #: the account's name, folded to lower case
    host: str  #: the address it came from (throttled and queued per address)
    token: str  #: the digest of a device token valid for ``user``, else ""
    after: int  #: the accounts poll it waits for (a login never misses an account just added)


class Throttle:
    """Attempts per key (an account, an address, a device token) in a sliding window.

    ``failures`` are failed logins within the last ``window`` seconds; ``hashing`` are
    attempts admitted and not yet answered. A key is *blocked* at ``limit`` failures
    (refused at once, without a hash) and *full* at ``limit`` failures and attempts
    together (its next attempt waits for one to finish)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, collections.deque[float]] = {}
        self.hashing: collections.Counter[str] = collections.Counter()
        self.reported: dict[str, float] = {}  # key -> end of the blocked stretch already logged

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` is no longer blocked (0: it is not)."""
        times = self.failures.get(key)
        if not times or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - now)

    def full(self, key: str, now: float) -> bool:
        """Whether one more attempt now could pass the limit."""
        times = self.failures.get(key, ())
        recent = sum(1 for t in times if t > now - self.window)
        return recent + self.hashing[key] >= self.limit

    def start(self, key: str) -> None:
        """An attempt is admitted to hashing: it counts from now."""
        self.hashing[key] += 1

    def finish(self, key: str, failed: bool, now: float) -> None:
        """The attempt's hash is done: a failure stays counted for the window."""
        self.hashing[key] -= 1
        if self.hashing[key] <= 0:
            del self.hashing[key]
        if failed:
            self.record(key, now)

    def record(self, key: str, now: float) -> None:
        """Count one event against ``key`` (a failure; for registrations, an account made)."""
        self.failures.setdefault(key, collections.deque(maxlen=self.limit)).append(now)

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


class LoginQueue:
    """Logins waiting for a hash: trusted ones first, the others round robin by address."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.trusted: collections.deque[Pending] = collections.deque()
        #: address -> its waiting logins; the dict's order is the turn order (served: to the back)
        self.hosts: dict[str, collections.deque[Pending]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, login: Pending) -> Pending | None:
        """Queue ``login``; return the login that lost its place to make room (``login``
        itself if none can be made), or None."""
        dropped = None
        if self.size >= self.capacity:
            longest = max(self.hosts.values(), key=len, default=None)
            own = len(self.hosts.get(login.host, ())) + 1
            if longest is None or (not login.token and len(longest) <= own):
                return login  # its address has the most waiting already: it pays
            dropped = longest.pop()
            self.size -= 1
            if not longest:
                del self.hosts[dropped.host]
        if login.token:
            self.trusted.append(login)
        else:
            self.hosts.setdefault(login.host, collections.deque()).append(login)
        self.size += 1
        return dropped

    def take(self, ready: Callable[[Pending], bool]) -> Pending | None:
        """The next login whose turn it is and that is ``ready``: the first trusted one,
        else the first address in turn whose oldest login is ready (it then goes to the
        back of the turn order)."""
        if self.trusted and ready(self.trusted[0]):
            self.size -= 1
            return self.trusted.popleft()
        for host, waiting in self.hosts.items():
            if ready(waiting[0]):
                login = waiting.popleft()
                del self.hosts[host]
                if waiting:
                    self.hosts[host] = waiting  # back of the turn order
                self.size -= 1
                return login
        return None
