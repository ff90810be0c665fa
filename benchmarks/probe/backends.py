"""Probes of the I/O backends (issue 9, defects 4, 5 and 8).

- ``asyncio-reset``: clients pinging while one client after another sends a bad frame
  and goes away; the figure is the longest any pinger waited for its Pong (capped at
  ``cap`` s). Run it with ``--backend asyncio`` or ``uvloop``; it runs on any backend.
- ``emfile``: the server out of file descriptors (its RLIMIT_NOFILE lowered to
  ``limit``; a server that has ``--max-connections`` gets it far above the limit, so
  accept fails first) with clients waiting in the backlog; the figures are its CPU and
  how fast its log grows. ``--backend all`` runs the six in turn.
- ``threads-10k``: SIGTERM with N idle logged-in connections (``-p connections=N``,
  default 10,000), held by a child process with its own raised RLIMIT_NOFILE; the
  figures are the time the server takes to exit, its CPU and context switches during
  the shutdown, and when the first and last close-timeout abort and the last
  disconnect happened. ``-p hogs=N`` adds busy processes during the shutdown.

The clients never answer the server's goodbye: the close timeout (5 s by default) is
part of every exit time.
"""

from __future__ import annotations

import datetime
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.probe import probe
from benchmarks.probe.common import HERE, Server
from csce513msg.backends import BACKENDS
from csce513msg.protocol import (
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LoginOk,
    Ping,
    Pong,
    Register,
    Welcome,
    decode,
    encode,
)

PASSWORD = "probe password"
HOG = "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end: pass"  # a bounded busy loop
BAD_FRAME = b"\xff\xff\xff\xff" + bytes(8)  # a prefix declaring a 4 GiB frame: FRAME_TOO_LARGE, closes


