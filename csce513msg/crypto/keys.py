"""A device's keys, what it publishes of them, and the safety number two people compare.

Every device (not every user: each of a user's devices has its own) holds, as in Signal's X3DH:

- an **identity**: an Ed25519 key that signs, and an X25519 key for key agreement. Signal
  uses one key for both (XEdDSA); ``cryptography`` has no such conversion, so we keep two and
  the signing key signs the agreement key, over ``b"csce513msg identity v1" + dh_public``. The
  signing key is the identity people verify (the safety number is made of it);
- a **signed prekey**, an X25519 key signed over ``b"csce513msg prekey v1" + key_id (u32, big
  endian) + public``, so a server cannot pass one id off as another. It is replaced every
  ``SPK_ROTATE_US`` (7 days). A replaced one is kept ``SPK_GRACE_US`` (14 days) after it was
  replaced, so a session start someone made with it just before still opens: with these two
  periods a device holds its current signed prekey and at most two retired ones;
- **one-time prekeys**, X25519 keys uploaded ``OTPK_BATCH`` (100) at a time and topped up when
  the server says fewer than ``OTPK_LOW`` (20) are left. They are unsigned, as in Signal: a
  server that swaps one only breaks that one session start (the owner's private key does not
  match), which a server that can drop messages could do anyway. Each is used once:
  ``take_one_time`` deletes the private key as it returns it, so a server that hands the same
  one to two senders is caught at the second (``UnknownPrekeyError``); the caller saves the
  state before it acknowledges the message, so the deletion survives a crash.

What the server stores and serves for a device, the **bundle**, is a fixed layout (big endian):

    sign_public 32 | dh_public 32 | dh_signature 64 | spk_id u32 | spk_public 32 | spk_signature 64
                                                                    (``published()``: 228 bytes)
    ... | otpk_id u32 | otpk_public 32                              (``to_bytes()``: 264 bytes)

the device's own part first, then one of its one-time prekeys, or an id of 0 and 32 zero bytes
when the server has none left. ``Bundle.verify`` checks both signatures, and nothing else can
be checked: whether ``sign_public`` is the right person's is for the safety number to show. A
server can also serve a signed prekey the device has since replaced (its signature stays
good); a session start made with it fails once the device has dropped it.

A device's private state (``DeviceKeys``) leaves memory only as ``to_dict()``, a JSON-safe
dictionary of base64 strings and integers, which the client keeps in its ``vault``; ``from_dict``
checks every length, type, id, that each public key is its private key's, and both signatures,
so a damaged file is a ``KeyStateError`` naming the field, not a failure deep in a handshake.

**Safety numbers** follow Signal's: each person's half is SHA-512 iterated 5200 times over
``version (u16, 0) | device count (u16) | for each device in device-id order: id length (u16),
id (UTF-8), identity signing key | name length (u16) | name (UTF-8)``, the key material hashed
again at every iteration; its first 30 bytes are six 5-byte numbers, each mod 100000 as five
digits. The two halves are put in order of user name, so both people see the same 60 digits,
shown as 12 groups of 5. It covers every device of each person: a new device, or a new key on
one, changes the number. ``safety_words`` reads the same number out as 8 words from a fixed
list of 256 (the first 8 bytes of SHA-256 over the 60 digits: 64 bits, where the digits hold
about 100 bits per person), for checking aloud in a classroom.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes

from . import primitives as p

IDENTITY_CONTEXT = b"csce513msg identity v1"
PREKEY_CONTEXT = b"csce513msg prekey v1"
MAX_ID = 2**32 - 1  #: key ids are u32; 0 means none
DAY_US = 86_400 * 1_000_000
SPK_ROTATE_US = 7 * DAY_US  #: a signed prekey is replaced when this old
SPK_GRACE_US = 14 * DAY_US  #: a replaced signed prekey is kept this long after it was replaced
OTPK_BATCH = 100  #: one-time prekeys uploaded at a time
OTPK_LOW = 20  #: fewer than this on the server: upload more
STATE_VERSION = 1

_PUBLISHED = struct.Struct(">32s32s64sI32s64s")
_ONE_TIME = struct.Struct(">I32s")
PUBLISHED_SIZE = _PUBLISHED.size  #: 228
BUNDLE_SIZE = _PUBLISHED.size + _ONE_TIME.size  #: 264
ONE_TIME_SIZE = _ONE_TIME.size  #: 36: a one-time prekey as uploaded, id u32 | public 32


class BadBundleError(ValueError):
    """A bundle that is malformed or whose signatures do not check."""


class UnknownPrekeyError(LookupError):
    """A prekey id this device does not hold: never made, expired, or (one-time) already used."""


class KeyStateError(ValueError):
    """Saved key state that is damaged: the message names the field."""


def _prekey_message(key_id: int, public: bytes) -> bytes:
    return PREKEY_CONTEXT + key_id.to_bytes(4, "big") + public


def _check_id(key_id: int, what: str) -> None:
    if not 1 <= key_id <= MAX_ID:
        raise ValueError(f"{what} {key_id}: key ids are 1 to {MAX_ID}")


@dataclass(frozen=True, slots=True)
class Identity:
    """A device's long-term keys: Ed25519 to sign, X25519 to agree, the second signed by the first."""

    sign_private: bytes = field(repr=False)
    sign_public: bytes
    dh_private: bytes = field(repr=False)
    dh_public: bytes
    dh_signature: bytes

    @classmethod
    def generate(cls) -> Identity:
        sign_private, sign_public = p.sign_keypair()
        dh_private, dh_public = p.dh_keypair()
        signature = p.sign(sign_private, IDENTITY_CONTEXT + dh_public)
        return cls(sign_private, sign_public, dh_private, dh_public, signature)


