"""The load of ``benchmarks.e2e``'s server part: two sets of clients on one server, plain and
encrypted, each sending the same paced direct messages; one JSON line out, with the server's
CPU per message for each set.

    python -m benchmarks.e2eload --port P --server-pid PID [--clients 10] [--count 3000] [--rate 150]
                                 --vaults DIR [--order plain,secure] [--seed 0] [--bound 300]

The server's accounts are u0..u{2N-1} (``suite.Server``): the plain set is u0..u{N-1}, the
encrypted set (``Secure``, vaults in ``--vaults``, ``cost="test"``) u{N}..u{2N-1}. For each set,
in ``--order``:

1. connect and log in its N clients (the encrypted ones publish their keys and read every
   other member's devices and their own: ``fetch_keys``);
2. warm up: every pair exchanges one message each way, one at a time (the encrypted set's
   sessions all start, X3DH, and are answered here, outside the measurement);
3. a round trip (Ping) on every connection, so the server has nothing of the warm-up left;
   then the server's CPU is read (/proc/PID/stat, and its threads' schedstat);
4. ``--count`` messages of 100 bytes, message k due at ``t0 + k / rate``, from client k mod N
   to a peer drawn from a generator seeded with ``--seed`` (the same sequence for both sets),
   without waiting for its Receipt; every arrival is read as it comes (the encrypted set's
   opened, and saved, by ``Secure``) and acknowledged as the session does;
5. once every message is answered (stored) and delivered, and one more round trip, the
   server's CPU is read again.

Every wait is bounded by ``--bound`` seconds. What came is checked: each message delivered
once, as the text that was sent (the encrypted ones opened), no error.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import select
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import proc
from benchmarks.loadgen import PASSWORD, user
from csce513msg.client import Client
from csce513msg.client.secure import Secure
from csce513msg.protocol import ContentType, Deliver, Error, Pong, Receipt, ReceiptState

TEXT_BYTES = 100


class Recording(Secure):
    """``Secure`` that notes the size of every envelope it seals (the body the server stores)."""

    sizes: list[int]

    def seal(self, target: str, client_msg_id: int, kind: int, payload: bytes) -> bytes:
        data = super().seal(target, client_msg_id, kind, payload)
        self.sizes.append(len(data))
        return data


def text(seq: int) -> str:
    """Message ``seq``'s text: its number, then padding to 100 bytes."""
    head = f"{seq:09d} "
    return head + "x" * (TEXT_BYTES - len(head))


def cpu_ns(pid: int) -> float:
    """Seconds the threads of ``pid`` alive now have run (schedstat, nanoseconds: finer than
    /proc/PID/stat's ticks, but a thread that ended is not counted; the server's threads live
    as long as it does)."""
    total = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return total / 1e9


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Set:
    """One set of N logged-in clients, plain or encrypted."""

    def __init__(self, mode: str, port: int, first: int, n: int, vaults: Path, bound: float) -> None:
        self.mode, self.names, self.clients = mode, [user(first + i) for i in range(n)], []
        self.secures: list[Recording] = []
        self.warm_sizes: list[int] = []
        self.all_sizes: list[int] = []  #: every envelope the set sealed, in order (one list for all its clients)
        deadline = time.monotonic() + bound
        for name in self.names:
            secure = None
            if mode == "secure":
                secure = Recording.from_vault(vaults / f"{name}.vault", PASSWORD, name, "d1", cost="test")
                assert isinstance(secure, Recording)  # from_vault makes the class it is called on
                secure.sizes = self.all_sizes
                self.secures.append(secure)
            client = Client.connect("127.0.0.1", port, user=name, password=PASSWORD, device_id="d1",
                                    timeout=bound, secure=secure, drop_repeats=False)  # fmt: skip
            self.clients.append(client)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mode}: logins took more than {bound:.0f} s")
        if mode == "secure":
            for client, name in zip(self.clients, self.names, strict=True):
                for other in self.names:  # every member's devices (and our own: the same list)
                    client.fetch_keys(other)
                assert client.session.secure is not None and client.session.secure.ready(name)

    def warm_up(self, deadline: float) -> None:
        """Every pair one message each way, each delivered before the next is sent."""
        seq = 10**8  # numbers the measured load never uses
        for i, a in enumerate(self.clients):
            for b in self.clients[i + 1 :]:
                for sender, to, reader in ((a, self.names[self.clients.index(b)], b), (b, self.names[i], a)):
                    seq += 1
                    sender.send_text(to, text(seq))
                    got = reader.next_message(lambda m: isinstance(m, Deliver) and m.body[:9] == text(seq)[:9].encode())  # noqa: B023
                    assert isinstance(got, Deliver) and got.content_type == ContentType.TEXT, got
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.mode}: the warm-up took too long")
        self.settle()
        self.warm_sizes = self.sizes()  # the first message of each session carries its X3DH start

    def settle(self) -> None:
        """A Ping answered on every connection: the server has read everything sent before
        (acknowledgements included); then what waits in the inboxes is dropped."""
        for client in self.clients:
            client.flush()
            rid = client.session.ping()
            client.request(rid, Pong)
            client.inbox.clear()

    def sizes(self) -> list[int]:
        return list(self.all_sizes)


