"""Protocol 1.7, end-to-end encryption (docs/protocol.md section 14): the key directory's frames.

End-to-end encryption is the clients' business: the server stores and forwards keys and
ciphertext it cannot use. What it keeps is a *key directory*: for each device of each user,
the public part of its keys (the bytes ``crypto.keys`` lays out), and a supply of one-time
prekeys, each handed out once.

- ``KeyPublish``: a logged-in device publishes its identity and signed prekey (``PUBLISHED``
  bytes, the same every time until it rotates the prekey) and adds one-time prekeys;
  ``KeyState`` answers, and is pushed again when the supply runs low;
- ``KeyFetch``: anyone asks for a user's devices; ``KeyBundles`` answers with one bundle per
  device (its published keys and, while the asker's allowance lasts, one one-time prekey,
  which the server then deletes), so a first message can be encrypted for a device that is
  offline (Signal's X3DH);
- ``KeyForget``: a user removes one of its own devices from the directory (a lost laptop).

The server checks sizes and ownership only: it never verifies a signature (it could not be
trusted to anyway: every client verifies every bundle it is given). Messages themselves
travel as content type 2 (``ContentType.ENVELOPE``), forwarded unread like any other.

This module registers its frames with ``messages._message`` and is imported by ``messages``
itself (so ``decode`` knows them): it imports only what ``messages`` defines before that line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ErrorCode, RemoteProtocolError
from .messages import MsgType, _message

E2E_MINOR = 7  #: the minor version that added the key directory
#: bytes a device publishes: Ed25519 identity 32 | X25519 identity 32 | its signature 64 |
#: signed prekey id u32 | signed prekey 32 | its signature 64 (``crypto.keys.Bundle.published``)
PUBLISHED = 228
PREKEY = 36  #: a one-time prekey as published: id u32 | X25519 public key 32
#: a bundle as served: ``PUBLISHED`` | one-time prekey id u32 (0: none) | its key 32 (zeros: none)
BUNDLE = PUBLISHED + PREKEY
MAX_PUBLISH = 100  #: one-time prekeys one KeyPublish may add
MAX_PREKEYS = 200  #: one-time prekeys the server holds for one device
PREKEY_LOW = 20  #: the server pushes KeyState when a device's supply falls to this
_PREKEY = struct.Struct("!I32s")
_DEVICE_LEN = struct.Struct("!B")


@_message(MsgType.KEY_PUBLISH, "H", added=E2E_MINOR)
@dataclass(frozen=True, slots=True)
class KeyPublish:
    """Publish this device's keys: the body is ``PUBLISHED`` bytes, then ``prekeys`` one-time
    prekeys of ``PREKEY`` bytes each (ids not 0; an id the server holds already is ignored).
    New identity bytes (the first 128) replace the device's keys and drop its old one-time
    prekeys; the same identity with a new signed prekey is a rotation. Answered by KeyState."""

    prekeys: int  #: u16, at most ``MAX_PUBLISH``
    body: bytes = b""
    request_id: int = 0


@_message(MsgType.KEY_FETCH, "sL", added=E2E_MINOR)
@dataclass(frozen=True, slots=True)
class KeyFetch:
    """Ask for the keys of every device of ``user`` (yourself included): answered by KeyBundles.
    The devices named in ``known`` (those the asker has a session with already) are listed
    without a one-time prekey: none is spent for nothing."""

    user: str
    known: tuple[str, ...] = ()  #: list[str]
    request_id: int = 0


@_message(MsgType.KEY_FORGET, "s", added=E2E_MINOR)
@dataclass(frozen=True, slots=True)
class KeyForget:
    """Remove one of your own devices (``device``, or "" for this one) from the directory:
    nobody can start a session with it any more. Answered by KeyState (``published`` 0)."""

    device: str
    request_id: int = 0


@_message(MsgType.KEY_BUNDLES, "sH", added=E2E_MINOR)
@dataclass(frozen=True, slots=True)
class KeyBundles:
    """Every device of ``user`` in the directory (``count`` of them; 0: none, so no session can
    be started with that user), each in the body as: device id length u8 | device id (UTF-8) |
    ``BUNDLE`` bytes. ``bundles`` and ``bundles_body`` read and write it."""

    user: str
    count: int  #: u16
    body: bytes = b""
    request_id: int = 0


@_message(MsgType.KEY_STATE, "BIIQ", added=E2E_MINOR)
@dataclass(frozen=True, slots=True)
class KeyState:
    """What the directory holds for this device: the answer to KeyPublish and KeyForget, sent
    after each login of a session that asked for ``e2e``, and pushed when ``prekeys`` falls to
    ``PREKEY_LOW`` (publish more). Its body is the device's published keys as served."""

    published: int  #: u8: 1 if the directory has this device's keys, 0 if not (publish them)
    spk_id: int  #: u32: the signed prekey it serves (0: none)
    prekeys: int  #: u32: one-time prekeys it holds for this device
    expires_us: int  #: u64: when the keys leave the directory unless the device logs in again (0: none)
    #: the ``PUBLISHED`` bytes the directory serves for this device (empty: none): a device that
    #: made new keys (a reinstall, ``msg --reset-keys``) sees they are not its own, and publishes
    body: bytes = b""
    request_id: int = 0


