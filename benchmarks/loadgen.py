"""The load generator: a process of its own (pinned to the core the server is not on).

    python -m benchmarks.loadgen dm --port P --clients 100 --rate 5000 --seconds 3
    python -m benchmarks.loadgen idle --port P --connections 1000
    python -m benchmarks.loadgen dm --port P --relay    # the baselines: the minimal relay,
    python -m benchmarks.loadgen dm --port P --redis    # and Redis pub/sub

It speaks over stdin/stdout with the orchestrator (``benchmarks/suite.py``): it logs
its clients in, prints ``{"ready": ...}``, waits for ``go`` (so the orchestrator reads
the server's /proc figures around exactly the measured part), runs, prints its
result as one JSON line, and waits for ``quit`` before closing its sockets.

Direct messages are an open loop: message k is due at ``t0 + k / rate``, from client
``k % clients`` to a random other client, and carries its due time, so latency = the
recipient's read time - the due time, on this process's one monotonic clock: a
stalled sender (a full window, a slow loop) cannot hide latency. Each sender keeps at
most ``--window`` messages without a receipt, as a real client would. Every loop is
bounded: the run stops at ``--seconds``, the drain ``--drain`` seconds after it.

The same workload runs against the baselines. The relay (``relay.py``) forwards frames
and sends no receipts: in a closed loop a delivery frees its sender's window. Redis:
each client subscribes to its own channel over RESP3 (``resp.py``), so one connection
both publishes and receives as ours does; a send is ``PUBLISH u<peer> <body>``, and its
reply (the count of subscribers reached) is the receipt that frees the window.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any

from benchmarks.resp import RespDecoder, RespError, command
from csce513msg.protocol import Ack, Deliver, FrameDecoder, Hello, Login, MsgType, Register, Send, decode, encode

STAMP = struct.Struct("!dII")  # due time, sender index, sequence number (per sender)
BODY = 60  #: bytes of each message body, as in the reference figures
PASSWORD = "bench password"
LOGIN_WAVE = 50  #: logins in flight at once (the server queues the rest fairly; a short queue is enough)


def user(i: int) -> str:
    return f"u{i}"


class Conn:
    """One client connection of the generator."""

    def __init__(self, index: int, sock: socket.socket, redis: bool = False) -> None:
        self.index = index
        self.sock = sock
        self.decoder: FrameDecoder | RespDecoder = RespDecoder() if redis else FrameDecoder(1 << 24)
        self.out: list[bytes] = []
        self.in_flight = 0  # sends without a receipt
        self.backlog: list[bytes] = []  # due, but the window was full
        self.seq = 0


def connect_all(port: int, count: int, target: str, register: bool = False) -> tuple[list[Conn], int]:
    """``count`` logged-in connections (relay: announced; Redis: subscribed to their channel);
    returns them and how many were refused. ``target``: "chat", "relay" or "redis"."""
    conns: list[Conn] = []
    refused = 0
    for start in range(0, count, LOGIN_WAVE):
        wave = []
        for i in range(start, min(count, start + LOGIN_WAVE)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(i, sock, target == "redis")
            if target == "relay":
                sock.sendall(struct.pack("!IBBHI", 0, 0x01, 0, 0, i))
                conns.append(conn)
                continue
            if target == "redis":
                sock.sendall(command(b"HELLO", b"3") + command(b"SUBSCRIBE", user(i).encode()))
                wave.append(conn)
                continue
            kind = Register if register else Login  # Register: a server without accounts (durability memory)
            sock.sendall(encode(Hello()) + encode(kind(user(i), PASSWORD, f"bench-{i}", request_id=1)))
            wave.append(conn)
        for conn in wave:  # Welcome, then LoginOk (or an error: e.g. select's SERVER_FULL)
            ok = None
            while ok is None:
                data = conn.sock.recv(65536)
                if not data:
                    ok = False
                if isinstance(conn.decoder, RespDecoder):  # HELLO's map, then the subscribe push
                    replies = conn.decoder.feed(data)
                    ok = False if any(isinstance(r, RespError) for r in replies) else None
                    ok = True if any(isinstance(r, list) and r[:1] == [b"subscribe"] for r in replies) else ok
                    continue
                for frame in conn.decoder.feed(data):
                    if frame.type == MsgType.LOGIN_OK:
                        ok = True
                    elif frame.type == MsgType.ERROR:
                        ok = False
            if ok:
                conns.append(conn)
            else:
                refused += 1
                conn.sock.close()
    for conn in conns:
        conn.sock.setblocking(False)
    return conns, refused


def percentiles(samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)

    def at(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 4) if ordered else None

    result = {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99)}
    result["p999_ms"] = at(0.999) if len(ordered) >= 10_000 else None  # only with enough samples
    return result


def run_dm(
    conns: list[Conn], rate: float, seconds: float, window: int, drain: float, target: str, seed: int,
    burst: Burst | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The direct-message workload over ``conns`` (``target``: "chat", "relay", "redis"); with
    ``burst``, a burst of logins starts halfway (after a second of warm-up), and latency is
    also given for the half before it and the half with it."""
    rng = random.Random(seed)
    n = len(conns)
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    pad = b"x" * (BODY - STAMP.size)
    latencies: list[float] = []
    dues: list[float] = []  # each sample's due time, from t0 (to split the run into windows)
    seen_ids: set[int] = set()
    duplicates = order_violations = errors = delivered = sent = 0
    last_seq: dict[tuple[int, int], int] = {}  # (sender, recipient) -> last seq delivered
    cpu0, t0 = time.process_time(), time.monotonic() + 0.05
    closed = rate <= 0  # closed loop: every client keeps `window` messages in flight, as fast as it can
    total = 0 if closed else int(rate * seconds)
    due_count = 0
    end = t0 + seconds
    deadline = end + drain

    def make(sender: Conn, due: float) -> None:
        peer = rng.randrange(n - 1)
        peer += peer >= sender.index
        sender.seq += 1
        body = STAMP.pack(due, sender.index, sender.seq) + pad
        if target == "relay":
            frame = struct.pack("!IBBHI", len(body), 0x03, 0, 0, peer) + body
        elif target == "redis":
            frame = command(b"PUBLISH", user(peer).encode(), body)
        else:
            frame = encode(Send(1, 0, 0, user(peer), body, request_id=1))
        sender.backlog.append(frame)

    by_index = {c.index: c for c in conns}
    paced_relay = target == "relay" and not closed  # a paced relay client sends when due (there are no receipts)
    while time.monotonic() < deadline and (
        (closed and time.monotonic() < end) or due_count < total or delivered < sent or any(c.backlog for c in conns)
    ):
        now = time.monotonic()
        if burst is not None and not burst.started and now >= t0 + (seconds + 1) / 2:
            burst.start()
        now_due = min(total, int((now - t0) * rate) + 1) if now >= t0 and not closed else 0
        while due_count < now_due:  # messages now due: stamped with their due time, not the send time
            make(conns[due_count % n], t0 + due_count / rate)
            due_count += 1
        if closed and t0 <= now < end:
            for conn in conns:
                while conn.in_flight + len(conn.backlog) < window:
                    make(conn, now)
        for conn in conns:
            if conn.backlog and (paced_relay or conn.in_flight < window):
                room = len(conn.backlog) if paced_relay else window - conn.in_flight
                batch, conn.backlog = conn.backlog[:room], conn.backlog[room:]
                conn.in_flight += 0 if paced_relay else len(batch)
                conn.out += batch
                sent += len(batch)
            if conn.out:
                data, conn.out = b"".join(conn.out), []
                conn.sock.setblocking(True)
                conn.sock.sendall(data)
                conn.sock.setblocking(False)
        wait = (
            0.001
            if closed
            else 0.0
            if due_count < now_due
            else max(0.0, min(0.001, t0 + due_count / rate - time.monotonic()))
        )
        for key, _ in sel.select(wait):
            conn = key.data
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                errors += 1
                sel.unregister(conn.sock)
                continue
            read_at = time.monotonic()
            bodies, failed, repeated = read_bodies(conn, data, target, seen_ids)
            errors += failed
            duplicates += repeated
            for body in bodies:
                due, sender_index, seq = STAMP.unpack_from(body)
                latencies.append(read_at - due)
                dues.append(due - t0)
                delivered += 1
                if target == "relay" and closed:  # no receipts from a relay: a delivery frees the window
                    by_index[sender_index].in_flight -= 1
                pair = (sender_index, conn.index)
                order_violations += seq <= last_seq.get(pair, 0)
                last_seq[pair] = seq
    elapsed = time.monotonic() - t0
    if burst is not None:  # after a second of warm-up, two windows: before the burst, and with it
        half = (seconds + 1) / 2
        windows = {"before": (1.0, half), "during": (half, seconds)}
        burst_result: dict[str, Any] = {
            name: percentiles([lat for lat, due in zip(latencies, dues, strict=True) if lo <= due < hi])
            for name, (lo, hi) in windows.items()
        }
        burst_result["logins"] = burst.result()
    return {
        **({"burst": burst_result} if burst is not None else {}),
        "sent": sent,
        "delivered": delivered,
        "duplicates": duplicates,
        "order_violations": order_violations,
        "errors": errors,
        "latency_samples": len(latencies),
        "latency": percentiles(latencies),
        "elapsed_s": round(elapsed, 3),
        "delivered_per_s": round(delivered / elapsed, 1),
        "generator_cpu_utilisation": round((time.process_time() - cpu0) / elapsed, 3),
    }


