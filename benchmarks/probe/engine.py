"""Probes of the engine and the storage batch (issue 9, defects 1, 2, 3, 6, 7 and 10).

- ``u64``: 10 pairs chat while one user sends a client_msg_id of 2^63 and a History
  ``before`` of 2^64 - 1: how many messages the server stored (receipts), refused,
  and lost (stored, never delivered even after a reconnect), and the position gaps;
- ``disk-full``: a server on an 8 MB tmpfs (root); the disk fills, then space returns:
  how many of 20 messages in the same conversation still fail afterwards;
- ``history-burst``: 1,000 History requests (pages of 100 messages of 16 kB) in one
  write from a client that does not read: the server's peak RSS growth, and how long
  another client's ping then takes;
- ``login-flood``: at the production KDF cost, a guessing flood from 100 addresses (3
  guesses each at unknown users: a decoy hash each), then 20 real logins from another
  address, first from devices new to the server, then (another flood) from devices
  that logged in before and show their device tokens: how many were refused, and how
  long they took; then 100 clients at once (a class reconnecting after a restart);
- ``guesses``: 64 concurrent wrong-password logins at one account (limit 5 a minute):
  how many were checked; then whether its owner, with a device token from an earlier
  login, gets in while the account is locked;
- ``partial-frames``: 5,000 connections each holding a 64.9 kB half-sent frame: the
  server's RSS growth, and how many were refused.

Clients bind to other loopback addresses (127.0.x.y) to look like many addresses.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.probe import probe
from benchmarks.probe.common import Server
from csce513msg.crypto.passwords import COSTS, hash_password
from csce513msg.protocol import (
    Deliver,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    History,
    Login,
    LoginOk,
    Message,
    Ping,
    Pong,
    Receipt,
    Register,
    Send,
    Welcome,
    decode,
    encode,
)
from csce513msg.store import Account
from csce513msg.store.accounts import AccountBook

PASSWORD = "probe password"


class Conn:
    """A raw protocol connection from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.decoder = FrameDecoder(1 << 24)
        self.inbox: list[Message] = []

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(encode(m) for m in msgs))

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message (not the Welcome), or None if the server closed or went quiet."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self.inbox:
            try:
                data = self.sock.recv(1 << 20)
            except (TimeoutError, ConnectionResetError):
                return None
            if not data:
                return None
            self.inbox += [m for m in (decode(f) for f in self.decoder.feed(data)) if not isinstance(m, Welcome)]
        return self.inbox.pop(0)

    def login(self, user: str, password: str = PASSWORD, register: bool = False, **kw: str) -> Message | None:
        kind = Register(user, password, kw.get("device", ""), request_id=2) if register else None
        self.send(
            Hello(request_id=1), kind or Login(user, password, kw.get("device", ""), kw.get("token", ""), request_id=2)
        )
        return self.recv()

    def close(self) -> None:
        self.sock.close()


