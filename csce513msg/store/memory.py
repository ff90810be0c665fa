"""An in-memory store: stream positions and message ids, lost on restart.

Message ids are microseconds of server wall time, bumped on collision, so they
also grow across a restart (unless the clock steps back); the durable store of
the accounts issue takes this over.
"""

from __future__ import annotations


class MemoryStore:
    """Assigns positions in streams and message ids."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._last_id = 0

    def append(self, stream: str, wall_us: int) -> tuple[int, int]:
        """Place one message in ``stream``; return ``(message_id, position)``.

        Args:
            stream: the conversation's stream name.
            wall_us: server wall time in microseconds (the id's starting point).
        """
        position = self._positions.get(stream, 0) + 1
        self._positions[stream] = position
        self._last_id = max(self._last_id + 1, wall_us)
        return self._last_id, position

    def position(self, stream: str) -> int:
        """Return the last position assigned in ``stream`` (0 if none)."""
        return self._positions.get(stream, 0)
