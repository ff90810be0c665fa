"""The body of a group event (protocol 1.4): a Deliver of content type 3 (``GROUP_EVENT``).

A group's changes are messages in its stream, so members see them in order among the
chat, catch up on them and page back to them. The server writes them; a client that
sends content type 3 is refused. The body is a header-codec record (docs/protocol.md,
section 3), ``"BLs"``: what happened, to whom, and the group's name after it::

    event  u8      1 created, 2 joined, 3 left, 4 added, 5 removed, 6 renamed
    users  list    who joined, left, was added or removed (empty for created, renamed)
    name   string  the group's name after the event

The Deliver's ``sender`` is who acted (the one added does not add themself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .frames import HeaderCodec

_CODEC = HeaderCodec("BLs")


class GroupEventKind(enum.IntEnum):
    CREATED = 1
    JOINED = 2
    LEFT = 3
    ADDED = 4
    REMOVED = 5
    RENAMED = 6


@dataclass(frozen=True, slots=True)
class GroupEvent:
    kind: int  #: GroupEventKind (an unknown kind is shown as "changed the group")
    users: tuple[str, ...] = ()
    name: str = ""

    def encode(self) -> bytes:
        return _CODEC.encode((self.kind, self.users, self.name))

    @classmethod
    def decode(cls, body: bytes) -> GroupEvent:
        """Raises RemoteProtocolError (BAD_FRAME) for a body that is not one."""
        kind, users, name = _CODEC.decode(body)
        return cls(kind, tuple(users), name)
