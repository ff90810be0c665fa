"""Group messages under sender keys (crypto/groupkeys.py through crypto/device.py), with the
key directory played in memory (tests/crypto/test_device.py's).

A message to a group is one encryption; the sender key reaches each member device over its
pairwise session first, once; a removed member holding every old key cannot read the next
message; a member who joins cannot read what came before; a flipped byte, a replay and a
sender key smuggled in from another group are refused and change nothing."""

from __future__ import annotations

import itertools
import json

import pytest

from csce513msg.crypto import envelope as ev
from csce513msg.crypto.device import NewMembersError, SecureDevice, UndecryptableError
from tests.crypto.test_device import NOW, Directory, device, meet

G = "g:7"
ids = itertools.count(100)


def group_send(dev: SecureDevice, members: list[str], text: str, now: int = NOW) -> bytes:
    return dev.group_send(G, members, next(ids), ev.TEXT, text.encode(), now)


def keys_of(data: bytes) -> set[tuple[str, str]]:
    """The devices a group envelope carries the sender key for."""
    keys = ev.parse(data).keys
    return {(e.user, e.device) for e in ev.parse(keys).entries} if keys else set()


def read(dev: SecureDevice, sender: str, data: bytes, stream: str = G) -> str:
    kind, payload, _ = dev.decrypt(sender, 2, stream, data)
    assert kind == ev.TEXT
    return payload.decode()


def test_one_message_per_post_and_the_key_carried_once() -> None:
    d = Directory()
    alice, a2, bob, carol = (
        device(d, u, n) for u, n in (("alice", "a1"), ("alice", "a2"), ("bob", "b1"), ("carol", "c1"))
    )
    meet(alice, d, "bob", "carol")
    first = group_send(alice, ["alice", "bob", "carol"], "welcome to lab 3")
    assert ev.parse(first).kind == ev.GROUP
    assert keys_of(first) == {("bob", "b1"), ("carol", "c1"), ("alice", "a2")}
    assert [read(r, "alice", first) for r in (bob, carol, a2)] == ["welcome to lab 3"] * 3
    second = group_send(alice, ["alice", "bob", "carol"], "question 2")
    assert keys_of(second) == set()  # the key is theirs already
    assert read(carol, "alice", second) == "question 2"
    with pytest.raises(UndecryptableError):
        read(carol, "alice", second)  # a replay


def test_a_removed_member_cannot_read_on_and_a_new_one_cannot_read_back() -> None:
    d = Directory()
    alice, bob, carol, dave = (device(d, u, u[0] + "1") for u in ("alice", "bob", "carol", "dave"))
    meet(alice, d, "bob", "carol", "dave")
    before = group_send(alice, ["alice", "bob", "carol"], "carol is here")
    read(bob, "alice", before)
    read(carol, "alice", before)
    after = group_send(alice, ["alice", "bob"], "carol was removed")  # a new key, for bob only
    assert keys_of(after) == {("bob", "b1")}
    assert read(bob, "alice", after) == "carol was removed"
    with pytest.raises(UndecryptableError):
        read(carol, "alice", after)  # every old key, and still nothing
    with pytest.raises(NewMembersError, match="dave"):  # news: a server could add a listener
        group_send(alice, ["alice", "bob", "dave"], "dave joined")
    alice.trust_members(G, ["alice", "bob", "dave"])  # the user checked who dave is
    joined = group_send(alice, ["alice", "bob", "dave"], "dave joined")
    assert keys_of(joined) == {("dave", "d1")}  # bob has this key already
    assert read(dave, "alice", joined) == "dave joined"
    assert read(bob, "alice", joined) == "dave joined"
    with pytest.raises(UndecryptableError):
        read(dave, "alice", after)  # from before dave: its key's chain runs forward only


def test_tampering_replay_and_a_smuggled_key_are_refused() -> None:
    d = Directory()
    alice, bob, carol = device(d, "alice", "a1"), device(d, "bob", "b1"), device(d, "carol", "c1")
    meet(alice, d, "bob", "carol")
    read(carol, "alice", group_send(alice, ["alice", "bob", "carol"], "hello"))  # carol has the key now
    before = [json.dumps(x.to_dict(), sort_keys=True) for x in (bob, carol)]
    first = group_send(alice, ["alice", "bob"], "for bob")  # carol left: a new key, carried for bob
    for reader, i in itertools.product((bob,), range(len(first))):
        flipped = bytearray(first)
        flipped[i] ^= 0x80
        with pytest.raises(UndecryptableError):
            read(reader, "alice", bytes(flipped))
    assert [json.dumps(x.to_dict(), sort_keys=True) for x in (bob, carol)] == before
    with pytest.raises(UndecryptableError):
        bob.decrypt("alice", 2, "g:8", first)  # moved to another group
    assert read(bob, "alice", first) == "for bob"
    # a sender key for g:8 sent inside g:7: refused
    smuggled = alice.encrypt(["bob"], 2, G, next(ids), ev.SENDER_KEY, ev.sender_key_payload("g:8", b"x" * 72))
    with pytest.raises(UndecryptableError, match="g:8"):
        bob.decrypt("alice", 2, G, smuggled)


def test_a_byte_flipped_in_keys_meant_for_others_is_refused_too() -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    device(d, "carol", "c1")
    meet(alice, d, "bob")
    read(bob, "alice", group_send(alice, ["alice", "bob"], "just us"))
    meet(alice, d, "carol")
    alice.trust_members(G, ["alice", "bob", "carol"])
    data = group_send(alice, ["alice", "bob", "carol"], "carol joins")  # keys for carol only
    assert keys_of(data) == {("carol", "c1")}
    keys_at = len(ev.parse(data).prefix) + 4
    for i in range(keys_at, keys_at + len(ev.parse(data).keys), 7):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with pytest.raises(UndecryptableError):
            read(bob, "alice", bytes(flipped))  # bob cannot open carol's key, yet sees it was altered
    assert read(bob, "alice", data) == "carol joins"


def test_keys_rotate_after_a_week_and_survive_json() -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    meet(alice, d, "bob")
    read(bob, "alice", group_send(alice, ["alice", "bob"], "monday"))
    alice = SecureDevice.from_dict(json.loads(json.dumps(alice.to_dict())))
    bob = SecureDevice.from_dict(json.loads(json.dumps(bob.to_dict())))
    assert keys_of(group_send(alice, ["alice", "bob"], "tuesday")) == set()
    week = 7 * 86400 * 10**6
    later = group_send(alice, ["alice", "bob"], "next monday", now=NOW + week)
    assert keys_of(later) == {("bob", "b1")}  # a new key, carried
    assert read(bob, "alice", later) == "next monday"