class Pinger(threading.Thread):
    """One client that pings until ``stop``, one Ping in flight at a time."""

    def __init__(self, address: tuple[str, int], stop: float, cap: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(address)
        self.decoder = FrameDecoder(1 << 20)
        self.stop, self.cap = stop, cap
        self.worst = 0.0  # the longest wait for a Pong, seconds
        self.pongs = 0
        self.stuck = False  # a Pong did not come within ``cap``
        assert isinstance(self._next(cap), Welcome)

    def _next(self, timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not data:
                return None
            frames = list(self.decoder.feed(data))
            if frames:
                return decode(frames[-1])

    def run(self) -> None:
        rid = 0
        while time.monotonic() < self.stop:
            rid += 1
            sent = time.monotonic()
            self.sock.sendall(encode(Ping(b"probe", request_id=rid)))
            reply = self._next(self.cap)
            waited = time.monotonic() - sent
            self.worst = max(self.worst, waited)
            if not isinstance(reply, Pong):
                self.stuck = True
                return
            self.pongs += 1
            time.sleep(0.01)  # 100 pings a second: well inside the rate limit we set

    def close(self) -> None:
        self.sock.close()


@probe("asyncio-reset")
def asyncio_reset(
    tree: Path | None, backend: str, clients: int = 20, rounds: int = 50, cap: float = 30.0
) -> dict[str, Any]:
    """20 clients pinging while one after another sends a bad frame and goes: the longest stall."""
    server = Server(tree, backend, "--rate", "100000", "--burst", "100000")
    try:
        trouble = 0.02 * rounds + 1.0  # the bad clients come every 20 ms
        stop = time.monotonic() + trouble
        pingers = [Pinger((server.host, server.port), stop, cap) for _ in range(clients)]
        for p in pingers:
            p.start()
        for _ in range(rounds):
            bad = socket.create_connection((server.host, server.port))
            bad.settimeout(10)
            bad.recv(4096)  # the Welcome
            bad.sendall(BAD_FRAME)
            bad.close()  # FIN; the server's error reply then meets a closed socket: RST
            time.sleep(0.02)
        for p in pingers:
            p.join(trouble + cap + 5)
            p.close()
        log = server.log()
        worst = sorted(p.worst for p in pingers)
        return {
            "clients": clients,
            "bad_clients": rounds,
            "longest_stall_s": round(worst[-1], 3),
            "median_worst_stall_s": round(worst[len(worst) // 2], 3),
            "stuck_clients": sum(p.stuck for p in pingers),
            "cap_s": cap,
            "pongs": sum(p.pongs for p in pingers),
            "tracebacks_in_log": log.count("Traceback"),
        }
    finally:
        server.terminate(20)
        server.stop()


def _supports(tree: Path | None, flag: str) -> bool:
    """Whether the server in ``tree`` has ``flag`` (a tree from before a fix may not)."""
    source = ((tree or HERE) / "csce513msg" / "cli" / "msgsrv.py").read_text()
    return flag.lstrip("-").replace("-", "_") in source


@probe("emfile")
def emfile(tree: Path | None, backend: str, limit: int = 64, extra: int = 40, window: float = 2.0) -> dict[str, Any]:
    """Out of file descriptors: server CPU % and log bytes/s while clients wait (--backend all: six)."""
    if backend == "all":
        return {b: emfile(tree, b, limit, extra, window) for b in BACKENDS}

    def low_limit() -> None:  # _raise_fd_limit raises soft to hard: lower both
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    flags = ["--max-connections", "100000"] if _supports(tree, "--max-connections") else []  # force EMFILE
    server = Server(tree, backend, *flags, preexec=low_limit)
    socks: list[socket.socket] = []
    try:
        for _ in range(limit + extra):  # more than the server can hold: the rest wait in its backlog
            socks.append(socket.create_connection((server.host, server.port)))
        time.sleep(1.0)  # let the server reach the limit
        before, log_before, start = server.sample(), os.path.getsize(server.log_path), time.monotonic()
        time.sleep(window)
        after, log_after, end = server.sample(), os.path.getsize(server.log_path), time.monotonic()
        welcomed = sum(_first_bytes(s) for s in socks)
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(0.5)
        later = socket.create_connection((server.host, server.port))
        socks.append(later)
        return {
            "fd_limit": limit,
            "clients": limit + extra,
            "welcomed": welcomed,
            "cpu_percent": round(100 * (after.cpu - before.cpu) / (end - start), 1),
            "log_bytes_per_s": round((log_after - log_before) / (end - start)),
            "accepts_after_clients_left": _first_bytes(later, 5.0),
        }
    finally:
        for s in socks:
            s.close()
        server.terminate(30)
        server.stop()


def _first_bytes(sock: socket.socket, timeout: float = 0.2) -> bool:
    """Whether the server sent this client anything (a Welcome) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return bool(sock.recv(64))
    except OSError:
        return False


@probe("threads-10k")
def threads_10k(tree: Path | None, backend: str, connections: int = 10_000, hogs: int = 0) -> dict[str, Any]:
    """SIGTERM with N idle logged-in connections (-p connections=N): seconds until the server exits.

    ``hogs``: busy processes competing for the CPU during the shutdown (a shared machine;
    each stops when the server has exited, or after 300 s)."""
    server = Server(tree, backend)  # the default log level: a line per login, logout, abort
    holder = None
    try:
        cmd = [sys.executable, "-m", "benchmarks.probe.backends", str(server.port), str(connections)]
        holder = subprocess.Popen(cmd, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdin is not None
        started = time.monotonic()
        line = holder.stdout.readline()  # "ready N" once every connection is logged in
        if not line.startswith("ready"):
            raise RuntimeError(f"the connections did not come up: {line!r}")
        login_s = time.monotonic() - started
        held, switches = server.sample(), _context_switches(server.pid)
        busy = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
        signalled = time.time()
        server.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(server.pid, 0)  # the whole process's CPU and context switches
        exit_s = time.time() - signalled
        for hog in busy:
            hog.kill()
            hog.wait()
        server.proc.returncode = os.waitstatus_to_exitcode(status)
        holder.stdin.write("quit\n")
        holder.stdin.flush()
        return {
            "connections": connections,
            "hogs": hogs,
            "logins_s": round(login_s, 1),
            "server_threads": held.threads,
            "server_rss_mib": round(held.rss_kib / 1024),
            "sigterm_exit_s": round(exit_s, 1),
            "shutdown_cpu_s": round(usage.ru_utime + usage.ru_stime - held.cpu, 1),
            "shutdown_context_switches": usage.ru_nvcsw + usage.ru_nivcsw - switches,
            **_phases(server.log(), signalled),
            "exit_status": server.proc.returncode,
        }
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        server.stop()


def _context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches so far, summed over every thread."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return total


def _phases(log: str, signalled: float) -> dict[str, float | None]:
    """Seconds from SIGTERM to the first and last close-timeout abort and the last disconnect."""
    stamps: dict[str, list[float]] = {"abort": [], "disconnect": []}
    for line in log.splitlines():
        kind = "abort" if " abort #" in line else "disconnect" if " disconnect #" in line else None
        if kind:
            when = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - signalled
            if when > 0:
                stamps[kind].append(when)
    return {
        "first_abort_s": round(min(stamps["abort"]), 1) if stamps["abort"] else None,
        "last_abort_s": round(max(stamps["abort"]), 1) if stamps["abort"] else None,
        "last_disconnect_s": round(max(stamps["disconnect"]), 1) if stamps["disconnect"] else None,
    }


def hold(port: int, count: int, batch: int = 50, timeout: float = 600.0) -> None:
    """In the child: ``count`` connections logged in (registered) as idle0...; "ready", then
    hold them, never reading, until a line on stdin. Batches stay under the server's
    limit of logins in progress (64), and one refused as RATE_LIMITED asks again."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # our own raised limit
    deadline = time.monotonic() + timeout
    socks: list[socket.socket] = []
    for first in range(0, count, batch):
        waiting: dict[int, tuple[socket.socket, FrameDecoder, bytes]] = {}
        for i in range(first, min(count, first + batch)):
            sock = socket.create_connection(("127.0.0.1", port))
            register = encode(Register(f"idle{i}", PASSWORD, f"dev{i}", request_id=2))
            sock.sendall(encode(Hello(request_id=1)) + register)
            waiting[sock.fileno()] = (sock, FrameDecoder(1 << 20), register)
            socks.append(sock)
        poller = select.poll()  # select() stops at descriptor 1024
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        while waiting:  # pipelined: wait for every LoginOk of the batch
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out with {len(waiting)} logins pending")
            for fd, _ in poller.poll(1000):
                sock, decoder, register = waiting[fd]
                data = sock.recv(65536)
                if not data:
                    raise SystemExit("the server closed a connection during login")
                replies = [decode(f) for f in decoder.feed(data)]
                if any(isinstance(r, LoginOk) for r in replies):
                    del waiting[fd]
                    poller.unregister(fd)
                elif any(isinstance(r, Error) and r.code == ErrorCode.RATE_LIMITED for r in replies):
                    time.sleep(0.01)
                    sock.sendall(register)  # too many logins at once: ask again
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    hold(int(sys.argv[1]), int(sys.argv[2]))
