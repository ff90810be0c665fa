"""One device's end-to-end engine (crypto/device.py) between devices, with a key directory
played in memory (the real one is tests/conformance/test_keys.py; the wire, test_e2e.py).

Sessions start from bundles while the recipient is offline, messages reach every device of
both users, and what the issue asks is refused: a byte flipped anywhere in an envelope, a
replay, a replayed session start, a one-time prekey used twice, an envelope moved to another
conversation, a body swapped by a co-recipient; a directory that swaps an identity, adds a
device or serves a bad signature makes a warning and stops sending until ``trust``."""

from __future__ import annotations

import json

import pytest

from csce513msg.crypto import envelope as ev
from csce513msg.crypto import primitives as p
from csce513msg.crypto.device import NoKeysError, SecureDevice, UndecryptableError, UntrustedError
from csce513msg.crypto.keys import Bundle

NOW = 1_700_000_000_000_000
DM = "dm:alice,bob"


class Directory:
    """The key directory, as docs/protocol.md section 14 says the server keeps it."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], tuple[bytes, dict[int, bytes]]] = {}

    def publish(self, dev: SecureDevice) -> None:
        held = self.devices.get((dev.user, dev.device))
        made = dev.publication(held[0] if held else b"", len(held[1]) if held else 0, NOW)
        if made is None:
            return
        published, prekeys = made
        old = held[1] if held and held[0][:128] == published[:128] else {}
        old.update((int.from_bytes(k[:4], "big"), k[4:]) for k in prekeys)
        self.devices[(dev.user, dev.device)] = (published, old)

    def fetch(self, user: str, known: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
        found = []
        for (u, device), (published, prekeys) in sorted(self.devices.items()):
            if u != user:
                continue
            prekey = bytes(36)
            if prekeys and device not in known:
                key_id = min(prekeys)
                prekey = key_id.to_bytes(4, "big") + prekeys.pop(key_id)
            found.append((device, published + prekey))
        return found


def device(directory: Directory, user: str, name: str) -> SecureDevice:
    dev = SecureDevice.create(user, name, NOW)
    directory.publish(dev)
    return dev


def meet(dev: SecureDevice, directory: Directory, *users: str) -> list[str]:
    """``dev`` fetches the devices of ``users`` (and its own), as the client does before sending."""
    warnings: list[str] = []
    for user in (*users, dev.user):
        warnings += dev.accept_directory(user, directory.fetch(user, dev.known(user)))
    return warnings


def send(dev: SecureDevice, to: str, text: str, stream: str = DM, msg_id: int = 1) -> bytes:
    return dev.encrypt([to], 1, stream, msg_id, ev.TEXT, text.encode())


def read(dev: SecureDevice, sender: str, data: bytes, stream: str = DM) -> str:
    kind, payload, _ = dev.decrypt(sender, 1, stream, data)
    assert kind == ev.TEXT
    return payload.decode()


@pytest.fixture
def world() -> tuple[Directory, SecureDevice, SecureDevice, SecureDevice, SecureDevice]:
    d = Directory()
    return d, device(d, "alice", "a1"), device(d, "alice", "a2"), device(d, "bob", "b1"), device(d, "bob", "b2")


def test_a_conversation_reaches_every_device_of_both_users(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, a2, b1, b2 = world
    meet(a1, d, "bob")  # bob is offline: his bundles are enough
    first = send(a1, "bob", "hi bob")
    assert {(e.user, e.device) for e in ev.parse(first).entries} == {("bob", "b1"), ("bob", "b2"), ("alice", "a2")}
    assert [read(x, "alice", first) for x in (b1, b2, a2)] == ["hi bob"] * 3
    meet(b1, d, "alice")  # b1 has sessions with a1 now (a start opened it); a2 and b2 are new to it
    answer = send(b1, "alice", "hi alice", msg_id=2)
    assert read(a1, "bob", answer) == "hi alice" and read(a2, "bob", answer) == "hi alice"
    for i in range(3):  # turns: each a DH ratchet step
        assert read(b1, "alice", send(a1, "bob", f"a{i}", msg_id=10 + i)) == f"a{i}"
        assert read(a1, "bob", send(b1, "alice", f"b{i}", msg_id=20 + i)) == f"b{i}"
    assert a1.contacts["bob"].encrypted and not a1.contacts["bob"].alerts


def test_every_byte_of_an_envelope_flipped_is_refused_and_the_session_goes_on(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, _ = world
    meet(a1, d, "bob")
    read(b1, "alice", send(a1, "bob", "opening"))
    data = send(a1, "bob", "secret", msg_id=2)
    before = json.dumps(b1.to_dict(), sort_keys=True)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with pytest.raises(UndecryptableError):
            read(b1, "alice", bytes(flipped))
        assert json.dumps(b1.to_dict(), sort_keys=True) == before, f"byte {i} changed the state"
    assert read(b1, "alice", data) == "secret"


def test_replays_a_wrong_device_and_a_moved_envelope_are_refused(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, _ = world
    carol = device(d, "carol", "c1")
    meet(a1, d, "bob", "carol")
    data = send(a1, "bob", "once")
    with pytest.raises(UndecryptableError, match="not in this conversation"):
        read(b1, "alice", data, stream="dm:alice,carol")  # the server put it in another conversation
    with pytest.raises(UndecryptableError):
        read(b1, "mallory", data)  # ... or under another sender
    assert read(b1, "alice", data) == "once"
    with pytest.raises(UndecryptableError):
        read(b1, "alice", data)  # a replay: its message key is gone
    with pytest.raises(UndecryptableError, match="not encrypted for this device"):
        read(carol, "alice", data)
    later = [send(a1, "bob", f"m{i}", msg_id=5 + i) for i in range(4)]
    assert [read(b1, "alice", later[i]) for i in (2, 0, 3, 1)] == ["m2", "m0", "m3", "m1"]  # any order


def test_a_session_start_is_opened_once(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, _ = world
    meet(a1, d, "bob")
    data = send(a1, "bob", "hello")
    assert ev.parse(data).entries[0].start is not None and ev.parse(data).entries[0].start.otpk_id  # type: ignore[union-attr]
    fresh = SecureDevice.from_dict(b1.to_dict())  # b1 as it was before the start: a second chance for a replay
    assert read(b1, "alice", data) == "hello"
    assert read(fresh, "alice", data) == "hello"  # (the same state may open it: nothing was spent yet)
    b1_later = SecureDevice.from_dict(b1.to_dict())
    b1_later.contacts.clear()  # even forgetting the session, the one-time prekey is spent
    with pytest.raises(UndecryptableError, match="one-time prekey"):
        read(b1_later, "alice", data)
    # without a one-time prekey (the directory had none left): the replay cache refuses it
    d.devices[("bob", "b1")][1].clear()
    a3 = device(d, "alice", "a3")
    meet(a3, d, "bob")
    start = send(a3, "bob", "no prekey")
    assert read(b1, "alice", start) == "no prekey"
    b1.contacts["alice"].devices.pop("a3")
    with pytest.raises(UndecryptableError, match="replayed session start"):
        read(b1, "alice", start)


def test_a_co_recipient_cannot_swap_the_body(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, b2 = world
    meet(a1, d, "bob")
    data = send(a1, "bob", "pay alice")
    env = ev.parse(data)
    b1_copy = SecureDevice.from_dict(b1.to_dict())
    entry = next(e for e in env.entries if e.device == "b1")
    peer_ad = ev.associated_data("alice", 1, DM, env.prefix)
    secret = b1_copy._open_start(entry, peer_ad)[1]  # what b1 learns: the content key
    okm = p.hkdf(secret[:32], salt=b"", info=ev.BODY_INFO, length=44)
    forged_body = p.seal(okm[:32], okm[32:], ev.inner(ev.TEXT, b"pay bob"), peer_ad)
    forged = env.signed[: len(env.signed) - len(env.body)] + forged_body + env.signature
    with pytest.raises(UndecryptableError, match="not signed by alice"):  # (and its hash is not the wrapped one)
        read(b2, "alice", forged)
    assert read(b2, "alice", data) == "pay alice"


def test_a_directory_that_changes_keys_is_caught(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, _ = world
    meet(a1, d, "bob")
    read(b1, "alice", send(a1, "bob", "hi"))
    number = a1.safety_number("bob")
    assert meet(b1, d, "alice") == []  # a first contact: pinned as listed, no warning
    assert number == b1.safety_number("alice")  # both read out the same digits
    # the server swaps b1's identity for one it controls
    evil = SecureDevice.create("bob", "b1", NOW)
    d.devices[("bob", "b1")] = (evil.keys.published_bytes(), {})
    warnings = meet(a1, d, "bob")
    assert warnings == ["bob's device b1 has a new identity key"]
    with pytest.raises(UntrustedError, match="trust bob"):
        send(a1, "bob", "are you there?", msg_id=3)
    assert a1.safety_number("bob") != number
    a1.trust("bob")  # compared in class: it really was a reinstall
    assert "b1" in {e.device for e in ev.parse(send(a1, "bob", "ok", msg_id=4)).entries}
    # a new device, and a bundle whose signature fails: warned, refused, nothing sent to it
    spy = device(d, "bob", "spy")
    published, prekeys = d.devices[("bob", "spy")]
    d.devices[("bob", "spy")] = (published[:200] + bytes(28), prekeys)  # the prekey's signature broken
    warnings = meet(a1, d, "bob")
    assert len(warnings) == 1 and "refused" in warnings[0] and "spy" not in a1.contacts["bob"].devices
    d.devices[("bob", "spy")] = (published, prekeys)
    assert meet(a1, d, "bob") == ["bob has a new device spy"]
    with pytest.raises(UntrustedError):
        send(a1, "bob", "who is listening?", msg_id=5)
    del spy


def test_a_directory_that_withholds_keys_cannot_force_plaintext(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, *_ = world
    meet(a1, d, "bob")
    send(a1, "bob", "encrypted once")
    a1.accept_directory("bob", [])  # the server now says bob has no devices
    with pytest.raises(NoKeysError):
        send(a1, "bob", "and now?", msg_id=2)
    assert a1.contacts["bob"].encrypted  # the client refuses plaintext here: it was encrypted before


def test_the_state_round_trips_through_json_mid_conversation(world: tuple) -> None:  # type: ignore[type-arg]
    d, a1, _, b1, _ = world
    meet(a1, d, "bob")
    read(b1, "alice", send(a1, "bob", "one"))
    a1 = SecureDevice.from_dict(json.loads(json.dumps(a1.to_dict())))
    b1 = SecureDevice.from_dict(json.loads(json.dumps(b1.to_dict())))
    meet(b1, d, "alice")
    assert read(a1, "bob", send(b1, "alice", "two", msg_id=2)) == "two"
    assert read(b1, "alice", send(a1, "bob", "three", msg_id=3)) == "three"


def test_publication_tops_up_prekeys_and_rotates() -> None:
    dev = SecureDevice.create("alice", "a1", NOW)
    published, prekeys = dev.publication(b"", 0, NOW) or (b"", [])
    assert len(published) == 228 and len(prekeys) == 100
    Bundle.from_bytes(published + bytes(36)).verify()
    assert dev.publication(published, 100, NOW) is None  # up to date
    assert len((dev.publication(published, 19, NOW) or (b"", []))[1]) == 81  # low: back to 100
    week = 7 * 86400 * 10**6
    rotated = dev.publication(published, 100, NOW + week)
    assert rotated is not None and int.from_bytes(rotated[0][128:132], "big") == 2
    assert len(rotated[1]) == 0  # the same identity: the prekeys held stay good
    other = SecureDevice.create("alice", "a1", NOW)  # a reinstall: the directory serves keys not its own
    fresh = other.publication(published, 100, NOW)
    assert fresh is not None and fresh[0][:128] != published[:128] and len(fresh[1]) == 100


def test_the_envelope_derivations_are_frozen() -> None:
    """Known answers: the body's key and nonce from a content key (HKDF-SHA256, info
    ``csce513msg envelope body``), the prefix and the associated data, byte for byte as
    docs/protocol.md section 14 lays them out."""
    from csce513msg.crypto.device import _body_key

    key, nonce = _body_key(bytes(range(32)))
    assert key.hex() == "b00d79e753e333b1caac9d4541542426d63aa5be53894f97879b968e95879456"
    assert nonce.hex() == "df7e7aa0ba8e2ef08e6bc168"
    assert key + nonce == p.hkdf(bytes(range(32)), salt=b"", info=b"csce513msg envelope body", length=44)
    head = ev.prefix(ev.PAIRWISE, "a1", 7)
    assert head == bytes.fromhex("01 01 02 6131 0000000000000007")  # version, kind, device "a1", client id 7
    assert ev.associated_data("alice", 1, DM, head) == (
        b"csce513msg envelope v1" + b"\x05alice" + b"\x01" + b"\x0cdm:alice,bob" + head
    )