def _counts(answers: list[Message | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in answers:
        name = "ok" if isinstance(a, LoginOk) else ErrorCode(a.code).name if isinstance(a, Error) else "none"
        out[name] = out.get(name, 0) + 1
    return out


@probe("u64")
def u64(tree: Path | None, backend: str) -> dict[str, Any]:
    """a u64 of 2^63 in a Send or History, amid 15 conversations: messages lost"""
    server = Server(tree, backend, "--rate", "100000", "--burst", "100000")
    try:
        senders = [Conn(server.port) for _ in range(10)]
        receivers = [Conn(server.port) for _ in range(10)]
        for i, (s, r) in enumerate(zip(senders, receivers, strict=True)):
            r.login(f"b{i}", register=True, device="rd")
            s.login(f"a{i}", register=True, device="sd")
        for i in range(5):  # offline recipients of conversations that start beside the bad value
            Conn(server.port).login(f"d{i}", register=True, device="dd")
        starters = [Conn(server.port) for _ in range(5)]
        for i, c in enumerate(starters):
            c.login(f"c{i}", register=True, device="cd")
        mallory = Conn(server.port)
        mallory.login("mallory", register=True, device="md")
        bad: list[Message] = [
            Send(1, 0, 2**63, "b0", b"big id", request_id=3),
            History(2**64 - 1, 10, 1, "b1", request_id=4),
        ]
        for round_ in range(6):
            for i, s in enumerate(senders):
                s.send(*[Send(1, 0, round_ * 100 + k + 1, f"b{i}", b"m%d" % k, request_id=10 + k) for k in range(5)])
            if round_ >= 2:
                for i, c in enumerate(starters):
                    c.send(Send(1, 0, round_ + 1, f"d{i}", b"to an offline user", request_id=20))
            if round_ == 2:
                mallory.send(*bad)
            time.sleep(0.05)
        stored: set[int] = set()
        refused = 0
        for s in [*senders, *starters]:
            for _ in range(30 if s in senders else 4):
                reply = s.recv(timeout=10)
                if isinstance(reply, Receipt):
                    stored.add(reply.message_id)
                elif isinstance(reply, Error):
                    refused += 1
        mallory_replies = [type(m).__name__ + (f":{ErrorCode(m.code).name}" if isinstance(m, Error) else "")
                           for m in (mallory.recv(timeout=3), mallory.recv(timeout=1))]  # fmt: skip
        for r in receivers:
            r.close()
        delivered: set[int] = set()
        returning = [(f"b{i}", "rd") for i in range(10)] + [(f"d{i}", "dd") for i in range(5)]
        for name, device in returning:  # each recipient comes back: the catch-up brings what was not live
            back = Conn(server.port)
            back.login(name, device=device)
            while (m := back.recv(timeout=1.0)) is not None:
                if isinstance(m, Deliver):
                    delivered.add(m.message_id)
            back.close()
        return {
            "sent": 320, "stored": len(stored), "refused": refused, "lost": len(stored - delivered),
            "mallory": mallory_replies,
        }  # fmt: skip
    finally:
        server.stop()


@probe("disk-full")
def disk_full(tree: Path | None, backend: str) -> dict[str, Any]:
    """a full disk, then space again: messages of the same conversation still failing"""
    where = Path(tempfile.mkdtemp(prefix="probe-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    server = Server(tree, backend, "--checkpoint-interval", "0.2", data_dir=str(where))
    try:
        receiver, sender = Conn(server.port), Conn(server.port)
        receiver.login("bob", register=True)
        sender.login("alice", register=True, device="a")
        st = os.statvfs(where)
        filler = where / "filler"
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 1_500_000))
        failed_in_a_row = sent = 0
        while failed_in_a_row < 5 and sent < 3000:
            sent += 1
            sender.send(Send(1, 0, sent, "bob", b"." * 8000, request_id=5))
            reply = sender.recv(timeout=30)
            failed_in_a_row = failed_in_a_row + 1 if isinstance(reply, Error) else 0
        filler.unlink()
        after = []
        for i in range(20):
            sender.send(Send(1, 0, 10_000 + i, "bob", b"after", request_id=6))
            after.append(sender.recv(timeout=30))
        return {"sent_until_full": sent, "failing_after_space_returned": sum(isinstance(a, Error) for a in after)}
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(where)], check=False)


@probe("history-burst")
def history_burst(tree: Path | None, backend: str) -> dict[str, Any]:
    """1,000 History requests from a client that does not read: RSS growth, others' stall"""
    server = Server(tree, backend, "--rate", "100000", "--burst", "100000")
    try:
        bob = Conn(server.port)
        bob.login("bob", register=True)
        alice = Conn(server.port)
        alice.login("alice", register=True)
        alice.send(*[Send(1, 0, 0, "bob", b"h" * 16_000, request_id=10) for _ in range(120)])
        for _ in range(120):
            alice.recv(timeout=30)
        base = server.sample()
        greedy = Conn(server.port)
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.login("alice")
        start = time.monotonic()
        greedy.send(*[History(0, 100, 1, "bob", request_id=100 + i) for i in range(1000)])
        other = Conn(server.port)
        other.login("carol", register=True)
        other.send(Ping(b"?", request_id=3))
        while not isinstance(other.recv(timeout=120), Pong):
            pass
        stall = time.monotonic() - start
        time.sleep(2)
        peak = server.sample()
        return {
            "rss_before_mib": round(base.rss_kib / 1024, 1),
            "peak_growth_mib": round((peak.hwm_kib - base.hwm_kib) / 1024, 1),
            "rss_after_mib": round(peak.rss_kib / 1024, 1),
            "other_client_ping_s": round(stall, 3),
        }
    finally:
        server.stop()


def _class_server(tree: Path | None, backend: str, students: int) -> Server:
    """A server at the production KDF cost whose students' own hashes are cheap: only the
    flood's decoy hashes cost what a real login does."""
    data_dir = tempfile.mkdtemp(prefix="probe-logins-")
    book = AccountBook(Path(data_dir) / "csce513msg.db")
    cheap = hash_password(PASSWORD, COSTS["test"])
    book.add_many([Account(f"s{i}", "student", cheap, 1) for i in range(students)])
    book.close()
    os.chmod(data_dir, 0o700)
    return Server(tree, backend, "--kdf-cost", "production", data_dir=data_dir)