def read_bodies(conn: Conn, data: bytes, target: str, seen_ids: set[int]) -> tuple[list[bytes], int, int]:
    """What ``data`` brings ``conn``: the bodies delivered, errors and duplicate message ids.
    An answer to a send (a receipt, PUBLISH's count, an error) makes room in the window;
    deliveries are acknowledged, as the shipped client does."""
    bodies: list[bytes] = []
    errors = duplicates = 0
    if isinstance(conn.decoder, RespDecoder):
        for reply in conn.decoder.feed(data):
            if isinstance(reply, list) and reply[:1] == [b"message"]:
                bodies.append(reply[2])
            elif isinstance(reply, (int, RespError)):  # PUBLISH's count of subscribers reached
                conn.in_flight -= 1
                errors += isinstance(reply, RespError)
        return bodies, errors, duplicates
    acks: dict[str, int] = {}
    for frame in conn.decoder.feed(data):
        if frame.type in (MsgType.RECEIPT, MsgType.ERROR):
            if frame.request_id:  # the answer to a Send: room in the window
                conn.in_flight -= 1
            errors += frame.type == MsgType.ERROR
        elif target == "relay" and frame.type == 0x03:
            bodies.append(frame.body)
        elif frame.type == MsgType.DELIVER:
            msg = decode(frame)
            assert isinstance(msg, Deliver)
            duplicates += msg.message_id in seen_ids
            seen_ids.add(msg.message_id)
            acks[msg.stream] = max(acks.get(msg.stream, 0), msg.position)
            bodies.append(msg.body)
    if acks:
        conn.out.append(b"".join(encode(Ack(p, s)) for s, p in acks.items()))
    return bodies, errors, duplicates


