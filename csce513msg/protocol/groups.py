"""The body of a group event (protocol 1.4): a Deliver of content type 3 (``GROUP_EVENT``).

A group's changes are messages in its stream, so members see them in order among the
chat, catch up on them and page back to them. The server writes them; a client that
sends content type 3 is refused. The body is a header-codec record (docs/protocol.md,
section 3), ``"BLsQ"``: what happened, to whom, the group's name after it, and a number::

    event  u8      1 created, 2 joined, 3 left, 4 added, 5 removed, 6 renamed,
                   7 deleted, 8 muted, 9 unmuted, 10 slow mode, 11 message removed
    users  list    who joined, left, was added, removed, muted or unmuted; for 11, the
                   removed message's author (empty for created, renamed, deleted, slow mode)
    name   string  the group's name after the event
    value  u64     8: the seconds muted; 10: the seconds between posts (0: off);
                   11: the removed message's position; else 0 (appended: a body of the
                   first three fields reads as 0)

The Deliver's ``sender`` is who acted (the one added does not add themself). A removed
message becomes a tombstone in place: its row keeps its sender, time and position, with
content type 3 and the same body as its event 11.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .frames import HeaderCodec

_CODEC = HeaderCodec("BLsQ")


class GroupEventKind(enum.IntEnum):
    CREATED = 1
    JOINED = 2
    LEFT = 3
    ADDED = 4
    REMOVED = 5
    RENAMED = 6
    DELETED = 7
    MUTED = 8
    UNMUTED = 9
    SLOW = 10
    REMOVED_MESSAGE = 11


@dataclass(frozen=True, slots=True)
class GroupEvent:
    kind: int  #: GroupEventKind (an unknown kind is shown as "changed the group")
    users: tuple[str, ...] = ()
    name: str = ""
    value: int = 0  #: seconds (muted, slow mode) or a position (message removed)

    def encode(self) -> bytes:
        return _CODEC.encode((self.kind, self.users, self.name, self.value))

    @classmethod
    def decode(cls, body: bytes) -> GroupEvent:
        """Raises RemoteProtocolError (BAD_FRAME) for a body that is not one."""
        kind, users, name, value = _CODEC.decode(body)
        return cls(kind, tuple(users), name, value)
