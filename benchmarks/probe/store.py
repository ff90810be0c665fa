"""Probes of the store (issue 9, defect 9).

- ``login-backlog``: a user with 50,000 unacknowledged messages logs in and out in a
  loop while other clients chat at a modest paced rate; the figures are the others'
  delivery latency (p50, p99) without the loop and with it, and their ratio. Every
  login, and the catch-up read after it, runs in the storage batch that every commit
  waits for (on the storage thread: a batch that reads never runs on the loop): a login
  that reads the whole backlog is everyone's latency.

The backlog is filled over the wire by several senders at once (the server runs with a
high per-connection rate limit for that); the user's device logged in once before, so
all of it is news to it. The loop runs in a process of its own (its socket work does
not share the measuring process's GIL), bounded in logins and in time; it never
acknowledges, so every login finds the same backlog.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import PASSWORD, connect_all, run_dm
from benchmarks.probe import probe
from benchmarks.probe.common import Server
from csce513msg.protocol import FrameDecoder, Hello, Login, LoginOk, MsgType, Register, Send, decode, encode

BACKLOG = 50_000  #: messages waiting for the user who loops
FILLERS = 10  #: connections filling the backlog at once
IN_FLIGHT = 250  #: sends each filler keeps without a receipt
OTHERS = 20  #: clients chatting among themselves
RATE = 200.0  #: their messages per second, in all (paced: open loop)
SECONDS = 8.0  #: each measured phase
MAX_LOGINS = 5_000  #: the loop stops at this many logins, or when the phase ends
VICTIM, DEVICE = "backlogged", "probe-device"
FAST = ("--rate", "1000000", "--burst", "1000000")  # the fillers are not throttled


def _session(port: int, user: str, register: bool = False, device: str = "") -> tuple[socket.socket, FrameDecoder]:
    """A connection logged in (or registered) as ``user``; raises if refused."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    kind = Register if register else Login
    sock.sendall(encode(Hello()) + encode(kind(user, PASSWORD, device, request_id=1)))
    decoder = FrameDecoder(1 << 24)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError(f"{user}: closed before LoginOk")
        for frame in decoder.feed(data):
            if frame.type == MsgType.LOGIN_OK:
                return sock, decoder
            if frame.type == MsgType.ERROR:
                raise ConnectionError(f"{user}: refused")


def _fill(port: int, index: int, count: int) -> None:
    """Send ``count`` messages to VICTIM, at most IN_FLIGHT without a receipt."""
    sock, decoder = _session(port, f"filler{index}", register=True)
    with sock:
        sent = answered = 0
        while answered < count:
            room = min(count - sent, IN_FLIGHT - (sent - answered))
            if room > 0:
                sock.sendall(b"".join(encode(Send(1, 0, 0, VICTIM, b"x" * 60, request_id=1)) for _ in range(room)))
                sent += room
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"filler{index}: closed")
            answered += sum(f.type in (MsgType.RECEIPT, MsgType.ERROR) and f.request_id > 0 for f in decoder.feed(data))


def _login_loop(port: int, until: float, out: multiprocessing.Queue[dict[str, Any]]) -> None:
    """Log VICTIM's device in, wait for LoginOk, leave; again, until ``until`` or MAX_LOGINS."""
    times: list[float] = []
    waiting = None
    while time.monotonic() < until and len(times) < MAX_LOGINS:
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        with sock:
            sock.sendall(encode(Hello()) + encode(Login(VICTIM, PASSWORD, DEVICE, request_id=1)))
            decoder = FrameDecoder(1 << 24)
            done = False
            while not done and (data := sock.recv(1 << 16)):
                for frame in decoder.feed(data):
                    if frame.type == MsgType.LOGIN_OK:
                        reply = decode(frame)
                        waiting = reply.waiting if isinstance(reply, LoginOk) else None
                        done = True
        times.append(time.monotonic() - started)
    times.sort()
    out.put(
        {
            "logins": len(times),
            "login_median_ms": round(times[len(times) // 2] * 1e3, 2) if times else None,
            "logins_per_s": round(len(times) / max(1e-9, sum(times)), 1),
            "waiting_reported": waiting,
        }
    )


@probe("login-backlog")
def login_backlog(tree: Path | None, backend: str) -> dict[str, Any]:
    """others' p50/p99 latency without and with a user with 50,000 unread messages looping logins"""
    server = Server(tree, backend, *FAST)
    try:
        _session(server.port, VICTIM, register=True, device=DEVICE)[0].close()  # its device starts here
        started = time.monotonic()
        fillers = [
            threading.Thread(target=_fill, args=(server.port, i, BACKLOG // FILLERS), daemon=True)
            for i in range(FILLERS)
        ]
        for thread in fillers:
            thread.start()
        for thread in fillers:
            thread.join(600)
        fill_s = time.monotonic() - started
        conns, refused = connect_all(server.port, OTHERS, "chat", register=True)
        assert not refused, "the chatting clients could not log in"
        quiet = run_dm(conns, RATE, SECONDS, 8, 5.0, "chat", seed=1)
        results: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
        loop = multiprocessing.Process(target=_login_loop, args=(server.port, time.monotonic() + SECONDS + 1, results))
        loop.start()
        time.sleep(0.5)  # the loop is under way before the measurement starts
        busy = run_dm(conns, RATE, SECONDS, 8, 5.0, "chat", seed=2)
        looped = results.get(timeout=120)
        loop.join(30)
        for conn in conns:
            conn.sock.close()
    finally:
        server.stop()
    p50 = quiet["latency"]["p50_ms"], busy["latency"]["p50_ms"]
    p99 = quiet["latency"]["p99_ms"], busy["latency"]["p99_ms"]
    return {
        "tree": str(server.tree),
        "backlog": BACKLOG,
        "fill_s": round(fill_s, 1),
        "others": {"clients": OTHERS, "rate": RATE, "seconds": SECONDS},
        "without_loop": {"p50_ms": p50[0], "p99_ms": p99[0], "delivered": quiet["delivered"], "sent": quiet["sent"]},
        "with_loop": {"p50_ms": p50[1], "p99_ms": p99[1], "delivered": busy["delivered"], "sent": busy["sent"]},
        "ratio": {
            "p50": round(p50[1] / p50[0], 1) if p50[0] else None,
            "p99": round(p99[1] / p99[0], 1) if p99[0] else None,
        },
        "login_loop": looped,
    }
