"""A device's sender keys for groups (Signal's Sender Keys): one chain per group it writes to,
and the chains of every member device it reads.

A group message is encrypted ONCE, under the sender's *sender key* for that group
(``senderkey.py``: a hash chain of message keys and a signing key), not once per member: a
class of 30 costs one encryption and one stored message. Each member device learns the
sender key over its pairwise session with the sender (a ``SENDER_KEY`` inner message in a
pairwise envelope sent to the group, with an entry for each member device), so the server
never sees it.

**When a sender key changes.** ``plan`` decides before each message, lazily (no member
rotates because another left; each sender does, before its own next message):

- a member of the key's time has left or been removed, or a device that was given it is
  gone (taken out of the directory, or reinstalled: a device is named with its identity
  key): a **new** key, unrelated to the old one, sent to the members now. The removed
  member holds every old key and learns nothing;
- the key is older than ``ROTATE_US``: a new one too (a key taken from a device stops
  working within a week);
- a member (or a device) the key was not given to: that device is sent the key as it is
  *now*; the chain only runs forward, so it cannot read what came before.

Receivers keep up to ``KEEP`` keys per sender device (a message sent just before a rotation
may arrive after it). A member who joined since our last post is news (``seen``): the device
posts nothing more until the user trusts the group as it is (``device.NewMembersError``), so
a server cannot add a listener to a group unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .senderkey import SenderKey, SenderKeyError, SenderKeyReceiver, message_key_id

ROTATE_US = 7 * 86_400 * 1_000_000  #: a sender key is replaced at the first message after a week
KEEP = 4  #: sender keys kept per member device (the newest)


@dataclass(slots=True)
class Outgoing:
    """Our sender key in one group, and whom it was made for and given to."""

    key: SenderKey
    members: frozenset[str]  #: the users who were members when it was made
    given: set[tuple[str, str]] = field(default_factory=set)  #: (user, device) that were sent it
    created_us: int = 0


class GroupKeys:
    """Sender keys: ours per group stream, and theirs per (stream, user, device)."""

    def __init__(self) -> None:
        self.sending: dict[str, Outgoing] = {}
        self.receiving: dict[tuple[str, str, str], dict[int, SenderKeyReceiver]] = {}
        #: stream -> the members we posted to (or trusted) last: a member not among them is news
        self.seen: dict[str, set[str]] = {}
        self.names: dict[str, str] = {}  #: a group's name -> its stream (a post by name is checked too)

    def encrypted(self, stream: str) -> bool:
        """Whether end-to-end posts were made in ``stream`` (ours or a member's): never in clear there."""
        return stream in self.sending or stream in self.seen or any(k[0] == stream for k in self.receiving)

    def plan(
        self, stream: str, members: frozenset[str], devices: set[tuple[str, str]], now_us: int
    ) -> set[tuple[str, str]]:
        """Make our key for ``stream`` current (see the module's docstring); return the
        ``devices`` (of the members now, and our own other devices) that must be sent it
        before the next message. They are counted as given: send them, or ``forget``."""
        out = self.sending.get(stream)
        gone = out is not None and bool(out.given - devices)  # a device left (forgotten, reinstalled)
        if out is None or out.members - members or gone or now_us - out.created_us >= ROTATE_US:
            out = self.sending[stream] = Outgoing(SenderKey.create(), members, set(), now_us)
        need = devices - out.given
        out.given |= need
        out.members = out.members | members  # a member who joined since is one whose leaving counts
        return need

    def distribution(self, stream: str) -> bytes:
        """Our sender key for ``stream`` as a member needs it now."""
        return self.sending[stream].key.distribution()

    def encrypt(self, stream: str, plaintext: bytes, ad: bytes) -> bytes:
        """A group message under our sender key for ``stream`` (``plan`` first)."""
        return self.sending[stream].key.encrypt(plaintext, ad)

    def forget(self, stream: str) -> None:
        """Drop our key for ``stream``: the next message starts a new one (a send that failed)."""
        self.sending.pop(stream, None)

    def keep(self, stream: str, user: str, device: str, receiver: SenderKeyReceiver) -> None:
        """A member device's sender key for ``stream`` (as its pairwise message brought it, and
        as far as ``decrypt`` has moved it). A key id held already keeps its own chain."""
        keys = self.receiving.setdefault((stream, user, device), {})
        if receiver.key_id in keys:
            return  # the same key again (carried by a later message too): keep the chain where it got to
        keys[receiver.key_id] = receiver
        while len(keys) > KEEP:
            del keys[next(iter(keys))]

    def decrypt(
        self, stream: str, user: str, device: str, message: bytes, ad: bytes, carried: SenderKeyReceiver | None = None
    ) -> bytes:
        """A group message of ``user``'s ``device`` in ``stream``, under a key held or the one
        the message ``carried`` (not kept here: ``keep`` it once the whole message checked).

        Raises:
            SenderKeyError: no key of that sender device for it, or the message does not check.
        """
        key_id = message_key_id(message)
        receiver = self.receiving.get((stream, user, device), {}).get(key_id)
        if receiver is None and carried is not None and carried.key_id == key_id:
            receiver = carried
        if receiver is None:
            raise SenderKeyError(f"no sender key of {user}'s device {device} for this message")
        return receiver.decrypt(message, ad)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sending": {
                stream: {"key": o.key.to_dict(), "members": sorted(o.members), "given": sorted(map(list, o.given)),
                         "created_us": o.created_us}
                for stream, o in self.sending.items()
            },
            "receiving": [
                [stream, user, device, [r.to_dict() for r in keys.values()]]
                for (stream, user, device), keys in self.receiving.items()
            ],
            "seen": {stream: sorted(users) for stream, users in self.seen.items()},
            "names": dict(self.names),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupKeys:
        groups = cls()
        for stream, o in data["sending"].items():
            given = {(str(u), str(d)) for u, d in o["given"]}
            members = frozenset(str(m) for m in o["members"])
            groups.sending[str(stream)] = Outgoing(SenderKey.from_dict(o["key"]), members, given, int(o["created_us"]))
        groups.seen = {str(stream): {str(u) for u in users} for stream, users in data["seen"].items()}
        groups.names = {str(name): str(stream) for name, stream in data["names"].items()}
        for stream, user, device, keys in data["receiving"]:
            receivers = [SenderKeyReceiver.from_dict(k) for k in keys]
            groups.receiving[(str(stream), str(user), str(device))] = {r.key_id: r for r in receivers}
        return groups
