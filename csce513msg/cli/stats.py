"""``msgsrv --stats``: a live line in the server window, for a class to watch.

Every ``interval`` seconds a daemon thread shows::

    stats: epoll | 212 connections, 180 users online | 4,980 msg/s, 4,975 deliveries/s | CPU 88% | RSS 61.3 MB
           | 2,410 wake-ups/s, 4.1 µs CPU per wait                        (one line, cut here)

On a terminal it is one line at the bottom of the window, rewritten in place
(``LiveLine``): the log lines scroll above it. Piped to a file, each update is a
plain line of its own, so a log keeps the history.

It reads the snapshot the engine publishes at flush (``Engine.snapshot``: one immutable
object, never the engine's own state, which only the loop may touch) and the process's
own /proc figures (CPU is user + system time of every thread, as the benchmarks
measure it). A line may be a pass stale.

The last part is the loop's (``backends.common.WAITS``): its wake-ups (waits in
select, poll, epoll or the asyncio loop's selector) and the CPU its thread spent inside
each wait, which grows with the sockets watched for select and poll and not for epoll.
threads and uvloop have no wait of ours to count, so they leave it out. The benchmark's
workload 7 reads these lines (``benchmarks/suite.py`` ``stats_rates``): keep the words.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO, cast

from ..backends.common import Waits
from ..hub import Engine

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CLEAR = "\r\x1b[K"  #: back to the start of the line, and erase it


class LiveLine:
    """One line kept at the bottom of a terminal while other lines print above it.

    ``sys.stdout`` and ``sys.stderr`` are replaced by proxies that erase the live line,
    write, and draw it again after a complete line, under one lock: a log line from the
    loop and an update from the stats thread never interleave."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.text = ""
        self.drawn = False  #: the live line is what the cursor's line shows now
        self.partial = False  #: a line above was begun and not ended (print writes "\n" apart)
        self.lock = threading.Lock()

    @classmethod
    def on_terminal(cls) -> LiveLine | None:
        """A live line on stderr if it is a terminal (and install the proxies), else None."""
        if not sys.stderr.isatty():
            return None
        live = cls(sys.stderr)
        # a proxy is a TextIO by delegation (_Above.__getattr__); typeshed types sys.stdout
        # as TextIO | Any, so only the cast makes mypy see what is assigned
        sys.stdout = cast(TextIO, _Above(sys.stdout, live))
        sys.stderr = cast(TextIO, _Above(sys.stderr, live))
        atexit.register(live.end)
        return live

    def show(self, text: str) -> None:
        try:
            width = os.get_terminal_size(self.terminal.fileno()).columns or 200  # 0: a terminal of unknown size
        except OSError:
            width = 200
        with self.lock:
            self.text = text[: max(10, width - 1)]  # longer than the window, it would wrap and not be erased
            if not self.partial:  # never over half a line: it is drawn when that line ends
                self.terminal.write(CLEAR + self.text)
                self.terminal.flush()
                self.drawn = True

    def end(self) -> None:
        with self.lock:
            if self.drawn:
                self.terminal.write("\n")
            self.text, self.drawn = "", False
            self.terminal.flush()


class _Above:
    """A stream whose lines print above the live line."""

    def __init__(self, stream: TextIO, live: LiveLine) -> None:
        self.stream = stream
        self.live = live

    def write(self, text: str) -> int:
        live = self.live
        with live.lock:
            if live.drawn and text:  # erase the live line, once, before what goes above it
                live.terminal.write(CLEAR)
                live.terminal.flush()
                live.drawn = False
            self.stream.write(text)
            self.stream.flush()
            if text:
                live.partial = not text.endswith("\n")
            if live.text and not live.partial and not live.drawn:
                live.terminal.write(live.text)
                live.terminal.flush()
                live.drawn = True
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def start(engine: Engine, backend: str, interval: float, live: LiveLine | None, waits: Waits) -> threading.Thread:
    """Show a stats line every ``interval`` seconds until the process exits: in place
    on ``live``, else as plain lines on stderr. ``waits``: the loop's (it is timed from now)."""
    waits.timed = True
    args = (engine, backend, interval, live, waits)
    thread = threading.Thread(target=_loop, args=args, name="stats", daemon=True)
    thread.start()
    return thread


def _loop(engine: Engine, backend: str, interval: float, live: LiveLine | None, waits: Waits) -> None:
    last = (time.monotonic(), _cpu(), engine.snapshot)
    last_waits = (waits.calls, waits.cpu_s)
    while True:
        time.sleep(interval)
        now, cpu, snap = time.monotonic(), _cpu(), engine.snapshot
        calls, wait_cpu = waits.calls, waits.cpu_s  # (read while the loop adds: a pass stale at most)
        elapsed = now - last[0]
        stored = (snap.stored - last[2].stored) / elapsed
        delivered = (snap.delivered - last[2].delivered) / elapsed
        cpu_share = (cpu - last[1]) / elapsed if cpu is not None and last[1] is not None else None
        cpu_text = f"CPU {cpu_share:.0%}" if cpu_share is not None else "CPU ?"
        line = (
            f"stats: {backend} | {snap.connections} connections, {snap.users_online} users online"
            f" | {stored:,.0f} msg/s, {delivered:,.0f} deliveries/s | {cpu_text} | RSS {_rss_mb()}"
        )
        if calls:  # a loop of ours (not threads, not uvloop)
            woke = calls - last_waits[0]
            per_wait = (wait_cpu - last_waits[1]) / woke * 1e6 if woke else 0.0
            line += f" | {woke / elapsed:,.0f} wake-ups/s, {per_wait:.1f} µs CPU per wait"
        last_waits = (calls, wait_cpu)
        if live is not None:
            live.show(line)
        else:
            print(line, file=sys.stderr, flush=True)
        last = (now, cpu, snap)


def _cpu() -> float | None:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mb() -> str:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) / 1024:.1f} MB"
    except OSError:
        pass
    return "?"
