"""crypto/keys.py: a device's keys, its bundle's exact bytes, rotation, one use of a one-time
prekey, the saved state refusing damage, and safety numbers."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest

from csce513msg.crypto import primitives as p
from csce513msg.crypto.keys import (
    BUNDLE_SIZE,
    DAY_US,
    OTPK_BATCH,
    OTPK_LOW,
    PUBLISHED_SIZE,
    SPK_GRACE_US,
    SPK_ROTATE_US,
    WORDS,
    BadBundleError,
    Bundle,
    DeviceKeys,
    KeyStateError,
    OneTimePrekey,
    UnknownPrekeyError,
    fingerprint,
    safety_number,
    safety_words,
)

T0 = 1_700_000_000 * 1_000_000  # a wall-clock time in microseconds


@pytest.fixture(scope="module")
def device() -> DeviceKeys:
    """A device with a few one-time prekeys (module-scoped: tests that change it copy it)."""
    keys = DeviceKeys.create(T0)
    keys.new_one_time(5)
    return keys


def fresh(device: DeviceKeys) -> DeviceKeys:
    return copy.deepcopy(device)


# The bundle


def test_bundle_round_trips_through_its_exact_layout(device: DeviceKeys) -> None:
    one = device.one_time[3]
    bundle = device.bundle(one)
    raw = bundle.to_bytes()
    assert len(raw) == BUNDLE_SIZE == 264 and len(bundle.published()) == PUBLISHED_SIZE == 228
    assert raw[:228] == bundle.published() == device.published_bytes()
    i, s = device.identity, device.signed_prekey
    assert (
        raw
        == (i.sign_public + i.dh_public + i.dh_signature + struct.pack(">I", s.key_id) + s.public + s.signature)
        + struct.pack(">I", 3)
        + one.public
    )
    assert raw[228:] == one.published()
    assert Bundle.from_bytes(raw) == bundle
    bundle.verify()


def test_a_bundle_without_a_one_time_prekey_ends_in_zeros(device: DeviceKeys) -> None:
    bundle = device.bundle()
    assert bundle.otpk_id == 0 and bundle.otpk_public == b""
    assert bundle.to_bytes()[228:] == bytes(36)
    assert Bundle.from_bytes(bundle.to_bytes()) == bundle
    bundle.verify()


@pytest.mark.parametrize("size", [0, 228, 263, 265])
def test_a_bundle_of_the_wrong_size_does_not_parse(device: DeviceKeys, size: int) -> None:
    raw = (device.bundle().to_bytes() * 2)[:size]
    with pytest.raises(BadBundleError, match="264 bytes"):
        Bundle.from_bytes(raw)


def flipped(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_bit_of_the_signed_part_is_checked(device: DeviceKeys) -> None:
    """Each of the 228 * 8 bits of the device's own part, flipped, makes verify fail (the
    one-time prekey after it is unsigned: the next test)."""
    raw = device.bundle(device.one_time[1]).to_bytes()
    for bit in range(PUBLISHED_SIZE * 8):
        with pytest.raises(BadBundleError):
            Bundle.from_bytes(flipped(raw, bit)).verify()


def test_every_bit_of_an_empty_one_time_slot_is_checked(device: DeviceKeys) -> None:
    """With no one-time prekey, any bit set in its 36 bytes is an id without a key or a key
    without an id: all 264 * 8 flips fail."""
    raw = device.bundle().to_bytes()
    for bit in range(BUNDLE_SIZE * 8):
        with pytest.raises(BadBundleError):
            Bundle.from_bytes(flipped(raw, bit)).verify()


def test_a_swapped_one_time_prekey_verifies_but_its_owner_does_not_hold_it(device: DeviceKeys) -> None:
    """Unsigned, as in Signal: a server can change the one-time prekey it serves; the session
    start made with it then names an id (or a key) its owner does not hold."""
    keys = fresh(device)
    raw = keys.bundle(keys.one_time[1]).to_bytes()
    other_id = Bundle.from_bytes(flipped(raw, PUBLISHED_SIZE * 8 + 3 * 8 + 6))  # id 1 -> 65
    other_id.verify()
    assert other_id.otpk_id == 65
    with pytest.raises(UnknownPrekeyError):
        keys.take_one_time(other_id.otpk_id)
    other_key = Bundle.from_bytes(flipped(raw, (BUNDLE_SIZE - 1) * 8))
    other_key.verify()
    assert p.dh_public(keys.take_one_time(1)) != other_key.otpk_public


def test_verify_names_what_is_wrong(device: DeviceKeys) -> None:
    good = device.bundle(device.one_time[2])
    other = DeviceKeys.create(T0)
    cases: list[tuple[Bundle, str]] = [
        (Bundle(**{**vars_of(good), "sign_public": other.identity.sign_public}), "X25519 key does not verify"),
        (Bundle(**{**vars_of(good), "spk_signature": other.signed_prekey.signature}), "signed prekey 1"),
        (Bundle(**{**vars_of(good), "spk_id": 2}), "signed prekey 2 does not verify"),
        (Bundle(**{**vars_of(good), "spk_id": 0}), "signed prekey id 0"),
        (Bundle(**{**vars_of(good), "otpk_id": 0}), "one-time prekey id 0 with a key"),
        (Bundle(**{**vars_of(good), "otpk_public": b""}), "one-time prekey id 2 with no key"),
    ]
    for bundle, message in cases:
        with pytest.raises(BadBundleError, match=re.escape(message)):
            bundle.verify()


def test_a_bundle_refuses_fields_of_the_wrong_size(device: DeviceKeys) -> None:
    good = vars_of(device.bundle())
    for name, value in [("sign_public", b"x" * 31), ("spk_signature", b"x" * 65), ("otpk_public", b"x" * 16)]:
        with pytest.raises(BadBundleError, match=name):
            Bundle(**{**good, name: value})
    with pytest.raises(BadBundleError, match="u32"):
        Bundle(**{**good, "spk_id": 2**32})


def vars_of(bundle: Bundle) -> dict[str, Any]:
    return {name: getattr(bundle, name) for name in Bundle.__dataclass_fields__}


# Rotation and grace


def test_the_signed_prekey_rotates_weekly_and_replaced_ones_stay_their_grace_period() -> None:
    keys = DeviceKeys.create(T0)
    first_bytes = keys.published_bytes()
    assert SPK_ROTATE_US == 7 * DAY_US and SPK_GRACE_US == 14 * DAY_US
    assert not keys.rotate_if_due(T0 + SPK_ROTATE_US - 1)
    assert keys.published_bytes() == first_bytes
    k1 = keys.spk_private(1)

    assert keys.rotate_if_due(T0 + 7 * DAY_US)  # key 2; key 1 replaced now
    assert keys.signed_prekey.key_id == 2 and keys.published_bytes() != first_bytes
    keys.bundle().verify()
    assert keys.spk_private(1) == k1
    assert keys.rotate_if_due(T0 + 14 * DAY_US)  # key 3; key 1 replaced 7 days ago, still kept
    assert [k.key_id for k in keys.previous] == [1, 2]
    keys.drop_expired(T0 + 21 * DAY_US - 1)  # key 1: 14 days less a microsecond since replaced
    assert keys.spk_private(1) == k1
    assert keys.rotate_if_due(T0 + 21 * DAY_US)  # key 4; key 1's grace is over
    with pytest.raises(UnknownPrekeyError, match="signed prekey 1"):
        keys.spk_private(1)
    assert [k.key_id for k in keys.previous] == [2, 3]
    assert keys.spk_private(4) == keys.signed_prekey.private


def test_a_device_back_after_a_month_keeps_its_last_key_for_the_grace_period() -> None:
    """Offline for 30 days, it did not rotate: sessions made with its key meanwhile still open
    after it rotates on its return, until 14 days later."""
    keys = DeviceKeys.create(T0)
    back = T0 + 30 * DAY_US
    assert keys.rotate_if_due(back)
    assert keys.spk_private(1) and keys.signed_prekey.key_id == 2
    keys.drop_expired(back + SPK_GRACE_US - 1)
    assert keys.spk_private(1)
    keys.drop_expired(back + SPK_GRACE_US)
    with pytest.raises(UnknownPrekeyError):
        keys.spk_private(1)
    with pytest.raises(UnknownPrekeyError):
        keys.spk_private(7)


# One-time prekeys


def test_one_time_prekeys_have_increasing_ids_never_reused() -> None:
    keys = DeviceKeys.create(T0)
    assert [k.key_id for k in keys.new_one_time(3)] == [1, 2, 3]
    private = keys.take_one_time(3)
    assert [k.key_id for k in keys.new_one_time(2)] == [4, 5]
    assert sorted(keys.one_time) == [1, 2, 4, 5]
    assert keys.new_one_time(0) == []
    with pytest.raises(ValueError):
        keys.new_one_time(-1)
    assert p.dh_public(private) != keys.one_time[4].public


def test_a_one_time_prekey_opens_one_session_start_only() -> None:
    keys = DeviceKeys.create(T0)
    (made,) = keys.new_one_time(1)
    assert keys.take_one_time(made.key_id) == made.private
    with pytest.raises(UnknownPrekeyError, match="already used"):
        keys.take_one_time(made.key_id)  # the server handed it out twice
    restored = DeviceKeys.from_dict(json.loads(json.dumps(keys.to_dict())))
    with pytest.raises(UnknownPrekeyError):
        restored.take_one_time(made.key_id)  # the deletion is saved with the state
    with pytest.raises(UnknownPrekeyError):
        keys.take_one_time(999)


def test_one_time_prekeys_are_topped_up_below_the_low_mark() -> None:
    assert (OTPK_BATCH, OTPK_LOW) == (100, 20)
    assert DeviceKeys.one_time_wanted(OTPK_LOW + 1) == 0
    assert DeviceKeys.one_time_wanted(OTPK_LOW) == OTPK_BATCH - OTPK_LOW  # the directory's push comes at 20
    assert DeviceKeys.one_time_wanted(OTPK_LOW - 1) == OTPK_BATCH - OTPK_LOW + 1
    assert DeviceKeys.one_time_wanted(0) == OTPK_BATCH


def test_private_keys_stay_out_of_reprs(device: DeviceKeys) -> None:
    shown = repr(device)
    for secret in [device.identity.sign_private, device.identity.dh_private, device.signed_prekey.private]:
        assert repr(secret) not in shown
    assert repr(device.one_time[1].private) not in repr(device.one_time[1])
    assert isinstance(device.one_time[1], OneTimePrekey)


# The saved state


def test_the_saved_state_round_trips_exactly(device: DeviceKeys) -> None:
    keys = fresh(device)
    keys.rotate_if_due(T0 + 8 * DAY_US)
    keys.take_one_time(2)
    saved = keys.to_dict()
    text = json.dumps(saved)
    restored = DeviceKeys.from_dict(json.loads(text))
    assert restored == keys and restored.to_dict() == saved
    assert restored.spk_private(1) == keys.spk_private(1)
    assert restored.next_otpk_id == 6 and restored.next_spk_id == 3


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutation:
    def mutate(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = state
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _b64_of(path: str, change: Callable[[bytes], bytes]) -> Mutation:
    def mutate(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = state
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = base64.b64encode(change(base64.b64decode(node[last]))).decode()

    return mutate


def _flip_a_bit(raw: bytes) -> bytes:
    """Bit 8: not one of the bits X25519's clamping clears (a flip there would not change the key)."""
    return raw[:1] + bytes([raw[1] ^ 1]) + raw[2:]


