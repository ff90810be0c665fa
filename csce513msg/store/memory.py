"""An in-memory store: the same rules as SQLite, nothing survives a restart.

Used by the hub's tests and by ``msgsrv --durability memory`` (benchmarks, demos).
Message ids are microseconds of server wall time, bumped on collision.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools

from .interface import (
    TOKENS_PER_USER,
    Account,
    Batch,
    BatchResult,
    DeliveredNote,
    DeviceToken,
    Fetch,
    LoginInfo,
    LoginRead,
    NewMessage,
    Refused,
    StoredMessage,
    page_within,
    resent,
)


class MemoryStore:
    """Streams, cursors and accounts in dictionaries."""

    def __init__(self, accounts: list[Account] | None = None) -> None:
        self.accounts: dict[str, Account] = {a.name: a for a in accounts or ()}
        self.streams: dict[str, list[StoredMessage]] = {}  # position p is at index p - 1
        self.members: dict[str, set[str]] = {}  # user -> streams
        self.cursors: dict[tuple[str, str, str], int] = {}
        self.keys: dict[tuple[str, str, int], StoredMessage] = {}  # (sender, device, client id)
        self.devices: dict[tuple[str, str], int] = {}  # (user, device) -> last message id at first login
        self.delivered: dict[tuple[str, str], int] = {}  # (stream, recipient) -> acknowledged position
        self.notified: dict[tuple[str, str, str], int] = {}  # (sender, device, stream) -> receipts sent
        self.expired: dict[str, int] = {}  # stream -> positions up to this one were deleted (retention)
        self.floors: dict[tuple[str, str], int] = {}  # (sender, device) -> highest client id deleted
        self.tokens: dict[str, DeviceToken] = {}  # digest -> token
        self.last_id = 0

    def load_accounts(self) -> dict[str, Account]:
        return dict(self.accounts)

    def load_device_tokens(self) -> dict[str, DeviceToken]:
        return dict(self.tokens)

    def apply(self, batch: Batch) -> BatchResult:
        for account in batch.accounts:
            self.accounts.setdefault(account.name, account)
        for token in batch.device_tokens:
            self._keep_token(token)
        for digest in batch.revoked_tokens:
            self.tokens.pop(digest, None)
        logins = {login.key: self._login(login) for login in batch.logins}
        if batch.expire_before_us:
            self._expire(batch.expire_before_us)
        if batch.expire_tokens_before_us:
            self.tokens = {d: t for d, t in self.tokens.items() if t.created_us >= batch.expire_tokens_before_us}
        stored = [self._append(m) for m in batch.messages]
        for cursor, position in batch.cursors.items():
            self.cursors[cursor] = max(self.cursors.get(cursor, 0), position)
        newly: list[DeliveredNote] = []
        for (stream, user), position in batch.delivered.items():
            old = self.delivered.get((stream, user), 0)
            if position > old:
                self.delivered[(stream, user)] = position
                newly += [_note(m) for m in self.streams.get(stream, [])[old:position] if m.sender != user]
        for key, position in batch.notified.items():
            self.notified[key] = max(self.notified.get(key, 0), position)
        fetched = {f.key: self._fetch(f) for f in batch.fetches}
        history = {key: self._page(*page) for key, page in batch.history.items()}
        return BatchResult(stored, fetched, newly_delivered=newly, logins=logins, history=history)

    def _keep_token(self, t: DeviceToken) -> None:
        """As SQLite does: only if the password is still the one checked; one per device; the newest few."""
        account = self.accounts.get(t.user)
        if account is None or account.password_hash != t.password_hash:
            return
        self.tokens = {d: old for d, old in self.tokens.items() if (old.user, old.device) != (t.user, t.device)}
        self.tokens[t.digest] = dataclasses.replace(t, password_hash="")
        mine = sorted((old for old in self.tokens.values() if old.user == t.user), key=lambda old: old.created_us)
        for old in mine[:-TOKENS_PER_USER]:
            del self.tokens[old.digest]

    def _login(self, login: LoginRead) -> LoginInfo:
        self.devices.setdefault((login.user, login.device), self.last_id)
        fetch = Fetch(0, login.user, login.device, login.count_up_to, login.new_device_history)
        return LoginInfo(len(self._fetch(fetch)), self._receipts(login.user, login.device))

    def _expire(self, before_us: int) -> None:
        for key, m in list(self.keys.items()):
            if m.message_id < before_us:
                sender, device, client_id = key
                self.floors[(sender, device)] = max(self.floors.get((sender, device), 0), client_id)
                del self.keys[key]
        for name, stream in self.streams.items():
            self.expired[name] = sum(1 for m in stream if m.message_id < before_us)  # ids grow with position

    def _page(self, name: str, before: int, limit: int, max_bytes: int) -> list[StoredMessage]:
        stream = self.streams.get(name, [])
        end = min(before - 1, len(stream)) if before else len(stream)
        newest_first = stream[max(self.expired.get(name, 0), end - limit) : max(0, end)][::-1]
        return page_within(newest_first, max_bytes)[::-1]

    def _receipts(self, user: str, device: str) -> list[DeliveredNote]:
        """Delivered receipts this device of ``user`` has not had; marks them sent."""
        since = self.devices.get((user, device), self.last_id)
        notes: list[DeliveredNote] = []
        for name in self.members.get(user, ()):
            delivered = max((p for (s, u), p in self.delivered.items() if s == name and u != user), default=0)
            sent = self.notified.get((user, device, name), 0)
            stream = self.streams[name][sent:delivered]
            notes += [_note(m) for m in stream if m.sender == user and m.message_id > since]
            self.notified[(user, device, name)] = max(sent, delivered)
        return sorted(notes, key=lambda n: n.message_id)

    def _append(self, m: NewMessage) -> StoredMessage | Refused:
        key = (m.sender, m.device, m.client_msg_id)
        if m.client_msg_id and m.client_msg_id <= self.floors.get((m.sender, m.device), 0):
            return Refused("a resend of a message older than the history this server keeps")
        if m.client_msg_id and key in self.keys:
            return resent(m, self.keys[key])
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
        """As SQLite does it: each stream from where the device stands, lazily, merged by id."""
        since = self.devices.get((f.user, f.device), self.last_id)
        ranges = []
        for name in self.members.get(f.user, ()):
            stream = self.streams[name]
            start = self.cursors.get((f.user, f.device, name))  # position p is at index p - 1
            if start is None:  # new to this device: after its first login, and at least the last few
                seen = bisect.bisect_right(stream, since, key=lambda m: m.message_id)  # ids grow with positions
                start = min(len(stream) - f.new_device_history, seen)
            start = max(start, self.expired.get(name, 0))
            ranges.append(map(stream.__getitem__, range(start, len(stream))))
        found = (
            m for m in heapq.merge(*ranges, key=lambda m: m.message_id) if (m.sender, m.device) != (f.user, f.device)
        )
        return list(itertools.islice(found, f.limit))


def _note(m: StoredMessage) -> DeliveredNote:
    return DeliveredNote(m.sender, m.message_id, m.stream, m.position, m.time_us)
