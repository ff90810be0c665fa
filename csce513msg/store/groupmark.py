"""Groups in the store (schema v6), shared by both stores: the rules a group message must
pass at its turn in commit order, and ``GroupMark``, what "delivered" means in a group.

"Delivered" for a message from s at position p: every member now, other than s, has
acknowledged p on some device; a member who joined after p counts as having it, and one
who left no longer counts. So, with each member u's *level* ``max(acked_u, joined_u - 1)``,
s's messages are delivered up to ``T_s = min over members u != s of level_u``, capped at
the stream's last position (s alone: at once). There are at most two values of ``T``: the
lowest level ``m1`` for every sender but one, and for the member alone at ``m1`` (if one
is), the second lowest level ``m2``. ``GroupMark`` keeps the members by level and the
sorted distinct levels, so an ack costs O(1) plus one ``insort``, whatever the number of
members (the first version walked every member on every ack: 46 µs per ack at 500), and
says which messages it newly delivered as a few position ranges, each read once.
"""

from __future__ import annotations

import bisect
import struct

from .interface import ADD, CREATE, DELETE, JOIN, LEAVE, MUTE, REDACT, REMOVE, RENAME, SLOW, UNMUTE, GroupChange

#: (after, up_to, sender, skip): the messages at positions in (after, up_to], from ``sender``
#: (None: from anyone), except a sender's at or below ``skip[sender]`` (told already)
Span = tuple[int, int, str | None, dict[str, int]]


def group_id(stream: str) -> int | None:
    """The id in ``g:<id>``, or None if ``stream`` names no possible group."""
    digits = stream[2:]
    if not (digits.isascii() and digits.isdigit() and len(digits) < 19):  # below 2^63: SQLite takes it
        return None
    return int(digits)


def refusal(members: dict[str, int], sender: str, change: GroupChange | None, max_members: int) -> str:
    """Why a message to a group with these ``members`` (user -> joined at) must be refused
    now ("" if it may be stored); see ``Refused.why``. Permissions (owner, role, invite-only)
    are the engine's: they do not change while a batch is in flight. A post and a LEAVE need
    a member; so do an add, a removal and a rename by the owner (``moderator`` unset); staff
    (``moderator``) change and moderate without joining, and the owner deletes, mutes, sets
    slow mode and redacts as a member or not. A REDACT's message is checked where it is read (``tombstone``)."""
    if change is None or change.op == LEAVE:
        return "" if sender in members else "not_member"
    if change.op == JOIN:
        if sender in members:
            return "unchanged"
        return "full" if len(members) >= max_members else ""
    if change.op in (RENAME, ADD, REMOVE) and sender not in members and not change.moderator:
        return "not_member"  # the owner left (or was removed) while the change was on its way
    if change.op in (RENAME, DELETE, MUTE, UNMUTE, SLOW, REDACT):
        return ""
    if change.op == ADD:
        new = {u for u in change.users if u not in members}
        if not new:
            return "unchanged"
        return "full" if len(members) + len(new) > max_members else ""
    if change.op == REMOVE:
        return "" if any(u in members for u in change.users) else "unchanged"
    return "bad_change"  # CREATE of an existing stream, or an unknown op


def opened(change: GroupChange, sender: str, members: dict[str, int]) -> list[str]:
    """The users whose membership interval ``change`` opens (at its position)."""
    if change.op in (CREATE, JOIN):
        return [sender]
    if change.op == ADD:
        return sorted({u for u in change.users if u not in members})
    return []


def closed(change: GroupChange, sender: str, members: dict[str, int]) -> list[str]:
    """The users whose membership interval ``change`` closes (at its position)."""
    if change.op == LEAVE:
        return [sender]
    if change.op == REMOVE:
        return sorted({u for u in change.users if u in members})
    if change.op == DELETE:
        return sorted(members)
    return []


_EVENT_HEAD = struct.Struct("!BH")


def tombstone(author: str, name: str, position: int) -> bytes:
    """The body of a removed message and of its event (kind REDACT, 11): the protocol's group
    event ``"BLsQ"`` (kind, users (the author), the group's name, value: the position),
    encoded here because the store imports no protocol module (tests/store/test_groups.py
    checks it equals ``GroupEvent(11, (author,), name, position).encode()``)."""
    parts = [_EVENT_HEAD.pack(REDACT, 1)]
    for text in (author, name):
        data = text.encode()
        parts += [struct.pack("!H", len(data)), data]
    parts.append(struct.pack("!Q", position))
    return b"".join(parts)


