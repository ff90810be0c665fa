"""Sender keys: a frozen message, members in and out of order, forgeries by members, rotation."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.crypto import primitives as p
from csce513msg.crypto.ratchet import MAX_SKIP, MAX_SKIPPED_TOTAL, kdf_chain, message_cipher, unb64
from csce513msg.crypto.senderkey import (
    DISTRIBUTION,
    MESSAGE,
    OVERHEAD,
    SenderKey,
    SenderKeyError,
    SenderKeyReceiver,
    message_key_id,
)

AD = b"group 7, from alice/1"


def refused(receiver: SenderKeyReceiver, message: bytes, ad: bytes = AD) -> None:
    """``decrypt`` raises SenderKeyError and leaves the receiver exactly as it was."""
    before = receiver.to_dict()
    with pytest.raises(SenderKeyError):
        receiver.decrypt(message, ad)
    assert receiver.to_dict() == before


def fixed_key() -> SenderKey:
    signing_private = bytes([0x31]) * 32
    return SenderKey(0x01020304, bytes([0x30]) * 32, 7, signing_private, p.sign_public(signing_private))


FROZEN = bytes.fromhex(
    "010203040000000751167a0308aaf177d85575f5acd569cb78fda79216b6667b1d2f63cfe19d247af94acc7f81392da9f2203d99"
    "a5f2adcdfca2e0cb1c190fc2adfd87cd694cb7b2ebec43777d229b3c43994118318de126465054f92be20c2e279ce500"
)


def test_known_answers() -> None:
    """Ed25519 is deterministic, so a fixed sender key's message is fixed bytes."""
    key = fixed_key()
    distribution = key.distribution()
    assert distribution == bytes.fromhex("0102030400000007") + bytes([0x30]) * 32 + key.signing_public
    assert len(distribution) == DISTRIBUTION
    receiver = SenderKeyReceiver.from_distribution(distribution)
    assert key.encrypt(b"hello, group", b"group AD") == FROZEN
    assert receiver.decrypt(FROZEN, b"group AD") == b"hello, group"
    assert (key.iteration, receiver.iteration) == (8, 8)
    cipher_key, nonce = message_cipher(bytes([0x13]) * 32, MESSAGE)
    assert cipher_key.hex() == "bf4c457d0b80abb6b539469bcec3ff6f16ed12c3137b11db8d9686b18e3afd4c"
    assert nonce.hex() == "628f1ec58fe8e7b03f0fc9a1"


def test_the_frozen_message_is_the_documented_layout() -> None:
    """key id | iteration | ChaCha20-Poly1305 under the chain's message key | Ed25519 signature."""
    key = fixed_key()
    mk, _ = kdf_chain(key.chain_key)
    cipher_key, nonce = message_cipher(mk, MESSAGE)
    ids = struct.pack(">II", 0x01020304, 7)
    body = ids + p.seal(cipher_key, nonce, b"hello, group", b"group AD" + ids)
    signed = struct.pack(">I", len(b"group AD")) + b"group AD" + body
    assert body + p.sign(key.signing_private, signed) == FROZEN
    assert len(FROZEN) == len(b"hello, group") + OVERHEAD and message_key_id(FROZEN) == 0x01020304


def test_members_read_in_order_and_the_chain_moves_on() -> None:
    alice = SenderKey.create()
    bob, carol = (SenderKeyReceiver.from_distribution(alice.distribution()) for _ in range(2))
    for n in range(20):
        message = alice.encrypt(b"message %d" % n, AD)
        assert bob.decrypt(message, AD) == carol.decrypt(message, AD) == b"message %d" % n
    assert alice.iteration == bob.iteration == 20 and bob.skipped == {}


@settings(max_examples=50)
@given(st.data())
def test_any_order_within_the_window_decrypts(data: st.DataObject) -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    messages = [(b"%d" % n, alice.encrypt(b"%d" % n, AD)) for n in range(data.draw(st.integers(1, 16), "count"))]
    for text, message in data.draw(st.permutations(messages), "order"):
        assert bob.decrypt(message, AD) == text
    assert bob.skipped == {}


def test_a_replay_is_refused() -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    m0, m1, m2 = (alice.encrypt(b"%d" % n, AD) for n in range(3))
    assert bob.decrypt(m0, AD) == b"0"
    refused(bob, m0)
    assert bob.decrypt(m2, AD) == b"2"
    refused(bob, m2)
    assert bob.decrypt(m1, AD) == b"1"
    refused(bob, m1)


def test_a_jump_beyond_max_skip_is_refused_and_the_chain_goes_on() -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    messages = [alice.encrypt(b"%d" % n, AD) for n in range(MAX_SKIP + 2)]
    refused(bob, messages[MAX_SKIP + 1])
    assert bob.decrypt(messages[MAX_SKIP], AD) == b"%d" % MAX_SKIP  # exactly MAX_SKIP ahead
    assert bob.decrypt(messages[MAX_SKIP + 1], AD) == b"%d" % (MAX_SKIP + 1)
    assert bob.decrypt(messages[0], AD) == b"0"


def test_skipped_keys_are_bounded_and_the_oldest_go_first() -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    messages = [alice.encrypt(b"%d" % n, AD) for n in range(5 * 251)]
    for n in range(250, len(messages), 251):  # read one in 251: 250 skipped each time, five times
        assert bob.decrypt(messages[n], AD) == b"%d" % n
    assert len(bob.skipped) == MAX_SKIPPED_TOTAL
    refused(bob, messages[0])  # evicted
    refused(bob, messages[249])
    assert bob.decrypt(messages[251], AD) == b"251"


