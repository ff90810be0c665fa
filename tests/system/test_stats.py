"""``msgsrv --stats``: the live line in the server window (a thread reading the engine's
counters and /proc; nothing in it depends on the I/O strategy, so one backend)."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyte

from csce513msg.cli.stats import LiveLine, _Above
from tests.conformance.wire import connect
from tests.fixtures import Names
from tests.servers import IS_LINUX, ServerProcess

BACKENDS = ["epoll" if IS_LINUX else "select"]
SERVER_FLAGS = ("--stats", "--stats-interval", "0.2")


def test_the_stats_line_follows_connections_and_messages(server: ServerProcess, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    a, b = connect(server, alice), connect(server, bob)
    server.wait_log("2 connections, 2 users online")
    for i in range(50):
        a.send_text(bob, f"m{i}")
    b.deliveries(50)
    deadline = time.monotonic() + 10
    rates: list[float] = []
    while time.monotonic() < deadline and not any(rates):
        rates = [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,.]+) msg/s", server.log())]
        time.sleep(0.1)
    assert any(rate > 0 for rate in rates), server.log()[-2000:]
    assert re.search(r"stats: \w+ \| 2 connections.*CPU \d+% \| RSS [\d.]+ MB", server.log())
    # the loop's wake-ups and the CPU inside each wait (backends.common.WAITS; workload 7 reads them)
    found = re.findall(r"\| ([\d,]+) wake-ups/s, [\d.]+ µs CPU per wait", server.log())
    woke = [float(w.replace(",", "")) for w in found]
    assert any(w > 0 for w in woke), server.log()[-2000:]
    a.close()
    b.close()


def test_on_a_terminal_the_stats_line_updates_in_place_below_the_log(tmp_path: Path) -> None:
    """On a terminal: one line rewritten in place (carriage return, erase line), and a log
    line printed while it shows erases it, prints on a line of its own, and redraws it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the server, on the terminal
        flags = ["--port", "0", "--stats", "--stats-interval", "0.2", "--durability", "memory", "--kdf-cost", "test"]
        os.execv(sys.executable, [sys.executable, "-m", "csce513msg.cli.msgsrv", *flags])
    output = b""
    try:
        output = _read_pty(fd, output, lambda out: b"\x1b[Kstats:" in out)
        listening = re.search(rb"listening on 127\.0\.0\.1:(\d+)", output)
        assert listening, output[-1500:]
        port = int(listening.group(1))
        with socket.create_connection(("127.0.0.1", port)):
            output = _read_pty(fd, output, lambda out: b"connect #1" in out and out.count(b"\x1b[Kstats:") >= 4)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    live = output[output.index(b"\x1b[Kstats:") :]
    assert not re.search(rb"stats: [^\r]*\n", live)  # the live line never ends a line: it is erased
    log_line = re.search(rb"\r\x1b\[K([^\r\n]*connect #1[^\r\n]*)\r?\n(stats: [^\r]*)", live)
    assert log_line, live[-1500:]  # erased, the log line, then the live line drawn again
    assert log_line.group(2).startswith(b"stats: epoll | ")


def _read_pty(fd: int, output: bytes, done: Callable[[bytes], bool], timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while not done(output) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            output += os.read(fd, 65536)
    assert done(output), output[-1500:]
    return output


def test_lines_printed_in_pieces_stay_above_the_live_line() -> None:
    """print() writes its text and its line feed apart: neither may erase the other."""
    out = io.StringIO()
    live = LiveLine(out)
    above = _Above(out, live)
    live.show("stats: one")
    above.write("banner line")  # print("banner line") ...
    above.write("\n")  # ... then its line feed
    live.show("stats: two")
    above.write("2026-12-01 INFO log line\n")  # logging writes a whole line at once
    live.show("stats: three")
    screen = pyte.Screen(60, 6)
    pyte.Stream(screen).feed(out.getvalue().replace("\n", "\r\n"))
    rows = [row.rstrip() for row in screen.display]
    assert rows[:3] == ["banner line", "2026-12-01 INFO log line", "stats: three"], rows