CORRUPTIONS: dict[str, tuple[Mutation, str]] = {
    "other fields": (lambda s: s.update(version=1, other=2), "keys: missing or unexpected fields: other"),
    "unknown version": (_set("version", 2), "keys.version: 2"),
    "a field missing": (lambda s: s["identity"].pop("dh_signature"), "keys.identity: missing or unexpected"),
    "an extra field": (
        _set("signed_prekey.colour", "blue"),
        "keys.signed_prekey: missing or unexpected fields: colour",
    ),
    "a key too short": (_b64_of("identity.sign_private", lambda b: b[:-1]), "sign_private: 31 bytes, expected 32"),
    "not base64": (_set("one_time.0.private", "not base64!"), "keys.one_time[0].private: not a base64 string"),
    "a number for a key": (_set("identity.dh_public", 12), "keys.identity.dh_public: not a base64 string"),
    "a string for an id": (_set("signed_prekey.key_id", "1"), "keys.signed_prekey.key_id: '1' is not an integer"),
    "a bool for an id": (_set("one_time.0.key_id", True), "keys.one_time[0].key_id: True is not an integer"),
    "id 0": (_set("one_time.1.key_id", 0), "keys.one_time[1].key_id: 0 is not an integer from 1"),
    "a list that is not": (_set("previous", {}), "keys.previous: expected a list"),
    "a damaged private key": (_b64_of("identity.dh_private", _flip_a_bit), "a public key is not its private"),
    "a damaged signature": (_b64_of("signed_prekey.signature", _flip_a_bit), "signature: does not verify"),
    "a damaged one-time key": (_b64_of("one_time.2.public", _flip_a_bit), "one_time[2].public: not its private"),
    "an id twice": (_set("one_time.1.key_id", 1), "keys.one_time[1]: id 1 appears twice"),
    "an id past the next": (_set("next_otpk_id", 3), "at or past the next id"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_damaged_state_is_refused_naming_the_field(device: DeviceKeys, corruption: str) -> None:
    mutate, message = CORRUPTIONS[corruption]
    state = device.to_dict()
    mutate(state)
    with pytest.raises(KeyStateError, match=re.escape(message)):
        DeviceKeys.from_dict(state)


def test_state_that_is_not_an_object_is_refused() -> None:
    not_objects: list[object] = [None, [], "keys", 3]
    for data in not_objects:
        with pytest.raises(KeyStateError, match="keys: expected an object"):
            DeviceKeys.from_dict(data)


def test_signed_prekeys_out_of_order_are_refused(device: DeviceKeys) -> None:
    keys = fresh(device)
    keys.rotate_if_due(T0 + 7 * DAY_US)
    state = keys.to_dict()
    state["previous"][0]["created_us"] = T0 + 8 * DAY_US  # "replaced" before it was made
    with pytest.raises(KeyStateError, match="out of order"):
        DeviceKeys.from_dict(state)


# Safety numbers

ALICE = [("laptop", bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"))]
BOB = [
    ("phone", bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")),
    ("desk", bytes.fromhex("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025")),
]


def test_safety_number_known_answer() -> None:
    """Frozen: fixed keys (RFC 8032's first three public keys) in, these digits out. A change
    here changes every number users have compared."""
    assert safety_number("alice", ALICE, "bob", BOB) == (
        "93714 81721 27959 43904 47148 47304 21069 19097 69408 01973 78751 97821"
    )
    assert safety_words("alice", ALICE, "bob", BOB) == [
        "storm",
        "prism",
        "coach",
        "frost",
        "field",
        "nest",
        "chess",
        "dozen",
    ]


def test_safety_number_is_the_documented_construction() -> None:
    """Recomputed here with hashlib, straight from the module's docstring."""

    def half(user: str, keys: list[tuple[str, bytes]]) -> str:
        material = struct.pack(">H", len(keys))
        for device, key in sorted(keys):
            material += struct.pack(">H", len(device.encode())) + device.encode() + key
        digest = struct.pack(">H", 0) + material + struct.pack(">H", len(user.encode())) + user.encode()
        for _ in range(5200):
            digest = hashlib.sha512(digest + material).digest()
        return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))

    assert fingerprint("bob", BOB) == half("bob", BOB)
    digits = half("alice", ALICE) + half("bob", BOB)
    assert safety_number("bob", BOB, "alice", ALICE) == " ".join(digits[i : i + 5] for i in range(0, 60, 5))
    words = safety_words("alice", ALICE, "bob", BOB)
    assert words == [WORDS[b] for b in hashlib.sha256(digits.encode()).digest()[:8]]


def test_safety_number_is_the_same_whoever_asks_and_whatever_the_device_order() -> None:
    number = safety_number("alice", ALICE, "bob", BOB)
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", number)
    assert safety_number("bob", BOB, "alice", ALICE) == number
    assert safety_number("bob", list(reversed(BOB)), "alice", ALICE) == number
    assert safety_words("bob", BOB, "alice", ALICE) == safety_words("alice", ALICE, "bob", BOB)


def test_safety_number_changes_with_any_device_key_or_name() -> None:
    number = safety_number("alice", ALICE, "bob", BOB)
    new_key = [("phone", p.sign_keypair()[1]), BOB[1]]
    new_device = [*BOB, ("tablet", p.sign_keypair()[1])]
    renamed = [("phone2", BOB[0][1]), BOB[1]]
    others = [
        safety_number("alice", ALICE, "bob", new_key),
        safety_number("alice", ALICE, "bob", new_device),
        safety_number("alice", ALICE, "bob", BOB[:1]),
        safety_number("alice", ALICE, "bob", renamed),
        safety_number("alice", ALICE, "carol", BOB),
    ]
    assert number not in others and len(set(others)) == len(others)
    # only Bob's half changes when only Bob's keys do: Alice's 30 digits stay where they were
    assert others[0][:35] == number[:35] and others[0][36:] != number[36:]


def test_safety_number_refuses_what_it_cannot_number() -> None:
    with pytest.raises(ValueError, match="one or more devices"):
        safety_number("alice", [], "bob", BOB)
    with pytest.raises(ValueError, match="each id once"):
        safety_number("alice", ALICE, "bob", [BOB[0], ("phone", BOB[1][1])])
    with pytest.raises(ValueError, match="32 bytes"):
        safety_number("alice", [("laptop", b"short")], "bob", BOB)
    with pytest.raises(ValueError, match="user name"):
        safety_number("", ALICE, "bob", BOB)


def test_the_word_list() -> None:
    assert len(WORDS) == 256 and len(set(WORDS)) == 256
    assert all(re.fullmatch(r"[a-z]{3,6}", w) for w in WORDS)
    assert list(WORDS) == sorted(WORDS)