def test_every_byte_flipped_is_refused_and_the_chain_goes_on() -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    bob.decrypt(alice.encrypt(b"warm-up", AD), AD)
    message = alice.encrypt(b"the real one", AD)
    for position in range(len(message)):
        for bit in (0x01, 0x80):
            forged = bytearray(message)
            forged[position] ^= bit
            refused(bob, bytes(forged))
    refused(bob, message[:-1])
    refused(bob, message[: OVERHEAD - 1])
    refused(bob, message, AD + b"x")  # another group's AD
    assert bob.decrypt(message, AD) == b"the real one"
    assert bob.decrypt(alice.encrypt(b"next", AD), AD) == b"next"


def test_a_member_cannot_forge_another_members_message() -> None:
    """Carol holds Alice's chain key (every member does), so she can make a message whose tag
    checks; she cannot sign it as Alice, and Bob reads the signature first."""
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    carol = SenderKeyReceiver.from_distribution(alice.distribution())
    carol_signing, _ = p.sign_keypair()
    mk, _ = kdf_chain(carol.chain_key)
    cipher_key, nonce = message_cipher(mk, MESSAGE)
    ids = struct.pack(">II", carol.key_id, carol.iteration)
    body = ids + p.seal(cipher_key, nonce, b"pay Carol", AD + ids)
    forged = body + p.sign(carol_signing, struct.pack(">I", len(AD)) + AD + body)
    refused(bob, forged)
    genuine = alice.encrypt(b"hello", AD)  # the same iteration: still Alice's to use
    refused(bob, genuine[:-64] + forged[-64:])  # Alice's body, Carol's signature
    refused(bob, forged[:-64] + genuine[-64:])  # Carol's body, Alice's signature of another
    assert bob.decrypt(genuine, AD) == b"hello"


def test_an_unknown_key_id_is_refused() -> None:
    alice, other = SenderKey.create(), SenderKey.create()
    other.signing_private, other.signing_public = alice.signing_private, alice.signing_public  # same signer
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    refused(bob, other.encrypt(b"x", AD))


def test_after_rotation_a_removed_member_learns_nothing() -> None:
    """Carol leaves; Alice makes a new sender key and sends it to Bob only. Carol kept every old
    key (her receiver, and even Alice's whole old state): none of it opens the new messages."""
    old = SenderKey.create()
    bob, carol = (SenderKeyReceiver.from_distribution(old.distribution()) for _ in range(2))
    for n in range(5):
        message = old.encrypt(b"%d" % n, AD)
        bob.decrypt(message, AD)
        carol.decrypt(message, AD)
    stolen = old.to_dict()
    new = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(new.distribution())
    secret = new.encrypt(b"after Carol", AD)
    refused(carol, secret)  # her receiver does not know the key
    chain_keys = [unb64(stolen["chain_key"])]  # where Carol could be at best: the chain as it is now
    for _ in range(MAX_SKIP):  # every chain key Carol can reach from the old one
        chain_keys.append(kdf_chain(chain_keys[-1])[1])
    for chain_key in chain_keys:  # even given the new key's id, iteration and signing key
        guess = SenderKeyReceiver(new.key_id, chain_key, 0, new.signing_public)
        refused(guess, secret)
    assert new.chain_key not in chain_keys and new.signing_public != old.signing_public
    assert bob.decrypt(secret, AD) == b"after Carol"


def test_a_new_member_cannot_read_what_came_before() -> None:
    alice = SenderKey.create()
    early = [alice.encrypt(b"%d" % n, AD) for n in range(5)]
    dave = SenderKeyReceiver.from_distribution(alice.distribution())  # at iteration 5
    for message in early:
        refused(dave, message)
    assert dave.decrypt(alice.encrypt(b"welcome", AD), AD) == b"welcome"


def test_state_round_trips_through_json() -> None:
    alice = SenderKey.create()
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    messages = [alice.encrypt(b"%d" % n, AD) for n in range(6)]
    bob.decrypt(messages[5], AD)
    alice = SenderKey.from_dict(json.loads(json.dumps(alice.to_dict())))
    bob = SenderKeyReceiver.from_dict(json.loads(json.dumps(bob.to_dict())))
    assert list(bob.skipped) == [0, 1, 2, 3, 4]
    assert [bob.decrypt(m, AD) for m in messages[:5]] == [b"0", b"1", b"2", b"3", b"4"]
    assert bob.decrypt(alice.encrypt(b"6", AD), AD) == b"6"


def test_malformed_state_and_distributions_are_refused() -> None:
    alice = SenderKey.create()
    with pytest.raises(SenderKeyError):
        SenderKeyReceiver.from_distribution(alice.distribution()[:-1])
    bob = SenderKeyReceiver.from_distribution(alice.distribution())
    bob.decrypt(alice.encrypt(b"x", AD), AD)
    good_sender, good_receiver = alice.to_dict(), bob.to_dict()
    for sender in (
        {**good_sender, "version": 0},
        {**good_sender, "signing_public": SenderKey.create().to_dict()["signing_public"]},
        {**good_sender, "iteration": -1},
        {**good_sender, "chain_key": "AAAA"},
    ):
        with pytest.raises(ValueError):
            SenderKey.from_dict(sender)
    for receiver in (
        {**good_receiver, "key_id": 2**32},
        {**good_receiver, "skipped": [[1, good_receiver["chain_key"]]]},  # not below the iteration (1)
        {**good_receiver, "skipped": [[0, good_receiver["chain_key"]]] * 2},
        {k: v for k, v in good_receiver.items() if k != "skipped"},
    ):
        with pytest.raises(ValueError):
            SenderKeyReceiver.from_dict(receiver)


def test_an_exhausted_key_refuses_to_encrypt() -> None:
    key = SenderKey.from_dict({**SenderKey.create().to_dict(), "iteration": 2**32 - 1})
    with pytest.raises(ValueError, match="exhausted"):
        key.encrypt(b"x", AD)
