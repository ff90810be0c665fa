"""Queues a loop keeps per connection: outbound bytes, and deadlines.

- ``Outbound``: a connection's outbound queue with its water marks and hard limit
  (``crossing`` says which one its size crossed: ``Water``);
- ``DeadlineQueue``: connections in deadline order (closes, TLS handshakes), so a
  loop's timer work is proportional to what is due, not to how many connections there are.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .common import BackendConfig


class Water(enum.Enum):
    """What an outbound queue's size crossed (``Outbound.crossing``)."""

    ABORT = "abort"  #: past the hard limit: the connection is aborted
    PAUSE = "pause"  #: up past the high-water mark: engine.pause_writing
    RESUME = "resume"  #: down below the low-water mark again: engine.resume_writing


class Outbound:
    """One connection's queue of bytes to send, written once per loop pass.

    ``crossing`` tells the backend which water mark the queue's size crossed, if any.
    """

    __slots__ = ("chunks", "paused", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.paused = False

    def append(self, data: bytes) -> None:
        """Queue ``data``; never blocks."""
        self.chunks.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        """Return everything queued as one buffer (one send call for many writes).

        The bytes stay queued until ``sent`` says the kernel took them; what is
        appended meanwhile queues behind them."""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = [data]
        return data

    def sent(self, n: int) -> None:
        """Forget the first ``n`` bytes of what ``take`` returned (the kernel has them)."""
        if n:
            rest = self.chunks[0][n:]
            self.chunks[0:1] = [rest] if rest else []
            self.size -= n

    def crossing(self, config: BackendConfig) -> Water | None:
        """The mark the queue's size crossed since the last call, if any. It remembers
        being past the high-water mark (``paused``), so each crossing is told once."""
        if self.size > config.hard_limit:
            return Water.ABORT
        if not self.paused and self.size > config.high_water:
            self.paused = True
            return Water.PAUSE
        if self.paused and self.size < config.low_water:
            self.paused = False
            return Water.RESUME
        return None


T = TypeVar("T", bound=Hashable)


class DeadlineQueue(Generic[T]):
    """Connections with a deadline, earliest first: closes (the close timeout), TLS
    handshakes (the handshake timeout).

    Every entry gets the same length of time from a monotonic clock, so deadlines come
    due in the order they were added: a first-in, first-out queue is a timer queue here.
    The next deadline is the first entry and the overdue ones are a prefix, so a loop
    pays for what is due, never for a walk over every connection (with 10,000 of them,
    a walk on each wake-up of a loop costs more than the work). ``OrderedDict`` keeps the
    order and removes an entry that is done early in O(1).
    """

    def __init__(self) -> None:
        self._queue: OrderedDict[T, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, conn: T, deadline: float) -> None:
        """``conn`` is due at ``deadline`` (never earlier than the last one added)."""
        self._queue.setdefault(conn, deadline)

    def discard(self, conn: T) -> None:
        """``conn`` is done (or gone): it needs no deadline any more."""
        self._queue.pop(conn, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        return next(iter(self._queue.values()), None)

    def due(self, now: float) -> list[T]:
        """Remove and return the connections whose deadline has passed, oldest first."""
        out = []
        while self._queue:
            conn, deadline = next(iter(self._queue.items()))
            if deadline > now:
                break
            del self._queue[conn]
            out.append(conn)
        return out
