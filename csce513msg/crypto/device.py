"""One device's end-to-end encryption: its keys, its sessions with other devices, whom it trusts.

``SecureDevice`` is sans-I/O like the protocol: the client feeds it what the key directory
said (``accept_directory``) and the envelopes that arrived (``decrypt``), and asks it for
envelopes to send (``encrypt``) and for what to publish (``publication``). It never touches
a socket or a file; the client saves ``to_dict()`` (through ``vault.py``) **before** it sends
what ``encrypt`` made and **before** it acknowledges what ``decrypt`` opened, so a crash can
neither reuse a message key nor lose one for a message the server will not send again.

**Sessions.** With each device of each contact (and each other device of its own user) it
keeps one Double Ratchet session (``ratchet.py``), started from that device's bundle with
X3DH (``x3dh.py``). Until the other side has answered, every envelope repeats the X3DH start
in that device's entry, so whichever of them arrives first can open the session. A start is
opened once: it consumes the one-time prekey it names (a second start naming it is refused:
a server handing a prekey out twice is caught), and a start without one is remembered in a
bounded replay cache (``x3dh.StartCache``).

**Trust on first use, and warnings after.** The first time it sees a user's devices it pins
their identity keys; after that, a device whose identity changed, or a new device, makes the
contact *untrusted*: ``encrypt`` refuses to send to it (``UntrustedError``, with what changed)
until ``trust(user)``, so a server cannot slip in a listener. Messages from it are still
opened, with the warning. A conversation that has been encrypted once is remembered
(``encrypted``): the client must not fall back to plaintext there (a server withholding key
bundles cannot downgrade it) unless the user says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import envelope as ev
from . import primitives as p
from . import x3dh
from .groupkeys import GroupKeys
from .keys import (
    IDENTITY_CONTEXT,
    MAX_ID,
    BadBundleError,
    Bundle,
    DeviceKeys,
    UnknownPrekeyError,
    safety_number,
    safety_words,
)
from .ratchet import Ratchet, b64, unb64
from .senderkey import SenderKeyReceiver

STATE_VERSION = 1
GROUP_KIND = 2  #: the protocol's ``TargetKind.GROUP`` (crypto imports no protocol module)
PREVIOUS = 2  #: sessions kept per device after a newer start replaced them (Signal keeps some too)
IDENTITY_BYTES = 128  #: the first bytes of the published keys: the identity (the directory compares them)


class E2EError(Exception):
    """Root of what the end-to-end layer refuses."""


class UndecryptableError(E2EError):
    """An envelope this device cannot or must not open; the reason, never any content."""


class NotForThisDeviceError(UndecryptableError):
    """A pairwise envelope with no entry for this device: in a group, a sender key sent to
    other members' devices (to be passed over without a word); elsewhere, a message this
    device was not given (e.g. made before it had keys)."""


class NoSessionError(UndecryptableError):
    """An envelope for this device from a device it has no session with: sent to keys this
    device no longer has (it was reinstalled, or its keys were reset). The sender's client
    starts a new session once this one writes to it (``envelope.REPAIR``)."""


class UntrustedError(E2EError):
    """Sending to ``user`` needs ``trust(user)`` first: its devices changed since they were trusted."""

    def __init__(self, user: str, alerts: list[str]) -> None:
        super().__init__(f"{user}'s keys changed ({'; '.join(alerts)}): compare safety numbers, then trust {user}")
        self.user, self.alerts = user, alerts


class NewMembersError(UntrustedError):
    """The group has members it did not have at our last post: a warning, and nothing is
    posted until ``trust_members`` (a server could add a listener to a group)."""

    def __init__(self, stream: str, users: list[str]) -> None:
        E2EError.__init__(
            self,
            f"{stream} has new members since your last post ({', '.join(users)}): check them, then trust the group",
        )
        self.user, self.alerts, self.users = stream, [f"{u} joined" for u in users], users


class NoKeysError(E2EError):
    """``user`` has no device in the key directory (or none whose bundle verified)."""

    def __init__(self, user: str) -> None:
        super().__init__(f"{user} has no device with end-to-end keys")
        self.user = user


@dataclass(slots=True)
class Peer:
    """Another device: its pinned identity and our session with it."""

    sign_public: bytes
    dh_public: bytes
    ratchet: Ratchet | None = None
    session_ad: bytes = b""  #: the X3DH associated data of the session (both identities)
    start: ev.StartInfo | None = None  #: our X3DH start, repeated until the peer answers
    their_start: bytes = b""  #: the ephemeral key of the peer's start that made the session
    #: sessions replaced by a newer start, newest first (at most ``PREVIOUS``), with their X3DH AD:
    #: when both sides start at once, each decrypts with the other's until they meet on one
    previous: list[tuple[Ratchet, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Contact:
    """A user as this device knows it: its devices, and whether they are trusted as they are."""

    devices: dict[str, Peer] = field(default_factory=dict)
    trusted: bool = True
    alerts: list[str] = field(default_factory=list)  #: what changed since the user was last trusted
    encrypted: bool = False  #: an end-to-end conversation with it exists: never fall back to plaintext
    #: the directory's list of its devices was read once: what it lists first is pinned on trust
    #: (TOFU); a device it did not list then, or a changed key, is an alert from then on
    listed: bool = False


class SecureDevice:
    """This device's end-to-end state (see the module's docstring)."""

    def __init__(self, user: str, device: str, keys: DeviceKeys) -> None:
        self.user, self.device, self.keys = user, device, keys
        self.contacts: dict[str, Contact] = {}
        self.starts = x3dh.StartCache()
        self.groups = GroupKeys()

    @classmethod
    def create(cls, user: str, device: str, now_us: int) -> SecureDevice:
        return cls(user, device, DeviceKeys.create(now_us))

    # ---- the directory ----------------------------------------------------------

    def publication(self, served: bytes, prekeys: int, now_us: int) -> tuple[bytes, list[bytes]] | None:
        """What to publish after a KeyState (the published keys the directory ``served`` for
        this device, b"" for none, and how many one-time ``prekeys`` it holds): our published
        bytes and new one-time prekeys (each as published: id u32 | key), or None if the
        directory is up to date."""
        self.keys.rotate_if_due(now_us)
        self.starts.forget_spks({k.key_id for k in (self.keys.signed_prekey, *self.keys.previous)})
        ours = self.keys.published_bytes()
        if served[:IDENTITY_BYTES] != ours[:IDENTITY_BYTES]:  # none of ours (new keys, or expired): start over
            self.keys.one_time.clear()
            prekeys = 0
        wanted = min(self.keys.one_time_wanted(prekeys), 100)
        if served == ours and not wanted:
            return None
        return ours, [k.published() for k in self.keys.new_one_time(wanted)]

    def known(self, user: str) -> tuple[str, ...]:
        """The devices of ``user`` this device has a session with (KeyFetch's ``known``)."""
        contact = self.contacts.get(user)
        return tuple(d for d, peer in contact.devices.items() if peer.ratchet) if contact else ()

    def accept_directory(self, user: str, bundles: list[tuple[str, bytes]]) -> list[str]:
        """The key directory's answer for ``user``: verify every bundle, pin or compare the
        identities, start sessions with the devices that have none. Returns warnings."""
        warnings: list[str] = []
        contact = self.contacts.setdefault(user, Contact())
        first, contact.listed = not contact.listed, True
        listed: set[str] = set()
        for device, raw in bundles:
            if user == self.user and device == self.device:
                continue
            try:
                bundle = Bundle.from_bytes(raw)
                bundle.verify()
            except BadBundleError as exc:
                warnings.append(f"{user}'s device {device}: refused ({exc})")
                continue
            peer = contact.devices.get(device)
            changed = peer is not None and (peer.sign_public, peer.dh_public) != (bundle.sign_public, bundle.dh_public)
            fresh = Peer(bundle.sign_public, bundle.dh_public) if peer is None or changed else peer
            if fresh.ratchet is None:
                try:  # a low-order key (the one-time prekey is unsigned; a student may sign a bad one)
                    self._start(fresh, bundle)
                except (p.BadKeyError, ValueError) as exc:
                    warnings.append(f"{user}'s device {device}: refused ({exc})")
                    continue
            listed.add(device)
            if changed:
                self._alert(contact, f"{user}'s device {device} has a new identity key", warnings)
            elif peer is None and not first:
                self._alert(contact, f"{user} has a new device {device}", warnings)
            contact.devices[device] = fresh
        for gone in set(contact.devices) - listed:
            del contact.devices[gone]
        return warnings

    def trust(self, user: str) -> None:
        """The user compared safety numbers (or accepts the risk): send to its devices as they are."""
        contact = self.contacts.setdefault(user, Contact())
        contact.trusted, contact.alerts = True, []

    def trust_members(self, stream: str, members: list[str] | tuple[str, ...]) -> None:
        """The group's members as they are now are the ones we post to (checked by the user)."""
        self.groups.seen[stream] = set(members)

    def safety_number(self, user: str) -> str:
        """The safety number of this user and ``user``, over both users' devices as pinned."""
        return safety_number(*self._both(user))

    def safety_words(self, user: str) -> list[str]:
        """The same safety number as words, to read aloud."""
        return safety_words(*self._both(user))

    def _both(self, user: str) -> tuple[str, list[tuple[str, bytes]], str, list[tuple[str, bytes]]]:
        ours = [(self.device, self.keys.identity.sign_public)]
        ours += [(d, peer.sign_public) for d, peer in self.contacts.get(self.user, Contact()).devices.items()]
        theirs = [(d, peer.sign_public) for d, peer in self.contacts.get(user, Contact()).devices.items()]
        if not theirs:
            raise NoKeysError(user)
        return self.user, ours, user, theirs

    # ---- messages ---------------------------------------------------------------

    def encrypt(
        self, recipients: list[str], target_kind: int, stream: str, client_msg_id: int, kind: int, payload: bytes
    ) -> bytes:
        """A pairwise envelope of ``payload`` (inner type ``kind``) for every device of
        ``recipients`` and this user's other devices. Save the state before sending it.

        Raises:
            NoKeysError: a recipient has no device to encrypt for.
            UntrustedError: a recipient's devices changed since it was trusted.
        """
        targets = self._targets(recipients)
        for user in recipients:
            self.contacts[user].encrypted = True
        return self._pairwise(targets, target_kind, stream, client_msg_id, kind, payload)

    def group_send(
        self, stream: str, members: list[str], client_msg_id: int, kind: int, payload: bytes, now_us: int
    ) -> bytes:
        """The envelope of a message to the group ``stream``: under our sender key for it,
        carrying that key for the member devices that lack it (made anew first if someone left,
        ``groupkeys.py``). Save the state before sending it.

        Raises:
            NoKeysError, UntrustedError: as ``encrypt``, for any member.
            NewMembersError: members joined since our last post (trust on first use: the first).
        """
        targets = self.check_group(stream, members)
        devices = {(u, d + "/" + peer.sign_public.hex()) for u, d, peer in targets}  # a reinstall is a new device
        need = {(u, d.partition("/")[0]) for u, d in self.groups.plan(stream, frozenset(members), devices, now_us)}
        keys = b""
        if need:
            given = [t for t in targets if (t[0], t[1]) in need]
            if len(given) > ev.MAX_ENTRIES:
                self.groups.forget(stream)
                raise E2EError(f"a group of {len(given)} devices: at most {ev.MAX_ENTRIES} get a key in one post")
            distribution = ev.sender_key_payload(stream, self.groups.distribution(stream))
            keys = self._pairwise(given, GROUP_KIND, stream, client_msg_id, ev.SENDER_KEY, distribution)
        bound = ev.group_head(ev.prefix(ev.GROUP, self.device, client_msg_id), keys)
        ad = ev.associated_data(self.user, GROUP_KIND, stream, bound)
        data = bound + self.groups.encrypt(stream, ev.inner(kind, payload), ad)
        self.groups.seen[stream] = set(members)
        return data

    def check_group(self, stream: str, members: list[str]) -> list[tuple[str, str, Peer]]:
        """The devices a post to ``stream`` goes to, or why it may not go (nothing changes).

        Raises:
            NewMembersError, NoKeysError, UntrustedError: as ``group_send``.
        """
        seen = self.groups.seen.get(stream)
        if seen is not None and (new := sorted(set(members) - seen - {self.user})):
            raise NewMembersError(stream, new)
        return self._targets([m for m in members if m != self.user])

    def check_trusted(self, recipients: list[str]) -> None:
        """Raise what ``encrypt`` would for ``recipients`` (``NoKeysError``, ``UntrustedError``)."""
        self._targets(recipients)

    def _targets(self, recipients: list[str]) -> list[tuple[str, str, Peer]]:
        """Every device with a session of ``recipients`` and of this user (its other devices)."""
        targets: list[tuple[str, str, Peer]] = []
        for user in [*recipients, self.user]:
            contact = self.contacts.get(user, Contact())
            if not contact.trusted:  # our own user too: a device added to our account reads what we send
                raise UntrustedError(user, contact.alerts)
            peers = [(user, d, peer) for d, peer in sorted(contact.devices.items()) if peer.ratchet is not None]
            if not peers and user != self.user:
                raise NoKeysError(user)
            targets += peers
        return targets

    def _pairwise(
        self, targets: list[tuple[str, str, Peer]], target_kind: int, stream: str, client_msg_id: int, kind: int,
        payload: bytes,
    ) -> bytes:  # fmt: skip
        head = ev.prefix(ev.PAIRWISE, self.device, client_msg_id)
        ad = ev.associated_data(self.user, target_kind, stream, head)
        content_key = p.random_bytes(p.KEY)
        body = p.seal(*_body_key(content_key), ev.inner(kind, payload), ad)
        secret = content_key + p.sha256(body)
        entries = []
        for user, device, peer in targets:
            assert peer.ratchet is not None
            header, wrapped = peer.ratchet.encrypt(
                secret, peer.session_ad + ad + ev.entry_head(user, device, peer.start)
            )
            entries.append(ev.Entry(user, device, header, wrapped, peer.start))
        signed = ev.pairwise(head, entries, body)
        return signed + p.sign(self.keys.identity.sign_private, ev.SIGNED + ad + signed)

    def decrypt(self, sender: str, target_kind: int, stream: str, data: bytes) -> tuple[int, bytes, list[str]]:
        """Open an envelope ``sender`` sent in the conversation (``target_kind``, ``stream``):
        (inner type, payload, warnings). Save the state before acknowledging the message.

        Raises:
            UndecryptableError: not for this device, tampered with, replayed, or from a session
                this device does not have; the state is as it was.
        """
        try:
            return self._decrypt(sender, target_kind, stream, data)
        except UndecryptableError:
            raise
        except Exception as exc:  # noqa: BLE001 - hostile input must cost its message only, never the client
            raise UndecryptableError(f"a malformed envelope ({type(exc).__name__}: {exc})") from None

    def _decrypt(self, sender: str, target_kind: int, stream: str, data: bytes) -> tuple[int, bytes, list[str]]:
        env = _parsed(data)
        if env.kind == ev.GROUP:
            return self._open_group(sender, target_kind, stream, env)
        kind, payload, commit = self._open_pairwise(sender, target_kind, stream, env)
        receiver = self._sender_key(kind, payload, target_kind, stream) if kind == ev.SENDER_KEY else None
        warnings = commit()
        if receiver is not None:  # a member's sender key for this group: kept, not shown
            self.groups.keep(stream, sender, env.device, receiver)
        return kind, payload, warnings

    def _open_pairwise(
        self, sender: str, target_kind: int, stream: str, env: ev.Envelope
    ) -> tuple[int, bytes, Callable[[], list[str]]]:
        """(inner type, payload, commit) of a pairwise envelope, on trial: nothing is kept until
        ``commit()`` (which returns the warnings), so a caller with more to check first can refuse."""
        mine = [e for e in env.entries if (e.user, e.device) == (self.user, self.device)]
        if len(mine) != 1:
            raise NotForThisDeviceError("not encrypted for this device")
        entry = mine[0]
        ad = ev.associated_data(sender, target_kind, stream, env.prefix)
        contact = self.contacts.get(sender) or Contact()  # a new one is kept only at commit
        peer = contact.devices.get(env.device)
        fresh = entry.start is not None and (peer is None or peer.their_start != entry.start.ephemeral)
        if not fresh and (peer is None or peer.ratchet is None):
            raise NoSessionError(f"no session with {sender}'s device {env.device} (this device's keys are newer)")
        signer = entry.start.sign_public if fresh and entry.start else peer.sign_public if peer else b""
        if not p.verify(signer, env.signature, ev.SIGNED + ad + env.signed):
            raise UndecryptableError(f"not signed by {sender}'s device {env.device} (or not in this conversation)")
        if fresh and peer is not None and entry.start is not None and peer.sign_public != entry.start.sign_public:
            # anyone can make a start in a pinned device's name with keys of their own: not opened,
            # the pinned session kept; a real reinstall shows up in the directory (a warning there)
            raise UndecryptableError(
                f"a session start in the name of {sender}'s device {env.device} with another identity key: "
                f"not opened (if {sender} reinstalled, /fingerprint {sender}, then /trust {sender})"
            )
        try:
            if fresh:
                assert entry.start is not None
                peer, secret = self._open_start(entry, ad)
                trial = peer.ratchet
            elif peer is not None and peer.ratchet is not None:
                trial, which, secret = _try_sessions(peer, entry, ad)
            else:
                raise UndecryptableError(f"no session with {sender}'s device {env.device}")
        except (p.DecryptError, p.BadKeyError, UnknownPrekeyError, ValueError) as exc:
            raise UndecryptableError(str(exc)) from None
        if len(secret) != 2 * p.KEY or not p.same(p.sha256(env.body), secret[p.KEY :]):
            raise UndecryptableError("the body is not the one its sender wrapped the key for")
        try:
            kind, payload = ev.split_inner(p.open_(*_body_key(secret[: p.KEY]), env.body, ad))
        except (p.DecryptError, ev.EnvelopeError) as exc:
            raise UndecryptableError(str(exc)) from None
        start, found = entry.start, peer

        def commit() -> list[str]:
            warnings: list[str] = []
            self.contacts.setdefault(sender, contact)
            if fresh:  # opened: only now does the start count (its one-time prekey spent, its peer pinned)
                assert start is not None and found is not None
                self._commit_start(contact, sender, env.device, start, found, warnings)
            else:
                assert found is not None and trial is not None
                if which >= 0:  # an older session answered: it is the one both use from now on
                    older_ad = found.previous.pop(which)[1]
                    if found.ratchet is not None:
                        found.previous.insert(0, (found.ratchet, found.session_ad))
                    found.session_ad = older_ad
                found.ratchet, found.start = trial, None  # they answered: they have the session
            contact.encrypted = contact.encrypted or sender != self.user
            return warnings

        return kind, payload, commit

    def _sender_key(self, kind: int, payload: bytes, target_kind: int, stream: str) -> SenderKeyReceiver:
        """The sender key a ``SENDER_KEY`` payload carries, if it is for this group."""
        try:
            named, distribution = ev.parse_sender_key(payload)
            if target_kind != GROUP_KIND or named != stream:
                raise UndecryptableError(f"a sender key for {named!r} sent in {stream!r}")
            return SenderKeyReceiver.from_distribution(distribution)
        except (ev.EnvelopeError, ValueError, p.DecryptError) as exc:
            raise UndecryptableError(str(exc)) from None

    def _open_group(self, sender: str, target_kind: int, stream: str, env: ev.Envelope) -> tuple[int, bytes, list[str]]:
        """A group message under its sender device's sender key, taking in the key it carries for
        this device, if any: all or nothing (a message that fails keeps none of its keys)."""
        commit, carried = None, None
        if env.keys:
            try:
                kind, payload, commit = self._open_pairwise(sender, target_kind, stream, _parsed(env.keys))
            except NotForThisDeviceError:
                pass  # for other members' devices: this one has the key (or the message fails below)
            else:
                if kind != ev.SENDER_KEY:
                    raise UndecryptableError("a group envelope whose keys are not a sender key")
                carried = self._sender_key(kind, payload, target_kind, stream)
        ad = ev.associated_data(sender, target_kind, stream, env.bound)
        try:
            plaintext = self.groups.decrypt(stream, sender, env.device, env.body, ad, carried)
            kind, payload = ev.split_inner(plaintext)
        except (p.DecryptError, ev.EnvelopeError) as exc:
            raise UndecryptableError(str(exc)) from None
        warnings = commit() if commit is not None else []
        if carried is not None:
            self.groups.keep(stream, sender, env.device, carried)
        return kind, payload, warnings

    # ---- sessions ---------------------------------------------------------------

    def _start(self, peer: Peer, bundle: Bundle) -> None:
        """Start a session with ``peer`` from its (verified) bundle: X3DH, then the ratchet."""
        me = self.keys.identity
        start = x3dh.initiate(
            me.sign_public, me.dh_private, me.dh_public, bundle.sign_public, bundle.dh_public, bundle.spk_id,
            bundle.spk_public, bundle.otpk_id, bundle.otpk_public or None,
        )  # fmt: skip
        peer.ratchet = Ratchet.initiator(start.shared, bundle.spk_public)
        peer.session_ad = start.ad
        peer.start = ev.StartInfo(me.sign_public, me.dh_public, me.dh_signature, start.ephemeral_public,
                                  start.spk_id, start.otpk_id)  # fmt: skip

    def _open_start(self, entry: ev.Entry, ad: bytes) -> tuple[Peer, bytes]:
        """A new session from another device's X3DH start; nothing is kept unless it opens."""
        s = entry.start
        assert s is not None
        if not p.verify(s.sign_public, s.dh_signature, IDENTITY_CONTEXT + s.dh_public):
            raise UndecryptableError("a session start whose identity key is not signed by its owner")
        if s.otpk_id == x3dh.NO_OTPK and x3dh.StartCache.key(s.ephemeral, s.spk_id) in self.starts:
            raise UndecryptableError("a replayed session start")
        if s.otpk_id == x3dh.NO_OTPK and self.starts.full:  # fail closed: never forget one to take another
            raise UndecryptableError(
                "too many session starts without a one-time prekey: refused until a prekey rotates"
            )
        one_time = self.keys.one_time.get(s.otpk_id) if s.otpk_id else None
        if s.otpk_id and one_time is None:
            raise UndecryptableError(f"one-time prekey {s.otpk_id} is unknown or used (a server handed it out twice?)")
        me, spk = self.keys.identity, self.keys.spk_private(s.spk_id)
        shared, session_ad = x3dh.respond(
            me.sign_public, me.dh_private, me.dh_public, spk, one_time.private if one_time else None,
            s.sign_public, s.dh_public, s.ephemeral,
        )  # fmt: skip
        ratchet = Ratchet.responder(shared, spk, p.dh_public(spk))
        secret = ratchet.decrypt(entry.header, entry.wrapped, session_ad + ad + _head(entry))
        return Peer(s.sign_public, s.dh_public, ratchet, session_ad, None, s.ephemeral), secret

    def _commit_start(
        self, contact: Contact, user: str, device: str, s: ev.StartInfo, peer: Peer, warnings: list[str]
    ) -> None:
        if s.otpk_id:
            self.keys.take_one_time(s.otpk_id)
        else:
            self.starts.seen_before(x3dh.StartCache.key(s.ephemeral, s.spk_id), s.spk_id)
        old = contact.devices.get(device)
        if old is None and contact.listed:
            self._alert(contact, f"{user} has a new device {device}", warnings)
        if old is not None and old.ratchet is not None:  # kept: a message on it may still come
            peer.previous = [(old.ratchet, old.session_ad), *old.previous][:PREVIOUS]
        contact.devices[device] = peer

    def _alert(self, contact: Contact, text: str, warnings: list[str]) -> None:
        contact.trusted = False
        contact.alerts.append(text)
        warnings.append(text)

    # ---- state ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, exact: what the vault keeps."""
        return {
            "version": STATE_VERSION, "user": self.user, "device": self.device, "keys": self.keys.to_dict(),
            "starts": self.starts.to_dict(), "groups": self.groups.to_dict(),
            "contacts": {user: _contact_dict(c) for user, c in self.contacts.items()},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecureDevice:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"end-to-end state version {data.get('version')!r}: not one this client reads")
        me = cls(str(data["user"]), str(data["device"]), DeviceKeys.from_dict(data["keys"]))
        me.starts = x3dh.StartCache.from_dict(data["starts"])
        me.groups = GroupKeys.from_dict(data["groups"])
        me.contacts = {str(user): _contact_of(c) for user, c in data["contacts"].items()}
        return me


def _try_sessions(peer: Peer, entry: ev.Entry, ad: bytes) -> tuple[Ratchet, int, bytes]:
    """(the session on trial, -1 for the current one or the index of an older one, the secret)."""
    assert peer.ratchet is not None
    failure: Exception | None = None
    for which, (ratchet, session_ad) in enumerate([(peer.ratchet, peer.session_ad), *peer.previous], start=-1):
        trial = ratchet.copy()
        try:
            return trial, which, trial.decrypt(entry.header, entry.wrapped, session_ad + ad + _head(entry))
        except p.DecryptError as exc:
            failure = failure or exc
    assert failure is not None
    raise failure


def _parsed(data: bytes) -> ev.Envelope:
    try:
        return ev.parse(data)
    except ev.EnvelopeError as exc:
        raise UndecryptableError(str(exc)) from None


def _head(entry: ev.Entry) -> bytes:
    return ev.entry_head(entry.user, entry.device, entry.start)


def _body_key(content_key: bytes) -> tuple[bytes, bytes]:
    """The body's ChaCha20-Poly1305 key and nonce, from the message's fresh content key."""
    okm = p.hkdf(content_key, salt=b"", info=ev.BODY_INFO, length=p.KEY + p.NONCE)
    return okm[: p.KEY], okm[p.KEY :]


def _unb64(text: Any, size: int) -> bytes:
    """``size`` bytes from base64 (``ratchet.unb64``), or none for an empty field (no start yet)."""
    return unb64(text, size) if text else b""


def _contact_dict(c: Contact) -> dict[str, Any]:
    devices = {}
    for device, peer in c.devices.items():
        s = peer.start
        devices[device] = {
            "sign": b64(peer.sign_public), "dh": b64(peer.dh_public), "ad": b64(peer.session_ad),
            "ratchet": peer.ratchet.to_dict() if peer.ratchet else None, "their_start": b64(peer.their_start),
            "start": [b64(s.sign_public), b64(s.dh_public), b64(s.dh_signature), b64(s.ephemeral), s.spk_id, s.otpk_id]
            if s else None,
            "previous": [[r.to_dict(), b64(sad)] for r, sad in peer.previous],
        }  # fmt: skip
    return {
        "devices": devices, "trusted": c.trusted, "alerts": list(c.alerts), "encrypted": c.encrypted,
        "listed": c.listed,
    }  # fmt: skip


def _contact_of(data: dict[str, Any]) -> Contact:
    devices = {}
    for device, d in data["devices"].items():
        s = d["start"]
        start = None
        if s is not None:
            spk_id, otpk_id = int(s[4]), int(s[5])
            if not (0 < spk_id <= MAX_ID and 0 <= otpk_id <= MAX_ID):
                raise ValueError("a stored session start's key ids are not u32")
            keys = unb64(s[0]), unb64(s[1]), unb64(s[2], p.SIGNATURE), unb64(s[3])
            start = ev.StartInfo(*keys, spk_id, otpk_id)
        ratchet = Ratchet.from_dict(d["ratchet"]) if d["ratchet"] is not None else None
        previous = [(Ratchet.from_dict(r), unb64(sad, x3dh.AD_SIZE)) for r, sad in d["previous"]][:PREVIOUS]
        devices[str(device)] = Peer(
            unb64(d["sign"]), unb64(d["dh"]), ratchet, _unb64(d["ad"], x3dh.AD_SIZE), start,
            _unb64(d["their_start"], p.KEY), previous,
        )  # fmt: skip
    alerts = [str(a) for a in data["alerts"]]
    return Contact(devices, bool(data["trusted"]), alerts, bool(data["encrypted"]), bool(data["listed"]))