class Burst:
    """A burst of logins, from a process of its own (so the generator's loop is not slowed):
    ``count`` logins at ``per_second``, each on a new connection, as users burst0..burstN."""

    def __init__(self, port: int, count: int, per_second: float) -> None:
        self.results: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=_logins, args=(port, count, per_second, self.results))
        self.started = False
        self.count = count

    def start(self) -> None:
        self.process.start()
        self.started = True

    def result(self) -> dict[str, Any]:
        """Each login's time to LoginOk, summarised (waits at most 60 s for the process)."""
        times = sorted(self.results.get(timeout=60)) if self.started else []
        self.process.join(30)
        median_ms = round(times[len(times) // 2] * 1e3, 1) if times else None
        max_ms = round(times[-1] * 1e3, 1) if times else None
        return {"asked": self.count, "completed": len(times), "median_ms": median_ms, "max_ms": max_ms}


def _logins(port: int, count: int, per_second: float, out: multiprocessing.Queue[list[float]]) -> None:
    times: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(encode(Hello()) + encode(Login(f"burst{i}", PASSWORD, f"burst-{i}", request_id=1)))
            decoder = FrameDecoder(1 << 20)
            while data := sock.recv(65536):
                types = [frame.type for frame in decoder.feed(data)]
                if MsgType.LOGIN_OK in types:
                    times.append(time.monotonic() - started)
                    return
                if MsgType.ERROR in types:
                    return  # not completed: counted as such

    threads = []
    t0 = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, t0 + i / per_second - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(i,), daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(30)
    out.put(times)


def run_probe(conns: list[Conn], count: int, rate: float) -> dict[str, Any]:
    """Latency of a few messages between two connections among many idle ones."""
    return run_dm(conns[:2], rate, count / rate, 8, 5.0, "chat", seed=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["dm", "idle"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay", action="store_true", help="the target is benchmarks.relay")
    parser.add_argument("--redis", action="store_true", help="the target is redis-server (pub/sub)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=513)
    parser.add_argument("--register", action="store_true", help="register the clients instead of logging in")
    parser.add_argument("--burst", type=int, default=0, help="logins (users burst0..) to start halfway")
    parser.add_argument("--burst-rate", type=float, default=12.0, help="logins per second in the burst")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = args.clients if args.mode == "dm" else args.connections
    target = "relay" if args.relay else "redis" if args.redis else "chat"
    conns, refused = connect_all(args.port, count, target, args.register)
    print(json.dumps({"ready": len(conns), "refused": refused}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    if args.mode == "dm":
        burst = Burst(args.port, args.burst, args.burst_rate) if args.burst else None
        result = run_dm(conns, args.rate, args.seconds, args.window, args.drain, target, args.seed, burst)
    else:
        result = run_probe(conns, 200, 100.0) if len(conns) >= 2 else {}
    result.update(connected=len(conns), refused=refused)
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # "quit": the orchestrator has read the server's figures
    for conn in conns:
        conn.sock.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
