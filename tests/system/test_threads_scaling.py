"""threads: the main thread's work must not grow with the number of connections.

The main thread wakes for the engine's timers and for close deadlines. It used to walk
every connection on each wake-up (for close deadlines), under the engine mutex that
every other thread waits for (issue 9 reported a SIGTERM with 10,000 connections taking
222 s). The test makes it wake often
(``--account-poll``: the engine's timer every few milliseconds) and compares the main
thread's CPU with one connection and with ``IDLE`` more: what is due is the same, so
the cost must be too, within a generous factor. A walk over ``IDLE`` connections per
wake-up costs several times what the wake-up itself does.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.conformance.wire import RawConn
from tests.servers import ServerProcess, start

BACKENDS = ["threads"]
IDLE = 3000
TICK = os.sysconf("SC_CLK_TCK")


def main_thread_cpu(server: ServerProcess) -> float:
    """CPU seconds (user + system) of the server's main thread (its task id is the pid)."""
    fields = Path(f"/proc/{server.pid}/task/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_share(server: ServerProcess, window: float = 1.5) -> float:
    """The main thread's share of a core over ``window`` seconds."""
    cpu, start_time = main_thread_cpu(server), time.monotonic()
    time.sleep(window)
    return (main_thread_cpu(server) - cpu) / (time.monotonic() - start_time)


def test_the_main_threads_work_does_not_grow_with_idle_connections(backend: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE + 200:
        pytest.skip(f"needs {IDLE + 200} open files; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE + 200), hard))
    # --account-poll 0.01: the most often msgsrv allows (its range starts there)
    server = start(backend, "--account-poll", "0.01", "--close-timeout", "0.5", "--log-level", "warning")
    socks: list[socket.socket] = []
    try:
        first = RawConn(server)
        first.welcome()  # with a session, the account poll runs: ~100 wake-ups a second
        alone = cpu_share(server)
        for _ in range(IDLE):
            socks.append(socket.create_connection(server.address))
        for s in socks:  # each has its reader and writer thread, and a session
            s.settimeout(30)
            assert s.recv(4096)
        crowded = cpu_share(server)
        print(f"\nSHARE alone {alone:.3f} crowded {crowded:.3f}")
        assert crowded < 2 * alone + 0.02, f"main thread: {alone:.1%} of a core alone, {crowded:.1%} with {IDLE} idle"
        first.close()
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        server.stop()
