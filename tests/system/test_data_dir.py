"""The data directory as the server and ``msgsrv user`` find it (issue 9, defects 11 and
12): its files are the owner's only, and a database that cannot be trusted is refused
before serving. Nothing here depends on the I/O strategy: one backend."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from csce513msg.store import Account, Batch, NewMessage
from csce513msg.store.sqlite import SqliteStore
from tests.conformance.wire import PASSWORD, connect
from tests.servers import IS_LINUX, start

BACKEND = "epoll" if IS_LINUX else "select"
MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]
DB = "csce513msg.db"


def modes(data_dir: Path) -> dict[str, int]:
    """Every entry under ``data_dir`` (and itself, as "."): its permission bits."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in data_dir.rglob("*"):
        found[str(path.relative_to(data_dir))] = stat.S_IMODE(path.stat().st_mode)
    return found


def private(found: dict[str, int], data_dir: Path) -> bool:
    return all(mode == (0o700 if (data_dir / name).is_dir() else 0o600) for name, mode in found.items())


def test_a_new_data_directory_and_every_file_in_it_are_the_owner_s_only(tmp_path: Path) -> None:
    """Messages and password hashes were readable by every local user (0755, 0644)."""
    data_dir = tmp_path / "new" / "data"  # made by the server
    server = start(BACKEND, "--data-dir", str(data_dir), "--tls")
    try:
        found = modes(data_dir)  # while it runs: the WAL and its index exist
        assert {DB, f"{DB}-wal", f"{DB}-shm", "tls", "tls/key.pem", "tls/cert.pem"} <= found.keys()
        assert private(found, data_dir), found
    finally:
        server.stop()


def test_an_existing_install_is_tightened_at_start_with_a_log_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start(BACKEND, "--data-dir", str(data_dir))
    connect(server, "olduser").close()
    server.proc.send_signal(signal.SIGKILL)  # the WAL and its index stay behind, as after a crash
    server.stop()
    for name in modes(data_dir):  # as an older version left them
        (data_dir / name).chmod(0o755 if (data_dir / name).is_dir() else 0o644)
    assert {f"{DB}-wal", f"{DB}-shm"} <= modes(data_dir).keys()
    server = start(BACKEND, "--data-dir", str(data_dir))
    try:
        assert private(modes(data_dir), data_dir), modes(data_dir)
        log = server.log()
        for name in ("", f"/{DB}", f"/{DB}-wal", f"/{DB}-shm"):
            assert f"{data_dir}{name}: mode {'755' if not name else '644'} -> {'700' if not name else '600'}" in log
        connect(server, "olduser").close()  # the account survived (the crash's WAL recovered)
    finally:
        server.stop()


def test_msgsrv_user_makes_a_private_database_and_tightens_an_old_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def user(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*MSGSRV, "user", *args, "--data-dir", str(data_dir), *(["--kdf-cost", "test"] if "add" in args else [])]
        return subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)

    assert user("add", "ann").returncode == 0  # creates the directory and the database
    assert private(modes(data_dir), data_dir) and DB in modes(data_dir), modes(data_dir)
    data_dir.chmod(0o755)
    (data_dir / DB).chmod(0o644)
    done = user("list")
    assert done.returncode == 0 and "ann" in done.stdout
    assert f"{data_dir / DB}: mode 644 -> 600" in done.stderr
    assert private(modes(data_dir), data_dir), modes(data_dir)


# ---- a database that cannot be trusted -------------------------------------------------


def make_database(path: Path, users: int, messages: int) -> None:
    """A real server database: accounts and direct messages, closed cleanly."""
    store = SqliteStore(path, checkpoint_interval=0)
    store.apply(Batch(accounts=[Account(f"u{i}", "student", "", 1) for i in range(users)]))
    for start_at in range(0, messages, 500):
        batch = [
            NewMessage(f"dm:u0,u{i % users}", ("u0", f"u{i % users}"), "u0", "d", 0, 1, "x", 0, i, bytes(100))
            for i in range(start_at, min(messages, start_at + 500))
        ]
        store.apply(Batch(messages=batch))
    store.close()


LEAVE_ITS_WAL = """
import os, sys
from csce513msg.store import Batch, NewMessage
from csce513msg.store.sqlite import SqliteStore
store = SqliteStore(sys.argv[1], checkpoint_interval=0)
store.apply(Batch(messages=[NewMessage("dm:a,b", ("a", "b"), "a", "d", 0, 1, "b", 0, 10**9 + i, bytes(100))
                            for i in range(200)]))
os._exit(0)  # a crash: no checkpoint, the WAL stays
"""


def damage(data_dir: Path, how: str) -> None:
    path = data_dir / DB
    if how == "empty":
        path.touch()
        return
    make_database(path, 5, 2000)
    if how == "a damaged page":
        pages = path.stat().st_size // 4096
        with path.open("r+b") as f:
            f.seek(pages // 2 * 4096)
            f.write(b"\xa5" * 4096)  # a page in the middle of the messages: no valid page type
    else:  # another server's database, with a different history, left its WAL: put beside ours
        other = data_dir.parent / "other.db"
        make_database(other, 300, 1000)
        subprocess.run([sys.executable, "-c", LEAVE_ITS_WAL, str(other)], check=True, timeout=60)
        os.replace(data_dir.parent / "other.db-wal", data_dir / f"{DB}-wal")


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("a damaged page", f"{DB} is damaged: "),  # quick_check lists it, or SQLite stops at it
        ("another database's WAL", f"{DB}-wal does not belong to "),
        ("empty", "is an empty file, not a database. To start a new server"),
    ],
)
def test_a_database_that_cannot_be_trusted_is_refused_at_start(tmp_path: Path, how: str, says: str) -> None:
    """Before: a damaged page started, then logins failed with STORE_FAILED; another
    database's WAL started with its mixture of both; an empty file started a new server
    with no accounts. Now each is refused with what to do, status 2, no traceback; a WAL
    refused is not written into the database, which starts once the WAL is moved away."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    damage(data_dir, how)
    before = (data_dir / DB).read_bytes()
    cmd = [*MSGSRV, "serve", "--backend", BACKEND, "--port", "0", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)  # a server that starts does not exit: the test fails
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    assert says in err and "Traceback" not in err, err
    assert (data_dir / DB).read_bytes() == before
    if how == "another database's WAL":
        os.replace(data_dir / f"{DB}-wal", tmp_path / "moved-away-wal")
        server = start(BACKEND, "--data-dir", str(data_dir), "--no-self-register")
        server.stop()
        assert "accounts: 5;" in server.banner
