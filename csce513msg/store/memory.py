"""An in-memory store: the same rules as SQLite, nothing survives a restart.

Used by the hub's tests and by ``msgsrv --durability memory`` (benchmarks, demos).
Message ids are microseconds of server wall time, bumped on collision.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
from collections.abc import Callable

from .groupmark import GroupMark, Span, closed, group_id, opened, redaction_refusal, refusal, tombstone, wanted
from .interface import (
    ANNOUNCEMENTS,
    ANNOUNCEMENTS_NAME,
    ASKS_CONFIRMATION,
    CONFIRM,
    CREATE,
    DELETE,
    FORGET,
    GROUP_EVENT,
    GROUP_PREFIX,
    IDENTITY,
    LOWER,
    MUTE,
    PUBLISH,
    RAISE,
    REDACT,
    RENAME,
    SEEN,
    SLOW,
    TAKE,
    TAKE_PREKEY,
    TOKENS_PER_USER,
    UNMUTE,
    Account,
    Batch,
    BatchResult,
    ClassroomRecord,
    DeliveredNote,
    DeviceToken,
    Fetch,
    GroupRecord,
    Hand,
    KeyNote,
    KeyRecord,
    LoginInfo,
    LoginRead,
    NewMessage,
    Note,
    Refused,
    StoredMessage,
    hand_order,
    is_group,
    page_within,
    resent,
)


class MemoryStore:
    """Streams, cursors and accounts in dictionaries."""

    on_loop = True  #: nothing here waits on a disk: the loop applies batches itself

    def __init__(self, accounts: list[Account] | None = None) -> None:
        self.accounts: dict[str, Account] = {a.name: a for a in accounts or ()}
        self.streams: dict[str, list[StoredMessage]] = {}  # position p is at index p - 1
        self.members: dict[str, set[str]] = {}  # user -> the streams the user is a member of now
        #: (group stream, user) -> the user's membership intervals, oldest first: [joined, left] (None: now)
        self.intervals: dict[tuple[str, str], list[tuple[int, int | None]]] = {}
        self.groups: dict[str, GroupRecord] = {}  # group stream -> the group (members and former: not kept here)
        self.deleted: set[str] = set()  # the streams of deleted groups (kept in ``groups``: ids are never reused)
        self.mutes: dict[str, dict[str, int]] = {}  # group stream -> user -> muted until (µs of wall time)
        self.marks: dict[str, GroupMark] = {}  # group stream -> its members and delivered marks (groupmark.py)
        self.cursors: dict[tuple[str, str, str], int] = {}
        self.keys: dict[tuple[str, str, int], StoredMessage] = {}  # (sender, device, client id)
        self.devices: dict[tuple[str, str], int] = {}  # (user, device) -> last message id at first login
        self.delivered: dict[tuple[str, str], int] = {}  # (stream, recipient) -> acknowledged position
        self.notified: dict[tuple[str, str, str], int] = {}  # (sender, device, stream) -> receipts sent
        self.expired: dict[str, int] = {}  # stream -> positions up to this one were deleted (retention)
        self.floors: dict[tuple[str, str], int] = {}  # (sender, device) -> highest client id deleted
        self.tokens: dict[str, DeviceToken] = {}  # digest -> token
        self.last_id = 0
        # the announcements (as schema v9): every account a member from 1, whoever made it (a test
        # may put one in ``accounts`` directly: membership of g:0 is read from ``accounts``)
        self.groups[ANNOUNCEMENTS] = GroupRecord(ANNOUNCEMENTS, ANNOUNCEMENTS_NAME, "", True, 0, (), ())
        self.streams[ANNOUNCEMENTS] = []
        self.confirmations: dict[int, dict[str, int]] = {}  # position in g:0 -> user -> time_us
        self.hands: dict[str, Hand] = {}  # user -> its raised hand
        #: the key directory (1.7): (user, device) -> [published keys, {prekey id: key}, seen_us]
        self.directory: dict[tuple[str, str], tuple[bytes, dict[int, bytes], int]] = {}

    def load_accounts(self) -> dict[str, Account]:
        return dict(self.accounts)

    def load_device_tokens(self) -> dict[str, DeviceToken]:
        return dict(self.tokens)

    def load_classroom(self) -> ClassroomRecord:
        asks = tuple(m.position for m in self.streams[ANNOUNCEMENTS] if m.content_type == ASKS_CONFIRMATION)
        confirmations = {p: tuple(sorted(users)) for p, users in self.confirmations.items() if users}
        return ClassroomRecord(confirmations, tuple(sorted(self.hands.values(), key=hand_order)), asks)

    def load_keys(self) -> dict[tuple[str, str], KeyRecord]:
        return {
            where: KeyRecord(published, tuple(sorted(prekeys.items())), seen)
            for where, (published, prekeys, seen) in self.directory.items()
        }

    def load_groups(self) -> dict[str, GroupRecord]:
        found = {ANNOUNCEMENTS: dataclasses.replace(self.groups[ANNOUNCEMENTS], members=tuple(sorted(self.accounts)))}
        for stream, group in self.groups.items():
            if stream in self.deleted or stream == ANNOUNCEMENTS:
                continue
            users = {u for (s, u) in self.intervals if s == stream}
            members = tuple(sorted(self.marks[stream].joined))
            former = tuple(sorted(users - set(members)))
            mutes = tuple(sorted(self.mutes.get(stream, {}).items()))
            found[stream] = dataclasses.replace(group, members=members, former=former, mutes=mutes)
        return found

    def maintenance(self) -> Callable[[], object] | None:
        """Nothing to keep up: no files."""
        return None

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
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
        newly: list[DeliveredNote] = []
        stored = [self._append(m, batch.max_group_members, newly) for m in batch.messages]
        for cursor, position in batch.cursors.items():
            self.cursors[cursor] = max(self.cursors.get(cursor, 0), position)
        for (stream, user), position in batch.delivered.items():
            if is_group(stream):
                if (mark := self.marks.get(stream)) is not None:
                    newly += self._notes(stream, mark.ack(user, position))
                continue
            old = self.delivered.get((stream, user), 0)
            if position > old:
                self.delivered[(stream, user)] = position
                newly += [_note(m) for m in self.streams.get(stream, [])[old:position] if m.sender != user]
        for key, position in batch.notified.items():
            self.notified[key] = max(self.notified.get(key, 0), position)
        for note in batch.notes:
            self._note(note)
        for key_note in batch.keys:
            self._key_note(key_note)
        if batch.expire_keys_before_us:
            self.directory = {w: d for w, d in self.directory.items() if d[2] >= batch.expire_keys_before_us}
        fetched = {f.key: self._fetch(f) for f in batch.fetches}
        history = {key: self._page(*page, batch.readers.get(key, "")) for key, page in batch.history.items()}
        return BatchResult(stored, fetched, newly_delivered=newly, logins=logins, history=history)

    def _key_note(self, note: KeyNote) -> None:
        """A key directory record, as SQLite applies it."""
        where = (note.user, note.device)
        if note.op == PUBLISH:
            old = self.directory.get(where)
            prekeys = old[1] if old is not None and old[0][:IDENTITY] == note.published[:IDENTITY] else {}
            for key_id, key in note.prekeys:
                prekeys.setdefault(key_id, key)
            self.directory[where] = (note.published, prekeys, note.time_us)
        elif note.op == TAKE_PREKEY:
            if where in self.directory:
                self.directory[where][1].pop(note.key_id, None)
        elif note.op == SEEN:
            if (entry := self.directory.get(where)) is not None:
                self.directory[where] = (entry[0], entry[1], note.time_us)
        elif note.op == FORGET:
            self.directory.pop(where, None)
        else:
            raise ValueError(f"unknown key directory note {note.op!r}")

    def _note(self, note: Note) -> None:
        """A classroom record, as SQLite applies it."""
        if note.op == CONFIRM:
            self.confirmations.setdefault(note.position, {}).setdefault(note.user, note.time_us)
        elif note.op == RAISE:
            old = self.hands.get(note.user)
            self.hands[note.user] = Hand(note.user, note.question, old.raised_us if old else note.time_us)
        elif note.op == LOWER:
            self.hands.pop(note.user, None)
        elif note.op == TAKE:
            self.hands.pop(note.student, None)
        else:
            raise ValueError(f"unknown classroom note {note.op!r}")

    def _streams_of(self, user: str) -> set[str] | list[str]:
        """The streams ``user`` is a member of now: the announcements too, if an account."""
        mine = self.members.get(user, set())
        return [*mine, ANNOUNCEMENTS] if user in self.accounts else mine

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
        fetch = Fetch(0, login.user, login.device, login.count_up_to, login.new_device_history, login.groups)
        return LoginInfo(len(self._fetch(fetch)), self._receipts(login.user, login.device, login.groups))

    def _expire(self, before_us: int) -> None:
        for key, m in list(self.keys.items()):
            if m.message_id < before_us and m.stream != ANNOUNCEMENTS:  # the announcements are kept
                sender, device, client_id = key
                self.floors[(sender, device)] = max(self.floors.get((sender, device), 0), client_id)
                del self.keys[key]
        for name, stream in self.streams.items():
            if name != ANNOUNCEMENTS:
                self.expired[name] = sum(1 for m in stream if m.message_id < before_us)  # ids grow with position

    def _page(self, name: str, before: int, limit: int, max_bytes: int, reader: str) -> list[StoredMessage]:
        stream = self.streams.get(name, [])
        end = min(before - 1, len(stream)) if before else len(stream)  # positions up to end
        if name == ANNOUNCEMENTS:
            spans: list[tuple[int, int | None]] = [(1, None)] if reader in self.accounts else []
        else:
            spans = self.intervals.get((name, reader), [])[::-1] if is_group(name) else [(1, None)]
        newest_first: list[StoredMessage] = []
        for joined, left in spans:  # each interval [joined, left], newest first
            high = end if left is None else min(left, end)
            low = max(joined - 1, self.expired.get(name, 0), high - (limit - len(newest_first)))
            newest_first += stream[low:high][::-1] if high > low else []
        return page_within(newest_first[:limit], max_bytes)[::-1]

    def _receipts(self, user: str, device: str, groups: bool) -> list[DeliveredNote]:
        """Delivered receipts this device of ``user`` has not had; marks them sent."""
        since = self.devices.get((user, device), self.last_id)
        notes: list[DeliveredNote] = []
        for name in self.members.get(user, ()):  # not the announcements: no receipts there
            if not is_group(name):
                delivered = max((p for (s, u), p in self.delivered.items() if s == name and u != user), default=0)
            elif groups:
                delivered = self.marks[name].delivered_to(user)
            else:
                continue
            sent = self.notified.get((user, device, name), 0)
            stream = self.streams[name][sent:delivered]
            notes += [
                _note(m) for m in stream
                if m.sender == user and m.message_id > since and not (is_group(name) and m.content_type == GROUP_EVENT)
            ]  # fmt: skip
            self.notified[(user, device, name)] = max(sent, delivered)
        return sorted(notes, key=lambda n: n.message_id)

    def _append(self, m: NewMessage, max_members: int, newly: list[DeliveredNote]) -> StoredMessage | Refused:
        key = (m.sender, m.device, m.client_msg_id)
        if m.client_msg_id and m.client_msg_id <= self.floors.get((m.sender, m.device), 0):
            return Refused("a resend of a message older than the history this server keeps")
        if m.client_msg_id and key in self.keys:
            return resent(m, self.keys[key])
        if is_group(m.stream):
            return self._append_group(m, max_members, newly)
        for user in m.members:
            self.members.setdefault(user, set()).add(m.stream)
        return self._insert(m, m.stream)

    def _insert(self, m: NewMessage, name: str) -> StoredMessage:
        stream = self.streams.setdefault(name, [])
        self.last_id = max(self.last_id + 1, m.time_us)
        msg = StoredMessage(
            self.last_id, name, len(stream) + 1, m.sender, m.device, m.target_kind, m.target,
            m.content_type, m.time_us, m.body,
        )  # fmt: skip
        stream.append(msg)
        if m.client_msg_id:
            self.keys[(m.sender, m.device, m.client_msg_id)] = msg
        return msg

    def _append_group(self, m: NewMessage, max_members: int, newly: list[DeliveredNote]) -> StoredMessage | Refused:
        """As SQLite does it: the rules at the message's turn, then its change at its position."""
        change = m.change
        if m.stream == ANNOUNCEMENTS:  # only posts, from a reader (an account); no receipts
            if change is not None:
                return Refused(f"refused: bad_change ({ANNOUNCEMENTS})", why="bad_change")
            if m.sender not in self.accounts:
                return Refused(f"refused: not_member ({ANNOUNCEMENTS})", why="not_member")
            return self._insert(m, ANNOUNCEMENTS)
        if change is not None:
            m = dataclasses.replace(m, client_msg_id=0)  # an event is the server's: no resend key
        names = {g.name for g in self.groups.values() if g.stream not in self.deleted}
        if change is not None and change.op == CREATE:
            if change.name in names:
                return Refused(f"a group is named {change.name} already", why="name_taken")
            stream = f"{GROUP_PREFIX}{len(self.groups)}"  # g:0 and never deleted: ids never reused
            self.groups[stream] = GroupRecord(stream, change.name, m.sender, change.invite_only, m.time_us, (), ())
            mark = self.marks[stream] = GroupMark(0, {})
        else:
            stream = m.stream
            if stream not in self.groups or stream in self.deleted or group_id(stream) is None:
                return Refused(f"refused: no_group ({stream})", why="no_group")
            mark = self.marks[stream]
            why = refusal(mark.joined, m.sender, change, max_members)
            if not why and change is not None and change.op == RENAME and change.name in names:
                why = "name_taken"
            if not why and change is not None and change.op == REDACT:
                messages = self.streams.get(stream, [])
                at = change.position - 1
                old = messages[at] if self.expired.get(stream, 0) <= at < len(messages) else None
                found = (old.sender, old.content_type) if old is not None else None
                why = redaction_refusal(found, m.sender, change, GROUP_EVENT)
                if old is not None and not why:  # the event's body names the author, which only the store knows
                    m = dataclasses.replace(m, body=tombstone(old.sender, self.groups[stream].name, change.position))
            if why:
                return Refused(f"refused: {why} ({stream})", why=why)
        stored = self._insert(m, stream)
        if change is None:
            newly += self._notes(stream, mark.posted(stored.position))
            return stored
        stored = dataclasses.replace(stored, change=change)
        position = stored.position
        joins, leaves = opened(change, m.sender, mark.joined), closed(change, m.sender, mark.joined)
        for user in joins:
            self.intervals.setdefault((stream, user), []).append((position, None))
            self.members.setdefault(user, set()).add(stream)
        for user in leaves:
            spans = self.intervals[(stream, user)]
            spans[-1] = (spans[-1][0], position)
            self.members[user].discard(stream)
        if change.op == RENAME:
            self.groups[stream] = dataclasses.replace(self.groups[stream], name=change.name)
        elif change.op == MUTE:
            self.mutes.setdefault(stream, {}).update((u, m.time_us + change.seconds * 1_000_000) for u in change.users)
        elif change.op == UNMUTE:
            for user in change.users:
                self.mutes.get(stream, {}).pop(user, None)
        elif change.op == SLOW:
            self.groups[stream] = dataclasses.replace(self.groups[stream], slow_s=change.seconds)
        elif change.op == REDACT:  # in place: sender, time and position stay; the text is gone
            messages = self.streams[stream]
            old = messages[change.position - 1]
            messages[change.position - 1] = dataclasses.replace(old, content_type=GROUP_EVENT, body=m.body)
            for key, kept in list(self.keys.items()):  # the resend index held the text too
                if kept is old:
                    self.keys[key] = messages[change.position - 1]
        newly += self._notes(stream, mark.change(position, joins, leaves))
        if change.op == DELETE:
            self.deleted.add(stream)
            self.mutes.pop(stream, None)
        return stored

    def _notes(self, name: str, spans: list[Span]) -> list[DeliveredNote]:
        stream = self.streams[name]
        return [
            _note(m) for span in spans for m in stream[span[0] : span[1]]
            if m.content_type != GROUP_EVENT and wanted(span, m.sender, m.position)
        ]  # fmt: skip

    def _fetch(self, f: Fetch) -> list[StoredMessage]:
        """As SQLite does it: each stream from where the device stands, lazily, merged by id."""
        since = self.devices.get((f.user, f.device), self.last_id)
        ranges = []
        for name in self._streams_of(f.user):
            if is_group(name) and not f.groups:
                continue
            stream = self.streams[name]
            start = self.cursors.get((f.user, f.device, name))  # position p is at index p - 1
            if start is None and name == ANNOUNCEMENTS:
                start = 0  # every announcement, whenever the account or the device was made
            elif start is None:  # new to this device: after its first login, and at least the last few
                seen = bisect.bisect_right(stream, since, key=lambda m: m.message_id)  # ids grow with positions
                start = min(len(stream) - f.new_device_history, seen)
            start = max(start, self.expired.get(name, 0))
            if is_group(name) and name != ANNOUNCEMENTS:
                start = max(start, self.intervals[(name, f.user)][-1][0] - 1)  # from the current interval's join
            ranges.append(map(stream.__getitem__, range(start, len(stream))))
        found = (
            m for m in heapq.merge(*ranges, key=lambda m: m.message_id) if (m.sender, m.device) != (f.user, f.device)
        )
        return list(itertools.islice(found, f.limit))


def _note(m: StoredMessage) -> DeliveredNote:
    return DeliveredNote(m.sender, m.message_id, m.stream, m.position, m.time_us)
