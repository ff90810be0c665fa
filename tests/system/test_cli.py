"""The ``msg`` and ``msgsrv`` command lines as real processes."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

from tests.conformance.wire import register
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess, fingerprint_of

#: the command lines, not the I/O strategy, are under test here (the conformance suite runs
#: the same chat on all six): one backend
BACKENDS = ["epoll" if IS_LINUX else "select"]
MSG = [sys.executable, "-m", "csce513msg.cli.msg"]
MSGSRV = [sys.executable, "-m", "csce513msg.cli.msgsrv"]


def msg_cmd(server: ServerProcess, user: str, *extra: str, account: bool = True) -> list[str]:
    """``msg`` logging in as ``user`` (its password in MSG_PASSWORD, see conftest); with
    ``account``, the account is registered over the wire first, if it is new."""
    if account:
        if "tls:" in server.banner:
            register(server, user, tls=True, fingerprint=fingerprint_of(server))
        else:
            register(server, user)
    return [*MSG, "--server", f"{server.host}:{server.port}", "--user", user, *extra]


def listener(server: ServerProcess, user: str) -> subprocess.Popen[str]:
    """A ``msg --json`` process logged in as ``user``, its stdin a pipe kept open."""
    proc = subprocess.Popen(msg_cmd(server, user, "--json"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    read_events(proc, "login")
    return proc


def read_events(proc: subprocess.Popen[str], until: str, timeout: float = 15.0) -> list[dict[str, object]]:
    """Read --json lines from ``proc`` until an event named ``until`` arrives."""
    lines = _line_queue(proc)
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break  # end of output
        events.append(json.loads(line))
        if events[-1]["event"] == until:
            return events
    raise AssertionError(f"no {until!r} event within {timeout} s; got {events}")


_queues: dict[int, queue.Queue[str | None]] = {}


def _line_queue(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """One reader thread per process: select() cannot see lines already in Python's buffer."""
    if proc.pid not in _queues:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        _queues[proc.pid] = lines
    return _queues[proc.pid]


def test_two_cli_processes_chat(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    bob_proc = listener(server, bob)
    try:
        script = f"/msg {bob} hello from alice\n/who\n"
        done = subprocess.run(
            msg_cmd(server, alice, "--json"), input=script, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        alice_events = [json.loads(line) for line in done.stdout.splitlines()]
        receipts = [e for e in alice_events if e["event"] == "receipt"]
        assert receipts and receipts[0]["state"] == "stored" and receipts[0]["to"] == bob
        (who,) = [e for e in alice_events if e["event"] == "who"]
        assert alice in who["users"] and bob in who["users"]
        events = read_events(bob_proc, "deliver")
        assert (events[-1]["sender"], events[-1]["text"]) == (alice, "hello from alice")
    finally:
        assert bob_proc.stdin is not None
        bob_proc.stdin.close()
        status = bob_proc.wait(timeout=15)
    assert status == 0  # end of input with nothing pending


def test_unknown_recipient_prints_a_clear_error_and_fails(server: ServerProcess, names: Names) -> None:
    alice = names("alice")
    done = subprocess.run(
        msg_cmd(server, alice),
        input=f"/msg {names('ghost')} boo\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "! user_not_found: no user" in done.stderr  # errors on stderr, the conversation on stdout
    assert "user_not_found" not in done.stdout
