"""Accounts on a real server: the admin commands (`msgsrv user`) against a running server,
registration off, and login throttling (a server of its own, so it cannot throttle other
tests). Two backends, one of each way the store runs: epoll applies batches on its loop
(a database `msgsrv user` holds moves the batch to the storage thread), threads on its
storage thread; the conformance suite covers accounts on all six."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from csce513msg.client import Client, ConnectionClosed, ServerError
from csce513msg.protocol import Deliver, Error, ErrorCode
from tests.conformance.wire import PASSWORD
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess, start

BACKENDS = ["epoll" if IS_LINUX else "poll", "threads"]

MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]


def user_cmd(data_dir: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """``msgsrv user ...`` as a process; the password on standard input, as a script gives it."""
    cmd = [*MSGSRV, "user", *args, "--data-dir", data_dir]
    if args[0] in ("add", "passwd"):
        cmd += ["--kdf-cost", "test"]
    return subprocess.run(cmd, input=(password or "") + "\n", capture_output=True, text=True, timeout=60)


def login(server: ServerProcess, user: str, password: str = PASSWORD) -> Client:
    return Client.connect(server.host, server.port, user=user, password=password)


def refused(server: ServerProcess, user: str, password: str = PASSWORD) -> int:
    with pytest.raises(ServerError) as err:
        login(server, user, password)
    return err.value.code


def test_admin_commands_against_a_running_server(backend: str, names: Names) -> None:
    data_dir = tempfile.mkdtemp(prefix="msgsrv-admin-")
    server = start(backend, "--no-self-register", "--account-poll", "0.3", "--data-dir", data_dir)
    try:
        carol, prof = names("carol"), names("prof")
        assert user_cmd(data_dir, "add", carol, password=PASSWORD).returncode == 0
        assert user_cmd(data_dir, "add", prof, "--instructor", password=PASSWORD).returncode == 0
        c, p = login(server, carol), login(server, prof)  # each login asks the store for news first
        server.wait_log(f"account {prof} added (instructor)")
        assert p.login_reply is not None and p.login_reply.role == "instructor"
        assert c.login_reply is not None and c.login_reply.role == "student"
        who = c.who_reply()
        assert dict(zip(who.users, who.roles, strict=True)) == {carol: "student", prof: "instructor"}
        listing = user_cmd(data_dir, "list")
        assert carol in listing.stdout and "instructor" in listing.stdout and "2 accounts" in listing.stdout
        again = user_cmd(data_dir, "add", carol, password=PASSWORD)
        assert again.returncode == 1 and "exists already" in again.stderr

        assert user_cmd(data_dir, "passwd", carol, password="a brand new one").returncode == 0
        ended = c.next_message(Error, timeout=10)  # the live session ends within the poll interval
        assert ended.code == ErrorCode.ACCOUNT_CHANGED and "password" in ended.message
        with pytest.raises(ConnectionClosed):  # and the server closes it
            c.next_message(Deliver, timeout=10)
        c.close()
        assert refused(server, carol) == ErrorCode.AUTH_FAILED
        c = login(server, carol, "a brand new one")

        assert user_cmd(data_dir, "remove", carol).returncode == 0
        assert c.next_message(Error, timeout=10).code == ErrorCode.ACCOUNT_CHANGED
        c.close()
        assert refused(server, carol, "a brand new one") == ErrorCode.AUTH_FAILED
        with pytest.raises(ServerError) as err:
            p.send_text(carol, "are you there?")
        assert err.value.code == ErrorCode.USER_NOT_FOUND
        with Client.connect(server.host, server.port) as m, pytest.raises(ServerError) as err:
            m.login(names("mallory"), PASSWORD, register=True)
        assert err.value.code == ErrorCode.REGISTRATION_CLOSED  # registration is off on this server
        p.close()
    finally:
        server.stop()


def test_failed_logins_are_throttled_per_account_then_per_address(backend: str, names: Names) -> None:
    server = start(backend, "--login-failures-per-account", "3", "--login-failures-per-address", "6")
    try:
        dora = names("dora")
        Client.connect(server.host, server.port, user=dora, password=PASSWORD, register=True).close()
        for _ in range(3):
            assert refused(server, dora, "guess") == ErrorCode.AUTH_FAILED
        assert refused(server, dora) == ErrorCode.AUTH_THROTTLED  # even the right password, for a while
        log = server.wait_log(f"auth failed: {dora} from 127.0.0.1")
        assert log.count(f"auth failed: {dora}") == 3 and f"login throttled: {dora}" in log
        for i in range(3):  # three more failures from this address, on other names: 6 in all
            assert refused(server, f"{dora}x{i}", "guess") == ErrorCode.AUTH_FAILED
        assert refused(server, names("erin"), "guess") == ErrorCode.AUTH_THROTTLED
    finally:
        server.stop()


def test_admin_commands_wait_for_a_busy_database(tmp_path: Path) -> None:
    """The server's writer holds the database for a moment: `user add` waits, then succeeds."""
    assert user_cmd(str(tmp_path), "list").returncode == 0  # creates the database
    db = sqlite3.connect(tmp_path / "csce513msg.db", isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # a write lock, as a long commit would hold it
    threading.Timer(1.0, lambda: db.execute("COMMIT")).start()
    started = time.monotonic()
    done = user_cmd(str(tmp_path), "add", "fred", password=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.9  # it waited for the lock instead of failing
    db.close()
