"""The key directory of end-to-end encryption (protocol 1.7, docs/protocol.md section 14).

The server cannot read an end-to-end message; what it does for encryption is keep each
device's *public* keys where others can find them, so that a first message can be encrypted
for a device that is offline (Signal's X3DH). For each (user, device) the directory holds:

- the device's published keys (``PUBLISHED`` bytes: its identity, its signed prekey and
  their signatures), opaque here: the server compares the identity's bytes (a new identity
  drops the old one-time prekeys) and never verifies a signature: clients do, since a server
  is exactly who they must not trust;
- its one-time prekeys, each handed out once (``KeyFetch``) and then deleted, in the same
  commit that answers: a prekey is never served twice, even across a crash;
- when it was last seen (a login, a publication): keys unused for ``key_days`` expire.

**Draining.** A one-time prekey makes a session start that cannot be replayed; a client that
fetches bundles in a loop could empty every device's supply. So an asker gets at most
``TAKES_PER_HOUR`` prekeys of one device an hour; past that its bundles carry none (X3DH still
works, and the device keeps a replay cache for such starts: docs/security.md). A device whose
supply falls to ``PREKEY_LOW`` is told (``KeyState``) so it publishes more.

The directory lives in memory (read at start with ``Store.load_keys``) and every change goes
to the store in the loop pass's batch (``KeyNote``); answers wait for its commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import (
    MAX_PREKEYS,
    PREKEY_LOW,
    PUBLISHED,
    ErrorCode,
    KeyBundles,
    KeyFetch,
    KeyForget,
    KeyPublish,
    KeyState,
    RemoteProtocolError,
    bundles_body,
    prekeys_of,
)
from ..store.interface import FORGET, IDENTITY, PUBLISH, SEEN, TAKE_PREKEY, Account, KeyNote, KeyRecord
from .delivery import Committed, Mailroom
from .outbox import Outbox
from .session import Session

MAX_DEVICES = 16  #: devices of one user with keys in the directory (each costs every fetch of that user)
TAKES_PER_HOUR = 3  #: one-time prekeys of one device one asker may be handed in an hour
HOUR_US = 3_600_000_000
NO_PREKEY = bytes(36)  #: a bundle's prekey part when it carries none: id 0, 32 zero bytes


@dataclass(slots=True)
class Device:
    """A device's entry, as committed."""

    published: bytes
    prekeys: dict[int, bytes] = field(default_factory=dict)  #: id -> public key; handed out lowest first
    seen_us: int = 0


