"""What a security review of the end-to-end layer found, each kept as a test (the review's
reproductions, turned around): a device added to our own account, a hostile sender key or
bundle that used to crash the client, a start forged in a pinned device's name, both sides
starting at once, a revoked device and a group key, a message id relabelled by the server,
a torn archive, a group that had end-to-end posts and a post in clear, text injected in clear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from csce513msg.client import ClientSession
from csce513msg.client.archive import Archive
from csce513msg.client.secure import DowngradeError, Secure
from csce513msg.client.session import ClientState
from csce513msg.crypto import envelope as ev
from csce513msg.crypto import primitives as p
from csce513msg.crypto.device import SecureDevice, UndecryptableError, UntrustedError
from csce513msg.crypto.keys import Bundle, Identity, _prekey_message
from csce513msg.protocol import (
    Ack,
    ContentType,
    Deliver,
    FrameDecoder,
    Receipt,
    Send,
    TargetKind,
    Welcome,
    decode,
    encode,
)
from tests.crypto.test_device import DM, NOW, Directory, device, meet, read, send

G = "g:7"


def secure_of(dev: SecureDevice, tmp: Path) -> Secure:
    return Secure(dev, lambda doc: None, Archive(tmp / f"{dev.user}.archive", os.urandom(32)), b"k")


def test_a_device_added_to_our_own_account_gets_nothing_until_trusted() -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    meet(alice, d, "bob")
    device(d, "alice", "evil")  # the server lists a device of alice's that alice never made
    assert meet(alice, d, "bob") == ["alice has a new device evil"]
    with pytest.raises(UntrustedError, match="alice"):
        send(alice, "bob", "my exam answers")
    del bob


def test_hostile_bundles_and_sender_keys_are_refused_not_raised(tmp_path: Path) -> None:
    d = Directory()
    alice = device(d, "alice", "a1")
    low = (1).to_bytes(32, "little")  # a low-order X25519 key, signed by its owner all the same
    i = Identity.generate()
    bad = Bundle(i.sign_public, i.dh_public, i.dh_signature, 1, low, p.sign(i.sign_private, _prekey_message(1, low)))
    warnings = alice.accept_directory("mallory", [("m1", bad.to_bytes())])
    assert "refused" in warnings[0] and "m1" not in alice.contacts["mallory"].devices
    mallory, bob = device(d, "mallory", "m1"), device(d, "bob", "b1")
    meet(mallory, d, "bob")
    targets = mallory._targets(["bob"])
    env = mallory._pairwise(targets, 2, G, 1, ev.SENDER_KEY, ev.sender_key_payload(G, b"\x00" * 5))
    session = ClientSession("bob", groups=True, device_id="b1", secure=secure_of(bob, tmp_path))
    session.welcome = Welcome(1, 7, 65536, 16384, 64, 30000, ("presence", "groups", "e2e"), "test")
    session.state = ClientState.READY
    events = session.receive_data(
        encode(Deliver(TargetKind.GROUP, ContentType.ENVELOPE, 9, NOW, 3, "mallory", G, G, env))
    )
    assert [e.content_type for e in events if isinstance(e, Deliver)] == [ContentType.ENVELOPE]  # a notice
    assert session.secure is not None and 9 in session.secure.notices
    acks = [decode(f) for f in FrameDecoder(1 << 16).feed(session.data_to_send())]
    assert acks == [Ack(3, G)]  # and acknowledged, so it is not redelivered at every login


def test_a_start_forged_in_a_pinned_devices_name_is_not_opened() -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    meet(alice, d, "bob")
    assert read(bob, "alice", send(alice, "bob", "hello")) == "hello"
    fake = SecureDevice.create("alice", "a1", NOW)  # the server: keys of its own in alice's name
    fake.accept_directory("bob", d.fetch("bob"))
    with pytest.raises(UndecryptableError, match="another identity key"):
        read(bob, "alice", send(fake, "bob", "new phone: send the exam here", msg_id=9))
    assert read(bob, "alice", send(alice, "bob", "still me", msg_id=2)) == "still me"  # the pinned session stands


def test_both_sides_starting_at_once_meet_on_one_session() -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    meet(alice, d, "bob")
    meet(bob, d, "alice")
    first_a, first_b = send(alice, "bob", "hi bob"), send(bob, "alice", "hi alice")  # crossed in flight
    assert read(bob, "alice", first_a) == "hi bob" and read(alice, "bob", first_b) == "hi alice"
    for i in range(4):
        assert read(bob, "alice", send(alice, "bob", f"a{i}", msg_id=10 + i)) == f"a{i}"
        assert read(alice, "bob", send(bob, "alice", f"b{i}", msg_id=20 + i)) == f"b{i}"


def test_a_device_gone_from_the_directory_gets_no_more_group_posts() -> None:
    d = Directory()
    alice, laptop = device(d, "alice", "a1"), device(d, "bob", "laptop")
    device(d, "bob", "b1")
    meet(alice, d, "bob")
    laptop.decrypt("alice", 2, G, alice.group_send(G, ["alice", "bob"], 1, ev.TEXT, b"one", NOW))
    del d.devices[("bob", "laptop")]  # bob took his lost laptop out of the directory
    meet(alice, d, "bob")
    after = alice.group_send(G, ["alice", "bob"], 2, ev.TEXT, b"two", NOW + 1)
    with pytest.raises(UndecryptableError):
        laptop.decrypt("alice", 2, G, after)  # a new key, not for the laptop


def test_the_server_cannot_relabel_a_message_id_or_tear_the_archive(tmp_path: Path) -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    meet(alice, d, "bob")
    sa, sb = secure_of(alice, tmp_path), secure_of(bob, tmp_path)
    real = Deliver(TargetKind.USER, ContentType.ENVELOPE, 42, NOW, 1, "alice", "bob", DM, sa.seal("bob", 7, 0, b"hi"))
    assert (opened := sb.open(real)) is not None and opened.body == b"hi"
    assert sb.open(real) == opened  # a redelivery: from the archive, not decrypted again
    forged = Deliver(TargetKind.GROUP, ContentType.ENVELOPE, 42, NOW, 9, "mallory", "g:9", "g:9", b"junk")
    assert (shown := sb.open(forged)) is not None and shown.content_type == ContentType.ENVELOPE  # not "hi"
    sent = Send(TargetKind.USER, ContentType.ENVELOPE, 8, "bob", sa.seal("bob", 8, 0, b"mine"))
    sa.stored(sent, Receipt(2, 77, NOW, 2, DM, request_id=1))
    assert sa.archive is not None and sa.archive.get(77) is not None
    path = tmp_path / "alice.archive"
    with path.open("ab") as out:
        out.write(b"\x00\x00\x01\x00torn")  # a write cut short by a crash
    again = Archive(path, sa.archive._key)
    assert again.get(77) is not None
    again.add(78, 0, b"after the crash", b"x" * 32)
    assert Archive(path, sa.archive._key).get(78) is not None  # read at the next start, past the tear


def test_never_in_clear_where_posts_were_end_to_end_and_clear_text_is_flagged(tmp_path: Path) -> None:
    d = Directory()
    alice, bob = device(d, "alice", "a1"), device(d, "bob", "b1")
    device(d, "carol", "c1")
    meet(bob, d, "alice", "carol")
    meet(alice, d, "bob", "carol")
    sa = secure_of(alice, tmp_path)
    post = bob.group_send("g:8", ["alice", "bob", "carol"], 9, ev.TEXT, b"bob's post", NOW)
    sa.open(Deliver(TargetKind.GROUP, ContentType.ENVELOPE, 50, NOW, 1, "bob", "lab", "g:8", post))
    alice.accept_directory("carol", [])  # the server withholds carol's keys: alice never posted there
    with pytest.raises(DowngradeError):
        sa.wants_e2e_group("g:8", ["alice", "bob", "carol"])
    with pytest.raises(DowngradeError):
        sa.clear_post_allowed("lab")  # by name too (a post in clear without e2e in the Welcome)
    send(alice, "bob", "hi")
    sa.check_clear(Deliver(TargetKind.USER, ContentType.TEXT, 60, NOW, 2, "bob", "alice", DM, b"pay here"))
    assert any("arrived in clear" in w for w in sa.warnings)


def test_the_replay_cache_fails_closed_instead_of_forgetting_a_start() -> None:
    from csce513msg.crypto.x3dh import StartCache

    d = Directory()
    bob = device(d, "bob", "b1")
    bob.starts = StartCache(capacity=2)
    d.devices[("bob", "b1")][1].clear()  # no one-time prekeys left: starts go without one
    senders = [SecureDevice.create(f"s{i}", "x", NOW) for i in range(3)]
    starts = []
    for s in senders:
        s.accept_directory("bob", d.fetch("bob"))
        starts.append(s.encrypt(["bob"], 1, f"dm:bob,{s.user}", 1, ev.TEXT, b"hi"))
    for s, data in zip(senders[:2], starts[:2], strict=True):
        assert bob.decrypt(s.user, 1, f"dm:bob,{s.user}", data)[1] == b"hi"
    with pytest.raises(UndecryptableError, match="too many session starts"):  # full: the third is refused ...
        bob.decrypt("s2", 1, "dm:bob,s2", starts[2])
    bob.contacts.pop("s0")
    with pytest.raises(UndecryptableError, match="replayed"):  # ... and the first is still known: no replay
        bob.decrypt("s0", 1, "dm:bob,s0", starts[0])
