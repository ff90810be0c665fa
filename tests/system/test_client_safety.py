"""What a peer sends reaches another student's terminal inert (issue 12's escape injection):
real ``msg`` processes against a real server; the client's behaviour, so one backend."""

from __future__ import annotations

import os
import select
import subprocess
import time

from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import listener, msg_cmd, read_events

BACKENDS = ["epoll" if IS_LINUX else "select"]
ATTACK = "\033[1;31mRED\033]0;pwned\007\033[2J\033[H\u202eevil"


def test_escape_sequences_from_a_peer_are_printed_as_visible_text(server: ServerProcess, names: Names) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    carol_json = listener(server, carol)  # shows what --json gets
    alice_proc = subprocess.Popen(msg_cmd(server, alice), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        _read_until(alice_proc, b"logged in as")  # online: the message is delivered live
        script = f"/msg {alice} {ATTACK}\n/msg {carol} {ATTACK}\n"
        done = subprocess.run(msg_cmd(server, bob), input=script, text=True, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "\x1b" not in done.stdout  # the sender's own echo is inert too
        seen = _read_until(alice_proc, b"evil")
        assert b"\x1b" not in seen and b"\x07" not in seen and "\u202e".encode() not in seen
        assert b"\\x1b[1;31mRED\\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\u202eevil" in seen
        (deliver,) = [e for e in read_events(carol_json, "deliver") if e["event"] == "deliver"]
        assert deliver["text"] == ATTACK  # --json keeps the exact text (JSON-escaped on the wire)
    finally:
        for proc in (alice_proc, carol_json):
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=15)


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 15.0) -> bytes:
    """Read ``proc``'s output until ``marker``, at most ``timeout`` seconds (never blocks longer)."""
    assert proc.stdout is not None
    fd, seen, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while marker not in seen and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    assert marker in seen, seen
    return seen
