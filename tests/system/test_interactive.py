"""``msg`` on a real terminal: a pseudo-terminal whose output pyte renders, so the tests
assert on the screen a student sees, not on bytes. The client's behaviour, so one backend."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest

from csce513msg.protocol import Deliver
from tests.conformance.wire import connect, next_of, register
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess
from tests.system.test_cli import listener, msg_cmd, read_events

BACKENDS = ["epoll" if IS_LINUX else "select"]
COLUMNS, ROWS = 160, 30  # wide: an assertion on a line never meets a wrap
ATTACK = "\033[1;31mRED\033]0;pwned\007\033[2J\033[H\u202eevil"


class Terminal:
    """``msg`` on a pseudo-terminal of COLUMNS x ROWS, its output rendered by pyte."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: msg, on the terminal
            os.execve(sys.executable, [sys.executable, "-m", "csce513msg.cli.msg", *argv], env or dict(os.environ))
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.status: int | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child is gone
                return
            if not data:
                return
            for part in re.split(rb"(\x1b\[6n)", data):
                if part == b"\x1b[6n":  # where is the cursor? answered as a terminal does (CPR)
                    os.write(self.fd, f"\x1b[{self.screen.cursor.y + 1};{self.screen.cursor.x + 1}R".encode())
                else:
                    self.stream.feed(part)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text, re.M):
                return match
            self.pump(0.1)
        raise AssertionError(f"no {pattern!r} on the screen:\n{self.text}")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def input_line(self) -> str:
        """The line with the prompt (above the status bar)."""
        prompts = [line for line in self.text.splitlines() if re.match(r"^(\S+)?> ", line)]
        return prompts[-1] if prompts else ""

    def wait_exit(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"msg did not exit:\n{self.text}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


def env(**more: str) -> dict[str, str]:
    # no colours: every cell a peer's text reaches must then have default attributes
    return {**os.environ, "NO_COLOR": "1", "TERM": "xterm", **more}


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for term in started:
        term.close()


def start(terminals: list[Terminal], server: ServerProcess, user: str, *extra: str, **more: str) -> Terminal:
    register(server, user)
    term = Terminal(msg_cmd(server, user, *extra, account=False)[3:], env(**more))
    terminals.append(term)
    term.wait_for(r"logged in as")
    return term


def test_line_editing_history_and_completion(server: ServerProcess, names: Names, terminals: list[Terminal]) -> None:
    alice, bob = names("alice"), names("bob")
    bob_json = listener(server, bob)
    term = start(terminals, server, alice)
    term.type(f"/msg {bob} helo")
    term.type("\x1b[D")  # Left
    term.type("l\r")  # -> hello
    assert read_events(bob_json, "deliver")[-1]["text"] == "hello"
    term.wait_for(rf"✓✓ \[\d\d:\d\d\] you -> {bob} 🔒: hello$")
    assert not re.search(r"^\S*> /msg", term.text, re.M)  # the typed line gave way to the sent one
    term.type("\x1b[A")  # Up: the last line again
    term.wait_for(rf"> /msg {bob} hello$")
    term.type("\x15")  # Ctrl-U: clear it
    term.type(f"/to {bob[:3]}\t")  # Tab completes the name
    term.wait_for(rf"> /to {bob}$")
    term.type("\r")
    term.wait_for(rf"^talking to {bob} \(end-to-end encrypted\)$")  # bob's msg has keys
    term.wait_for(rf"^{bob}>$")  # the prompt names the conversation
    history = next((Path(os.environ["MSG_CONFIG_DIR"]) / "history").glob(f"{alice}@*"))
    assert history.stat().st_mode & 0o777 == 0o600 and f"/msg {bob} hello" in history.read_text()
    bob_json.stdin.close()  # type: ignore[union-attr]
    bob_json.wait(timeout=15)


def test_a_pasted_block_is_one_message_with_its_indentation(
    server: ServerProcess, names: Names, terminals: list[Terminal]
) -> None:
    alice, bob = names("alice"), names("bob")
    bob_json = listener(server, bob)
    term = start(terminals, server, alice)
    term.type(f"/to {bob}\r")
    block = "def f(x):\n    if x:\n        return 1\n    return 0"
    term.type("\x1b[200~" + block + "\x1b[201~")  # bracketed paste
    term.type("\x1b\r")  # Alt+Enter: one more line in the same message
    term.type("# end\r")
    events = read_events(bob_json, "deliver")
    assert events[-1]["text"] == block + "\n# end"
    term.wait_for(r"^ {0,3}\S* \[\d\d:\d\d\] you -> \S+ 🔒: def f\(x\):\n\s+    if x:\n\s+        return 1")
    long_line = "".join(f"{i:05} " for i in range(1000))  # 6,000 bytes: past the tty's 4,095 of canonical mode
    term.type("\x1b[200~" + long_line + "\x1b[201~\r")
    assert read_events(bob_json, "deliver")[-1]["text"] == long_line
    bob_json.stdin.close()  # type: ignore[union-attr]
    bob_json.wait(timeout=15)


def test_incoming_messages_print_above_what_is_being_typed(
    server: ServerProcess, names: Names, terminals: list[Terminal]
) -> None:
    alice, bob = names("alice"), names("bob")
    term = start(terminals, server, alice)
    term.type("half typed")
    term.pump(0.3)
    peer = connect(server, bob)
    peer.send_text(alice, "interrupting you")
    term.wait_for(rf"\[\d\d:\d\d\] {bob}: interrupting you")
    # intact, still below (waited for: the prompt is erased and redrawn around what prints above
    # it, and a screen read between the two, once in 1,300 tests, found no prompt line at all)
    term.wait_for(r"^(\S+)?> half typed$", timeout=5)
    assert term.input_line().endswith("> half typed")
    term.type(" and finished\r")
    assert next_of(peer, Deliver).body == b"half typed and finished"  # bob wrote first: the conversation
    peer.close()


def test_a_peer_cannot_drive_the_terminal(server: ServerProcess, names: Names, terminals: list[Terminal]) -> None:
    alice, bob = names("alice"), names("bob")
    term = start(terminals, server, alice)
    peer = connect(server, bob)
    texts = [
        ATTACK,
        "[link=https://evil.example]click[/link] [bold red]markup[/] <b>html</b> <style fg='red'>x</style>",
        "\x1b]8;;https://evil.example\x07hyperlink\x1b]8;;\x07 \x1b[6n \x1b[?1049h \x9b31m c1",
        "line one\nline two\ttabbed\r\x1b[Aup",
    ]
    for text in texts:
        peer.send_text(alice, text)
    term.wait_for(r"tabbed")
    shown = term.text
    assert "\\x1b[1;31mRED\\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\u202eevil" in shown
    assert "[link=https://evil.example]click[/link] [bold red]markup[/] <b>html</b>" in shown
    assert "\\x1b]8;;https://evil.example\\x07hyperlink" in shown and "\\x9b31m c1" in shown
    assert re.search(rf"{bob}: line one\n\s+line two    tabbed\\x0d\\x1b\[Aup", shown)
    assert term.screen.title == ""  # OSC 0 never reached the terminal
    for row in range(ROWS - 1):  # every cell but the status bar: default colours, no reverse, no bold
        for char in term.screen.buffer[row].values():
            assert (char.fg, char.bg, char.reverse) == ("default", "default", False), (row, char)
    peer.close()


def test_a_failed_send_keeps_the_conversation_and_quit_exits_0(
    server: ServerProcess, names: Names, terminals: list[Terminal]
) -> None:
    alice, bob = names("alice"), names("bob")
    register(server, bob)
    term = start(terminals, server, alice)
    term.type(f"/to {bob}\r")
    term.type(f"/msg {names('ghost')} boo\r")
    term.wait_for(r"user_not_found")
    term.wait_for(rf"^{bob}>$")  # still bob's conversation
    term.type("/nonsense\r")
    term.wait_for(r"unknown command")
    term.type("/quit\r")
    assert term.wait_exit() == 0  # an interactive /quit is a success, whatever was mistyped


def test_messages_typed_offline_survive_quit_and_a_restart(
    names: Names, terminals: list[Terminal], tmp_path: Path
) -> None:
    alice, bob = names("alice"), names("bob")
    data = str(tmp_path / "data")
    server = ServerProcess(BACKENDS[0], "--data-dir", data)
    port = str(server.port)
    try:
        register(server, bob)
        term = start(terminals, server, alice)
        server.terminate()
        term.wait_for(r"connection lost")
        term.wait_for(r"not connected: retrying in")  # the status bar says so
        term.type("/who\r")
        term.wait_for(r"/who: not connected; retrying in \d+ s")  # an answer, at once
        term.type(f"/msg {bob} sent while offline\r")
        term.wait_for(rf"queued for {bob}: sent when the connection is back \(1 message waiting\)")
        term.type("/quit\r")
        assert term.wait_exit() == 0
        assert "1 message not yet stored by the server: kept" in term.text
        outbox = next((Path(os.environ["MSG_CONFIG_DIR"]) / "outbox").glob(f"{alice}@*"))
        assert outbox.stat().st_mode & 0o777 == 0o600 and outbox.parent.stat().st_mode & 0o777 == 0o700
    finally:
        server.stop()
    server = ServerProcess(BACKENDS[0], "--data-dir", data, "--port", port)  # the same address: the same outbox
    try:
        again = start(terminals, server, alice)
        again.wait_for(r"1 unsent message from last time: sending after the login")
        again.wait_for(rf"\[\d\d:\d\d\] you -> {bob}: sent while offline")
        peer = connect(server, bob)
        assert next_of(peer, Deliver).body == b"sent while offline"
        peer.close()
    finally:
        server.stop()


def test_the_password_is_asked_after_connecting(names: Names, terminals: list[Terminal]) -> None:
    without = {k: v for k, v in env().items() if k != "MSG_PASSWORD"}
    term = Terminal(["--server", "127.0.0.1:1", "--user", names("alice")], without)
    terminals.append(term)
    assert term.wait_exit() == 1
    assert "cannot connect to 127.0.0.1:1" in term.text and "password" not in term.text


def test_the_config_file_gives_server_and_user(server: ServerProcess, names: Names, tmp_path: Path) -> None:
    alice = names("alice")
    register(server, alice)
    config = tmp_path / "msg.toml"
    config.write_text(f'server = "localhost:{server.port}"\nuser = "{alice}"\n')
    done = subprocess.run([sys.executable, "-m", "csce513msg.cli.msg", "--config", str(config)], input="/who\n",
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"logged in as {alice}" in done.stdout
    config.write_text('sever = "typo"\n')
    bad = subprocess.run([sys.executable, "-m", "csce513msg.cli.msg", "--config", str(config)], input="",
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "unknown key 'sever'" in bad.stderr


def test_unread_counts_show_in_the_status_bar(server: ServerProcess, names: Names, terminals: list[Terminal]) -> None:
    alice, bob, carol = names("alice"), names("bob"), names("carol")
    register(server, bob)
    term = start(terminals, server, alice)
    term.type(f"/to {bob}\r")
    term.wait_for(rf"^talking to {bob}$")  # bob has no keys: a plain conversation
    peer = connect(server, carol)
    peer.send_text(alice, "psst")
    peer.send_text(alice, "over here")
    term.wait_for(rf"unread: {carol} 2")
    term.type(f"/to {carol}\r")
    term.wait_for(rf"^{carol}>$")
    term.pump(1.5)  # the status bar is redrawn at least once a second
    assert "unread" not in term.text
    peer.close()


def test_a_refused_login_says_why_and_exits_1(server: ServerProcess, names: Names, terminals: list[Terminal]) -> None:
    alice = names("alice")
    register(server, alice)
    term = Terminal(msg_cmd(server, alice, account=False)[3:], env(MSG_PASSWORD="not the password"))
    terminals.append(term)
    assert term.wait_exit() == 1
    assert "auth_failed" in term.text  # the reason reached the screen before the prompt went away
