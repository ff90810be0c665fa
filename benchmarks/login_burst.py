"""Chat latency during a burst of logins at the production KDF cost. Prints one JSON object.

    python -m benchmarks.login_burst [--backend epoll] [--rate 20000] [--logins-per-second 12]

The server runs pinned to core 0 (all its threads: the loop, the store thread and the
``hash`` lane's SCHED_IDLE threads); this generator to core 1, the login burst in a
process of its own. Chat is an open loop: message i is due at ``t0 + i / rate`` and
carries that time in its body, so a stalled sender cannot hide latency (no
coordinated omission): latency = the recipient's read time - the due time, both on
this process's monotonic clock. The p99 of the ``--seconds`` with logins is compared
with the p99 of the ``--seconds`` before them. The bar (accounts issue): at most 2x.
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csce513msg.client import Client
from csce513msg.crypto.passwords import COSTS, hash_password
from csce513msg.protocol import Ack, Deliver, FrameDecoder, Hello, Login, LoginOk, MsgType, Send, decode, encode
from csce513msg.store.accounts import AccountBook

PASSWORD = "burst password"
TICK = os.sysconf("SC_CLK_TCK")
STAMP = struct.Struct("!dI")  # due time, sequence number


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def make_accounts(data_dir: str, chatters: int, burst: int, burst_cost: str = "production") -> None:
    """Chat users at the test cost (their logins are set-up), burst users at ``burst_cost``."""
    book = AccountBook(Path(data_dir) / "csce513msg.db")
    for i in range(chatters):
        book.add(f"chat{i}", hash_password(PASSWORD, COSTS["test"]))
    for i in range(burst):
        book.add(f"burst{i}", hash_password(PASSWORD, COSTS[burst_cost]))
    book.close()


def start_server(backend: str, data_dir: str) -> tuple[subprocess.Popen[str], int]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "csce513msg.cli.msgsrv", "--backend", backend]
    cmd += ["--port", "0", "--data-dir", data_dir, "--log-level", "warning", "--rate", "1e9", "--burst", "1000000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while "listening on " not in (line := proc.stdout.readline()):
        assert line, "the server did not start"
    return proc, int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])


def login_burst(port: int, count: int, per_second: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In its own process: ``count`` logins at ``per_second``, each on a new connection."""
    import threading

    latencies: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(encode(Hello()) + encode(Login(f"burst{i}", PASSWORD, request_id=1)))
            decoder = FrameDecoder(1 << 20)
            while True:
                frames = [decode(f) for f in decoder.feed(s.recv(65536))]
                if any(isinstance(m, LoginOk) for m in frames):
                    latencies.append(time.monotonic() - started)
                    return

    threads = []
    t0 = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, t0 + i / per_second - time.monotonic()))
        thread = threading.Thread(target=one, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(30)
    out.put(latencies)


def chat(port: int, rate: float, pairs: int, seconds: float, burst_at: float, burst: multiprocessing.Process) -> dict:  # type: ignore[type-arg]
    """Run the paced chat for 1 s warm-up + 2 x ``seconds``; start ``burst`` at ``burst_at``."""
    senders = [Client.connect("127.0.0.1", port, user=f"chat{i}", password=PASSWORD) for i in range(pairs)]
    readers = [Client.connect("127.0.0.1", port, user=f"chat{pairs + i}", password=PASSWORD) for i in range(pairs)]
    sel = selectors.DefaultSelector()
    decoders = {}
    for c in senders + readers:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
        decoders[c.sock] = FrameDecoder(1 << 24)
    samples: list[tuple[float, float]] = []  # (due time, latency)
    pad = b"x" * (60 - STAMP.size)
    t0 = time.monotonic() + 0.2
    end = t0 + 1.0 + 2 * seconds
    total = int((end - t0) * rate)
    sent = 0
    burst_started = False
    while time.monotonic() < end + 2 and len(samples) < total:
        now = time.monotonic()
        if not burst_started and now >= t0 + burst_at:
            burst.start()
            burst_started = True
        due_count = min(total, int((now - t0) * rate) + 1) - sent if now >= t0 else 0
        batches: dict[Client, list[bytes]] = {}
        for _ in range(max(0, due_count)):
            due = t0 + sent / rate
            pair = sent % pairs
            body = STAMP.pack(due, sent) + pad
            batches.setdefault(senders[pair], []).append(encode(Send(1, 0, 0, f"chat{pairs + pair}", body)))
            sent += 1
        for client, frames in batches.items():
            client.sock.setblocking(True)
            client.sock.sendall(b"".join(frames))
            client.sock.setblocking(False)
        wait = max(0.0, min(0.001, t0 + sent / rate - time.monotonic()))
        for key, _ in sel.select(wait):
            client = key.data
            try:
                data = client.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            read_at = time.monotonic()
            acks: dict[str, int] = {}
            for frame in decoders[client.sock].feed(data):
                if frame.type != MsgType.DELIVER:
                    continue  # receipts to the senders: read and dropped
                msg = decode(frame)
                assert isinstance(msg, Deliver)
                due, _seq = STAMP.unpack_from(msg.body)
                samples.append((due - t0, read_at - due))
                acks[msg.stream] = max(acks.get(msg.stream, 0), msg.position)
            if acks:
                client.sock.setblocking(True)
                client.sock.sendall(b"".join(encode(Ack(p, s)) for s, p in acks.items()))
                client.sock.setblocking(False)
    for c in senders + readers:
        c.close()
    return {"samples": samples, "sent": sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="epoll")
    parser.add_argument("--rate", type=float, default=20000.0, help="chat messages per second, paced")
    parser.add_argument("--pairs", type=int, default=20, help="sender/recipient pairs")
    parser.add_argument("--logins-per-second", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each window")
    parser.add_argument("--burst-kdf", default="production", help="test: the same logins without the hash's cost")
    args = parser.parse_args()
    logins = int(args.logins_per_second * args.seconds)
    data_dir = tempfile.mkdtemp(prefix="login-burst-")
    make_accounts(data_dir, 2 * args.pairs, logins, args.burst_kdf)
    proc, port = start_server(args.backend, data_dir)
    os.sched_setaffinity(0, {1})
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    burst = multiprocessing.Process(target=login_burst, args=(port, logins, args.logins_per_second, out))
    try:
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        gen0 = time.process_time()
        run = chat(port, args.rate, args.pairs, args.seconds, 1.0 + args.seconds, burst)
        server_util = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
        gen_util = (time.process_time() - gen0) / (time.monotonic() - wall0)
        login_latencies = out.get(timeout=60)
        burst.join(30)
    finally:
        proc.terminate()
        proc.wait(30)
    before = [lat for due, lat in run["samples"] if 1.0 <= due < 1.0 + args.seconds]
    during = [lat for due, lat in run["samples"] if 1.0 + args.seconds <= due < 1.0 + 2 * args.seconds]
    ms = {q: (percentile(before, q) * 1e3, percentile(during, q) * 1e3) for q in (0.5, 0.9, 0.99)}
    report = {
        "benchmark": "login_burst",
        "backend": args.backend,
        "rate": args.rate,
        "logins_per_second": args.logins_per_second,
        "kdf": args.burst_kdf,
        "before": {"samples": len(before), **{f"p{int(q * 100)}_ms": round(v[0], 3) for q, v in ms.items()}},
        "during": {"samples": len(during), **{f"p{int(q * 100)}_ms": round(v[1], 3) for q, v in ms.items()}},
        "p99_ratio": round(ms[0.99][1] / ms[0.99][0], 2),
        "bar": "p99 during the burst at most 2x the p99 before",
        "logins": {
            "asked": logins,
            "completed": len(login_latencies),
            "median_ms": round(percentile(login_latencies, 0.5) * 1e3, 1),
            "max_ms": round(max(login_latencies, default=0) * 1e3, 1),
        },
        "delivered": len(run["samples"]),
        "sent": run["sent"],
        "server_cpu_utilisation": round(server_util, 2),
        "generator_cpu_utilisation": round(gen_util, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
