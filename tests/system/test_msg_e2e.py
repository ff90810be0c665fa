"""``msg`` with end-to-end encryption (protocol 1.7) as real processes: one backend, since none
of it depends on the I/O strategy.

Two ``msg`` read each other's messages end to end (``e2e`` in their events, ciphertext in
the server's database); both show the same safety number; a contact who resets its keys
gets a warning on the other side, whose message is held until ``/trust`` and then goes; a
second ``msg`` of the same user on the same machine cannot open the keys the first holds;
the wrong key passphrase stops ``msg`` after the login, with a clear error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

from tests.fixtures import Names
from tests.servers import ServerProcess
from tests.system.test_cli import listener, msg_cmd, read_events
from tests.system.test_cli_files import receiver

BACKENDS = ["epoll"]
SECRET = "the midterm is on thursday"


def run(server: ServerProcess, user: str, script: str, *extra: str, env: dict[str, str] | None = None) -> list[dict]:  # type: ignore[type-arg]
    done = subprocess.run(
        msg_cmd(server, user, "--json", *extra), input=script, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return [
        {"status": done.returncode, "stderr": done.stderr},
        *(json.loads(line) for line in done.stdout.splitlines()),
    ]


def keys_error(events: list[dict]) -> str:  # type: ignore[type-arg]
    return next(str(e["message"]) for e in events if e.get("event") == "error" and e.get("code") == "keys")


def test_two_msg_talk_end_to_end_and_compare_safety_numbers(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    bob_proc = listener(server, bob)
    try:
        events = run(server, alice, f"/msg {bob} {SECRET}\n/fingerprint {bob}\n")
        assert events[0]["status"] == 0, events
        got = read_events(bob_proc, "deliver")[-1]
        assert got["text"] == SECRET and got["e2e"] is True
        assert bob_proc.stdin is not None
        bob_proc.stdin.write(f"/fingerprint {alice}\n")
        bob_proc.stdin.flush()
        theirs = read_events(bob_proc, "fingerprint")[-1]
        ours = next(e for e in events if e.get("event") == "fingerprint")
        assert ours["number"] == theirs["number"] and ours["words"] == theirs["words"]
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        bob_proc.wait(timeout=30)
    db = sqlite3.connect(Path(server.data_dir) / "csce513msg.db")
    bodies = [body for (body,) in db.execute("SELECT body FROM messages WHERE content_type = 2")]
    assert bodies and all(SECRET.encode() not in body for body in bodies)


def test_a_key_change_holds_the_message_until_trust(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    bob_proc = listener(server, bob)
    assert bob_proc.stdin is not None
    run(server, alice, f"/msg {bob} first\n")
    read_events(bob_proc, "deliver")
    bob_proc.stdin.close()
    bob_proc.wait(timeout=30)
    reset = subprocess.Popen(
        [*msg_cmd(server, bob, "--json", "--reset-keys")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )  # bob reinstalled: new keys
    try:
        read_events(reset, "login")
        held = run(server, alice, f"/msg {bob} are you really bob?\n/trust {bob}\n")
        kinds = [e.get("event") for e in held]
        assert "key_warning" in kinds and "held" in kinds and "trusted" in kinds, held
        assert kinds.index("held") < kinds.index("trusted")
        got = read_events(reset, "deliver")[-1]
        assert got["text"] == "are you really bob?" and got["e2e"] is True  # sent after /trust, to the new keys
    finally:
        assert reset.stdin is not None
        reset.stdin.close()
        reset.wait(timeout=30)


def test_one_msg_per_vault_and_a_wrong_passphrase_stops_after_login(server: ServerProcess, names: Names) -> None:
    alice = names("alice")
    first = listener(server, alice)
    try:
        second = run(server, alice, "")
        assert second[0]["status"] == 1 and "in use by another client" in keys_error(second), second
    finally:
        assert first.stdin is not None
        first.stdin.close()
        first.wait(timeout=30)
    wrong = run(server, alice, "", env={"MSG_KEY_PASSPHRASE": "not the passphrase"})
    assert wrong[0]["status"] == 1 and "wrong passphrase" in keys_error(wrong), wrong
    assert any(e.get("event") == "login" for e in wrong[1:])  # the server let alice in: the keys did not open


def test_a_file_sent_by_msg_is_ciphertext_on_the_server(server: ServerProcess, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    canary = (SECRET + "\n").encode() * 3000  # 81 kB: two STREAM chunks
    path = tmp_path / "answers.txt"
    path.write_bytes(canary)
    bob_proc = receiver(server, bob, tmp_path / "dl", "1M")
    try:
        done = run(server, alice, f"/sendfile {bob} {path}\n")
        assert done[0]["status"] == 0, done
        saved = read_events(bob_proc, "saved")[-1]
        assert Path(str(saved["path"])).read_bytes() == canary  # decrypted, chunk by chunk, and checked
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        bob_proc.wait(timeout=30)
    stored = [p for p in (Path(server.data_dir) / "files").iterdir() if not p.suffix]
    assert stored and all(SECRET.encode() not in p.read_bytes() for p in stored)
    records = [p.read_text() for p in (Path(server.data_dir) / "files").glob("*.json")]
    assert records and all("answers" not in r for r in records)  # nor its name
