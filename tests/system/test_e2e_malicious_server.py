"""A malicious server (protocol 1.7): its operator edits the key directory in the database
between two runs of a real server, and real clients must notice. One backend: none of it
depends on the I/O strategy.

- bob's identity key swapped for mallory's: alice is warned and cannot send until she trusts;
- a device added to bob (mallory's keys under the name "spy"): a warning, nothing sent to it;
- a bundle with a broken signature: refused, the device left out;
- bob's keys withheld, to make alice write in clear: refused, nothing sent in clear;
- a one-time prekey served a second time: bob's client refuses the session start it makes;
- a member added to a group by the operator: nothing is posted to the group until trusted.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from csce513msg.client import Client
from csce513msg.client.secure import DowngradeError, Secure
from csce513msg.crypto.device import NewMembersError, UntrustedError
from csce513msg.protocol import ContentType, Deliver, TargetKind
from tests.conformance.wire import PASSWORD, connect, next_of, register
from tests.fixtures import Names
from tests.servers import ServerProcess, start
from tests.system.test_cli import MSGSRV

BACKENDS = ["epoll"]


class World:
    """A server on a data directory its operator may edit between runs, and the users' vaults."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        self.data = tmp / "data"
        self.server: ServerProcess = start(backend, "--data-dir", str(self.data))

    @contextmanager
    def client(self, user: str, device: str) -> Iterator[Client]:
        secure = Secure.from_vault(self.tmp / f"{user}-{device}.vault", PASSWORD, user, device, cost="test")
        with connect(self.server, user, device_id=device, secure=secure) as c:
            yield c

    def operator(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Stop the server, run ``statements`` on its database, start it again (same port)."""
        assert self.server.terminate() == 0
        db = sqlite3.connect(self.data / "csce513msg.db")
        with db:
            for sql, args in statements:
                db.execute(sql, args)
        db.close()
        port = self.server.port
        self.server = start(self.backend, "--data-dir", str(self.data), "--port", str(port))

    def published(self, user: str, device: str) -> bytes:
        db = sqlite3.connect(self.data / "csce513msg.db")
        (row,) = db.execute("SELECT published FROM device_keys WHERE user = ? AND device = ?", (user, device))
        db.close()
        return bytes(row[0])


@pytest.fixture
def world(backend: str, tmp_path: Path) -> Iterator[World]:
    w = World(backend, tmp_path)
    yield w
    w.server.stop()


def acquainted(world: World, alice: str, bob: str) -> None:
    """alice and bob have an end-to-end conversation (bob's keys pinned by alice)."""
    with world.client(bob, "b1") as b, world.client(alice, "a1") as a:
        sent = a.send_text(bob, "hello")
        assert next_of(b, Deliver, lambda d: d.message_id == sent.message_id).body == b"hello"


def test_a_swapped_identity_warns_and_holds_until_trust(world: World, names: Names) -> None:
    alice, bob, mallory = names("alice"), names("bob"), names("mallory")
    acquainted(world, alice, bob)
    with world.client(mallory, "m1"):
        pass
    world.operator(("UPDATE device_keys SET published = ? WHERE user = ? AND device = 'b1'",
                    (world.published(mallory, "m1"), bob)))  # fmt: skip
    with world.client(alice, "a1") as a:
        with pytest.raises(UntrustedError, match="new identity key"):
            a.send_text(bob, "the exam answers")
        assert a.session.secure is not None and any("new identity key" in w for w in a.session.secure.warnings)
        a.trust(bob)  # only after comparing safety numbers (here: the test knows it is mallory)
        a.send_text(bob, "sent to whoever holds b1 now")


def test_an_added_device_and_a_bad_signature(world: World, names: Names) -> None:
    alice, bob, mallory = names("alice"), names("bob"), names("mallory")
    acquainted(world, alice, bob)
    with world.client(mallory, "m1"):
        pass
    spy = world.published(mallory, "m1")
    broken = bytearray(world.published(bob, "b1"))
    broken[-1] ^= 1  # the signed prekey's signature
    world.operator(
        ("INSERT INTO device_keys (user, device, published, seen_us) VALUES (?, 'spy', ?, ?)", (bob, spy, 2**62)),
        ("INSERT INTO device_keys (user, device, published, seen_us) VALUES (?, 'bad', ?, ?)",
         (bob, bytes(broken), 2**62)),
    )  # fmt: skip
    with world.client(alice, "a1") as a:
        with pytest.raises(UntrustedError, match="new device spy"):
            a.send_text(bob, "who else reads this?")
        secure = a.session.secure
        assert secure is not None
        assert any("device bad: refused" in w for w in secure.warnings)
        assert "bad" not in secure.device.contacts[bob].devices  # never encrypted for


def test_withheld_keys_do_not_make_alice_write_in_clear(world: World, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    acquainted(world, alice, bob)
    world.operator(("DELETE FROM device_keys WHERE user = ?", (bob,)), ("DELETE FROM prekeys WHERE user = ?", (bob,)))
    with world.client(alice, "a1") as a, pytest.raises(DowngradeError):
        a.send_text(bob, "in clear?")
    db = sqlite3.connect(world.data / "csce513msg.db")
    clear = db.execute("SELECT count(*) FROM messages WHERE content_type = ?", (ContentType.TEXT,)).fetchone()[0]
    assert clear == 0  # nothing went in clear


def test_a_one_time_prekey_served_twice_is_caught(world: World, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    with world.client(bob, "b1"):
        pass
    db = sqlite3.connect(world.data / "csce513msg.db")
    (key_id, key) = db.execute("SELECT key_id, public FROM prekeys WHERE user = ? ORDER BY key_id", (bob,)).fetchone()
    db.close()
    acquainted(world, alice, bob)  # alice's session start spent prekey key_id
    world.operator(("INSERT INTO prekeys (user, device, key_id, public) VALUES (?, 'b1', ?, ?)", (bob, key_id, key)))
    with world.client(carol, "c1") as c, world.client(bob, "b1") as b:
        sent = c.send_text(bob, "hi bob")  # a session start naming the reused prekey
        got = next_of(b, Deliver, lambda d: d.message_id == sent.message_id)
        assert got.content_type == ContentType.ENVELOPE  # not opened
        assert b.session.secure is not None and "one-time prekey" in b.session.secure.notices[sent.message_id]


def test_a_member_added_by_the_server_gets_nothing_until_trusted(world: World, names: Names) -> None:
    alice, bob, mallory, prof = names("alice"), names("bob"), names("mallory"), names("prof")
    group = names("lab")
    with world.client(mallory, "m1"):
        pass
    with world.client(bob, "b1"), world.client(alice, "a1"):
        pass  # both have keys
    secure_a = Secure.from_vault(world.tmp / f"{alice}-a1.vault", PASSWORD, alice, "a1", cost="test")
    secure_b = Secure.from_vault(world.tmp / f"{bob}-b1.vault", PASSWORD, bob, "b1", cost="test")
    with (
        connect(world.server, alice, device_id="a1", secure=secure_a, groups=True) as a,
        connect(world.server, bob, device_id="b1", secure=secure_b, groups=True) as b,
    ):
        a.group_create(group)
        a.group_add(group, [bob])
        first = a.send_text(group, "just the two of us", TargetKind.GROUP)
        assert next_of(b, Deliver, lambda d: d.message_id == first.message_id).body == b"just the two of us"
        register(world.server, prof)
        db = sqlite3.connect(world.data / "csce513msg.db")  # the operator makes prof an instructor ...
        with db:
            db.execute("UPDATE users SET role = 'instructor' WHERE name = ?", (prof,))
        db.close()
        added = subprocess.run(  # ... and, as prof, adds mallory to the group while it runs
            [*MSGSRV, "group", "add", group, mallory, "--as", prof, "--data-dir", str(world.data), "--wait", "10"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        with pytest.raises(NewMembersError, match=mallory):
            a.send_text(group, "the exam answers", TargetKind.GROUP)
        a.trust_group(group)  # alice checked: mallory is in the class after all
        sent = a.send_text(group, "welcome, mallory", TargetKind.GROUP)
        assert next_of(b, Deliver, lambda d: d.message_id == sent.message_id).body == b"welcome, mallory"
