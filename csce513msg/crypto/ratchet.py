"""The Double Ratchet: a fresh key for every message (Signal's Double Ratchet, revision 1, 2016).

X3DH (``x3dh``) gives two devices one shared secret SK. Encrypting every message under SK
would be fatal the day a device is stolen: every message, past and future, would open. The
Double Ratchet turns SK into a key per message, in two interlocked ratchets:

- **The symmetric ratchet** (a *chain*): each chain key CK gives one message key and the next
  chain key, MK = HMAC(CK, 0x01), CK' = HMAC(CK, 0x02), and CK is then forgotten. HMAC is
  one-way, so a key taken today opens no message already received: *forward secrecy*.
- **The DH ratchet**: every message carries its sender's current ratchet public key. When a
  new one arrives, the receiver mixes DH(our ratchet private, their new public) into the
  *root key*, which gives the chain for receiving, then makes a new key pair of its own and
  mixes again for its chain for sending: (RK, CK) = HKDF(dh_out, salt = RK, info = ``ROOT``).
  A thief who copied the state but not the next private keys is locked out again after one
  round trip: *post-compromise security* ("break-in recovery").

A message is ``Header`` (our ratchet public key, PN the length of our previous sending
chain, N the message's number in this chain: 40 bytes) and the ciphertext:
HKDF(MK, info = ``MESSAGE``, 44 bytes) gives a ChaCha20-Poly1305 key (32) and nonce (12),
and the associated data is the session's AD (from X3DH) || the header bytes, so a header
cannot be changed or moved to another session. Each MK encrypts exactly one message, so no
(key, nonce) pair is ever used twice *as long as no state is used twice*: see below.

Messages arrive late and out of order. The receiver derives the keys of the messages it
skipped and keeps them (``skipped``, keyed by ratchet key and N), at most ``MAX_SKIP`` ahead
in one chain (more is refused: one forged header must not cost a million HMACs) and
``MAX_SKIPPED_TOTAL`` in all (the oldest is evicted, and its message is lost). A key is
deleted once used, so a replayed message finds nothing and is refused.

``decrypt`` is atomic, as the spec asks ("changes to the state are discarded" on an
error): it works on a copy and keeps it only if the message authenticated. A forged or
damaged message (a flipped bit, a bogus ratchet key, a wild N) costs nothing but itself.

The caller saves the state (``to_dict``, JSON-safe and exact) *before sending* what
``encrypt`` returned, and *before acknowledging* what ``decrypt`` accepted. Restoring an older
state after sending would encrypt a new message under a used key and nonce; restoring one
after an acknowledgement would lose the message (the server has let it go).

Where we differ from the spec, and why:

- **AEAD**: ChaCha20-Poly1305 with a key and nonce from HKDF, where the spec recommends
  AES-256-CBC with HMAC (80 bytes of HKDF output): ``primitives`` has one AEAD, and an
  AEAD is the simpler lesson. The message key's HKDF salt is empty (zeros), as the spec's.
- **A replay is refused before any work**: a message numbered below the current receiving
  chain's counter, with no skipped key, is refused at once (the spec would derive a key
  and fail on the tag: the same answer, later).
- **No header encryption** (the spec's section 4): the server already sees who talks to
  whom; hiding the counters is left for a later lesson.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from .primitives import KEY, NONCE, BadKeyError, DecryptError, dh, dh_keypair, dh_public, hkdf, hmac_sha256, open_, seal

ROOT = b"csce513msg ratchet root"  #: HKDF info of the root KDF
MESSAGE = b"csce513msg ratchet message"  #: HKDF info of a message key's key and nonce
MAX_SKIP = 256  #: most message keys skipped in one chain by one message
MAX_SKIPPED_TOTAL = 1000  #: most skipped message keys kept in all (oldest evicted)
HEADER = KEY + 4 + 4  #: bytes of a header: ratchet public key, PN, N
U32 = 2**32  #: counters are u32 in the header
VERSION = 1  #: of the ``to_dict`` form

_HEADER = struct.Struct(">32sII")
_FIELDS = {"version", "dhs_private", "dhs_public", "dhr", "rk", "cks", "ckr", "ns", "nr", "pn", "skipped"}  # to_dict's


class RatchetError(DecryptError):
    """A message refused: it did not authenticate, was seen before, or jumped too far.
    The state is as it was before the call."""


# The three derivations, each its own function so the tests can freeze it.


def kdf_root(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """KDF_RK: (new root key, new chain key) from the root key and a DH output."""
    out = hkdf(dh_out, salt=root_key, info=ROOT, length=2 * KEY)
    return out[:KEY], out[KEY:]


def kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: (message key, next chain key) from a chain key."""
    return hmac_sha256(chain_key, b"\x01"), hmac_sha256(chain_key, b"\x02")


def message_cipher(message_key: bytes, info: bytes = MESSAGE) -> tuple[bytes, bytes]:
    """(ChaCha20-Poly1305 key, nonce) of one message key: HKDF with an empty salt."""
    out = hkdf(message_key, salt=b"", info=info, length=KEY + NONCE)
    return out[:KEY], out[KEY:]