@dataclass(frozen=True, slots=True)
class SignedPrekey:
    """A medium-term X25519 key, signed by the identity with its id; ``created_us`` says when."""

    key_id: int
    private: bytes = field(repr=False)
    public: bytes
    signature: bytes
    created_us: int

    @classmethod
    def generate(cls, identity: Identity, key_id: int, now_us: int) -> SignedPrekey:
        _check_id(key_id, "signed prekey")
        private, public = p.dh_keypair()
        return cls(key_id, private, public, p.sign(identity.sign_private, _prekey_message(key_id, public)), now_us)


@dataclass(frozen=True, slots=True)
class OneTimePrekey:
    """An X25519 key for one session start, unsigned."""

    key_id: int
    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls, key_id: int) -> OneTimePrekey:
        _check_id(key_id, "one-time prekey")
        return cls(key_id, *p.dh_keypair())

    def published(self) -> bytes:
        """What is uploaded of it: id u32 | public 32 (``ONE_TIME_SIZE`` bytes)."""
        return _ONE_TIME.pack(self.key_id, self.public)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the server serves for one device: its public keys, and one one-time prekey or none
    (``otpk_id`` 0, ``otpk_public`` empty). Construct, or parse with ``from_bytes``; then ``verify``."""

    sign_public: bytes
    dh_public: bytes
    dh_signature: bytes
    spk_id: int
    spk_public: bytes
    spk_signature: bytes
    otpk_id: int = 0
    otpk_public: bytes = b""

    def __post_init__(self) -> None:
        sizes = {"sign_public": p.KEY, "dh_public": p.KEY, "dh_signature": p.SIGNATURE}
        sizes |= {"spk_public": p.KEY, "spk_signature": p.SIGNATURE}
        for name, size in sizes.items():
            if len(getattr(self, name)) != size:
                raise BadBundleError(f"bundle {name}: {len(getattr(self, name))} bytes, expected {size}")
        if len(self.otpk_public) not in (0, p.KEY):
            raise BadBundleError(f"bundle otpk_public: {len(self.otpk_public)} bytes, expected 0 or {p.KEY}")
        if not (0 <= self.spk_id <= MAX_ID and 0 <= self.otpk_id <= MAX_ID):
            raise BadBundleError("bundle key ids are u32")

    def published(self) -> bytes:
        """The device's own part, ``PUBLISHED_SIZE`` (228) bytes."""
        return _PUBLISHED.pack(
            self.sign_public, self.dh_public, self.dh_signature, self.spk_id, self.spk_public, self.spk_signature
        )

    def to_bytes(self) -> bytes:
        """The whole bundle, ``BUNDLE_SIZE`` (264) bytes: no one-time prekey is an id of 0 and 32 zeros."""
        return self.published() + _ONE_TIME.pack(self.otpk_id, self.otpk_public or bytes(p.KEY))

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        """Parse exactly ``BUNDLE_SIZE`` bytes (nothing is checked but the layout: call ``verify``)."""
        if len(data) != BUNDLE_SIZE:
            raise BadBundleError(f"a bundle is {BUNDLE_SIZE} bytes, not {len(data)}")
        sign_public, dh_public, dh_signature, spk_id, spk_public, spk_signature = _PUBLISHED.unpack_from(data)
        otpk_id, otpk_public = _ONE_TIME.unpack_from(data, PUBLISHED_SIZE)
        otpk_public = b"" if otpk_public == bytes(p.KEY) else otpk_public
        return cls(sign_public, dh_public, dh_signature, spk_id, spk_public, spk_signature, otpk_id, otpk_public)

    def verify(self) -> None:
        """Raise ``BadBundleError`` unless both signatures check, ``spk_id`` is set, and the one-time
        prekey is either absent (id 0, no key) or present (an id and a key)."""
        if self.spk_id == 0:
            raise BadBundleError("bundle: signed prekey id 0")
        if not p.verify(self.sign_public, self.dh_signature, IDENTITY_CONTEXT + self.dh_public):
            raise BadBundleError("bundle: the identity's signature on its X25519 key does not verify")
        if not p.verify(self.sign_public, self.spk_signature, _prekey_message(self.spk_id, self.spk_public)):
            raise BadBundleError(f"bundle: the signature on signed prekey {self.spk_id} does not verify")
        if (self.otpk_id == 0) != (self.otpk_public == b""):
            raise BadBundleError(
                f"bundle: one-time prekey id {self.otpk_id} with {'a key' if self.otpk_public else 'no key'}"
            )


