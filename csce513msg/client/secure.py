"""The client's end-to-end layer: between ``ClientSession`` and ``crypto.device.SecureDevice``.

The session calls in at three places, all sans-I/O:

- **the directory**: a ``KeyState`` (after each login, and when the server runs low) may call
  for a ``KeyPublish`` (``publication``); a ``KeyBundles`` (the answer to a ``KeyFetch`` the
  driver asked for with ``ClientSession.fetch_keys``) updates what this device knows of a
  user's devices (``bundles``), with warnings to show;
- **sending**: ``seal`` turns a text (or any inner message) for a user into the body of a
  content type 2 message, or refuses (``E2EError``): a contact whose keys changed until
  ``trust``, a conversation that was encrypted and whose keys are now withheld;
- **receiving**: ``open`` turns a Deliver of content type 2 into the Deliver its sender meant
  (``content_type`` and ``body`` of the inner message), or a notice without content
  (``notices``); a message id opened before is served from a small cache, not decrypted
  again (a redelivery is not a replay).

**State is saved before it matters.** ``save`` (the vault, given by the driver) runs inside
``seal`` before the Send is queued, and inside ``open`` before the session queues the Ack
that follows, so no message key is ever used twice and none is lost for a message the
server would not send again.

Group posts go under sender keys (``seal_group``: one message per post, ``crypto/groupkeys.py``),
except the announcements (``g:0``, the whole class: staff post them in the clear).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import fcntl
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..crypto import envelope as ev
from ..crypto import primitives as p
from ..crypto.device import E2EError, NoSessionError, SecureDevice, UndecryptableError
from ..crypto.vault import VAULT_COSTS, Vault
from ..protocol import ContentType, Deliver, KeyBundles, KeyPublish, KeyState, Receipt, Send, TargetKind, bundles
from ..protocol.names import direct_stream
from .archive import Archive

OPENED_CACHE = 1024  #: message ids whose plaintext is kept to answer a redelivery
NOTICES = 256  #: notices kept for the driver to show


class DowngradeError(E2EError):
    """The conversation was end-to-end encrypted, and now no key is offered for it: sending
    plaintext there would let a server that withholds keys read it."""

    def __init__(self, user: str) -> None:
        super().__init__(
            f"{user}: no end-to-end keys now for the conversation, which was encrypted: not sending in clear "
            "(if this is expected, e.g. all of their devices expired, start over with --no-e2e)"
        )
        self.user = user


class Secure:
    """One logged-in device's end-to-end state, as the session uses it.

    Args:
        device: the device's keys and sessions.
        save: keeps the vault's document (the device's state and the archive's key); called
            before anything that depends on it is sent.
        archive: this device's own copy of its end-to-end messages (``archive.py``).
        archive_key: the archive's key, kept in the vault with the rest.
    """

    def __init__(
        self, device: SecureDevice, save: Callable[[dict[str, Any]], None], archive: Archive | None = None,
        archive_key: bytes = b"",
    ) -> None:  # fmt: skip
        self.device, self._save, self.archive, self._archive_key = device, save, archive, archive_key
        self.fetched: set[str] = set()  #: users whose device list was read on this connection
        self.warnings: list[str] = []  #: what the driver should show (and clear)
        self.notices: collections.OrderedDict[int, str] = collections.OrderedDict()  #: message id -> why unopened
        self.lock: io.FileIO | None = None  #: the vault's lock, held (``from_vault``)
        self.repairs: set[str] = set()  #: users to send an ``envelope.REPAIR`` (a message of theirs had no session)
        self.encrypted: set[int] = set()  #: message ids that came end-to-end encrypted (bounded like ``_opened``)
        #: message id -> (inner type, payload, its binding: sender, kind, stream, body hash)
        self._opened: collections.OrderedDict[int, tuple[int, bytes, bytes]] = collections.OrderedDict()
        #: client message id -> what we sent, until its Receipt (bounded: a send never answered)
        self._sealed: collections.OrderedDict[int, tuple[int, bytes]] = collections.OrderedDict()

    @classmethod
    def from_vault(cls, path: Any, passphrase: str, user: str, device: str, *, cost: str = "production") -> Secure:
        """The device's state from its vault at ``path`` (made, with new keys, if there is none).

        Raises:
            crypto.vault.VaultLockedError: a wrong passphrase, or a damaged file.
        """
        path = Path(path)
        lock = _lock(path.with_name(path.name + ".lock"))
        try:
            secure = cls._opened_vault(path, passphrase, user, device, cost)
        except BaseException:
            lock.close()
            raise
        secure.lock = lock  # held until ``close`` (or this object is gone): one process per vault
        return secure

    def close(self) -> None:
        """Let another process open this device's keys (the state is saved already)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    @classmethod
    def _opened_vault(cls, path: Path, passphrase: str, user: str, device: str, cost: str) -> Secure:
        try:
            vault = Vault.open(path, passphrase)
            doc = vault.load()
            state = SecureDevice.from_dict(doc["device"])
            archive_key = base64.b64decode(doc["archive_key"], validate=True)
            if (state.user, state.device) != (user, device):
                raise E2EError(f"{path} holds the keys of {state.user} on {state.device}, not {user} on {device}")
        except FileNotFoundError:
            vault = Vault.create(path, passphrase, VAULT_COSTS[cost])
            state = SecureDevice.create(user, device, time.time_ns() // 1000)
            archive_key = os.urandom(32)
            old = path.with_name(path.name + ".archive")
            if old.exists():  # the archive of keys set aside (msg --reset-keys): not this key's
                old.rename(old.with_name(f"{old.name}.old-{time.time_ns()}"))
        except (KeyError, TypeError, ValueError) as exc:
            raise E2EError(f"{path}: not this client's keys ({type(exc).__name__}: {exc})") from None
        secure = cls(state, vault.save, Archive(path.with_name(path.name + ".archive"), archive_key), archive_key)
        secure.save()
        return secure

    def save(self) -> None:
        self._save({"device": self.device.to_dict(), "archive_key": base64.b64encode(self._archive_key).decode()})

    # ---- the directory ----------------------------------------------------------

    def publication(self, state: KeyState) -> KeyPublish | None:
        """What to publish after ``state`` (None: the directory is up to date)."""
        made = self.device.publication(state.body if state.published else b"", state.prekeys, time.time_ns() // 1000)
        if made is None:
            return None
        self.save()  # the new keys' private halves before their public halves leave
        published, prekeys = made
        return KeyPublish(len(prekeys), published + b"".join(prekeys))  # each prekey as published: id | key

    def bundles(self, msg: KeyBundles) -> None:
        """The directory's devices of a user: verified, compared with what was pinned; sessions started."""
        self.warnings += self.device.accept_directory(msg.user, bundles(msg))
        self.fetched.add(msg.user)
        self.save()

    def ready(self, user: str) -> bool:
        """Whether the device list of ``user`` (and of ourselves) was read on this connection."""
        return user in self.fetched and self.device.user in self.fetched

    def wants_e2e(self, user: str) -> bool:
        """Whether a message to ``user`` goes end-to-end encrypted: it has a device in the
        directory. None, after an encrypted conversation: ``DowngradeError``; none ever: plaintext
        (its client does not do end-to-end encryption)."""
        contact = self.device.contacts.get(user)
        if contact is not None and contact.devices:
            return True
        if contact is not None and contact.encrypted:
            raise DowngradeError(user)
        return False

    def wants_e2e_group(self, stream: str, members: tuple[str, ...] | list[str]) -> bool:
        """Whether a post to the group ``stream`` goes end-to-end encrypted: every other member
        has a device in the directory. Not, after encrypted posts: ``DowngradeError``."""
        contacts = self.device.contacts
        if all(m == self.device.user or (m in contacts and contacts[m].devices) for m in members):
            return True
        if self.device.groups.encrypted(stream):  # ours or others' posts there were end to end
            raise DowngradeError(stream)
        return False

    def group_named(self, name: str, stream: str) -> None:
        """The group ``name`` is ``stream`` (as a GroupMembers or a post said)."""
        self.device.groups.names[name.lower()] = stream

    def clear_post_allowed(self, group: str) -> None:
        """Refuse a post in clear to ``group`` (a name or ``g:<id>``) that had end-to-end posts.

        Raises:
            DowngradeError: it had.
        """
        stream = group if group.startswith("g:") else self.device.groups.names.get(group.lower(), "")
        if stream and self.device.groups.encrypted(stream):
            raise DowngradeError(group)

    def check_clear(self, msg: Deliver) -> None:
        """A text or an offer that came in clear: a warning if its conversation is end to end
        (the server, or a client that stopped encrypting, wrote it)."""
        if msg.target_kind == TargetKind.GROUP:
            private = self.device.groups.encrypted(msg.stream)
        else:
            contact = self.device.contacts.get(msg.sender)
            private = contact is not None and contact.encrypted and msg.sender != self.device.user
        if private:
            self.warnings.append(f"a message from {msg.sender} arrived in clear in an end-to-end conversation "
                                 "(the server could have written it): do not trust it")  # fmt: skip

    def seal_group(
        self, stream: str, members: list[str], client_msg_id: int, kind: int, payload: bytes, limit: int = 0
    ) -> bytes:
        """The envelope of a post to the group ``stream`` (members as the server lists them now),
        with the state saved.

        Raises:
            E2EError: ``UntrustedError``, ``NoKeysError`` (see ``SecureDevice.group_send``); or the
                post would be over ``limit`` bytes (the server's ``max_text``).
        """
        data = self.device.group_send(stream, members, client_msg_id, kind, payload, time.time_ns() // 1000)
        if limit and len(data) > limit:  # a new key for many devices at once: over the server's max_text
            self.device.groups.forget(stream)  # (no device counts as given it: the next post starts over)
            self.save()
            raise E2EError(
                f"a post to {stream} carrying its key for every member's device is {len(data)} bytes, over the "
                f"server's {limit}: this group is too large for end-to-end posts on this server"
            )
        self.save()
        _keep(self._sealed, client_msg_id, (kind, payload), OPENED_CACHE)
        return data

    def trust(self, user: str) -> None:
        self.device.trust(user)
        self.save()

    def trust_members(self, stream: str, members: tuple[str, ...] | list[str]) -> None:
        self.device.trust_members(stream, members)
        self.save()

    # ---- messages ---------------------------------------------------------------

    def seal(self, target: str, client_msg_id: int, kind: int, payload: bytes) -> bytes:
        """The envelope of a direct message to ``target``, with the state saved.

        Raises:
            E2EError: ``UntrustedError``, ``NoKeysError`` (see ``SecureDevice.encrypt``).
        """
        stream = direct_stream(self.device.user, target)
        data = self.device.encrypt([target], TargetKind.USER, stream, client_msg_id, kind, payload)
        self.save()
        _keep(self._sealed, client_msg_id, (kind, payload), OPENED_CACHE)
        return data

    def stored(self, send: Send, receipt: Receipt) -> None:
        """A message we sealed was stored: our own copy goes to the archive (the server's is for
        the other devices: this one has no key for it), bound to where and what it was."""
        sent = self._sealed.pop(send.client_msg_id, None)
        if sent is not None and self.archive is not None:
            where = _binding(self.device.user, send.target_kind, receipt.stream, send.body)
            self.archive.add(receipt.message_id, sent[0], sent[1], where)

    def open(self, msg: Deliver) -> Deliver | None:
        """The Deliver its sender meant; ``msg`` as it came (content type 2) with a notice; or
        None for what is not shown (a group's sender key sent on its own)."""
        where = _binding(msg.sender, msg.target_kind, msg.stream, msg.body)
        if msg.target_kind == TargetKind.GROUP:
            self.group_named(msg.target, msg.stream)
        cached = self._opened.get(msg.message_id)
        if cached is None and self.archive is not None:
            cached = self.archive.get(msg.message_id)
        if cached is not None and not p.same(cached[2], where):  # the id of another message: not its text
            cached = None
        if cached is None:
            try:
                kind, payload, warnings = self.device.decrypt(msg.sender, msg.target_kind, msg.stream, msg.body)
            except UndecryptableError as exc:
                _keep(self.notices, msg.message_id, str(exc), NOTICES)
                if isinstance(exc, NoSessionError) and msg.sender != self.device.user:
                    self.repairs.add(msg.sender)  # the driver writes to them: a new session starts
                return msg
            self.warnings += warnings
            self.save()
            cached = (kind, payload, where)
            if self.archive is not None and kind != ev.SENDER_KEY:
                self.archive.add(msg.message_id, kind, payload, where)
            _keep(self._opened, msg.message_id, cached, OPENED_CACHE)
        self.encrypted.add(msg.message_id)
        if len(self.encrypted) > OPENED_CACHE:
            self.encrypted.intersection_update(self._opened)
        kind, payload, _ = cached
        if kind in (ev.SENDER_KEY, ev.REPAIR):
            return None
        content = {ev.TEXT: ContentType.TEXT, ev.FILE_OFFER: ContentType.FILE_OFFER}.get(kind)
        if content is None:  # a kind this client does not know
            _keep(self.notices, msg.message_id, f"an end-to-end message of kind {kind}", NOTICES)
            return msg
        return dataclasses.replace(msg, content_type=content, body=payload)


def _binding(sender: str, target_kind: int, stream: str, body: bytes) -> bytes:
    """What a kept plaintext belongs to: a redelivery of the same message matches it, the same
    message id on another sender, conversation or body does not (a server relabelling)."""
    return p.sha256(json.dumps([sender, target_kind, stream]).encode() + p.sha256(body))


def _lock(path: Path) -> io.FileIO:
    """An exclusive lock on ``path`` for this process (released when the file is closed).
    Two processes saving one vault would each go on from its own copy of the ratchets: the
    second would reuse message keys the first used.

    Raises:
        E2EError: another process holds it.
    """
    held = io.FileIO(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600), "r+")
    try:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        raise E2EError(f"{path.with_suffix('')} is in use by another client of yours on this machine") from None
    return held


def _keep(cache: collections.OrderedDict[int, Any], key: int, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
