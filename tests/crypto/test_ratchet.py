"""The Double Ratchet: frozen derivations, conversations in and out of order, and every way a
message can be refused without hurting the session."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.crypto import primitives as p
from csce513msg.crypto.ratchet import (
    HEADER,
    MAX_SKIP,
    MAX_SKIPPED_TOTAL,
    Header,
    Ratchet,
    RatchetError,
    b64,
    kdf_chain,
    kdf_root,
    message_cipher,
)
from csce513msg.crypto.x3dh import initiate, respond

Message = tuple[bytes, bytes]  # (header bytes, ciphertext)


def session() -> tuple[Ratchet, Ratchet, bytes]:
    """Alice and Bob after a real X3DH (with a one-time prekey): (alice, bob, ad)."""
    a_sign, a_dh = p.sign_keypair()[1], p.dh_keypair()
    b_sign, b_dh = p.sign_keypair()[1], p.dh_keypair()
    spk, otpk = p.dh_keypair(), p.dh_keypair()
    start = initiate(a_sign, a_dh[0], a_dh[1], b_sign, b_dh[1], 1, spk[1], 1, otpk[1])
    shared, ad = respond(b_sign, b_dh[0], b_dh[1], spk[0], otpk[0], a_sign, a_dh[1], start.ephemeral_public)
    return Ratchet.initiator(start.shared, spk[1]), Ratchet.responder(shared, spk[0], spk[1]), ad


def talking() -> tuple[Ratchet, Ratchet, bytes]:
    """A session where each side has sent and received once."""
    alice, bob, ad = session()
    assert bob.decrypt(*alice.encrypt(b"hi Bob", ad), ad) == b"hi Bob"
    assert alice.decrypt(*bob.encrypt(b"hi Alice", ad), ad) == b"hi Alice"
    return alice, bob, ad


def refused(ratchet: Ratchet, header: bytes, ciphertext: bytes, ad: bytes) -> None:
    """``decrypt`` raises RatchetError and leaves the state exactly as it was."""
    before = ratchet.to_dict()
    with pytest.raises(RatchetError):
        ratchet.decrypt(header, ciphertext, ad)
    assert ratchet.to_dict() == before


def through_json(ratchet: Ratchet) -> Ratchet:
    return Ratchet.from_dict(json.loads(json.dumps(ratchet.to_dict())))


# Known answers: fixed bytes in, fixed bytes out (computed once, frozen here).


def test_kdf_known_answers() -> None:
    rk, ck = kdf_root(bytes([0x10]) * 32, bytes([0x11]) * 32)
    assert rk.hex() == "4f5b0e66e10a3dfb0d02a4ac413d6ae66b959d8173108ce5802b7f702c4d0510"
    assert ck.hex() == "302581cfe7088fa6dffa3647a737a83fbe91cbbaf27fa5f411b7a00a34fb8f79"
    mk, ck = kdf_chain(bytes([0x12]) * 32)
    assert mk.hex() == "e08f586d6c167a6d0d25c5d39f53cf7fa182df729ad17397db62dcf3d6202d1d"
    assert ck.hex() == "7486b48f772964dc8354c855dc670b03d5e0e2516a9a4b732f0b2418a0f5e9d5"
    key, nonce = message_cipher(bytes([0x13]) * 32)
    assert key.hex() == "0c031780448cf6e0e64f14274f757f530c5abdab2d4fbe448900012e71fcf0c4"
    assert nonce.hex() == "90226f9491ab64f38a983149"


def test_kdfs_are_the_documented_constructions() -> None:
    rk, ck = kdf_root(bytes([0x10]) * 32, bytes([0x11]) * 32)
    assert rk + ck == p.hkdf(bytes([0x11]) * 32, salt=bytes([0x10]) * 32, info=b"csce513msg ratchet root", length=64)
    assert kdf_chain(bytes(32)) == (p.hmac_sha256(bytes(32), b"\x01"), p.hmac_sha256(bytes(32), b"\x02"))
    key, nonce = message_cipher(bytes(32))
    assert key + nonce == p.hkdf(bytes(32), salt=b"", info=b"csce513msg ratchet message", length=44)


def test_a_frozen_first_message_decrypts() -> None:
    """Bob's side is deterministic (SK and his signed prekey fixed), so a first message
    Alice made once, frozen here, checks the whole path: root KDF, chain, cipher, AD || header."""
    spk_private = bytes([0x21]) * 32
    bob = Ratchet.responder(bytes([0x20]) * 32, spk_private, p.dh_public(spk_private))
    header = bytes.fromhex("ea41787a6821d2055bbca9d2b071ed4a5dc93b27d00753b01b046aa9291027310000000000000000")
    ciphertext = bytes.fromhex("f209af6a05ad155efb6be3b3415d52193c3359c3d298e56806b0")
    assert Header.from_bytes(header).pn == 0 and Header.from_bytes(header).n == 0
    assert bob.decrypt(header, ciphertext, b"AD") == b"hello, Bob"


def test_header_layout() -> None:
    header = Header(bytes(range(32)), 0x01020304, 0x0A0B0C0D)
    assert header.to_bytes() == bytes(range(32)) + bytes.fromhex("010203040a0b0c0d")
    assert len(header.to_bytes()) == HEADER == 40
    assert Header.from_bytes(header.to_bytes()) == header
    with pytest.raises(RatchetError):
        Header.from_bytes(header.to_bytes()[:-1])
    with pytest.raises(ValueError):
        Header(bytes(31), 0, 0)
    with pytest.raises(ValueError):
        Header(bytes(32), 0, 2**32)


# Conversations


def test_a_long_conversation_with_turns() -> None:
    alice, bob, ad = session()
    keys_seen: set[bytes] = set()
    sender, receiver = alice, bob
    for turn in range(40):
        burst = 1 + turn % 4
        for i in range(burst):
            text = f"turn {turn} message {i}".encode()
            header, ciphertext = sender.encrypt(text, ad)
            assert text not in ciphertext
            assert receiver.decrypt(header, ciphertext, ad) == text
        keys_seen.add(Header.from_bytes(header).dh_public)
        sender, receiver = receiver, sender
    assert len(keys_seen) == 40  # a new ratchet key every turn
    assert alice.skipped_count == bob.skipped_count == 0


@settings(max_examples=50)
@given(st.data())
def test_any_order_within_the_window_decrypts(data: st.DataObject) -> None:
    """Alice writes a batch in one chain, hears from Bob, writes a batch in a new chain; Bob
    gets all of it in any order (across the two chains), each message exactly once."""
    alice, bob, ad = session()
    first = [alice.encrypt(f"a{i}".encode(), ad) for i in range(data.draw(st.integers(1, 8), "first chain"))]
    assert bob.decrypt(*first[0], ad) == b"a0"
    assert alice.decrypt(*bob.encrypt(b"reply", ad), ad) == b"reply"
    second = [alice.encrypt(f"b{i}".encode(), ad) for i in range(data.draw(st.integers(0, 8), "second chain"))]
    batch = [(b"a%d" % i, m) for i, m in enumerate(first)][1:] + [(b"b%d" % i, m) for i, m in enumerate(second)]
    for text, message in data.draw(st.permutations(batch), "order"):
        assert bob.decrypt(*message, ad) == text
    assert bob.skipped_count == 0
    assert alice.decrypt(*bob.encrypt(b"all read", ad), ad) == b"all read"


def test_skipped_keys_are_bounded_and_the_oldest_go_first() -> None:
    alice, bob, ad = session()
    chains: list[list[Message]] = []
    for _ in range(5):  # five chains of 251 messages; Bob reads only the last of each
        chain = [alice.encrypt(b"%d" % n, ad) for n in range(251)]
        assert bob.decrypt(*chain[-1], ad) == b"250"
        assert alice.decrypt(*bob.encrypt(b"ok", ad), ad) == b"ok"
        chains.append(chain)
    assert bob.skipped_count == MAX_SKIPPED_TOTAL  # 1250 skipped, the oldest 250 evicted
    refused(bob, *chains[0][0], ad)  # evicted: that message is lost
    refused(bob, *chains[0][249], ad)
    assert bob.decrypt(*chains[1][0], ad) == b"0"  # the oldest kept
    assert bob.decrypt(*chains[4][249], ad) == b"249"


# Refusals: each one leaves the session as it was


def test_a_replay_is_refused() -> None:
    alice, bob, ad = talking()
    m0, m1, m2 = (alice.encrypt(b"%d" % i, ad) for i in range(3))
    assert bob.decrypt(*m0, ad) == b"0"
    refused(bob, *m0, ad)  # in order, then again
    assert bob.decrypt(*m2, ad) == b"2"
    assert bob.decrypt(*m1, ad) == b"1"
    refused(bob, *m1, ad)  # a skipped key, used then deleted
    refused(bob, *m2, ad)
    assert alice.decrypt(*bob.encrypt(b"next turn", ad), ad) == b"next turn"
    later = alice.encrypt(b"new chain", ad)
    assert bob.decrypt(*later, ad) == b"new chain"
    refused(bob, *m2, ad)  # from a chain Bob has left
    refused(bob, *later, ad)


def test_a_jump_beyond_max_skip_is_refused_and_the_session_goes_on() -> None:
    alice, bob, ad = talking()
    messages = [alice.encrypt(b"%d" % n, ad) for n in range(MAX_SKIP + 2)]
    refused(bob, *messages[MAX_SKIP + 1], ad)  # MAX_SKIP + 1 ahead
    assert bob.decrypt(*messages[MAX_SKIP], ad) == b"%d" % MAX_SKIP  # exactly MAX_SKIP ahead: allowed
    assert bob.skipped_count == MAX_SKIP
    assert bob.decrypt(*messages[MAX_SKIP + 1], ad) == b"%d" % (MAX_SKIP + 1)
    assert bob.decrypt(*messages[3], ad) == b"3"
    assert alice.decrypt(*bob.encrypt(b"still here", ad), ad) == b"still here"
    # a forged header far ahead is refused before any work (and so is a forged PN)
    header = Header.from_bytes(messages[0][0])
    refused(bob, Header(header.dh_public, header.pn, 2**32 - 1).to_bytes(), messages[0][1], ad)
    refused(bob, Header(p.dh_keypair()[1], 2**32 - 1, 0).to_bytes(), messages[0][1], ad)


@pytest.mark.parametrize("new_chain", [False, True], ids=["same chain", "new chain"])
def test_every_byte_flipped_is_refused_and_the_next_message_decrypts(new_chain: bool) -> None:
    """Flip each byte of the header and of the ciphertext (low bit, then high bit): each forgery
    is refused, the state is unchanged, and the genuine message and the next ones still decrypt.
    A flipped ratchet key (new chain) sends Bob down a DH step he must then undo."""
    alice, bob, ad = talking()
    if not new_chain:
        assert bob.decrypt(*alice.encrypt(b"warm-up", ad), ad) == b"warm-up"
    header, ciphertext = alice.encrypt(b"the real one", ad)
    for position in range(len(header) + len(ciphertext)):
        for bit in (0x01, 0x80):
            forged = bytearray(header + ciphertext)
            forged[position] ^= bit
            refused(bob, bytes(forged[:HEADER]), bytes(forged[HEADER:]), ad)
    refused(bob, header, ciphertext[:-1], ad)  # cut
    refused(bob, header, ciphertext + b"\0", ad)  # extended
    refused(bob, header, ciphertext, ad + b"x")  # another session's AD
    assert bob.decrypt(header, ciphertext, ad) == b"the real one"
    assert alice.decrypt(*bob.encrypt(b"and on", ad), ad) == b"and on"
    assert bob.decrypt(*alice.encrypt(b"and on again", ad), ad) == b"and on again"


def test_a_low_order_ratchet_key_is_refused() -> None:
    alice, bob, ad = talking()
    header, ciphertext = alice.encrypt(b"x", ad)
    refused(bob, Header(bytes(32), 0, 0).to_bytes(), ciphertext, ad)
    assert bob.decrypt(header, ciphertext, ad) == b"x"


# State: saved, restored, stolen


def test_state_round_trips_through_json_mid_conversation() -> None:
    alice, bob, ad = talking()
    pending = [alice.encrypt(b"%d" % n, ad) for n in range(5)]
    assert bob.decrypt(*pending[4], ad) == b"4"  # four skipped keys in Bob's state
    alice, bob = through_json(alice), through_json(bob)
    assert through_json(bob).to_dict() == bob.to_dict() and bob.skipped_count == 4
    assert [bob.decrypt(*m, ad) for m in pending[:4]] == [b"0", b"1", b"2", b"3"]
    for turn in range(4):
        assert alice.decrypt(*bob.encrypt(b"b%d" % turn, ad), ad) == b"b%d" % turn
        alice, bob = through_json(alice), through_json(bob)
        assert bob.decrypt(*alice.encrypt(b"a%d" % turn, ad), ad) == b"a%d" % turn


def test_fresh_states_round_trip_too() -> None:
    alice, bob, ad = session()
    alice, bob = through_json(alice), through_json(bob)
    assert bob.decrypt(*alice.encrypt(b"first", ad), ad) == b"first"


def mangled(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**state, **changes}


def test_from_dict_refuses_a_malformed_state() -> None:
    alice, bob, ad = talking()
    bob.decrypt(*alice.encrypt(b"1", ad), ad)  # a skipped-free state with both chains
    good = bob.to_dict()
    other = p.dh_keypair()[1]
    bad = [
        mangled(good, version=2),
        {k: v for k, v in good.items() if k != "rk"},
        mangled(good, extra=1),
        mangled(good, rk="AAAA"),  # not 32 bytes
        mangled(good, rk=good["rk"][:-1] + "!"),  # not base64
        mangled(good, dhs_public=b64(other)),  # not the private key's
        mangled(good, ns=-1),
        mangled(good, nr=2**32),
        mangled(good, pn=True),  # a bool is not a counter
        mangled(good, ckr=None),  # a receiving counter without a chain
        mangled(good, dhr=None),  # chains without their key
        mangled(good, skipped=[["x"]]),
        mangled(good, skipped=[[good["dhr"], 0, good["rk"]]] * 2),
        mangled(good, skipped=[[good["dhr"], n, good["rk"]] for n in range(MAX_SKIPPED_TOTAL + 1)]),
        [],
    ]
    for state in bad:
        with pytest.raises(ValueError):
            Ratchet.from_dict(state)  # type: ignore[arg-type]  # a list among them, as JSON can give


def test_a_stolen_state_reads_only_until_the_next_round_trip() -> None:
    """Post-compromise security, shown with a snapshot: a thief copies Bob's state and then
    hears every message. He reads Alice's messages until Bob's next fresh ratchet key has gone
    to Alice and she has answered with it; from then on, nothing."""
    alice, bob, ad = talking()  # Bob's ratchet key B1 answered Alice; she has stepped to A2
    thief = Ratchet.from_dict(bob.to_dict())  # B1's private key goes with the copy

    for text in (b"a1", b"a1 again"):  # Alice's chain from DH(A2, B1): the thief holds B1
        message = alice.encrypt(text, ad)
        assert bob.decrypt(*message, ad) == thief.decrypt(*message, ad) == text
    # reading a1, Bob made B2 after the theft (the thief made a B2 of his own, which nobody uses)
    assert alice.decrypt(*bob.encrypt(b"b1", ad), ad) == b"b1"  # B2 goes to Alice, who steps to A3
    for text in (b"a2", b"a3"):  # Alice's chain from DH(A3, B2): the thief has neither private key
        message = alice.encrypt(text, ad)
        refused(thief, *message, ad)
        assert bob.decrypt(*message, ad) == text


def test_a_stolen_state_opens_no_message_already_read() -> None:
    """Forward secrecy: message keys are deleted once used, chain keys move on through HMAC."""
    alice, bob, ad = talking()
    old = [alice.encrypt(b"%d" % n, ad) for n in range(3)]
    for message in old:
        bob.decrypt(*message, ad)
    thief = Ratchet.from_dict(bob.to_dict())
    for message in old:
        refused(thief, *message, ad)
    assert "skipped" in thief.to_dict() and thief.skipped_count == 0


# Misuse


def test_the_responder_waits_for_the_first_message() -> None:
    alice, bob, ad = session()
    with pytest.raises(ValueError, match="responder"):
        bob.encrypt(b"too early", ad)
    assert bob.decrypt(*alice.encrypt(b"hello", ad), ad) == b"hello"
    assert alice.decrypt(*bob.encrypt(b"now", ad), ad) == b"now"


def test_bad_keys_are_refused_at_the_start() -> None:
    with pytest.raises(p.BadKeyError):
        Ratchet.initiator(bytes(32), bytes(32))  # a low-order key
    with pytest.raises(p.BadKeyError):
        Ratchet.initiator(bytes(31), p.dh_keypair()[1])
    private, _ = p.dh_keypair()
    with pytest.raises(p.BadKeyError):
        Ratchet.responder(bytes(32), private, p.dh_keypair()[1])  # not its public key
