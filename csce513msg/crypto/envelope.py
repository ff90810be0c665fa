"""The end-to-end envelope: the body of a message of content type 2 (protocol 1.7), byte by byte.

An envelope is what the server stores and forwards in place of a message; it reads none of
it. This module only lays out and parses the bytes (``device.py`` does the cryptography):

    version u8 (1) | kind u8 | sender device (u8 length, UTF-8) | client_msg_id u64 | ...

**kind 1, pairwise** (direct messages, and whatever a group needs sent to each device: its
sender keys). The content is encrypted ONCE, under a fresh 32-byte content key; that key is
then *wrapped* for every device that may read it (the recipient's devices and the sender's
other devices), each over the pairwise Double Ratchet session with that device::

    ... | entries u16 | entry * entries | body | signature 64

    entry = user (u8 length, UTF-8) | device (u8 length, UTF-8) | flags u8
            | [flags & START: the X3DH start: sender identity signing key 32 | agreement key 32
               | its signature 64 | ephemeral key 32 | signed prekey id u32 | one-time prekey id u32]
            | ratchet header 40 | wrapped length u16 | wrapped

    wrapped = the ratchet's encryption of: content key 32 | SHA-256 of the body 32
    body    = ChaCha20-Poly1305 of the inner message under a key and nonce derived from the
              content key (HKDF, ``BODY_INFO``)

The body's hash inside each wrapped key matters: every recipient learns the content key, so
without it one recipient could write a different body under the same key and pass it off,
with the sender's real wrapped entry, to another recipient as the sender's. The signature
(Ed25519, by the sending device's identity key, over ``SIGNED`` and the associated data
below and every byte before it) makes the whole envelope the sender's: an entry for another
device, which this device cannot open, cannot be altered unseen either. (Signal leaves its
messages unsigned, for deniability; a classroom tool prefers that a message provably came
from its sender's device.)

**kind 2, group** (a group message under the sender's sender key, ``senderkey.py``)::

    ... | keys length u32 | keys | the sender key message (key id u32 | iteration u32 | ciphertext | signature 64)

``keys`` is empty, or a whole pairwise envelope (kind 1, its own signature) whose inner
message is the sender's new or current sender key (``SENDER_KEY``), with entries for the
member devices that do not have it yet: so a post is always ONE message (slow mode counts
one post, one receipt comes back), and a device without an entry there goes straight to the
sender key message. The group message's associated data covers the prefix *and* ``keys``:
a byte changed anywhere is refused by every member, whether or not the keys were for it.

**The inner message** (what the body, or the sender key message, decrypts to) is
``inner type u8 | payload``: 0 text (UTF-8), 1 file offer (the JSON of protocol section 13),
0x80 a sender key for a group (``stream`` str u16-prefixed | distribution bytes), 0x81 a
session repair (empty: its X3DH start is the point).

**Associated data.** Every encryption here binds the routing of the message it travels in:
the sender's user name and device, the conversation's kind and stream (``dm:alice,bob``,
``g:7``), the client message id and the envelope's own prefix, so a server that moves an
envelope to another conversation, relabels its sender or splices entries gets a refusal,
never a plaintext. The server's routing fields assigned after encryption (message id,
position, time) are not part of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 1
PAIRWISE, GROUP = 1, 2  #: envelope kinds
START = 0x01  #: an entry's flag: it carries an X3DH session start
TEXT, FILE_OFFER, SENDER_KEY = 0, 1, 0x80  #: inner message types
#: an empty message that starts a session anew: sent to a device whose message could not be
#: opened for want of a session (its sender then has this device's current keys), never shown
REPAIR = 0x81
BODY_INFO = b"csce513msg envelope body"  #: HKDF info for the body's key and nonce
SIGNED = b"csce513msg envelope signature v1"  #: what a pairwise envelope's signature starts with
SIGNATURE = 64
MAX_ENTRIES = 256  #: devices one envelope wraps for (a group's key distribution goes a device at a time)
_PREFIX = struct.Struct(">BB")
_U8, _U16, _U32, _U64 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
_START = struct.Struct(">32s32s64s32sII")
HEADER = 40  #: a ratchet header's bytes (``ratchet.HEADER``)


class EnvelopeError(ValueError):
    """An envelope that is not one: the wrong version or kind, cut short, or with bytes left over."""


@dataclass(frozen=True, slots=True)
class StartInfo:
    """An X3DH start, as the first messages of a session carry it."""

    sign_public: bytes
    dh_public: bytes
    dh_signature: bytes
    ephemeral: bytes
    spk_id: int
    otpk_id: int


@dataclass(frozen=True, slots=True)
class Entry:
    """The content key wrapped for one device."""

    user: str
    device: str
    header: bytes  #: the ratchet header (``HEADER`` bytes)
    wrapped: bytes
    start: StartInfo | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope. ``prefix`` is its bytes up to (not including) the entries or the
    group message: the part every encryption binds."""

    kind: int
    device: str  #: the sender's device
    client_msg_id: int
    entries: tuple[Entry, ...] = ()  #: PAIRWISE
    body: bytes = b""  #: PAIRWISE: the encrypted inner message; GROUP: the sender key message
    prefix: bytes = b""
    signed: bytes = b""  #: PAIRWISE: every byte before the signature
    signature: bytes = b""  #: PAIRWISE
    keys: bytes = b""  #: GROUP: a pairwise envelope carrying the sender key, or b""
    bound: bytes = b""  #: GROUP: the prefix, the keys' length and the keys: what the message's AD covers


