"""A quick probe of each backend: memory per idle connection and CPU per message.

    python -m benchmarks.quick_probe [--backends epoll,threads] [--conns 2000] [--messages 20000]
    python -m benchmarks.quick_probe --backends epoll --durability full,normal,memory

Not the benchmark suite (that is ``nox -s bench``, a later issue): one run, one
process of clients, figures from /proc. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csce513msg.client import Client
from csce513msg.protocol import Deliver, Error, FrameDecoder, Hello, Receipt, Register, Send, encode

TICK = os.sysconf("SC_CLK_TCK")
PASSWORD = "probe password"  # accounts are registered over the wire, at --kdf-cost test


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start(backend: str, *flags: str) -> tuple[subprocess.Popen[str], int]:
    data_dir = tempfile.mkdtemp(prefix="probe-")
    cmd = [sys.executable, "-m", "csce513msg.cli.msgsrv", "--backend", backend, "--port", "0", "--quiet"]
    cmd += ["--data-dir", data_dir, "--kdf-cost", "test", "--self-register", "--registrations-per-address", "1000000"]
    cmd += flags
    cmd += ["--rate", "1e9", "--burst", "1000000000"]  # measure routing, not the flood guard
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while "listening on " not in (line := proc.stdout.readline()):
        assert line, "the server did not start"
    port = int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
    proc.stdout.readline()
    return proc, port


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` logged-in, idle connections (pipelined: Hello and Login sent at once)."""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(encode(Hello()) + encode(Register(f"idle{i}", PASSWORD, request_id=1)))
        socks.append(s)
    for s in socks:  # wait for each Welcome + LoginOk
        dec, got = FrameDecoder(1 << 20), 0
        s.settimeout(30)
        while got < 2:
            got += len(list(dec.feed(s.recv(4096))))
    return socks


def message_cpu(port: int, pid: int, messages: int, window: int = 64) -> tuple[float, float]:
    """alice sends ``messages`` to bob, ``window`` in flight; returns (µs CPU/msg, msgs/s)."""
    alice = Client.connect("127.0.0.1", port, user="alice", password=PASSWORD, register=True)
    bob = Client.connect("127.0.0.1", port, user="bob", password=PASSWORD, register=True)
    body = b"x" * 60
    frame = encode(Send(1, 0, 0, "bob", body, request_id=1))
    sel = selectors.DefaultSelector()
    for c in (alice, bob):
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    sent = received = receipts = 0
    deadline = t0 + 60
    while received < messages and time.monotonic() < deadline:
        burst = min(window - (sent - receipts), messages - sent)
        if burst > 0:
            alice.sock.setblocking(True)
            alice.sock.sendall(frame * burst)
            alice.sock.setblocking(False)
            sent += burst
        for key, _ in sel.select(1.0):
            client: Client = key.data
            data = client.sock.recv(1 << 20)
            for msg in client.session.receive_data(data):
                received += isinstance(msg, Deliver)
                receipts += isinstance(msg, (Receipt, Error))
            acks = client.session.data_to_send()
            if acks:
                client.sock.setblocking(True)
                client.sock.sendall(acks)
                client.sock.setblocking(False)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    alice.close()
    bob.close()
    return cpu / max(received, 1) * 1e6, received / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="threads,select,poll,epoll,asyncio,uvloop")
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--durability", default="", help="e.g. full,normal,memory: compare these on one backend")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.durability:
        backend = args.backends.split(",")[0]
        print(f"{'durability':10} {'µs CPU/msg':>10} {'msgs/s':>8}   (backend {backend}, window 64, 60-byte bodies)")
        for mode in args.durability.split(","):
            proc, port = start(backend, "--durability", mode)
            try:
                us, rate = message_cpu(port, proc.pid, args.messages)
                print(f"{mode:10} {us:10.1f} {rate:8.0f}")
            finally:
                proc.terminate()
                proc.wait(30)
        return
    print(f"{'backend':8} {'µs CPU/msg':>10} {'msgs/s':>8} {'RSS 0':>8} {'RSS n':>8} {'B/conn':>7}  (n={args.conns})")
    for backend in args.backends.split(","):
        proc, port = start(backend)
        try:
            time.sleep(0.3)
            us, rate = message_cpu(port, proc.pid, args.messages)
            rss0 = rss_kib(proc.pid)
            n = min(args.conns, 1000) if backend == "select" else args.conns
            socks = idle_connections(port, n)
            time.sleep(0.5)
            rss1 = rss_kib(proc.pid)
            print(f"{backend:8} {us:10.1f} {rate:8.0f} {rss0:7d}K {rss1:7d}K {(rss1 - rss0) * 1024 / n:7.0f}  (n={n})")
            for s in socks:
                s.close()
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