def prekeys_of(body: bytes, count: int, request_id: int = 0) -> list[tuple[int, bytes]]:
    """The one-time prekeys a KeyPublish body carries after its ``PUBLISHED`` bytes.

    Raises:
        RemoteProtocolError: BAD_REQUEST when the body's size is not what ``count`` says, an id
            is 0, or ``count`` is over ``MAX_PUBLISH``.
    """
    if count > MAX_PUBLISH:
        raise RemoteProtocolError(
            ErrorCode.BAD_REQUEST,
            f"{count} one-time prekeys: at most {MAX_PUBLISH} a KeyPublish",
            request_id=request_id,
        )
    if len(body) != PUBLISHED + count * PREKEY:
        raise RemoteProtocolError(
            ErrorCode.BAD_REQUEST,
            f"a KeyPublish of {count} prekeys has a body of {PUBLISHED + count * PREKEY} bytes, not {len(body)}",
            request_id=request_id,
        )
    keys = list(_PREKEY.iter_unpack(body[PUBLISHED:]))
    if any(key_id == 0 for key_id, _ in keys):
        raise RemoteProtocolError(
            ErrorCode.BAD_REQUEST, "a one-time prekey's id is 0 (0 means none)", request_id=request_id
        )
    return keys


def publish_body(published: bytes, prekeys: list[tuple[int, bytes]]) -> bytes:
    """A KeyPublish body: the device's ``PUBLISHED`` bytes and its one-time prekeys."""
    assert len(published) == PUBLISHED, len(published)
    return published + b"".join(_PREKEY.pack(key_id, key) for key_id, key in prekeys)


def bundles_body(bundles: list[tuple[str, bytes]]) -> bytes:
    """A KeyBundles body: each (device id, ``BUNDLE`` bytes) in turn."""
    parts = []
    for device, bundle in bundles:
        name = device.encode()
        assert len(bundle) == BUNDLE and len(name) < 256, (device, len(bundle))
        parts += [_DEVICE_LEN.pack(len(name)), name, bundle]
    return b"".join(parts)


def bundles(msg: KeyBundles) -> list[tuple[str, bytes]]:
    """The (device id, ``BUNDLE`` bytes) a KeyBundles carries, in order.

    Raises:
        RemoteProtocolError: BAD_FRAME when the body is not ``count`` well-formed entries.
    """
    found: list[tuple[str, bytes]] = []
    body, at = msg.body, 0
    try:
        for _ in range(msg.count):
            (length,) = _DEVICE_LEN.unpack_from(body, at)
            device = body[at + 1 : at + 1 + length].decode()
            bundle = body[at + 1 + length : at + 1 + length + BUNDLE]
            if len(bundle) != BUNDLE:
                raise ValueError("a bundle is cut short")
            found.append((device, bundle))
            at += 1 + length + BUNDLE
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"malformed KeyBundles: {exc}") from None
    if at != len(body):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"KeyBundles: {len(body) - at} bytes after {msg.count} bundles")
    return found