class Keys:
    """The key directory's requests and records.

    Args:
        key_days: days a device's keys stay in the directory after it was last seen.
        accounts: every account (the gate keeps it current): a fetch names a known user.
        online: user -> their logged-in sessions (to tell a device its supply runs low).
        outbox: where answers go.
        mail: the storage batch (``take_key_note``).
        wall_us: monotonic seconds -> µs of wall time.
        directory: what the store holds, from ``Store.load_keys``.
    """

    def __init__(
        self, key_days: float, accounts: dict[str, Account], online: dict[str, tuple[Session, ...]], outbox: Outbox,
        mail: Mailroom, wall_us: Callable[[float], int], directory: dict[tuple[str, str], KeyRecord],
    ) -> None:  # fmt: skip
        self.lifetime_us = int(key_days * 86400 * 1_000_000)
        self.accounts, self.online, self.out, self.mail, self.wall_us = accounts, online, outbox, mail, wall_us
        self.devices: dict[str, dict[str, Device]] = {}  # user -> device id -> its keys
        for (user, device), record in directory.items():
            self.devices.setdefault(user, {})[device] = Device(record.published, dict(record.prekeys), record.seen_us)
        #: (asker, user, device) -> when each prekey it was handed in the last hour was (µs of wall time)
        self.taken: dict[tuple[str, str, str], list[int]] = {}

    # ---- requests ---------------------------------------------------------------

    def publish(self, session: Session, msg: KeyPublish, now: float) -> None:
        """Set this device's keys and add one-time prekeys; KeyState answers once committed."""
        user, device, rid = _owner(session, msg.request_id)
        prekeys = prekeys_of(msg.body, msg.prekeys, rid)
        published = msg.body[:PUBLISHED]
        if published[128:132] == bytes(4):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a signed prekey's id is 0", request_id=rid)
        mine = self.devices.get(user, {})
        if device not in mine and len(mine) >= MAX_DEVICES:
            raise RemoteProtocolError(
                ErrorCode.KEYS_FULL,
                f"{MAX_DEVICES} devices of yours have keys already: take one out first (KeyForget)", request_id=rid,
            )  # fmt: skip
        old = mine.get(device)
        kept = old.prekeys if old is not None and old.published[:IDENTITY] == published[:IDENTITY] else {}
        new = {key_id: key for key_id, key in prekeys if key_id not in kept}
        if len(kept) + len(new) > MAX_PREKEYS:
            raise RemoteProtocolError(
                ErrorCode.KEYS_FULL,
                f"the directory holds {len(kept)} one-time prekeys of this device and keeps at most {MAX_PREKEYS}",
                request_id=rid,
            )  # fmt: skip
        note = KeyNote(PUBLISH, user, device, published, tuple(new.items()), time_us=self.wall_us(now))

        def committed(requester: Session | None) -> None:
            entry = self.devices.setdefault(user, {}).get(device)
            if entry is None or entry.published[:IDENTITY] != published[:IDENTITY]:
                entry = self.devices[user][device] = Device(published)
            entry.published, entry.seen_us = published, note.time_us
            for key_id, key in note.prekeys:
                entry.prekeys.setdefault(key_id, key)
            if requester is not None:
                self.out.write(requester, self._state(user, device, rid))

        self.mail.take_key_note(session, note, rid, committed)

    def fetch(self, session: Session, msg: KeyFetch, now: float) -> None:
        """Every device of a user, each with a one-time prekey while the asker's allowance lasts;
        the prekeys handed out are deleted in the commit that answers."""
        rid, user = msg.request_id, msg.user
        asker = session.user
        assert asker is not None
        if user not in self.accounts:
            raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {user!r}", request_id=rid)
        now_us = self.wall_us(now)
        found: list[tuple[str, bytes]] = []
        notes: list[KeyNote] = []
        for device, entry in sorted(self.devices.get(user, {}).items()):
            if entry.seen_us < now_us - self.lifetime_us:
                continue  # expired: gone at the next sweep
            prekey = NO_PREKEY
            mine = user == asker and device == session.device  # the asker's own: it needs no session with itself
            if entry.prekeys and not mine and device not in msg.known and self._allowed(asker, user, device, now_us):
                key_id = min(entry.prekeys)
                prekey = key_id.to_bytes(4, "big") + entry.prekeys.pop(key_id)
                notes.append(KeyNote(TAKE_PREKEY, user, device, key_id=key_id))
                if len(entry.prekeys) in (PREKEY_LOW, 0):
                    self._tell(user, device)
            found.append((device, entry.published + prekey))
        answer = KeyBundles(user, len(found), bundles_body(found), rid)
        if not notes:
            self.out.write(session, answer)
            return
        for note in notes[:-1]:
            self.mail.take_key_note(session, note, 0)
        self.mail.take_key_note(session, notes[-1], rid, self._answer(answer))

    def forget(self, session: Session, msg: KeyForget, now: float) -> None:
        """Remove one of the user's own devices (or this one) from the directory."""
        user, device, rid = _owner(session, msg.request_id, msg.device)
        if self.devices.get(user, {}).pop(device, None) is None:
            self.out.write(session, KeyState(0, 0, 0, 0, request_id=rid))
            return
        self.mail.take_key_note(
            session, KeyNote(FORGET, user, device), rid, self._answer(KeyState(0, 0, 0, 0, request_id=rid))
        )

    # ---- events -----------------------------------------------------------------

    def came_online(self, session: Session, now: float) -> None:
        """A session that asked for ``e2e`` logged in: it is told what the directory holds for
        its device, which counts as seen (its keys' lifetime starts again)."""
        user, device = session.user, session.device
        assert user is not None
        entry = self.devices.get(user, {}).get(device)
        if entry is not None:
            entry.seen_us = self.wall_us(now)
            self.mail.take_key_note(session, KeyNote(SEEN, user, device, time_us=entry.seen_us), 0)
        self.out.write(session, self._state(user, device, 0))

    def expire(self, now: float) -> int:
        """Forget the devices not seen for ``key_days`` and the allowances older than an hour;
        the store deletes the same devices (``Batch.expire_keys_before_us``). Returns that bound."""
        before = self.wall_us(now) - self.lifetime_us
        for user in list(self.devices):
            kept = {d: e for d, e in self.devices[user].items() if e.seen_us >= before}
            if kept:
                self.devices[user] = kept
            else:
                del self.devices[user]
        hour_ago = self.wall_us(now) - HOUR_US
        self.taken = {k: [t for t in times if t > hour_ago] for k, times in self.taken.items() if times[-1] > hour_ago}
        return before

    def accounts_changed(self, changes: dict[str, Account | None]) -> None:
        """A removed account's devices leave the directory (the store's trigger deletes its rows)."""
        for name, account in changes.items():
            if account is None:
                self.devices.pop(name, None)

    # ---- helpers ----------------------------------------------------------------

    def _allowed(self, asker: str, user: str, device: str, now_us: int) -> bool:
        """Whether ``asker`` may be handed one more prekey of ``user``'s ``device`` this hour (and count it)."""
        times = [t for t in self.taken.get((asker, user, device), ()) if t > now_us - HOUR_US]
        if len(times) >= TAKES_PER_HOUR:
            self.taken[(asker, user, device)] = times
            return False
        self.taken[(asker, user, device)] = [*times, now_us]
        return True

    def _answer(self, answer: KeyBundles | KeyState) -> Committed:
        """Once committed: write ``answer`` to its requester, if it is still there."""

        def committed(requester: Session | None) -> None:
            if requester is not None:
                self.out.write(requester, answer)

        return committed

    def _state(self, user: str, device: str, rid: int) -> KeyState:
        entry = self.devices.get(user, {}).get(device)
        if entry is None:
            return KeyState(0, 0, 0, 0, request_id=rid)
        spk_id = int.from_bytes(entry.published[128:132], "big")
        return KeyState(1, spk_id, len(entry.prekeys), entry.seen_us + self.lifetime_us, entry.published, rid)

    def _tell(self, user: str, device: str) -> None:
        """Push KeyState to the device's sessions: its supply of one-time prekeys runs low."""
        for session in self.online.get(user, ()):
            if session.device == device and session.e2e:
                self.out.write(session, self._state(user, device, 0))


def _owner(session: Session, rid: int, device: str | None = None) -> tuple[str, str, int]:
    """The (user, device, request id) a device's own request acts for; a session with no device
    id has no keys (an anonymous device could be any installation)."""
    user = session.user
    assert user is not None
    device = device or session.device
    if not device:
        raise RemoteProtocolError(
            ErrorCode.DEVICE_REQUIRED, "end-to-end keys belong to a device: log in with a device_id", request_id=rid
        )  # fmt: skip
    return user, device, rid
