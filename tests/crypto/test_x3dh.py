"""X3DH: both sides derive the same secret, the derivation is frozen, and replayed starts are caught."""

from __future__ import annotations

import json

import pytest

from csce513msg.crypto import primitives as p
from csce513msg.crypto.x3dh import AD_SIZE, NO_OTPK, Start, StartCache, initiate, respond

# Known-answer inputs: every private key a repeated byte, so the frozen outputs can be recomputed anywhere.
A_SIGN, A_DH = p.sign_public(bytes([1]) * 32), p.dh_public(bytes([2]) * 32)
B_SIGN, B_DH_PRIVATE = p.sign_public(bytes([3]) * 32), bytes([4]) * 32
B_DH = p.dh_public(B_DH_PRIVATE)
SPK_PRIVATE, OPK_PRIVATE = bytes([5]) * 32, bytes([6]) * 32
EPHEMERAL = p.dh_public(bytes([7]) * 32)

SK_WITH_OPK = "4a63d0a2a7312da62feaa54f38a8d894bb61b9c2ceb1f1e3d9b30940d84deede"
SK_WITHOUT_OPK = "31443ee26b3499ba1f2fcf3c9ba29902fbf2a8a0b6da422cba4764a66f44d130"


class Device:
    """The raw keys X3DH takes: an identity (sign and DH pairs), a signed prekey, a one-time prekey."""

    def __init__(self) -> None:
        self.sign_private, self.sign_public = p.sign_keypair()
        self.dh_private, self.dh_public = p.dh_keypair()
        self.spk_private, self.spk_public = p.dh_keypair()
        self.otpk_private, self.otpk_public = p.dh_keypair()


def start(alice: Device, bob: Device, spk_id: int = 1, otpk_id: int = NO_OTPK) -> Start:
    """Alice's ``initiate`` on Bob's bundle, with his one-time prekey when ``otpk_id`` names one."""
    otpk = bob.otpk_public if otpk_id != NO_OTPK else None
    return initiate(
        alice.sign_public, alice.dh_private, alice.dh_public, bob.sign_public, bob.dh_public,
        spk_id, bob.spk_public, otpk_id, otpk,
    )  # fmt: skip


def answer(bob: Device, alice: Device, ephemeral: bytes, otpk_private: bytes | None) -> tuple[bytes, bytes]:
    """Bob's ``respond`` to a start from Alice."""
    return respond(
        bob.sign_public, bob.dh_private, bob.dh_public, bob.spk_private, otpk_private,
        alice.sign_public, alice.dh_public, ephemeral,
    )  # fmt: skip


def test_known_answers_freeze_the_derivation() -> None:
    shared, ad = respond(B_SIGN, B_DH_PRIVATE, B_DH, SPK_PRIVATE, OPK_PRIVATE, A_SIGN, A_DH, EPHEMERAL)
    assert shared.hex() == SK_WITH_OPK
    assert ad == A_SIGN + A_DH + B_SIGN + B_DH and len(ad) == AD_SIZE
    shared, _ = respond(B_SIGN, B_DH_PRIVATE, B_DH, SPK_PRIVATE, None, A_SIGN, A_DH, EPHEMERAL)
    assert shared.hex() == SK_WITHOUT_OPK
    key = StartCache.key(EPHEMERAL, 7)
    assert key.hex() == "e98277bed6ee392f43ca49c3bd7a9449544245eb48adb6a48553bff7a0df7842"
    assert key == p.sha256(EPHEMERAL + b"\x00\x00\x00\x07")


def test_the_known_answer_is_hkdf_of_the_four_dh_results_in_the_spec_order() -> None:
    """The frozen hex above, rebuilt step by step from the spec's formula."""
    dh1 = p.dh(SPK_PRIVATE, A_DH)
    dh2 = p.dh(B_DH_PRIVATE, EPHEMERAL)
    dh3 = p.dh(SPK_PRIVATE, EPHEMERAL)
    dh4 = p.dh(OPK_PRIVATE, EPHEMERAL)
    ikm = b"\xff" * 32 + dh1 + dh2 + dh3 + dh4
    assert p.hkdf(ikm, salt=bytes(32), info=b"csce513msg X3DH v1", length=32).hex() == SK_WITH_OPK


@pytest.mark.parametrize("with_otpk", [True, False])
def test_both_sides_derive_the_same_secret(with_otpk: bool) -> None:
    alice, bob = Device(), Device()
    begun = start(alice, bob, spk_id=12, otpk_id=34 if with_otpk else NO_OTPK)
    assert (begun.spk_id, begun.otpk_id) == (12, 34 if with_otpk else NO_OTPK)
    shared, ad = answer(bob, alice, begun.ephemeral_public, bob.otpk_private if with_otpk else None)
    assert shared == begun.shared and len(shared) == 32
    assert ad == begun.ad == alice.sign_public + alice.dh_public + bob.sign_public + bob.dh_public
    assert begun.shared.hex() not in repr(begun)  # a secret never shows in a log line