def redaction_refusal(found: tuple[str, int] | None, sender: str, change: GroupChange, event_type: int) -> str:
    """Why a REDACT must be refused, given the (author, content type) of the row at its
    position (None: no message there, or expired): "no_message" for no row, an event or a
    tombstone (content type ``event_type``), "forbidden" for another's message without
    ``moderator``; "" if it may be done."""
    if found is None or found[1] == event_type:
        return "no_message"
    return "" if change.moderator or found[0] == sender else "forbidden"


class GroupMark:
    """One group stream's members, their levels, and what its senders were told.

    Told: every message at or below ``done``, from anyone, and a sender s's messages up to
    ``extra[s]`` (the member alone at the lowest level is delivered further than the rest).
    Built from the committed state (members, their cursors, the last position), it takes
    everything delivered until then as told: the acks that delivered it reported it.
    """

    __slots__ = ("at", "done", "extra", "joined", "last", "level", "levels")

    def __init__(self, last: int, members: dict[str, tuple[int, int]]) -> None:
        """``members``: user -> (joined at, highest acknowledged position on any device)."""
        self.last = last
        self.joined = {u: joined for u, (joined, _) in members.items()}  #: the members now
        self.level: dict[str, int] = {}
        self.at: dict[int, set[str]] = {}  #: level -> the members at it
        self.levels: list[int] = []  #: the distinct levels, sorted
        for user, (joined, acked) in members.items():
            self._put(user, max(acked, joined - 1))
        self.done = self._floor()
        self.extra: dict[str, int] = {}
        self._settle()

    def delivered_to(self, sender: str) -> int:
        """``T_sender``: the sender's messages are delivered up to this position."""
        if not self.levels:
            return self.last
        low = self.levels[0]
        if self.at[low] == {sender}:
            return min(self.levels[1], self.last) if len(self.levels) > 1 else self.last
        return low

    def ack(self, user: str, position: int) -> list[Span]:
        """A device of ``user`` acknowledged up to ``position``: what that newly delivered."""
        old = self.level.get(user)
        if old is None or position <= old:
            return []  # not a member now (an ack that crossed a leave), or nothing new
        self._take(user)
        self._put(user, position)
        return self._settle()

    def posted(self, position: int) -> list[Span]:
        """A message was stored at ``position`` (a lone member's is delivered at once)."""
        self.last = position
        return self._settle()

    def change(self, position: int, opened: list[str], closed: list[str]) -> list[Span]:
        """A group event at ``position``: intervals opened (a joiner has everything before
        it) and closed (a leaver stops counting: what it held back may now be delivered)."""
        for user in closed:
            if user in self.joined:
                self._take(user)
                del self.joined[user]
        for user in opened:
            self.joined[user] = position
            self._put(user, position - 1)
        self.last = position
        return self._settle()

    # ---- inside ----------------------------------------------------------------------

    def _put(self, user: str, level: int) -> None:
        self.level[user] = level
        if level in self.at:
            self.at[level].add(user)
        else:
            self.at[level] = {user}
            bisect.insort(self.levels, level)

    def _take(self, user: str) -> None:
        level = self.level.pop(user)
        users = self.at[level]
        users.discard(user)
        if not users:
            del self.at[level]
            del self.levels[bisect.bisect_left(self.levels, level)]

    def _floor(self) -> int:
        """Up to where everyone's messages are delivered."""
        return min(self.levels[0], self.last) if self.levels else self.last

    def _settle(self) -> list[Span]:
        """Bring what was told up to what is delivered; return the difference."""
        spans: list[Span] = []
        floor = self._floor()
        if floor > self.done:
            spans.append((self.done, floor, None, dict(self.extra)))
            self.done = floor
            self.extra = {s: p for s, p in self.extra.items() if p > floor}
        if self.levels and len(self.at[self.levels[0]]) == 1:
            (alone,) = self.at[self.levels[0]]
            told = max(self.done, self.extra.get(alone, 0))
            up_to = self.delivered_to(alone)
            if up_to > told:
                spans.append((told, up_to, alone, {}))
                self.extra[alone] = up_to
        return spans


def wanted(span: Span, sender: str, position: int) -> bool:
    """Whether the message from ``sender`` at ``position`` (inside the span's range) is news."""
    after, _, only, skip = span
    return (only is None or sender == only) and position > skip.get(sender, after)
