"""``msgsrv --stats``: a live line in the server window, for a class to watch.

Every ``interval`` seconds a daemon thread prints, to the server window::

    stats: epoll | 212 connections, 180 users online | 4,980 msg/s, 4,975 deliveries/s | CPU 88% | RSS 61.3 MB

It reads the snapshot the engine publishes at flush (``Engine.snapshot``: one immutable
object, never the engine's own state, which only the loop may touch) and the process's
own /proc figures (CPU is
user + system time of every thread, as the benchmarks measure it). Reading a few
ints and lengths from another thread is safe in CPython; a line may be a pass stale.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from ..hub import Engine

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def start(engine: Engine, backend: str, interval: float) -> threading.Thread:
    """Print a stats line every ``interval`` seconds until the process exits."""
    thread = threading.Thread(target=_loop, args=(engine, backend, interval), name="stats", daemon=True)
    thread.start()
    return thread


def _loop(engine: Engine, backend: str, interval: float) -> None:
    last = (time.monotonic(), _cpu(), engine.snapshot)
    while True:
        time.sleep(interval)
        now, cpu, snap = time.monotonic(), _cpu(), engine.snapshot
        elapsed = now - last[0]
        stored = (snap.stored - last[2].stored) / elapsed
        delivered = (snap.delivered - last[2].delivered) / elapsed
        cpu_share = (cpu - last[1]) / elapsed if cpu is not None and last[1] is not None else None
        cpu_text = f"CPU {cpu_share:.0%}" if cpu_share is not None else "CPU ?"
        print(
            f"stats: {backend} | {snap.connections} connections, {snap.users_online} users online"
            f" | {stored:,.0f} msg/s, {delivered:,.0f} deliveries/s | {cpu_text} | RSS {_rss_mb()}",
            file=sys.stderr,
            flush=True,
        )
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