def test_every_key_counts() -> None:
    """Bob computing with the wrong one-time prekey, or without it, or for another initiator,
    gets another secret: the start does not open."""
    alice, bob, mallory = Device(), Device(), Device()
    begun = start(alice, bob, otpk_id=2)
    assert answer(bob, alice, begun.ephemeral_public, None)[0] != begun.shared
    assert answer(bob, alice, begun.ephemeral_public, mallory.otpk_private)[0] != begun.shared
    shared, ad = answer(bob, mallory, begun.ephemeral_public, bob.otpk_private)
    assert shared != begun.shared and ad != begun.ad
    # the signing key enters only AD: a substituted one leaves SK alone but changes AD, which every message checks
    mallory.dh_public = alice.dh_public
    shared, ad = answer(bob, mallory, begun.ephemeral_public, bob.otpk_private)
    assert shared == begun.shared and ad != begun.ad


def test_a_low_order_key_is_refused() -> None:
    bob = Device()
    with pytest.raises(p.BadKeyError):
        respond(bob.sign_public, bob.dh_private, bob.dh_public, bob.spk_private, None, A_SIGN, A_DH, bytes(32))


def test_malformed_arguments_are_refused() -> None:
    alice, bob = Device(), Device()
    keys = (alice.sign_public, alice.dh_private, alice.dh_public, bob.sign_public, bob.dh_public)
    with pytest.raises(ValueError, match="otpk_id is 0"):
        initiate(*keys, 1, bob.spk_public, NO_OTPK, bob.otpk_public)
    with pytest.raises(ValueError, match="otpk_id is 0"):
        initiate(*keys, 1, bob.spk_public, 5, None)
    with pytest.raises(ValueError, match="not a u32"):
        initiate(*keys, 2**32, bob.spk_public, NO_OTPK, None)
    with pytest.raises(p.BadKeyError):
        initiate(alice.sign_public[:31], *keys[1:], 1, bob.spk_public, NO_OTPK, None)


def test_start_cache_fails_closed_and_forgets_a_deleted_prekeys_starts() -> None:
    cache = StartCache(capacity=3)
    keys = [StartCache.key(bytes([i]) * 32, 1 + i % 2) for i in range(4)]
    assert [cache.seen_before(k, 1 + i % 2) for i, k in enumerate(keys[:3])] == [False, False, False]
    assert cache.seen_before(keys[1]) and len(cache) == 3
    assert cache.full and cache.seen_before(keys[3], 2)  # full: refused, and nothing forgotten for it
    assert keys[0] in cache
    cache.forget_spks({2})  # signed prekey 1 was deleted: its starts cannot open again anyway
    assert len(cache) == 1 and keys[1] in cache and not cache.full
    assert not cache.seen_before(keys[3], 2)
    assert StartCache.key(bytes(32), 1) != StartCache.key(bytes(32), 2)


def test_start_cache_round_trips_through_json() -> None:
    cache = StartCache()
    assert cache.capacity == 4096
    for i in range(10):
        cache.seen_before(StartCache.key(bytes([i]) * 32, i))
    copy = StartCache.from_dict(json.loads(json.dumps(cache.to_dict())))
    assert copy.to_dict() == cache.to_dict()
    assert copy.seen_before(StartCache.key(bytes([3]) * 32, 3))


@pytest.mark.parametrize(
    "data",
    [
        {"capacity": 2, "seen": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] * 2, "spks": [1, 1]},  # twice
        {"capacity": 1, "seen": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AQ" * 21 + "A="], "spks": [1, 1]},
        {"capacity": 2, "seen": ["AAAA"], "spks": [1]},  # not 32 bytes
        {"capacity": 2, "seen": ["not base64!"], "spks": [1]},
        {"capacity": 2, "seen": [7], "spks": [1]},
        {"capacity": 2, "seen": [], "spks": [1]},  # a prekey id without its start
        {"capacity": 2, "seen": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="], "spks": [-1]},
        {"capacity": 0, "seen": [], "spks": []},
        {"capacity": True, "seen": [], "spks": []},
        {"capacity": 2, "seen": []},
    ],
)
def test_start_cache_refuses_a_malformed_dict(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        StartCache.from_dict(data)


def test_a_replayed_start_without_a_one_time_prekey_is_caught() -> None:
    """The flow the docstring describes: Bob records a start once it has opened, so the same
    start sent again (same ephemeral key, same SPK) is refused, while a fresh one is not."""
    alice, bob = Device(), Device()
    cache = StartCache()
    begun = start(alice, bob, spk_id=9)
    for attempt in range(2):
        shared, _ = answer(bob, alice, begun.ephemeral_public, None)
        assert shared == begun.shared  # without an OPK, a replay derives the same secret: hence the cache
        assert cache.seen_before(StartCache.key(begun.ephemeral_public, begun.spk_id)) == (attempt == 1)
    fresh = start(alice, bob, spk_id=9)
    assert not cache.seen_before(StartCache.key(fresh.ephemeral_public, fresh.spk_id))