@dataclass(frozen=True, slots=True)
class Header:
    """What travels in clear before a message: the sender's ratchet key and two counters."""

    dh_public: bytes
    pn: int  #: messages in the sender's previous sending chain
    n: int  #: this message's number in its chain

    def __post_init__(self) -> None:
        if len(self.dh_public) != KEY or not (0 <= self.pn < U32 and 0 <= self.n < U32):
            raise ValueError("a header is a 32-byte key and two u32 counters")

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.dh_public, self.pn, self.n)

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """The header in ``data`` (exactly ``HEADER`` bytes, else ``RatchetError``)."""
        if len(data) != HEADER:
            raise RatchetError(f"a header is {HEADER} bytes, not {len(data)}")
        return cls(*_HEADER.unpack(data))


@dataclass(slots=True)
class _State:
    """The spec's state variables, under its names (lower case)."""

    dhs_private: bytes = field(repr=False)  # our ratchet key pair
    dhs_public: bytes
    dhr: bytes | None  # their ratchet public key
    rk: bytes = field(repr=False)  # root key
    cks: bytes | None = field(repr=False)  # sending chain key
    ckr: bytes | None = field(repr=False)  # receiving chain key
    ns: int = 0  # messages sent in this sending chain
    nr: int = 0  # messages received in this receiving chain
    pn: int = 0  # messages in the previous sending chain
    skipped: dict[tuple[bytes, int], bytes] = field(default_factory=dict, repr=False)  # (dhr, n) -> mk, oldest first

    def copy(self) -> _State:
        return replace(self, skipped=dict(self.skipped))