@probe("login-flood")
def login_flood(tree: Path | None, backend: str) -> dict[str, Any]:
    """a guessing flood from 100 addresses, then 20 real logins (new devices, then devices
    that logged in before, with their device tokens); then 100 logins at once"""
    server = _class_server(tree, backend, 100)
    try:
        tokens = []
        for i in range(20):  # each student's device logged in once before: a device token (1.3)
            c = Conn(server.port, "127.0.9.1")
            ok = c.login(f"s{i}", device=f"d{i}")
            tokens.append(getattr(ok, "device_token", ""))
            c.close()
        out: dict[str, Any] = {}
        for phase, use_tokens in (("new_devices", False), ("known_devices", True)):
            flood = [Conn(server.port, f"127.0.{1 + a // 250}.{1 + a % 250}") for a in range(100) for _ in range(3)]
            for i, c in enumerate(flood):
                c.send(Hello(request_id=1), Login(f"ghost{i}", "guess", "", request_id=2))
            time.sleep(0.2)
            start = time.monotonic()
            real = [Conn(server.port, "127.0.9.1") for _ in range(20)]
            for i, c in enumerate(real):
                token = tokens[i] if use_tokens else ""
                c.send(
                    Hello(request_id=1), Login(f"s{i}", PASSWORD, f"d{i}" if use_tokens else "", token, request_id=2)
                )
            answers, took = [], []
            for c in real:
                answers.append(c.recv(timeout=120))
                took.append(time.monotonic() - start)
            flood_answers = [c.recv(timeout=120) for c in flood]
            for c in flood + real:
                c.close()
            out[phase] = {
                "real_logins": _counts(answers),
                "real_login_s_median": round(statistics.median(took), 2),
                "real_login_s_max": round(max(took), 2),
                "flood": _counts(flood_answers),
            }
            time.sleep(1)
        burst = [Conn(server.port) for _ in range(100)]
        for i, c in enumerate(burst):
            c.send(Hello(request_id=1), Login(f"s{i}", PASSWORD, "", request_id=2))
        out["hundred_at_once"] = _counts([c.recv(timeout=120) for c in burst])
        return out
    finally:
        server.stop()


@probe("guesses")
def guesses(tree: Path | None, backend: str) -> dict[str, Any]:
    """64 concurrent wrong guesses at one account (limit 5): how many were checked"""
    server = _class_server(tree, backend, 0)
    try:
        book = AccountBook(Path(server.data_dir) / "csce513msg.db")
        book.add("alice", hash_password(PASSWORD, COSTS["production"]))
        book.close()
        time.sleep(2.5)  # the account poll
        owner = Conn(server.port)
        first = owner.login("alice", device="laptop")
        token = getattr(first, "device_token", "")
        owner.close()
        attempts = [Conn(server.port, f"127.0.5.{i + 1}") for i in range(64)]
        for i, c in enumerate(attempts):
            c.send(Hello(request_id=1), Login("alice", f"guess{i}", "", request_id=2))
        answers = [c.recv(timeout=120) for c in attempts]
        back = Conn(server.port)
        with_token = back.login("alice", device="laptop", token=token)
        return {
            "guesses": _counts(answers),
            "owner_token_issued": bool(token),
            "owner_with_token_while_locked": _counts([with_token]),
        }
    finally:
        server.stop()


@probe("partial-frames")
def partial_frames(tree: Path | None, backend: str) -> dict[str, Any]:
    """5,000 connections each holding a 64.9 kB half-sent frame: the server's RSS growth"""
    resource.setrlimit(resource.RLIMIT_NOFILE, (20_000, 20_000))
    server = Server(tree, backend)
    conns: list[socket.socket] = []
    try:
        base = server.sample()
        frame = encode(Ping(b"x" * 65_000, request_id=2))
        refused = 0
        for i in range(5000):
            sock = socket.socket()
            sock.bind((f"127.0.{20 + i // 250}.{1 + i % 250}", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(encode(Hello(request_id=1)) + frame[:64_900])
            conns.append(sock)
        time.sleep(3)
        peak = server.sample()
        for sock in conns:  # what each has been told by now, without waiting
            sock.setblocking(False)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except (BlockingIOError, ConnectionResetError):
                pass
            refused += b"over the limit" in data
        return {
            "rss_before_mib": round(base.rss_kib / 1024, 1),
            "rss_growth_mib": round((peak.rss_kib - base.rss_kib) / 1024, 1),
            "refused_frame_too_large": refused,
        }
    finally:
        for sock in conns:
            sock.close()
        server.stop()
