"""An in-memory store: the same rules as SQLite, nothing survives a restart.

Used by the hub's tests and by ``msgsrv --durability memory`` (benchmarks, demos).
Message ids are microseconds of server wall time, bumped on collision.
"""

from __future__ import annotations

import dataclasses

from .interface import Batch, BatchResult, Fetch, NewMessage, StoredMessage


class MemoryStore:
    """Streams, cursors and users in dictionaries."""

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.streams: dict[str, list[StoredMessage]] = {}  # position p is at index p - 1
        self.members: dict[str, set[str]] = {}  # user -> streams
        self.cursors: dict[tuple[str, str, str], int] = {}
        self.keys: dict[tuple[str, str, int], StoredMessage] = {}  # (sender, device, client id)
        self.devices: dict[tuple[str, str], int] = {}  # (user, device) -> last message id at first login
        self.last_id = 0

    def load_users(self) -> set[str]:
        return set(self.users)

    def apply(self, batch: Batch) -> BatchResult:
        self.users.update(name for name, _ in batch.users)
        for device in batch.devices:
            self.devices.setdefault(device, self.last_id)
        stored = [self._append(m) for m in batch.messages]
        for cursor, position in batch.cursors.items():
            self.cursors[cursor] = max(self.cursors.get(cursor, 0), position)
        return BatchResult(stored, {f.key: self._fetch(f) for f in batch.fetches})

    def _append(self, m: NewMessage) -> StoredMessage:
        key = (m.sender, m.device, m.client_msg_id)
        if m.client_msg_id and key in self.keys:
            old = self.keys[key]
            return dataclasses.replace(old, duplicate=True)
        stream = self.streams.setdefault(m.stream, [])
        for user in m.members:
            self.members.setdefault(user, set()).add(m.stream)
        self.last_id = max(self.last_id + 1, m.time_us)
        msg = StoredMessage(
            self.last_id, m.stream, len(stream) + 1, m.sender, m.device, m.target_kind, m.target,
            m.content_type, m.time_us, m.body,
        )  # fmt: skip
        stream.append(msg)
        if m.client_msg_id:
            self.keys[key] = msg
        return msg

    def _fetch(self, f: Fetch) -> list[StoredMessage]:
        found: list[StoredMessage] = []
        for name in sorted(self.members.get(f.user, ())):
            stream = self.streams[name]
            cursor = self.cursors.get((f.user, f.device, name))
            since = self.devices.get((f.user, f.device), self.last_id)
            found += [
                m
                for m in stream
                if not (m.sender == f.user and m.device == f.device)
                and (
                    m.position > cursor
                    if cursor is not None
                    else (m.message_id > since or m.position > len(stream) - f.new_device_history)
                )
            ]
        found.sort(key=lambda m: m.message_id)
        return found[: f.limit]
