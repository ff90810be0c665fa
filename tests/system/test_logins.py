"""Logins under pressure, on a real server at the production KDF cost (a guess at an
unknown user costs a decoy hash of ~50 ms): a guessing flood from many addresses does
not lock real users out, a class reconnecting at once all get in, concurrent guesses
are counted as they are admitted, and a device token gets its owner past a locked
account. Admission is the hub's, not the I/O strategy's: one backend.

Clients bind to other loopback addresses (127.0.x.y: all of 127/8 is loopback on
Linux), so the server sees many addresses and traffic stays on this machine."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from csce513msg.client import Client
from csce513msg.crypto.passwords import COSTS, hash_password
from csce513msg.protocol import (
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Login,
    LoginOk,
    Message,
    Welcome,
    decode,
    encode,
)
from csce513msg.store import Account
from csce513msg.store.accounts import AccountBook
from tests.conformance.wire import PASSWORD
from tests.servers import ServerProcess, start

BACKENDS = ["epoll"]


class Attempt:
    """A raw login from a chosen loopback address, sent at once and answered later."""

    def __init__(self, server: ServerProcess, source: str, user: str, password: str, token: str = "") -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(60)
        self.sock.connect(server.address)
        self.decoder = FrameDecoder(1 << 20)
        self.sock.sendall(encode(Hello(request_id=1)) + encode(Login(user, password, "d", token, request_id=2)))

    def answer(self) -> Message:
        """The Login's answer (LoginOk or Error), skipping the Welcome."""
        while True:
            data = self.sock.recv(65536)
            assert data, "closed without an answer"
            for frame in self.decoder.feed(data):
                msg = decode(frame)
                if not isinstance(msg, Welcome):
                    return msg

    def close(self) -> None:
        self.sock.close()


def class_server(students: int, *flags: str) -> tuple[ServerProcess, list[str], Path]:
    """A server at the production KDF cost whose students' own hashes are cheap (each hash
    keeps its parameters): only the flood's decoy hashes cost what a real login does."""
    data_dir = tempfile.mkdtemp(prefix="msgsrv-logins-")
    names = [f"student{i}" for i in range(students)]
    book = AccountBook(Path(data_dir) / "csce513msg.db")
    book.add_many([Account(n, "student", hash_password(PASSWORD, COSTS["test"]), 1) for n in names])
    book.close()
    return start("epoll", "--kdf-cost", "production", "--data-dir", data_dir, *flags), names, Path(data_dir)


def codes(answers: list[Message]) -> list[int]:
    return [a.code if isinstance(a, Error) else 0 for a in answers]


def test_a_guessing_flood_from_many_addresses_does_not_lock_a_class_out(backend: str) -> None:
    """Before: at most 64 logins pending server-wide, so the flood's guesses took every
    place and 19 of 20 real logins were refused. With a queue of 40 places taken by a
    flood of 100 guesses from 5 addresses, a first-come queue would refuse the class too:
    the longest line paying is what gives the class's address its share (40 / 6), and
    its turn comes as often as any flooding address's."""
    server, students, data_dir = class_server(5, "--max-pending-logins", "40")
    try:
        flood = [Attempt(server, f"127.0.1.{a}", f"ghost{a}x{i}", "guess") for a in range(1, 6) for i in range(20)]
        real = [Attempt(server, "127.0.2.1", name, PASSWORD) for name in students]  # a class behind one address
        answers = [attempt.answer() for attempt in real]
        assert all(isinstance(a, LoginOk) for a in answers), codes(answers)
        flood_answers = codes([attempt.answer() for attempt in flood])
        assert set(flood_answers) == {ErrorCode.AUTH_FAILED, ErrorCode.RATE_LIMITED}  # the longest lines paid
        for attempt in flood + real:
            attempt.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_class_reconnecting_at_once_all_get_in(backend: str) -> None:
    """Before: 30-45 % of 100 clients reconnecting after a restart were refused."""
    server, students, data_dir = class_server(100)
    try:
        attempts = [Attempt(server, "127.0.0.1", name, PASSWORD) for name in students]
        answers = [attempt.answer() for attempt in attempts]
        assert codes(answers) == [0] * 100
        for attempt in attempts:
            attempt.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_concurrent_guesses_pass_no_more_than_the_limit_and_a_token_gets_past(backend: str) -> None:
    """Before: checked on arrival, counted when hashed, 64 concurrent guesses passed a limit
    of 5; and 5 wrong guesses a minute locked the real user out for ever."""
    server, _, data_dir = class_server(0)
    try:
        book = AccountBook(data_dir / "csce513msg.db")
        book.add("alice", hash_password(PASSWORD, COSTS["production"]))  # each check: a real hash
        book.close()
        owner = Client.connect(server.host, server.port, user="alice", password=PASSWORD, device_id="laptop")
        token = owner.session.device_token
        owner.close()
        guesses = [Attempt(server, f"127.0.3.{i}", "alice", f"guess{i}") for i in range(1, 31)]
        outcomes = codes([g.answer() for g in guesses])
        assert outcomes.count(ErrorCode.AUTH_FAILED) == 5, outcomes  # the limit, checked; the rest
        assert outcomes.count(ErrorCode.AUTH_THROTTLED) == 25, outcomes  # refused without a hash
        assert codes([Attempt(server, "127.0.0.1", "alice", PASSWORD).answer()]) == [ErrorCode.AUTH_THROTTLED]
        back = Client.connect(
            server.host, server.port, user="alice", password=PASSWORD, device_id="laptop", device_token=token
        )  # fmt: skip
        assert back.login_reply is not None and back.login_reply.device_token == token
        back.close()
        for g in guesses:
            g.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def priorities(pid: int) -> list[tuple[int, int]]:
    """(nice, scheduling policy) of each of the server's threads, read from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19 of stat
        found.append((nice, os.sched_getscheduler(int(task.name))))
    return found


@pytest.mark.parametrize(("flag", "steps", "policy"), [("10", 10, os.SCHED_OTHER), ("-1", 0, os.SCHED_IDLE)])
def test_the_hash_lane_runs_at_the_priority_asked(backend: str, flag: str, steps: int, policy: int) -> None:
    """--hash-nice: the password checks' two threads, and only they, at a lower priority:
    nice steps below the server's own (a share the scheduler keeps for logins while chat
    keeps the core busy), or SCHED_IDLE; the loop, the store thread and the rest stay at the
    process's. Relative: a server started under `nice` (or a test run so) keeps its order."""
    server = start(backend, "--hash-nice", flag)
    try:
        Client.connect(server.host, server.port, user="alice", password=PASSWORD, register=True).close()
        threads = priorities(server.pid)  # the hash lane started with the registration's hash
        base = os.getpriority(os.PRIO_PROCESS, server.pid)  # the main thread's: as this process's
        assert threads.count((min(19, base + steps), policy)) == 2, threads
        assert threads.count((base, os.SCHED_OTHER)) == len(threads) - 2, threads
    finally:
        server.stop()