def make_plan(count: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(sender, recipient) of each message: client k mod N to anyone else, drawn with ``seed``."""
    rng, plan = random.Random(seed), []
    for k in range(count):
        peer = rng.randrange(n - 1)
        plan.append((k % n, peer + (peer >= k % n)))
    return plan


class Tally:
    """What one set's blocks sent, received and cost, summed over its blocks."""

    def __init__(self) -> None:
        self.sent = self.stored = self.duplicates = self.wrong = self.errors = self.up = self.down = 0
        self.seconds = self.server_cpu = self.server_cpu_ns = self.client_cpu = 0.0
        self.delivered: set[int] = set()
        self.late: list[float] = []
        self.sizes: list[int] = []

    def figures(self, s: Set) -> dict[str, Any]:
        sent, sizes = max(self.sent, 1), self.sizes or [TEXT_BYTES]
        return {
            "clients": len(s.clients), "sent": self.sent, "stored": self.stored, "delivered": len(self.delivered),
            "duplicates": self.duplicates, "wrong": self.wrong, "errors": self.errors,
            "notices": sum(len(secure.notices) for secure in s.secures), "seconds": round(self.seconds, 3),
            "messages_per_s": round(self.sent / self.seconds, 1) if self.seconds else 0.0,
            "late_p99_ms": round(sorted(self.late)[int(0.99 * len(self.late))] * 1e3, 2) if self.late else 0.0,
            "body_bytes_median": statistics.median(sizes), "body_bytes_max": max(sizes),
            "wire_up_bytes_per_message": round(self.up / sent, 1),
            "wire_down_bytes_per_message": round(self.down / sent, 1),
            "server_cpu_s": round(self.server_cpu, 3),
            "server_cpu_us_per_message": round(self.server_cpu / sent * 1e6, 2),
            "server_cpu_ns_s": round(self.server_cpu_ns, 4),
            "server_cpu_ns_us_per_message": round(self.server_cpu_ns / sent * 1e6, 2),
            "client_cpu_us_per_message": round(self.client_cpu / sent * 1e6, 1),
        }  # fmt: skip


def run_block(s: Set, plan: list[tuple[int, int]], first: int, rate: float, server_pid: int, bound: float,
              tally: Tally) -> None:  # fmt: skip
    """Messages ``first`` to ``first + len(plan) - 1`` of the load, paced at ``rate`` (steps 3 to
    5 of the module's docstring), added to ``tally``."""
    count, by_fd = len(plan), {c.sock.fileno(): c for c in s.clients}
    sizes_before, sent, stored, delivered = len(s.sizes()), 0, 0, 0
    s.settle()
    before, before_ns, client_before = proc.sample(server_pid).cpu, cpu_ns(server_pid), client_cpu()
    t0 = time.monotonic()
    deadline = t0 + bound
    while (sent < count or stored < count or delivered < count) and time.monotonic() < deadline:
        now = time.monotonic()
        while sent < count and now >= t0 + sent / rate:
            sender, peer = plan[sent]
            client = s.clients[sender]
            client.session.send_text(s.names[peer], text(first + sent))
            data = client.session.data_to_send()
            client.sock.sendall(data)
            tally.up += len(data)
            tally.late.append(now - (t0 + sent / rate))
            sent += 1
            now = time.monotonic()
        wait = max(0.0, t0 + sent / rate - now) if sent < count else 0.05
        readable, _, _ = select.select(list(by_fd), [], [], min(wait, 0.05))
        for fd in readable:
            client = by_fd[fd]
            data = client.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{s.mode}: the server closed a connection")
            tally.down += len(data)
            for msg in client.session.receive_data(data):
                if isinstance(msg, Deliver):
                    delivered += 1
                    seq = int(msg.body[:9]) if msg.content_type == ContentType.TEXT and msg.body[:9].isdigit() else -1
                    if seq < 0 or msg.body.decode() != text(seq):
                        tally.wrong += 1  # not opened, or not what was sent
                    elif seq in tally.delivered:
                        tally.duplicates += 1
                    tally.delivered.add(seq)
                elif isinstance(msg, Receipt) and msg.request_id and msg.state == ReceiptState.STORED:
                    stored += 1
                elif isinstance(msg, Error):
                    tally.errors += 1
            out = client.session.data_to_send()  # the acknowledgements
            if out:
                client.sock.sendall(out)
                tally.up += len(out)
    tally.seconds += time.monotonic() - t0
    s.settle()
    tally.server_cpu += proc.sample(server_pid).cpu - before
    tally.server_cpu_ns += cpu_ns(server_pid) - before_ns
    tally.client_cpu += client_cpu() - client_before
    tally.sent, tally.stored = tally.sent + sent, tally.stored + stored
    tally.sizes += s.sizes()[sizes_before:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--vaults", type=Path, required=True)
    parser.add_argument("--order", default="plain,secure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, default=4, help="the load in blocks, the sets taking turns")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of the idle window measured first")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds any one step may take")
    args = parser.parse_args()
    if args.clients < 2:
        parser.error("--clients: at least 2 (they send to each other)")
    order = args.order.split(",")
    sets: dict[str, Set] = {}
    out: dict[str, Any] = {"phases": {}, "setup_s": {}}
    try:
        for mode in order:
            started = time.monotonic()
            sets[mode] = Set(mode, args.port, 0 if mode == "plain" else args.clients, args.clients, args.vaults,
                             args.bound)  # fmt: skip
            sets[mode].warm_up(time.monotonic() + args.bound)
            out["setup_s"][mode] = round(time.monotonic() - started, 2)
        idle = time.monotonic()
        before = proc.sample(args.server_pid).cpu, cpu_ns(args.server_pid)
        time.sleep(args.idle)  # a measured window of nothing: the server's CPU when no one speaks
        after = proc.sample(args.server_pid).cpu, cpu_ns(args.server_pid)
        elapsed = time.monotonic() - idle
        out["idle_server_cpu_per_s"] = {"stat": round((after[0] - before[0]) / elapsed, 4),
                                        "schedstat": round((after[1] - before[1]) / elapsed, 4)}  # fmt: skip
        plan = make_plan(args.count, args.clients, args.seed)
        cuts = [round(i * args.count / args.blocks) for i in range(args.blocks + 1)]
        tallies = {mode: Tally() for mode in order}
        for b in range(args.blocks):  # A B, then B A, ...: a drift of the machine falls on both
            for mode in order if b % 2 == 0 else order[::-1]:
                run_block(sets[mode], plan[cuts[b] : cuts[b + 1]], cuts[b], args.rate, args.server_pid, args.bound,
                          tallies[mode])  # fmt: skip
        for mode, tally in tallies.items():
            out["phases"][mode] = tally.figures(sets[mode])
            warm = sets[mode].warm_sizes or [TEXT_BYTES]
            vaults = [path.stat().st_size for path in args.vaults.glob("*.vault")] if mode == "secure" else [0]
            out["phases"][mode] |= {"vault_bytes_median": statistics.median(vaults or [0]),
                                    "warm_up_body_bytes_median": statistics.median(warm),
                                    "warm_up_body_bytes_max": max(warm), "setup_s": out["setup_s"][mode]}  # fmt: skip
    finally:
        for s in sets.values():
            for client in s.clients:
                client.close()
    print(json.dumps(out), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
