"""Sender keys: one encryption for a whole group (Signal's Sender Keys; Matrix's Megolm is a cousin).

A group's message could go through every member's pairwise session (``ratchet``): N
encryptions, N ciphertexts. Sender keys make it one. Each member device keeps, per group, a
``SenderKey``: a chain key, an iteration counter and an Ed25519 signing pair. It sends its
``distribution`` (key id, iteration, chain key, signing public key) to each member once,
over the pairwise sessions, and from then on encrypts each group message once:

- the chain is the ratchet's symmetric chain (``ratchet.kdf_chain``): message key
  MK = HMAC(CK, 0x01), next CK = HMAC(CK, 0x02), the old CK forgotten, so a key taken today
  opens no earlier message (forward secrecy); there is no DH ratchet, so no break-in
  recovery: that is what rotation is for (below);
- ChaCha20-Poly1305 with a key and nonce from HKDF(MK, info = ``MESSAGE``), associated data
  the caller's AD || key id || iteration;
- message = key id u32 | iteration u32 | ciphertext | signature, the Ed25519 signature of
  len(AD) u32 || AD || everything before it.

Why a signature when there is already a tag: every member knows the chain key, so any of
them could make a message that authenticates as the sender's. Only the sender has the
signing key, so a receiver checks the signature first and refuses the rest unread.

The receiver (``SenderKeyReceiver``, one per sender device per group) follows the chain with
the ratchet's rules: keys of skipped messages kept, at most ``MAX_SKIP`` ahead and
``MAX_SKIPPED_TOTAL`` in all; a key deleted once used, so a replay is refused; ``decrypt``
atomic, so a refused message changes nothing. A new member receives the chain key as it is
now, and HMAC runs one way: it cannot derive the keys of messages sent before.

Rotation is the caller's decision: when a member leaves (or a device is lost), every
remaining member makes a new ``SenderKey`` and sends its distribution to the others only.
``create`` draws everything fresh from the system's randomness, nothing derived from the
old key, so a removed member holding every old key learns nothing from it.

Where we differ from Signal, and why:

- **The message key's cipher**: ChaCha20-Poly1305 (key and nonce from HKDF, with its own
  info, so no sender-key message key ever serves as a pairwise one) where Signal uses
  AES-CBC; as in ``ratchet``.
- **The signature covers the caller's AD**, length first: Signal signs only the message,
  but our AD (the group, the sender) belongs to what the signer vouches for, and its
  length keeps AD and message from sliding into each other.
- **No distribution id**: the caller keeps one ``SenderKey`` per group, so the group names it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .primitives import (
    KEY,
    SIGNATURE,
    TAG,
    DecryptError,
    open_,
    random_bytes,
    seal,
    sign,
    sign_keypair,
    sign_public,
    verify,
)
from .ratchet import MAX_SKIP, MAX_SKIPPED_TOTAL, U32, b64, check_fields, kdf_chain, message_cipher, u32, unb64

MESSAGE = b"csce513msg sender key message"  #: HKDF info of a message key's key and nonce
VERSION = 1  #: of the ``to_dict`` forms
DISTRIBUTION = 4 + 4 + KEY + KEY  #: bytes of a distribution
OVERHEAD = 4 + 4 + TAG + SIGNATURE  #: bytes a message is longer than its plaintext

_IDS = struct.Struct(">II")  # key id, iteration
_DISTRIBUTION = struct.Struct(">II32s32s")


class SenderKeyError(DecryptError):
    """A group message refused: a bad signature or tag, an unknown key, a replay, a jump too
    far. The receiver is as it was before the call."""


def message_key_id(message: bytes) -> int:
    """The key id a message names, to find its receiver (nothing is checked yet)."""
    if len(message) < OVERHEAD:
        raise SenderKeyError(f"a sender key message is at least {OVERHEAD} bytes")
    key_id: int = _IDS.unpack_from(message)[0]
    return key_id


def _signed(ad: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(ad)) + ad + body


@dataclass(slots=True)
class SenderKey:
    """Our sending side in one group: ``create`` one, ``distribution`` to each member,
    ``encrypt`` each message (and save the state before sending it, as with ``ratchet``)."""

    key_id: int
    chain_key: bytes = field(repr=False)
    iteration: int
    signing_private: bytes = field(repr=False)
    signing_public: bytes

    @classmethod
    def create(cls) -> SenderKey:
        """A new sender key, unrelated to any other: a random id, chain key and signing pair."""
        private, public = sign_keypair()
        return cls(int.from_bytes(random_bytes(4), "big"), random_bytes(KEY), 0, private, public)

    def distribution(self) -> bytes:
        """What a member needs to read our messages from now on: key id u32 | iteration u32 |
        chain key | signing public key (72 bytes). Secret: send it over pairwise sessions."""
        return _DISTRIBUTION.pack(self.key_id, self.iteration, self.chain_key, self.signing_public)

    def encrypt(self, plaintext: bytes, ad: bytes) -> bytes:
        """The message for every member; the chain moves on and the used key is forgotten."""
        if self.iteration >= U32 - 1:
            raise ValueError("this sender key is exhausted: create a new one")
        mk, self.chain_key = kdf_chain(self.chain_key)
        ids = _IDS.pack(self.key_id, self.iteration)
        self.iteration += 1
        key, nonce = message_cipher(mk, MESSAGE)
        body = ids + seal(key, nonce, plaintext, ad + ids)
        return body + sign(self.signing_private, _signed(ad, body))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe and exact (bytes in base64): secret, store it as such."""
        return {
            "version": VERSION,
            "key_id": self.key_id,
            "chain_key": b64(self.chain_key),
            "iteration": self.iteration,
            "signing_private": b64(self.signing_private),
            "signing_public": b64(self.signing_public),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SenderKey:
        """The sender key ``to_dict`` gave; anything malformed raises ``ValueError``."""
        check_fields(data, {"version", "key_id", "chain_key", "iteration", "signing_private", "signing_public"})
        private, public = unb64(data["signing_private"]), unb64(data["signing_public"])
        if sign_public(private) != public:
            raise ValueError("signing_public is not signing_private's")
        return cls(u32(data["key_id"]), unb64(data["chain_key"]), u32(data["iteration"]), private, public)


@dataclass(slots=True)
class SenderKeyReceiver:
    """One member's sending chain, as another member follows it."""

    key_id: int
    chain_key: bytes = field(repr=False)
    iteration: int  #: the next message expected in order
    signing_public: bytes
    skipped: dict[int, bytes] = field(default_factory=dict, repr=False)  # iteration -> mk, oldest first

    @classmethod
    def from_distribution(cls, data: bytes) -> SenderKeyReceiver:
        """A receiver from a distribution (``SenderKeyError`` if it is not 72 bytes)."""
        if len(data) != DISTRIBUTION:
            raise SenderKeyError(f"a distribution is {DISTRIBUTION} bytes, not {len(data)}")
        key_id, iteration, chain_key, signing_public = _DISTRIBUTION.unpack(data)
        return cls(key_id, chain_key, iteration, signing_public)

    def decrypt(self, message: bytes, ad: bytes) -> bytes:
        """The plaintext of a message of this chain, or ``SenderKeyError`` with nothing changed."""
        key_id = message_key_id(message)
        body, signature = message[:-SIGNATURE], message[-SIGNATURE:]
        if not verify(self.signing_public, signature, _signed(ad, body)):
            raise SenderKeyError("the signature is not the sender's")
        if key_id != self.key_id:
            raise SenderKeyError(f"unknown sender key {key_id}")
        iteration: int = _IDS.unpack_from(body)[1]
        skipped, chain_key, next_iteration = dict(self.skipped), self.chain_key, self.iteration
        if iteration < next_iteration:
            found = skipped.pop(iteration, None)
            if found is None:
                raise SenderKeyError(f"message {iteration} was received before (or is older than our key)")
            mk = found
        elif iteration > next_iteration + MAX_SKIP:
            raise SenderKeyError(f"message {iteration} is more than {MAX_SKIP} ahead of {next_iteration}")
        else:
            while next_iteration < iteration:
                skipped[next_iteration], chain_key = kdf_chain(chain_key)
                next_iteration += 1
                if len(skipped) > MAX_SKIPPED_TOTAL:
                    del skipped[next(iter(skipped))]  # the oldest
            mk, chain_key = kdf_chain(chain_key)
            next_iteration += 1
        key, nonce = message_cipher(mk, MESSAGE)
        try:
            plaintext = open_(key, nonce, body[_IDS.size :], ad + body[: _IDS.size])
        except DecryptError:
            raise SenderKeyError("the message did not authenticate") from None
        self.skipped, self.chain_key, self.iteration = skipped, chain_key, next_iteration
        return plaintext

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe and exact (bytes in base64): secret, store it as such."""
        return {
            "version": VERSION,
            "key_id": self.key_id,
            "chain_key": b64(self.chain_key),
            "iteration": self.iteration,
            "signing_public": b64(self.signing_public),
            "skipped": [[n, b64(mk)] for n, mk in self.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SenderKeyReceiver:
        """The receiver ``to_dict`` gave; anything malformed raises ``ValueError``."""
        check_fields(data, {"version", "key_id", "chain_key", "iteration", "signing_public", "skipped"})
        iteration, entries = u32(data["iteration"]), data["skipped"]
        if not isinstance(entries, list) or len(entries) > MAX_SKIPPED_TOTAL:
            raise ValueError(f"skipped is a list of at most {MAX_SKIPPED_TOTAL}")
        skipped: dict[int, bytes] = {}
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2 or u32(entry[0]) >= iteration:
                raise ValueError("a skipped key is [n, mk], n below the iteration")
            skipped[entry[0]] = unb64(entry[1])
        if len(skipped) != len(entries):
            raise ValueError("a skipped key is listed twice")
        return cls(u32(data["key_id"]), unb64(data["chain_key"]), iteration, unb64(data["signing_public"]), skipped)