def prefix(kind: int, device: str, client_msg_id: int) -> bytes:
    """The envelope's first bytes: version, kind, sender device, client message id."""
    return _PREFIX.pack(VERSION, kind) + _short(device) + _U64.pack(client_msg_id)


def associated_data(sender: str, target_kind: int, stream: str, head: bytes) -> bytes:
    """What every encryption of an envelope binds: the sender, the conversation and the
    envelope's ``prefix`` (device and client message id among it)."""
    return b"csce513msg envelope v1" + _short(sender) + _U8.pack(target_kind) + _short(stream) + head


def entry_head(user: str, device: str, start: StartInfo | None) -> bytes:
    """An entry's bytes before its ratchet header: whom it is for and its start, if any. The
    ratchet's encryption of the entry binds them too (a start's keys cannot be swapped)."""
    parts = [_short(user), _short(device), _U8.pack(START if start else 0)]
    if start is not None:
        s = start
        parts.append(_START.pack(s.sign_public, s.dh_public, s.dh_signature, s.ephemeral, s.spk_id, s.otpk_id))
    return b"".join(parts)


def entry_bytes(entry: Entry) -> bytes:
    """One entry's bytes."""
    assert len(entry.header) == HEADER
    head = entry_head(entry.user, entry.device, entry.start)
    return head + entry.header + _U16.pack(len(entry.wrapped)) + entry.wrapped


def pairwise(head: bytes, entries: list[Entry], body: bytes) -> bytes:
    """A pairwise envelope's bytes before its signature: ``prefix`` bytes, the entries, the body."""
    if not 0 < len(entries) <= MAX_ENTRIES:
        raise ValueError(f"an envelope wraps for 1 to {MAX_ENTRIES} devices, not {len(entries)}")
    return head + _U16.pack(len(entries)) + b"".join(entry_bytes(e) for e in entries) + body


def group_head(head: bytes, keys: bytes) -> bytes:
    """A group envelope's bytes before its sender key message (what that message's AD covers)."""
    return head + _U32.pack(len(keys)) + keys


def parse(data: bytes) -> Envelope:
    """The envelope in ``data``.

    Raises:
        EnvelopeError: it is not a well-formed envelope of this version.
    """
    try:
        version, kind = _PREFIX.unpack_from(data)
        if version != VERSION or kind not in (PAIRWISE, GROUP):
            raise EnvelopeError(f"envelope version {version}, kind {kind}: not one this client reads")
        device, at = _read_short(data, 2)
        (client_msg_id,) = _U64.unpack_from(data, at)
        at += 8
        head = data[:at]
        if kind == GROUP:
            (length,) = _U32.unpack_from(data, at)
            keys = data[at + 4 : at + 4 + length]
            if len(keys) != length:
                raise EnvelopeError("a group envelope's keys are cut short")
            at += 4 + length
            return Envelope(GROUP, device, client_msg_id, body=data[at:], prefix=head, keys=keys, bound=data[:at])
        (count,) = _U16.unpack_from(data, at)
        at += 2
        if not 0 < count <= MAX_ENTRIES:
            raise EnvelopeError(f"an envelope with {count} entries")
        entries = []
        for _ in range(count):
            entry, at = _read_entry(data, at)
            entries.append(entry)
        if len(data) < at + SIGNATURE:
            raise EnvelopeError("an envelope without its signature")
        signed, signature = data[:-SIGNATURE], data[-SIGNATURE:]
        return Envelope(PAIRWISE, device, client_msg_id, tuple(entries), data[at:-SIGNATURE], head, signed, signature)
    except (struct.error, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"a malformed envelope: {exc}") from None


def _read_entry(data: bytes, at: int) -> tuple[Entry, int]:
    user, at = _read_short(data, at)
    device, at = _read_short(data, at)
    (flags,) = _U8.unpack_from(data, at)
    at += 1
    if flags & ~START:
        raise EnvelopeError(f"unknown entry flags {flags:#x}")
    start = None
    if flags & START:
        start = StartInfo(*_START.unpack_from(data, at))
        at += _START.size
    header = data[at : at + HEADER]
    (length,) = _U16.unpack_from(data, at + HEADER)
    at += HEADER + 2
    wrapped = data[at : at + length]
    if len(header) != HEADER or len(wrapped) != length:
        raise EnvelopeError("an envelope's entry is cut short")
    return Entry(user, device, header, wrapped, start), at + length


def inner(kind: int, payload: bytes) -> bytes:
    """An inner message: its type, then its payload."""
    return _U8.pack(kind) + payload


def split_inner(data: bytes) -> tuple[int, bytes]:
    """(type, payload) of an inner message."""
    if not data:
        raise EnvelopeError("an empty inner message")
    return data[0], data[1:]


def sender_key_payload(stream: str, distribution: bytes) -> bytes:
    """The payload of a ``SENDER_KEY`` inner message: the group's stream and the key."""
    name = stream.encode()
    return _U16.pack(len(name)) + name + distribution


def parse_sender_key(payload: bytes) -> tuple[str, bytes]:
    """(stream, distribution) of a ``SENDER_KEY`` payload."""
    try:
        (length,) = _U16.unpack_from(payload)
        return payload[2 : 2 + length].decode(), payload[2 + length :]
    except (struct.error, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"a malformed sender key: {exc}") from None


def _short(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"{text[:20]!r}...: over 255 bytes")
    return _U8.pack(len(raw)) + raw


def _read_short(data: bytes, at: int) -> tuple[str, int]:
    (length,) = _U8.unpack_from(data, at)
    raw = data[at + 1 : at + 1 + length]
    if len(raw) != length:
        raise EnvelopeError("an envelope is cut short")
    return raw.decode(), at + 1 + length
