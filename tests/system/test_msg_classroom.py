"""The classroom as its users see it: an instructor and a student, each in an interactive
``msg`` on a pseudo-terminal rendered by pyte (``test_interactive.Terminal``), against a
real server. An announcement that asks to be confirmed, its confirmation, a raised hand,
the queue and the take that switches both conversations. The client's behaviour: one
backend. Every wait is for text on a screen, bounded."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.wire import PASSWORD, register
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import MSGSRV, msg_cmd
from tests.system.test_interactive import Terminal, env

BACKEND = "epoll" if IS_LINUX else "select"
QUESTION = "how do I close a socket?"


@pytest.fixture
def classroom(tmp_path: Path, names: Names) -> Iterator[tuple[ServerProcess, str, str]]:
    """A server on a fresh data directory with an instructor made by ``msgsrv user add``
    before it starts (so the login cannot race its accounts poll), and a student's name."""
    data, prof, student = str(tmp_path / "data"), names("prof"), names("stu")
    made = subprocess.run([*MSGSRV, "user", "add", prof, "--role", "instructor", "--data-dir", data,
                           "--kdf-cost", "test"], input=PASSWORD + "\n", capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    server = ServerProcess(BACKEND, "--data-dir", data)
    try:
        register(server, student)
        yield server, prof, student
    finally:
        server.stop()


def lines_matching(term: Terminal, pattern: str) -> int:
    return len(re.findall(pattern, term.text, re.M))


def test_announce_confirm_raise_queue_and_next(classroom: tuple[ServerProcess, str, str]) -> None:
    server, prof, student = classroom
    in_colour = {k: v for k, v in env().items() if k != "NO_COLOR"}  # the student's: announcements stand out
    teacher = Terminal(msg_cmd(server, prof, account=False)[3:], env())
    pupil = Terminal(msg_cmd(server, student, account=False)[3:], in_colour)
    try:
        teacher.wait_for(rf"logged in as {prof} \(instructor\)")
        pupil.wait_for(rf"logged in as {student} \(student\)")

        # an announcement that asks to be confirmed: its own style, the hint, never a conversation
        teacher.type("/announce! read chapter 3\r")
        number = pupil.wait_for(rf"ANNOUNCEMENT #(\d+) from {prof}: read chapter 3$").group(1)
        pupil.wait_for(rf"^  \(please confirm you read it: /confirm {number}\)$")
        rows = [y for y, line in enumerate(pupil.screen.display) if "ANNOUNCEMENT #" in line or "/confirm " in line]
        assert len(rows) == 2
        for y in rows:
            text = pupil.screen.display[y].rstrip()
            cells = [pupil.screen.buffer[y][x] for x in range(len(text)) if text[x] != " "]
            assert all(c.fg == "brown" and c.bold for c in cells), text  # bold yellow (pyte: "brown")
        pupil.wait_for(r"^>$")  # the prompt: still nobody's conversation
        teacher.wait_for(rf"✓ \[\d\d:\d\d\] you -> #announcements/{number}: read chapter 3$")

        pupil.type("/confirm\r")  # the newest that asks
        pupil.wait_for(rf"^you confirmed announcement #{number}$")
        teacher.type("/confirmed\r")
        teacher.wait_for(rf"^announcement #{number}: confirmed by {student} \(1\); not yet: nobody \(0\)$")

        # office hours: the hand, the queue the staff sees (pushed, then asked), the take
        pupil.type(f"/raise {QUESTION}\r")
        pupil.wait_for(r"^\* your hand is up: place 1 of 1$")
        teacher.wait_for(rf"^\* {student} raised a hand: {re.escape(QUESTION)} \(1 waiting\)$")  # pushed
        teacher.type("/queue\r")  # asked: the whole queue, a hand a line
        teacher.wait_for(r"^queue: 1 waiting$")
        teacher.wait_for(rf"^  1\. {student} \(\d+ s\): {re.escape(QUESTION)}$")

        teacher.type("/next\r")
        teacher.wait_for(rf"^you took {student}'s hand: talking to {student}$")
        teacher.wait_for(r"^queue: empty$")
        teacher.wait_for(rf"^{student}>$")  # the prompt names the conversation
        pupil.wait_for(rf"^\* {prof} took your hand: talking to {prof}$")
        pupil.wait_for(rf"^{prof}>$")

        pupil.type("thank you\r")  # a plain line now goes to the instructor
        teacher.wait_for(rf"\[\d\d:\d\d\] {student} 🔒: thank you$")  # both have keys: end to end
    finally:
        teacher.close()
        pupil.close()
