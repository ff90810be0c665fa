"""Conformance with end-to-end encryption on (protocol 1.7), on every backend: real clients with
real keys in vaults, through a real server (files: test_e2e_files.py).

Direct messages go as content type 2 to every device of both users, reach a device that was
offline when they were sent, and come out as the text that went in; a device without keys sees
only ciphertext. A canary sent both ways, posted to a group and sent as a file (in its bytes
and its name) appears nowhere on the server: not in its data directory (database,
write-ahead log, files), not in its log, not in the bytes that crossed the network (TLS off,
so the test can read them through a recording proxy)."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

from csce513msg.client import Client
from csce513msg.client.secure import Secure
from csce513msg.crypto.device import UndecryptableError
from csce513msg.protocol import ContentType, Deliver, TargetKind, parse_offer
from tests.conformance.wire import PASSWORD, connect, next_of
from tests.fixtures import Names, Server
from tests.servers import ServerProcess

CANARY = "CANARY-7f3e-the-answer-to-question-4-is-42"


class Recorder:
    """A loopback TCP proxy in front of the server that keeps every byte both ways (bounded:
    it stops by itself after ``lifetime`` seconds)."""

    def __init__(self, server: Server, lifetime: float = 60.0) -> None:
        self.target = (server.host, server.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.seen = bytearray()
        self._stop = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while time.monotonic() < self._stop:
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    sel.register(client, selectors.EVENT_READ, upstream)
                    sel.register(upstream, selectors.EVENT_READ, client)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, key.data):
                        sel.unregister(s)
                        s.close()
                    continue
                self.seen += data
                key.data.sendall(data)

    def close(self) -> None:
        self._stop = 0
        self._thread.join(5)
        self.listener.close()


def secure_client(server: object, user: str, device: str, vault_dir: Path, groups: bool = False) -> Client:
    secure = Secure.from_vault(vault_dir / f"{user}-{device}.vault", PASSWORD, user, device, cost="test")
    return connect(server, user, device_id=device, secure=secure, groups=groups)  # type: ignore[arg-type]


def test_direct_messages_are_end_to_end_to_every_device(server: Server, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    secure_client(server, bob, "b1", tmp_path).close()  # bob's keys are published; he goes offline
    with secure_client(server, alice, "a1", tmp_path) as a1, secure_client(server, alice, "a2", tmp_path) as a2:
        with connect(server, bob, device_id="plain") as plain:  # a device of bob's with no keys
            receipt = a1.send_text(bob, "hello bob, " + CANARY)
            mirrored = next_of(a2, Deliver, lambda d: d.message_id == receipt.message_id)
            assert mirrored.content_type == ContentType.TEXT and mirrored.body.decode().endswith(CANARY)
            assert a2.session.secure is not None and receipt.message_id in a2.session.secure.encrypted
            raw = next_of(plain, Deliver, lambda d: d.message_id == receipt.message_id)
            assert raw.content_type == ContentType.ENVELOPE and CANARY.encode() not in raw.body
        with secure_client(server, bob, "b1", tmp_path) as b1:  # back: the catch-up opens it
            caught = next_of(b1, Deliver, lambda d: d.message_id == receipt.message_id)
            assert caught.body == ("hello bob, " + CANARY).encode()
            answer = b1.send_text(alice, "got it")
            assert next_of(a1, Deliver, lambda d: d.message_id == answer.message_id).body == b"got it"
            assert next_of(a2, Deliver, lambda d: d.message_id == answer.message_id).body == b"got it"
            for i in range(3):  # turns, each a ratchet step
                sent = a1.send_text(bob, f"turn {i}").message_id
                assert next_of(b1, Deliver, lambda d: d.message_id == sent).body == f"turn {i}".encode()  # noqa: B023


def test_a_canary_appears_nowhere_on_the_server(server: Server, names: Names, tmp_path: Path) -> None:
    """Direct both ways, a group post, a file (its bytes and its name): the whole session."""
    alice, bob = names("alice"), names("bob")
    group = names("lab")
    document = tmp_path / f"{CANARY}.txt"
    document.write_bytes((CANARY + "\n").encode() * 5000)  # 225 kB: four STREAM chunks
    proxy = Recorder(server)
    try:
        secure_client(proxy, bob, "b1", tmp_path).close()
        with (
            secure_client(proxy, alice, "a1", tmp_path, groups=True) as a1,
            secure_client(proxy, bob, "b1", tmp_path, groups=True) as b1,
        ):
            receipt = a1.send_text(bob, CANARY)
            assert next_of(b1, Deliver, lambda d: d.message_id == receipt.message_id).body == CANARY.encode()
            back = b1.send_text(alice, CANARY + " back")
            assert next_of(a1, Deliver, lambda d: d.message_id == back.message_id).body == (CANARY + " back").encode()
            a1.history(bob)  # the server's copy, read back: ciphertext there too
            a1.group_create(group)
            a1.group_add(group, [bob])
            post = a1.send_text(group, CANARY + " to the group", TargetKind.GROUP)
            assert next_of(b1, Deliver, lambda d: d.message_id == post.message_id).body.startswith(CANARY.encode())
            _, offered = a1.send_file(bob, document)
            offer = parse_offer(next_of(b1, Deliver, lambda d: d.message_id == offered.message_id).body)
            assert offer.encrypted and b1.download(offer, tmp_path / "got").read_bytes() == document.read_bytes()
    finally:
        proxy.close()
    assert len(proxy.seen) > 2000 and CANARY.encode() not in proxy.seen
    if isinstance(server, ServerProcess):  # a server this test started: read its disk and log
        time.sleep(0.2)
        files = [p for p in Path(server.data_dir).rglob("*") if p.is_file()]
        assert any(p.name.endswith(".db") or "-wal" in p.name for p in files), files
        for path in [*files, server.log_path]:
            assert CANARY.encode() not in path.read_bytes(), path


def test_group_posts_are_end_to_end_and_a_removed_member_cannot_read_on(
    server: Server, names: Names, tmp_path: Path
) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    group = names("lab")

    def member(user: str, device: str) -> Client:
        secure = Secure.from_vault(tmp_path / f"{user}-{device}.vault", PASSWORD, user, device, cost="test")
        return connect(server, user, device_id=device, secure=secure, groups=True)

    with member(alice, "a1") as a, member(bob, "b1") as b, member(carol, "c1") as c:
        with connect(server, bob, device_id="plain", groups=True) as plain:  # bob's keyless device: ciphertext
            info = a.group_create(group)
            a.group_add(group, [bob, carol])
            sent = a.send_text(group, CANARY, TargetKind.GROUP)
            for reader in (b, c):
                got = next_of(reader, Deliver, lambda d: d.message_id == sent.message_id)
                assert got.body == CANARY.encode() and got.stream == info.stream
            raw = next_of(plain, Deliver, lambda d: d.message_id == sent.message_id)
            assert raw.content_type == ContentType.ENVELOPE and CANARY.encode() not in raw.body
            reply = c.send_text(group, "carol's answer", TargetKind.GROUP)  # carol's own sender key, carried
            assert next_of(b, Deliver, lambda d: d.message_id == reply.message_id).body == b"carol's answer"
            assert next_of(a, Deliver, lambda d: d.message_id == reply.message_id).body == b"carol's answer"
            a.group_remove(group, [carol])
            after = a.send_text(group, "after carol left", TargetKind.GROUP)
            assert next_of(b, Deliver, lambda d: d.message_id == after.message_id).body == b"after carol left"
            stolen = next_of(plain, Deliver, lambda d: d.message_id == after.message_id)
        assert c.session.secure is not None  # carol, with every key she ever had, given the ciphertext:
        with pytest.raises(UndecryptableError):
            c.session.secure.device.decrypt(alice, TargetKind.GROUP, info.stream, stolen.body)