class Ratchet:
    """One side of a pairwise session. Make it with ``initiator`` or ``responder``, or
    restore it with ``from_dict``."""

    def __init__(self, state: _State) -> None:
        self._s = state

    @classmethod
    def initiator(cls, shared: bytes, their_ratchet_public: bytes) -> Ratchet:
        """Alice after X3DH: ``shared`` is SK, ``their_ratchet_public`` Bob's signed prekey
        (his first ratchet key). She can send at once."""
        private, public = dh_keypair()
        rk, cks = kdf_root(_exact(shared, "shared secret"), dh(private, their_ratchet_public))
        return cls(_State(private, public, their_ratchet_public, rk, cks, None))

    @classmethod
    def responder(cls, shared: bytes, our_ratchet_private: bytes, our_ratchet_public: bytes) -> Ratchet:
        """Bob after X3DH: his signed prekey pair is his first ratchet key. He sends only
        once Alice's first message has arrived."""
        if dh_public(our_ratchet_private) != our_ratchet_public:
            raise BadKeyError("the ratchet public key is not the private key's")
        return cls(_State(our_ratchet_private, our_ratchet_public, None, _exact(shared, "shared secret"), None, None))

    def copy(self) -> Ratchet:
        """An independent copy: to decrypt on trial, and keep the result only if the whole
        message it came in checks (``device.py``: an envelope's body after its wrapped key)."""
        return Ratchet(self._s.copy())

    def encrypt(self, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
        """(header bytes, ciphertext) of ``plaintext``; ``ad`` is the session's AD. Save the
        state before sending them."""
        s = self._s
        if s.cks is None:
            raise ValueError("the responder sends only after the initiator's first message")
        if s.ns >= U32 - 1:
            raise ValueError("this sending chain is exhausted: start a new session")
        mk, s.cks = kdf_chain(s.cks)
        header = Header(s.dhs_public, s.pn, s.ns).to_bytes()
        s.ns += 1
        key, nonce = message_cipher(mk)
        return header, seal(key, nonce, plaintext, ad + header)

    def decrypt(self, header_bytes: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        """The plaintext, or ``RatchetError`` with the state untouched. Save the state before
        acknowledging the message."""
        header = Header.from_bytes(header_bytes)
        s = self._s.copy()
        found = s.skipped.pop((header.dh_public, header.n), None)
        if found is not None:
            mk = found
        else:
            if header.dh_public != s.dhr:
                _skip(s, header.pn)
                _dh_step(s, header.dh_public)
            elif header.n < s.nr:
                raise RatchetError(f"message {header.n} was received before (or its key evicted)")
            _skip(s, header.n)
            assert s.ckr is not None  # _dh_step made it if there was none
            mk, s.ckr = kdf_chain(s.ckr)
            s.nr += 1
        key, nonce = message_cipher(mk)
        try:
            plaintext = open_(key, nonce, ciphertext, ad + header_bytes)
        except DecryptError:
            raise RatchetError("the message did not authenticate") from None
        self._s = s  # the message was genuine: keep what it taught us
        return plaintext

    @property
    def skipped_count(self) -> int:
        """How many skipped message keys are kept."""
        return len(self._s.skipped)

    def to_dict(self) -> dict[str, Any]:
        """The whole state, JSON-safe (bytes in base64): secret, store it as such."""
        s = self._s
        return {
            "version": VERSION,
            "dhs_private": b64(s.dhs_private),
            "dhs_public": b64(s.dhs_public),
            "dhr": _b64_or_none(s.dhr),
            "rk": b64(s.rk),
            "cks": _b64_or_none(s.cks),
            "ckr": _b64_or_none(s.ckr),
            "ns": s.ns,
            "nr": s.nr,
            "pn": s.pn,
            "skipped": [[b64(dhr), n, b64(mk)] for (dhr, n), mk in s.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ratchet:
        """The state ``to_dict`` gave; anything malformed raises ``ValueError``."""
        check_fields(data, _FIELDS)
        private, public = unb64(data["dhs_private"]), unb64(data["dhs_public"])
        if dh_public(private) != public:
            raise ValueError("dhs_public is not dhs_private's")
        skipped_list = data["skipped"]
        if not isinstance(skipped_list, list) or len(skipped_list) > MAX_SKIPPED_TOTAL:
            raise ValueError(f"skipped is a list of at most {MAX_SKIPPED_TOTAL}")
        skipped: dict[tuple[bytes, int], bytes] = {}
        for entry in skipped_list:
            if not isinstance(entry, list) or len(entry) != 3:
                raise ValueError("a skipped key is [dhr, n, mk]")
            skipped[(unb64(entry[0]), u32(entry[1]))] = unb64(entry[2])
        if len(skipped) != len(skipped_list):
            raise ValueError("a skipped key is listed twice")
        dhr, cks, ckr = (_unb64_or_none(data[name]) for name in ("dhr", "cks", "ckr"))
        ns, nr, pn = u32(data["ns"]), u32(data["nr"]), u32(data["pn"])
        # a responder not yet written to has none of the three; an initiator not yet
        # answered has no receiving chain; every counter of a missing chain is 0
        if (dhr is None) != (cks is None) or (ckr is not None and cks is None):
            raise ValueError("dhr and cks come together, and ckr only with them")
        if (cks is None and ns != 0) or (ckr is None and nr != 0):
            raise ValueError("a chain that does not exist has counted messages")
        return cls(_State(private, public, dhr, unb64(data["rk"]), cks, ckr, ns, nr, pn, skipped))


def _skip(s: _State, until: int) -> None:
    """The spec's SkipMessageKeys: keep the keys of the messages below ``until`` not yet
    received in the current receiving chain."""
    if until > s.nr + MAX_SKIP:
        raise RatchetError(f"message {until} is more than {MAX_SKIP} ahead of {s.nr}")
    if s.ckr is None or s.dhr is None:
        return  # no receiving chain yet (the responder's first message)
    while s.nr < until:
        mk, s.ckr = kdf_chain(s.ckr)
        s.skipped[(s.dhr, s.nr)] = mk
        s.nr += 1
        if len(s.skipped) > MAX_SKIPPED_TOTAL:
            del s.skipped[next(iter(s.skipped))]  # the oldest


def _dh_step(s: _State, their_public: bytes) -> None:
    """The spec's DHRatchet: a receiving chain from their new key, then a new key pair of
    ours and a sending chain from it."""
    try:
        s.pn, s.ns, s.nr, s.dhr = s.ns, 0, 0, their_public
        s.rk, s.ckr = kdf_root(s.rk, dh(s.dhs_private, their_public))
        s.dhs_private, s.dhs_public = dh_keypair()
        s.rk, s.cks = kdf_root(s.rk, dh(s.dhs_private, their_public))
    except BadKeyError as e:
        raise RatchetError(f"a bad ratchet key: {e}") from None


# JSON-safe bytes, shared with ``senderkey``.


def b64(value: bytes) -> str:
    """``value`` in base64 text."""
    return base64.b64encode(value).decode("ascii")


def _b64_or_none(value: bytes | None) -> str | None:
    return None if value is None else b64(value)


def unb64(text: object, size: int = KEY) -> bytes:
    """``size`` bytes from their base64 text, or ``ValueError``."""
    try:
        value = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except binascii.Error:
        value = None
    if value is None or len(value) != size or b64(value) != text:
        raise ValueError(f"expected {size} bytes in base64")
    return value


def _unb64_or_none(text: object) -> bytes | None:
    return None if text is None else unb64(text)


def check_fields(data: object, fields: set[str], version: int = VERSION) -> None:
    """``data`` is a dict of exactly ``fields``, one of them ``version`` (an int), else ``ValueError``."""
    if not isinstance(data, dict) or set(data) != fields or type(data["version"]) is not int:
        raise ValueError(f"expected a dict of {sorted(fields)}")
    if data["version"] != version:
        raise ValueError(f"version {data['version']}, expected {version}")


def u32(value: object) -> int:
    """``value`` if it is an int that fits a u32, else ``ValueError``."""
    if type(value) is not int or not 0 <= value < U32:
        raise ValueError(f"{value!r} is not a u32")
    return value


def _exact(value: bytes, what: str) -> bytes:
    if len(value) != KEY:
        raise BadKeyError(f"{what}: {len(value)} bytes, expected {KEY}")
    return value
