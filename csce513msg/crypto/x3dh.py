"""X3DH: how two devices that have never spoken agree on a first secret (Signal's X3DH, revision 1).

Bob cannot be online when Alice first writes, so he leaves a *bundle* on the server: his
identity keys, a signed prekey (SPK, replaced now and then) and a stack of one-time prekeys
(OPKs, each handed out once). Alice takes one bundle, makes an ephemeral key EK and mixes
four Diffie-Hellman results, each proving something different:

- DH1 = DH(IK_A, SPK_B): only Alice (her identity key) could have made it;
- DH2 = DH(EK_A, IK_B): only Bob (his identity key) can compute it;
- DH3 = DH(EK_A, SPK_B): fresh for this session, gone once Bob deletes the SPK;
- DH4 = DH(EK_A, OPK_B), when Bob had one left: gone once Bob deletes that OPK, so even a
  replayed first message cannot be opened twice.

SK = HKDF(F || DH1 || DH2 || DH3 [|| DH4], salt = 32 zero bytes, info = ``INFO``), with F
32 bytes of 0xFF, the spec's prefix for X25519 (it keeps these inputs apart from any
XEdDSA ones). Alice sends her EK's public half and the ids of the prekeys she used; Bob,
with the private halves, computes the same four results and the same SK. Both then start the
Double Ratchet (``ratchet``) with SK, Bob's SPK as his first ratchet key, and AD.

AD, the associated data of every message of the session, binds it to both identities:
initiator's sign_public || dh_public, then responder's sign_public || dh_public (128 bytes).

Where we differ from the spec, and why:

- **An identity is two keys**, Ed25519 to sign (the SPK, later the sender keys) and X25519
  for DH1 and DH2, where Signal has one X25519 key and XEdDSA signatures. ``primitives``
  has no XEdDSA, and converting a key from one curve form to the other would be home-made
  cryptography. So AD carries both keys of each side.
- **The caller checks the bundle before ``initiate``**: the SPK's signature under Bob's
  identity signing key (``primitives.verify``), and that Bob's identity keys are the ones it
  trusts (first use, then a safety number compared by the people). This module takes raw
  bytes and trusts them: it knows nothing of bundles (``keys`` does).
- **Secrets are not wiped**: the spec deletes EK's private half and the DH outputs after
  use; Python cannot scrub memory, so we only drop every reference (EK's private half
  never leaves ``initiate``).

Replays: a first message sent without an OPK can be replayed, and Bob would compute the
same SK again. ``StartCache`` remembers such starts (a bounded window) so the caller can
refuse one seen before; the signed prekey's rotation bounds the rest (once Bob deletes an
old SPK's private key, no start naming it can be opened). Record a start only once its
first message has decrypted, so garbage cannot fill it. A server can make starts that do
open (each under an identity of its own making): the cache fails closed when full rather than
forget a real start, and forgets a start only when its signed prekey is deleted.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any

from .primitives import KEY, BadKeyError, dh, dh_keypair, hkdf, sha256

INFO = b"csce513msg X3DH v1"  #: HKDF info for SK
SALT = bytes(KEY)  #: HKDF salt: as many zero bytes as SHA-256 gives
F = b"\xff" * KEY  #: the spec's prefix for X25519: 32 bytes of 0xFF
AD_SIZE = 4 * KEY  #: bytes of the associated data: two identities of two keys
NO_OTPK = 0  #: the ``otpk_id`` of a start made without a one-time prekey
U32 = 2**32  #: prekey ids are u32 on the wire


@dataclass(frozen=True, slots=True)
class Start:
    """What ``initiate`` gives Alice: the shared secret for the ratchet (keep it), and what
    her first message must carry so Bob can compute it (the rest)."""

    shared: bytes = field(repr=False)  #: SK, 32 bytes: secret, never sent
    ephemeral_public: bytes  #: EK_A's public half
    ad: bytes  #: the session's associated data (``AD_SIZE`` bytes)
    spk_id: int  #: which signed prekey of Bob's was used
    otpk_id: int  #: which one-time prekey, or ``NO_OTPK``


def associated_data(initiator_sign: bytes, initiator_dh: bytes, responder_sign: bytes, responder_dh: bytes) -> bytes:
    """AD: the initiator's identity keys, then the responder's (sign, then DH, each)."""
    for key in (initiator_sign, initiator_dh, responder_sign, responder_dh):
        _key(key, "identity key")
    return initiator_sign + initiator_dh + responder_sign + responder_dh


def initiate(
    our_sign_public: bytes,
    our_dh_private: bytes,
    our_dh_public: bytes,
    their_sign_public: bytes,
    their_dh_public: bytes,
    spk_id: int,
    spk_public: bytes,
    otpk_id: int,
    otpk_public: bytes | None,
) -> Start:
    """Alice's side: SK from her identity, a fresh ephemeral key and Bob's bundle (whose
    signature and identity the caller has checked). ``otpk_public`` None means Bob had no
    one-time prekey left (``otpk_id`` must then be ``NO_OTPK``, and otherwise not)."""
    _id(spk_id, "spk_id")
    _id(otpk_id, "otpk_id")
    if (otpk_public is None) != (otpk_id == NO_OTPK):
        raise ValueError("otpk_id is 0 exactly when there is no one-time prekey")
    ad = associated_data(our_sign_public, our_dh_public, their_sign_public, their_dh_public)
    ephemeral_private, ephemeral_public = dh_keypair()
    outputs = [
        dh(our_dh_private, spk_public),  # DH1
        dh(ephemeral_private, their_dh_public),  # DH2
        dh(ephemeral_private, spk_public),  # DH3
    ]
    if otpk_public is not None:
        outputs.append(dh(ephemeral_private, otpk_public))  # DH4
    return Start(_kdf(outputs), ephemeral_public, ad, spk_id, otpk_id)


def respond(
    our_sign_public: bytes,
    our_dh_private: bytes,
    our_dh_public: bytes,
    spk_private: bytes,
    otpk_private: bytes | None,
    their_sign_public: bytes,
    their_dh_public: bytes,
    ephemeral_public: bytes,
) -> tuple[bytes, bytes]:
    """Bob's side: (SK, AD) from his private keys (the SPK and OPK the start named) and what
    Alice sent. A low-order key of hers raises ``BadKeyError``. The caller deletes the OPK's
    private key once the first message has decrypted."""
    ad = associated_data(their_sign_public, their_dh_public, our_sign_public, our_dh_public)
    outputs = [
        dh(spk_private, their_dh_public),  # DH1
        dh(our_dh_private, ephemeral_public),  # DH2
        dh(spk_private, ephemeral_public),  # DH3
    ]
    if otpk_private is not None:
        outputs.append(dh(otpk_private, ephemeral_public))  # DH4
    return _kdf(outputs), ad


def _kdf(outputs: list[bytes]) -> bytes:
    return hkdf(F + b"".join(outputs), salt=SALT, info=INFO, length=KEY)


def _key(value: bytes, what: str) -> None:
    if len(value) != KEY:
        raise BadKeyError(f"{what}: {len(value)} bytes, expected {KEY}")


def _id(value: int, what: str) -> None:
    if not 0 <= value < U32:
        raise ValueError(f"{what} {value} is not a u32")


class StartCache:
    """The session starts made without a one-time prekey that this device accepted, so a
    replayed one is refused. Keys are ``StartCache.key(ephemeral_public, spk_id)`` (hashes,
    which say nothing of the secrets), each kept with its signed prekey's id until that prekey
    is deleted (``forget_spks``): a start naming a deleted prekey cannot be opened anyway.

    It **fails closed**: full (``capacity`` starts under the prekeys held), it refuses every
    further start without a one-time prekey (``full``) rather than forget one, since a server
    able to make valid starts of its own could otherwise push a real one out and replay it.
    Such starts work again once a prekey rotates out; starts with a one-time prekey never
    depend on it."""

    CAPACITY = 4096  #: starts kept at most, 128 KiB of hashes

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a StartCache holds at least one start")
        self.capacity = capacity
        self._seen: dict[bytes, int] = {}  # key -> the signed prekey's id it named

    @staticmethod
    def key(ephemeral_public: bytes, spk_id: int) -> bytes:
        """SHA-256 of ephemeral_public || spk_id (u32, big-endian): what identifies a start."""
        _key(ephemeral_public, "ephemeral key")
        _id(spk_id, "spk_id")
        return sha256(ephemeral_public + struct.pack(">I", spk_id))

    @property
    def full(self) -> bool:
        """No room: a new start without a one-time prekey must be refused."""
        return len(self._seen) >= self.capacity

    def seen_before(self, key: bytes, spk_id: int = 0) -> bool:
        """Whether ``key`` was recorded before; if not, it is now (refused, True, when full)."""
        if key in self._seen or self.full:
            return True
        self._seen[key] = spk_id
        return False

    def forget_spks(self, held: set[int]) -> None:
        """Forget the starts that named a signed prekey no longer ``held`` (deleted: such a start
        cannot open again)."""
        self._seen = {k: spk for k, spk in self._seen.items() if spk in held}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` was recorded (without recording it: a start is recorded once it opened)."""
        return key in self._seen

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy: the capacity and the keys, oldest first, in base64, with their prekeys."""
        return {
            "capacity": self.capacity,
            "seen": [base64.b64encode(k).decode() for k in self._seen],
            "spks": list(self._seen.values()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartCache:
        """The cache ``to_dict`` described; anything else raises ``ValueError``."""
        if not isinstance(data, dict) or set(data) != {"capacity", "seen", "spks"}:
            raise ValueError("a StartCache is a dict of capacity, seen and spks")
        capacity, seen, spks = data["capacity"], data["seen"], data["spks"]
        if type(capacity) is not int or capacity < 1 or not isinstance(seen, list) or len(seen) > capacity:
            raise ValueError("bad StartCache capacity or keys")
        if (
            not isinstance(spks, list)
            or len(spks) != len(seen)
            or any(type(i) is not int or not 0 <= i < U32 for i in spks)
        ):
            raise ValueError("bad StartCache prekey ids")
        cache = cls(capacity)
        for text, spk_id in zip(seen, spks, strict=True):
            try:
                key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
            except binascii.Error:
                key = b""
            if len(key) != KEY or base64.b64encode(key).decode() != text or key in cache._seen:
                raise ValueError("a StartCache key is 32 distinct bytes in base64")
            cache._seen[key] = spk_id
        return cache
