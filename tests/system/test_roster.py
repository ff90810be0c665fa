"""``msgsrv user import``: a class's accounts from a CSV roster, all or nothing, beside a
running server (the accounts' behaviour, not the I/O strategy's: one backend)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

from csce513msg.client import ServerError
from tests.conformance.wire import connect
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess

BACKENDS = ["epoll" if IS_LINUX else "select"]
MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]


def import_roster(server: ServerProcess, roster: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*MSGSRV, "user", "import", str(roster), "--data-dir", server.data_dir, "--kdf-cost", "test", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def accounts(server: ServerProcess) -> list[str]:
    listed = subprocess.run([*MSGSRV, "user", "list", "--data-dir", server.data_dir], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    return [line.split()[0] for line in listed.stdout.splitlines() if not line.endswith(" accounts")]


def test_a_roster_imports_once_and_its_passwords_log_in(server: ServerProcess, names: Names, tmp_path: Path) -> None:
    teacher, ann, ben = names("teacher"), names("ann"), names("ben")
    roster = tmp_path / "class.csv"
    roster.write_text(f"name,role,password\n{teacher},instructor,longenough1\n{ann},student\n{ben},Student\n")
    first = import_roster(server, roster, "--passwords", str(tmp_path / "passwords.csv"))
    assert first.returncode == 0, first.stderr
    assert "3 added, 0 role changed, 0 existed" in first.stdout
    passwords_file = tmp_path / "passwords.csv"
    assert passwords_file.stat().st_mode & 0o777 == 0o600
    given = {row["name"]: row["password"] for row in csv.DictReader(passwords_file.open())}
    assert set(given) == {ann, ben}  # the instructor's own was in the roster
    again = import_roster(server, roster)
    assert again.returncode == 0 and "0 added, 0 role changed, 3 existed" in again.stdout
    assert "generated passwords" not in again.stdout  # an existing account keeps its password
    assert accounts(server).count(ann) == 1
    deadline = time.monotonic() + 30  # the running server sees new accounts at its next account poll
    while True:
        try:
            conn = connect(server, ann, password=given[ann])
            break
        except ServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    conn.close()


def test_a_roster_with_a_bad_line_imports_nothing_and_names_every_bad_line(
    server: ServerProcess, names: Names, tmp_path: Path
) -> None:
    good, other = names("good"), names("other")
    roster = tmp_path / "bad.csv"
    roster.write_text(
        f"{good},student\nno spaces allowed,student\n{other},teacher\n{good},student\n{other}2,student,short\n"
    )
    done = import_roster(server, roster)
    assert done.returncode == 1
    for line, says in (
        (2, "invalid name"),
        (3, "unknown role 'teacher'"),
        (4, "on line 1 already"),
        (5, "8 characters"),
    ):
        assert re.search(rf"line {line}: .*{re.escape(says)}", done.stderr), done.stderr
    assert "nothing imported" in done.stderr
    assert good not in accounts(server)