@dataclass(slots=True)
class DeviceKeys:
    """This device's private state: its identity, current signed prekey, the replaced ones still
    in their grace period (oldest first), its unused one-time prekeys, and the next ids to use."""

    identity: Identity
    signed_prekey: SignedPrekey
    previous: list[SignedPrekey]
    one_time: dict[int, OneTimePrekey]
    next_spk_id: int
    next_otpk_id: int

    @classmethod
    def create(cls, now_us: int) -> DeviceKeys:
        """A new device: a new identity and signed prekey 1. Then ``new_one_time(OTPK_BATCH)``."""
        identity = Identity.generate()
        return cls(identity, SignedPrekey.generate(identity, 1, now_us), [], {}, 2, 1)

    def rotate_if_due(self, now_us: int) -> bool:
        """Replace the signed prekey if it is ``SPK_ROTATE_US`` old (keeping it for its grace
        period), and drop expired ones. True if replaced: publish ``published_bytes()`` again."""
        due = now_us - self.signed_prekey.created_us >= SPK_ROTATE_US
        if due:
            _check_id(self.next_spk_id, "signed prekey")
            self.previous.append(self.signed_prekey)
            self.signed_prekey = SignedPrekey.generate(self.identity, self.next_spk_id, now_us)
            self.next_spk_id += 1
        self.drop_expired(now_us)
        return due

    def drop_expired(self, now_us: int) -> None:
        """Forget the replaced signed prekeys whose grace period is over (it runs from when the
        next one was made)."""
        chain = [*self.previous, self.signed_prekey]
        self.previous = [old for old, new in itertools.pairwise(chain) if now_us - new.created_us < SPK_GRACE_US]

    def new_one_time(self, n: int) -> list[OneTimePrekey]:
        """``n`` new one-time prekeys, ids increasing from the last ever made (never reused)."""
        if n < 0 or self.next_otpk_id + n > MAX_ID + 1:
            raise ValueError(f"cannot make {n} one-time prekeys from id {self.next_otpk_id}")
        made = [OneTimePrekey.generate(self.next_otpk_id + i) for i in range(n)]
        self.one_time.update((key.key_id, key) for key in made)
        self.next_otpk_id += n
        return made

    @staticmethod
    def one_time_wanted(on_server: int) -> int:
        """How many one-time prekeys to upload when the server holds ``on_server``: none while it
        has more than ``OTPK_LOW`` (the directory tells a device when it falls to that), else
        enough to bring it back to ``OTPK_BATCH``."""
        return 0 if on_server > OTPK_LOW else OTPK_BATCH - max(on_server, 0)

    def spk_private(self, key_id: int) -> bytes:
        """The private key of signed prekey ``key_id``: the current one or one in its grace period."""
        for key in (self.signed_prekey, *self.previous):
            if key.key_id == key_id:
                return key.private
        raise UnknownPrekeyError(f"signed prekey {key_id} is not this device's, or has expired")

    def take_one_time(self, key_id: int) -> bytes:
        """The private key of one-time prekey ``key_id``, deleted as it is returned: it opens one
        session start, ever. Save the state before acknowledging the message."""
        key = self.one_time.pop(key_id, None)
        if key is None:
            raise UnknownPrekeyError(
                f"one-time prekey {key_id} is unknown or was already used (a server may have handed it out twice)"
            )
        return key.private

    def bundle(self, one_time: OneTimePrekey | None = None) -> Bundle:
        """This device's bundle, as the server would serve it with ``one_time`` (or none)."""
        i, s = self.identity, self.signed_prekey
        extra = (one_time.key_id, one_time.public) if one_time else (0, b"")
        return Bundle(i.sign_public, i.dh_public, i.dh_signature, s.key_id, s.public, s.signature, *extra)

    def published_bytes(self) -> bytes:
        """What to publish (``PUBLISHED_SIZE`` bytes): the identity and the current signed prekey."""
        return self.bundle().published()

    def to_dict(self) -> dict[str, Any]:
        """The whole private state as JSON-safe values (base64 strings, integers)."""
        i = self.identity
        return {
            "version": STATE_VERSION,
            "identity": {
                "sign_private": _b64(i.sign_private),
                "sign_public": _b64(i.sign_public),
                "dh_private": _b64(i.dh_private),
                "dh_public": _b64(i.dh_public),
                "dh_signature": _b64(i.dh_signature),
            },
            "signed_prekey": _spk_dict(self.signed_prekey),
            "previous": [_spk_dict(key) for key in self.previous],
            "one_time": [
                {"key_id": k.key_id, "private": _b64(k.private), "public": _b64(k.public)}
                for k in sorted(self.one_time.values(), key=lambda k: k.key_id)
            ],
            "next_spk_id": self.next_spk_id,
            "next_otpk_id": self.next_otpk_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> DeviceKeys:
        """The state ``to_dict`` made, every field checked: anything wrong is a ``KeyStateError``."""
        top = _Fields(data, "keys", _TOP)
        if top.integer("version", 0, 2**31) != STATE_VERSION:
            raise KeyStateError(f"keys.version: {top.data['version']}, this program reads {STATE_VERSION}")
        identity = _read_identity(top.fields("identity", _IDENTITY))
        current = _read_spk(top.fields("signed_prekey", _SPK), identity)
        previous = [
            _read_spk(_Fields(item, f"keys.previous[{n}]", _SPK), identity) for n, item in top.items("previous")
        ]
        one_time: dict[int, OneTimePrekey] = {}
        for n, item in top.items("one_time"):
            key = _read_one_time(_Fields(item, f"keys.one_time[{n}]", _OTPK))
            if key.key_id in one_time:
                raise KeyStateError(f"keys.one_time[{n}]: id {key.key_id} appears twice")
            one_time[key.key_id] = key
        next_spk_id, next_otpk_id = (
            top.integer("next_spk_id", 2, MAX_ID + 1),
            top.integer("next_otpk_id", 1, MAX_ID + 1),
        )
        chain = [*previous, current]
        if any(old.key_id >= new.key_id or old.created_us > new.created_us for old, new in itertools.pairwise(chain)):
            raise KeyStateError("keys.previous: signed prekeys out of order")
        if current.key_id >= next_spk_id or max(one_time, default=0) >= next_otpk_id:
            raise KeyStateError("keys: a key id at or past the next id to use")
        return cls(identity, current, previous, one_time, next_spk_id, next_otpk_id)


# Saving and reading the private state


_TOP = ("version", "identity", "signed_prekey", "previous", "one_time", "next_spk_id", "next_otpk_id")
_IDENTITY = ("sign_private", "sign_public", "dh_private", "dh_public", "dh_signature")
_SPK = ("key_id", "private", "public", "signature", "created_us")
_OTPK = ("key_id", "private", "public")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _spk_dict(key: SignedPrekey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "private": _b64(key.private),
        "public": _b64(key.public),
        "signature": _b64(key.signature),
        "created_us": key.created_us,
    }


class _Fields:
    """One JSON object of the saved state, with exactly the keys ``names``; every read names
    the field's path in its error."""

    def __init__(self, data: object, where: str, names: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise KeyStateError(f"{where}: expected an object, found {type(data).__name__}")
        if set(data) != set(names):
            wrong = sorted(map(str, set(data) ^ set(names)))
            raise KeyStateError(f"{where}: missing or unexpected fields: {', '.join(wrong)}")
        self.data: dict[str, object] = data
        self.where = where

    def raw(self, name: str, size: int) -> bytes:
        value = self.data[name]
        try:
            if not isinstance(value, str):
                raise TypeError
            raw = base64.b64decode(value, validate=True)
        except (TypeError, binascii.Error):
            raise KeyStateError(f"{self.where}.{name}: not a base64 string") from None
        if len(raw) != size:
            raise KeyStateError(f"{self.where}.{name}: {len(raw)} bytes, expected {size}")
        return raw

    def integer(self, name: str, low: int, high: int) -> int:
        value = self.data[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise KeyStateError(f"{self.where}.{name}: {value!r} is not an integer from {low} to {high}")
        return value

    def fields(self, name: str, names: tuple[str, ...]) -> _Fields:
        return _Fields(self.data[name], f"{self.where}.{name}", names)

    def items(self, name: str) -> list[tuple[int, object]]:
        value = self.data[name]
        if not isinstance(value, list):
            raise KeyStateError(f"{self.where}.{name}: expected a list")
        return list(enumerate(value))


def _read_identity(f: _Fields) -> Identity:
    sign_private, dh_private = f.raw("sign_private", p.KEY), f.raw("dh_private", p.KEY)
    identity = Identity(
        sign_private,
        f.raw("sign_public", p.KEY),
        dh_private,
        f.raw("dh_public", p.KEY),
        f.raw("dh_signature", p.SIGNATURE),
    )
    if p.sign_public(sign_private) != identity.sign_public or p.dh_public(dh_private) != identity.dh_public:
        raise KeyStateError(f"{f.where}: a public key is not its private key's")
    if not p.verify(identity.sign_public, identity.dh_signature, IDENTITY_CONTEXT + identity.dh_public):
        raise KeyStateError(f"{f.where}.dh_signature: does not verify")
    return identity


def _read_spk(f: _Fields, identity: Identity) -> SignedPrekey:
    key = SignedPrekey(
        f.integer("key_id", 1, MAX_ID),
        f.raw("private", p.KEY),
        f.raw("public", p.KEY),
        f.raw("signature", p.SIGNATURE),
        f.integer("created_us", 0, 2**63 - 1),
    )
    if p.dh_public(key.private) != key.public:
        raise KeyStateError(f"{f.where}.public: not its private key's")
    if not p.verify(identity.sign_public, key.signature, _prekey_message(key.key_id, key.public)):
        raise KeyStateError(f"{f.where}.signature: does not verify under this identity")
    return key


def _read_one_time(f: _Fields) -> OneTimePrekey:
    key = OneTimePrekey(f.integer("key_id", 1, MAX_ID), f.raw("private", p.KEY), f.raw("public", p.KEY))
    if p.dh_public(key.private) != key.public:
        raise KeyStateError(f"{f.where}.public: not its private key's")
    return key


# Safety numbers

SAFETY_VERSION = 0
SAFETY_ITERATIONS = 5200


def _u16_string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if not 0 < len(raw) < 2**16:
        raise ValueError(f"{what} {text!r}: 1 to 65535 bytes of UTF-8")
    return struct.pack(">H", len(raw)) + raw


def fingerprint(user: str, keys: Sequence[tuple[str, bytes]]) -> str:
    """One person's half of a safety number, 30 digits: ``keys`` are (device id, identity signing
    key) for every device of ``user``, in any order."""
    ids = [device for device, _ in keys]
    if not keys or len(set(ids)) != len(ids):
        raise ValueError(f"{user!r}: one or more devices, each id once")
    material = struct.pack(">H", len(keys))
    for device, key in sorted(keys):
        if len(key) != p.KEY:
            raise ValueError(f"{user!r} device {device!r}: an identity key is {p.KEY} bytes, not {len(key)}")
        material += _u16_string(device, "device id") + key
    digest = struct.pack(">H", SAFETY_VERSION) + material + _u16_string(user, "user name")
    for _ in range(SAFETY_ITERATIONS):
        h = hashes.Hash(hashes.SHA512())
        h.update(digest)
        h.update(material)
        digest = h.finalize()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_number(
    user_a: str, keys_a: Sequence[tuple[str, bytes]], user_b: str, keys_b: Sequence[tuple[str, bytes]]
) -> str:
    """The 60 digits two people compare, as 12 groups of 5; the same whichever of them asks.
    Each side's keys are (device id, identity signing key) for all of that person's devices."""
    halves = sorted([(user_a, fingerprint(user_a, keys_a)), (user_b, fingerprint(user_b, keys_b))])
    digits = halves[0][1] + halves[1][1]
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def safety_words(
    user_a: str, keys_a: Sequence[tuple[str, bytes]], user_b: str, keys_b: Sequence[tuple[str, bytes]]
) -> list[str]:
    """The same safety number as 8 words to read aloud (64 bits of it)."""
    digits = safety_number(user_a, keys_a, user_b, keys_b).replace(" ", "")
    return [WORDS[b] for b in p.sha256(digits.encode("ascii"))[:8]]


#: 256 short, common, concrete English words, none a homophone of another word in common use
#: (no "beach"/"beech", "horse"/"hoarse"), so a word heard is the word meant.
_WORD_LIST = """
    acorn actor alarm album amber anchor ankle apple apron arrow atlas attic bacon badge bagel baker
    bamboo banjo basil beard bell bench bison blade blaze bloom boots brain brave brick broom brush
    bucket cabin cable cactus camel candy canoe cargo chair chalk charm chess chief cider cliff clock
    cloud clown coach cobra comet cookie couch cow crane crown crumb daisy dance denim dingo dog donut
    dozen dragon drum dune eagle earth easel egg elbow ember fable falcon fern fiber field flame flask
    fleet float flute forest fork fox frame frog frost fudge gecko ghost giant glass globe glove goose
    grape grass gravy guard guitar hammer harbor hat hazel heart hedge hippo honey hotel house igloo ink
    iron island ivory jacket jam jelly jigsaw joker juice kayak kettle key kite kiwi koala ladder lamp
    lemon lever lilac linen lizard llama lunar lunch magic mango map maple marble melon mint mirror
    motor mouse muffin music nest noodle novel nut oak oasis ocean olive onion opera orbit otter owl
    paddle panda paper pasta peach pearl pen pepper piano pig pilot pizza planet plaza polar pony poppy
    prism puppy quilt radar radio raven river robin robot rocket ruby rug salad salmon sandal scarf
    shark sheep shell shirt silver skate skunk slope smile snack snake sock sofa solar spark spice
    spoon squid stamp star stone storm stove sugar swan table tango tent tiger toast token topaz torch
    tower train tulip tuna turtle uncle van velvet video violin wagon walnut walrus water web willow
    window wizard wolf yacht yak yogurt zebra zero
"""
WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())
