"""The benchmark suite: every backend as a real ``msgsrv``, side by side.

    python -m benchmarks [--backends epoll,uvloop] [--quick] [--out DIR] [--check] [--workloads 3]

Each backend runs as its own process on 127.0.0.1 pinned to core 0; the load
generator (``benchmarks/loadgen.py``) runs pinned to core 1. The server is measured
as shipped: default client behaviour (acks, receipts), ``--durability normal``, log
level ``warning``, clients logged in (accounts made with ``--kdf-cost test`` hashes),
every guarantee on. Server CPU is user + system time of the whole process from
/proc, around exactly the measured part.

Workloads in this version (the rest of the benchmark issue is listed in
docs/benchmarks.md):

1. direct-message throughput: C clients (100 and 1,000) each sending to random peers
   as fast as a window of 8 unanswered messages allows (closed loop; ``--quick``: 100
   clients paced at 5,000/s); and the same load from 100 clients through the minimal
   relay (``benchmarks/relay.py``), measured in the same run, as the baseline;
   Where ``redis-server`` is installed, Redis pub/sub runs the same load as a second
   baseline (a C server);
2. (full run) latency at fixed offered loads: 1k, 10k and 20k messages/s, and at the
   highest load each backend sustains (searched from its closed-loop throughput);
3. group fan-out: one sender to a group of 100 and of 1,000 members (full run; ``--quick``:
   100 members, epoll only), keeping 8 messages without a stored receipt (closed loop),
   each member acknowledging once per read; also paced at 100 messages/s, and the closed
   loop with members that never acknowledge (what the acks cost); the relay and Redis do
   the same fan-out in the same run. Server CPU per delivery (message x member reached);
4. connection scaling: N logged-in idle connections (not subscribed to presence):
   server memory per connection, CPU while idle, and the latency of messages between
   two of them;
5. (full run) durability: 100 clients paced at 5,000/s with ``--durability full``,
   ``normal`` and ``memory``;
6. (full run) chat latency during a burst of logins at the production KDF cost: 100
   clients paced at 5,000/s and, halfway, 60 logins at 12 a second (the generator's
   ``--burst``, from a process of its own);
7. active among idle: 100 clients paced at 1,000 messages/s among N idle logged-in
   connections (N = 0 up to what the open-file limit allows; select stops at FD_SETSIZE,
   threads at the machine's thread limit): server CPU per message and per wake-up, the
   CPU inside each select/poll/epoll_wait (the server's ``--stats`` line), system calls
   per message (``perf stat``, where it can count), latency.

``--quick`` (the gating ``nox -s bench_quick``): workload 1 with 100 clients at 5,000
messages/s and workload 4 with 1,000 connections, one 3-second run each, every
backend; workload 3 with 100 members for 2 seconds on epoll, the relay and Redis;
workload 7 with N = 0 and 500 for 2 seconds on epoll and poll;
``--check`` then asserts what must hold (never speed) and exits 1 if not.
``--workloads 3`` runs only workload 3 (any subset of 1-7; the direct-message baselines
run with workload 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import proc
from benchmarks.loadgen import PASSWORD, user
from csce513msg.crypto.passwords import COSTS, hash_password
from csce513msg.store import Account
from csce513msg.store.accounts import AccountBook

ALL_BACKENDS = ["threads", "select", "poll", "epoll", "asyncio", "uvloop"]
ALL_WORKLOADS = "1234567"
RELAY_REFERENCE_US = 2.5  #: the issue's reference: a batched epoll relay, µs of CPU per message
RELAY_TRUSTED_US = 3.2  #: above this the relay itself is off: ratios are withheld
GENERATOR_LIMIT = 0.90  #: above this the generator, not the server, set the pace
SCALING_BACKENDS = ["epoll", "uvloop", "select", "threads"]  #: workloads 5 and 6, full run (4, 7: all)
PACED_LOAD = 5000.0  #: messages/s: workload 1 in --quick, workload 5
LATENCY_LOADS = [1000.0, 10000.0, 20000.0]  #: workload 2's offered loads, messages/s (full run)
BURST_LOGINS, BURST_RATE, BURST_SECONDS = 60, 12.0, 11.0  #: workload 6: 12 logins/s for 5 of 11 seconds
SEARCH_START, SEARCH_STEP, SEARCH_TRIES = 0.9, 0.8, 3  #: the highest sustained load (see highest_sustained)
GROUP_SIZES = [100, 1000]  #: workload 3's members (besides the sender), full run
GROUP_PACED = 100.0  #: workload 3's paced load, messages/s to the group
GROUP_FLAGS = ("--rate", "100000")  #: the sender posts, and members ack, faster than the default 500 requests/s
GROUP_QUICK_SECONDS = 2.0  #: workload 3 in --quick: one backend and the baselines, 100 members
NO_ACK_WINDOW = 50_000  #: workload 3 without acks: a window members who never acknowledge do not fill in a run
#: and the outbound hard limit msgsrv then asks for (high water + (window + 1) x max frame): a bound, not a buffer
NO_ACK_FLAGS = ("--window", str(NO_ACK_WINDOW), "--hard-limit", str(262144 + (NO_ACK_WINDOW + 1) * 65536))
MIXED_ACTIVE = 100  #: workload 7: the clients that chat ...
MIXED_RATE = 1000.0  #: ... at this paced load (messages/s: a fifth of a core, so a wait's cost shows, not a queue)
MIXED_IDLE = [0, 500, 1000, 5000, 10000]  #: ... among this many idle logged-in connections (and the most that fit)
MIXED_QUICK = (["epoll", "poll"], [0, 500], 2.0)  #: --quick: backends, idle counts, seconds
#: the idle never speak, not even a ping (a ping every 30 s from 10,000 would be 333 wake-ups/s of their own):
#: the server's idle timeout is made longer than any run, and the stats line gives the loop's figures
MIXED_FLAGS = ("--idle-timeout", "3600", "--stats", "--stats-interval", "0.5")
SELECT_ROOM = 1000  #: select: connections that fit under FD_SETSIZE (1,024 less the server's own; it held 1,011)
WAIT_SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "pselect6", "select")
#: the system calls workload 7 counts (perf stat, per message); raw_syscalls:sys_enter is every one
SYSCALLS = (*WAIT_SYSCALLS, "recvfrom", "sendto", "read", "write", "pwrite64", "pread64", "fdatasync", "futex",
            "epoll_ctl", "clock_gettime")  # fmt: skip


def pinned(core: int, cmd: list[str]) -> list[str]:
    """Run ``cmd`` on one core, where there are two to share out."""
    can_pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    return ["taskset", "-c", str(core), *cmd] if can_pin else cmd


class Server:
    """A ``msgsrv`` (or the relay) process for one measurement, with accounts u0..uN.

    ``perf``: the server runs under ``perf stat`` counting ``SYSCALLS`` in every thread
    (inherited by threads started later), its counters off until ``counting(True)`` turns
    them on (``--control``); read them with ``syscalls()`` after ``stop``. With
    ``--stats`` among the flags, its stats lines are kept with the time each arrived.
    ``root``: where its data directory is made (default: the system's temporary directory);
    ``stop`` removes it (a paced run leaves a WAL of hundreds of MB: 800 runs filled 49 GB)."""

    def __init__(
        self, backend: str, users: int, *flags: str, burst_users: int = 0, perf: bool = False, root: Path | None = None
    ) -> None:
        self.data_dir = tempfile.mkdtemp(prefix=f"bench-{backend}-", dir=root)
        self.perf_out = Path(self.data_dir) / "perf.csv" if perf else None
        self.perf_text: str | None = None  #: perf's output, read by ``stop`` before it removes the directory
        self.stats: list[tuple[float, str]] = []  #: (monotonic time read, line) of each --stats line
        self.register = "memory" in flags  # no database to hold accounts: clients register
        if self.register:
            flags = (*flags, "--self-register", "--registrations-per-address", "1000000")
        ready = "listening on "
        if backend == "relay":
            cmd = [sys.executable, "-m", "benchmarks.relay", "--port", "0"]
        elif backend == "redis":  # no persistence: pub/sub keeps nothing anyway
            self.port = free_port()
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            ready = "Ready to accept connections"
        else:
            try:
                self._accounts(users, burst_users)
            except BaseException:
                shutil.rmtree(self.data_dir, ignore_errors=True)  # (as when the server does not start)
                raise
            cmd = [sys.executable, "-m", "csce513msg.cli.msgsrv", "--backend", backend, "--port", "0"]
            cmd += ["--data-dir", self.data_dir, "--log-level", "warning", "--kdf-cost", "test", *flags]
        keep: tuple[int, ...] = ()
        if self.perf_out is not None:  # perf's control pipe: "enable"/"disable" in, "ack" out
            ctl_r, self.ctl = os.pipe()
            self.ack, ack_w = os.pipe()
            keep = (ctl_r, ack_w)
            events = ",".join(["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{n}" for n in syscalls_here())])
            cmd = ["perf", "stat", "-x", ",", "-o", str(self.perf_out), "-D", "-1", "--control",
                   f"fd:{ctl_r},{ack_w}", "-e", events, "--", *cmd]  # fmt: skip
        stats = "--stats" in flags
        self.proc = subprocess.Popen(pinned(0, cmd), stdout=subprocess.PIPE, pass_fds=keep, text=True,
                                     stderr=subprocess.PIPE if stats else subprocess.DEVNULL)  # fmt: skip
        for fd in keep:
            os.close(fd)
        if stats:
            threading.Thread(target=self._read_stats, daemon=True).start()
        assert self.proc.stdout is not None
        while ready not in (line := self.proc.stdout.readline()):
            if not line:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                raise RuntimeError(f"{backend} did not start")
        if backend != "redis":
            self.port = int(line.split("listening on ")[1].split(",")[0].split()[0].rsplit(":", 1)[1])
        self.pid = self.proc.pid
        if self.perf_out is not None:  # perf's child is the server
            self.pid = int(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()[0])

    def _accounts(self, users: int, burst_users: int) -> None:
        """The accounts u0..u(users-1), and burst0.. at the production cost (workload 6)."""
        stored = hash_password(PASSWORD, COSTS["test"])
        book = AccountBook(Path(self.data_dir) / "csce513msg.db")
        try:
            book.add_many([Account(user(i), "student", stored) for i in range(users)])
            if burst_users:  # workload 6: they log in at the production cost
                slow = hash_password(PASSWORD, COSTS["production"])
                book.add_many([Account(f"burst{i}", "student", slow) for i in range(burst_users)])
        finally:
            book.close()

    def _read_stats(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("stats: "):
                self.stats.append((time.monotonic(), line.strip()))

    def counting(self, on: bool) -> None:
        """Turn perf's counters on or off, and wait for perf to say it did (at most 10 s)."""
        os.write(self.ctl, b"enable\n" if on else b"disable\n")
        if not select.select([self.ack], [], [], 10)[0]:
            raise RuntimeError("perf stat did not answer")
        os.read(self.ack, 64)

    def syscalls(self) -> dict[str, int]:
        """perf's counts (after ``stop``): system call name -> calls; "all" for every one."""
        if self.perf_text is None:
            raise RuntimeError("perf stat wrote no counts")
        return perf_counts(self.perf_text)

    def stop(self) -> None:
        if self.perf_out is not None:  # perf waits for its child, then writes the counts
            os.kill(self.pid, signal.SIGTERM)
            os.close(self.ctl)
            os.close(self.ack)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            if self.perf_out is not None and self.perf_out.exists():  # (perf may have failed)
                self.perf_text = self.perf_out.read_text()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def perf_counts(text: str) -> dict[str, int]:
    """``perf stat -x ,`` output -> {system call: count}; raw_syscalls:sys_enter is "all"."""
    counts = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].strip().isdigit():
            continue  # a comment, "<not counted>", perf's own messages
        event = fields[2]
        name = "all" if event == "raw_syscalls:sys_enter" else event.removeprefix("syscalls:sys_enter_")
        counts[name] = int(fields[0])
    return counts


def syscalls_here() -> list[str]:
    """``SYSCALLS`` that this kernel has a tracepoint for (perf refuses a list with one missing)."""
    events = Path("/sys/kernel/tracing/events/syscalls")
    return [name for name in SYSCALLS if (events / f"sys_enter_{name}").exists()]


def perf_usable() -> str | None:
    """Why perf cannot count system calls here, or None if it can."""
    if not shutil.which("perf"):
        return "perf is not installed (apt-get install linux-perf)"
    probe = subprocess.run(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "--", "true"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    if probe.returncode or not perf_counts(probe.stderr):
        return f"perf cannot count system calls here: {probe.stderr.strip()[-200:]}"
    return None


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now (for a server that cannot be given port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: arguments for every load generator besides its workload's: ``--no-coalescing`` (main's
#: flag of that name) has the chat clients ask for plain frames, to compare with 1.5's
GENERATOR_FLAGS: list[str] = []


class Generator:
    """The load generator process, driven line by line (see loadgen.py)."""

    def __init__(self, port: int, *args: str) -> None:
        cmd = [sys.executable, "-m", "benchmarks.loadgen", *args, *GENERATOR_FLAGS, "--port", str(port)]
        self.proc = subprocess.Popen(pinned(1, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator stopped")
        return dict(json.loads(line))

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        self.say("quit")
        self.proc.wait(60)

    def run(self, server_pid: int) -> tuple[dict[str, Any], dict[str, Any], proc.Sample, proc.Sample, float]:
        """Wait until the generator is set up, say go, and read its result: (ready, result,
        the server's /proc sample before and after, wall seconds between). Then it quits."""
        ready = self.read()
        before, t0 = proc.sample(server_pid), time.monotonic()
        self.say("go")
        result = self.read()
        after, wall = proc.sample(server_pid), time.monotonic() - t0
        self.finish()
        return ready, result, before, after, wall


def throughput(backend: str, clients: int, rate: float, seconds: float, *flags: str, burst: int = 0) -> dict[str, Any]:
    """Direct messages on one backend (or a baseline); ``flags`` go to the server; ``burst``:
    that many logins at the production cost start halfway (workload 6)."""
    server = Server(backend, clients, *flags, burst_users=burst)
    try:
        extra = ["--relay"] if backend == "relay" else ["--redis"] if backend == "redis" else []
        extra += ["--register"] if server.register else []
        extra += ["--burst", str(burst), "--burst-rate", str(BURST_RATE)] if burst else []
        gen = Generator(server.port, "dm", "--clients", str(clients), "--rate", str(rate), "--seconds", str(seconds),
                        *extra)  # fmt: skip
        ready, result, before, after, wall = gen.run(server.pid)
    finally:
        server.stop()
    cpu = after.cpu - before.cpu
    delivered = max(1, result["delivered"])
    result.update(
        backend=backend, clients=clients, offered_rate=rate, ready=ready,
        server_cpu_us_per_message=round(cpu / delivered * 1e6, 2),
        server_cpu_utilisation=round(cpu / wall, 3),
        server_cpu_s=round(cpu, 3),
        server_threads=after.threads,
        server_context_switches={"voluntary": after.voluntary - before.voluntary,
                                 "involuntary": after.involuntary - before.involuntary},
        server_peak_rss_kib=after.hwm_kib,
        generator_limited=result["generator_cpu_utilisation"] > GENERATOR_LIMIT,
    )  # fmt: skip
    return result


def group_fanout(backend: str, members: int, rate: float, seconds: float, acks: bool = True) -> dict[str, Any]:
    """Workload 3 on one backend (or a baseline): one sender, a group of ``members``, closed
    loop (``rate`` 0) or paced; ``acks`` False: members only read (the chat server is given
    a window they never fill). Server CPU per delivery = CPU / (messages x members reached)."""
    flags = [*GROUP_FLAGS, "--max-group-members", str(max(1000, members + 1))]  # the members and the sender
    flags += [] if acks else NO_ACK_FLAGS
    server = Server(backend, members + 1, *flags)
    try:
        extra = ["--relay"] if backend == "relay" else ["--redis"] if backend == "redis" else []
        extra += [] if acks else ["--no-ack"]
        gen = Generator(server.port, "group", "--members", str(members), "--rate", str(rate), "--seconds",
                        str(seconds), *extra)  # fmt: skip
        ready, result, before, after, wall = gen.run(server.pid)
    finally:
        server.stop()
    cpu = after.cpu - before.cpu
    result.update(
        backend=backend, asked_members=members, offered_rate=rate, acks=acks and backend not in ("relay", "redis"),
        refused=ready["refused"],
        server_cpu_us_per_delivery=round(cpu / max(1, result["deliveries"]) * 1e6, 2),
        server_cpu_us_per_message=round(cpu / max(1, result["stored"]) * 1e6, 1),
        server_cpu_utilisation=round(cpu / wall, 3),
        server_cpu_s=round(cpu, 3),
        server_threads=after.threads,
        server_peak_rss_kib=after.hwm_kib,
        generator_limited=result["generator_cpu_utilisation"] > GENERATOR_LIMIT,
    )  # fmt: skip
    return result


def group_runs(backends: list[str], quick: bool, repeats: int, seconds: float) -> dict[str, Any]:
    """Workload 3, every point of it: the baselines and each backend at each group size, in a
    closed loop with acks (median of ``repeats`` by µs per delivery), paced at ``GROUP_PACED``,
    and in a closed loop without acks (what the acks cost: the difference, per delivery)."""
    sizes = [100] if quick else GROUP_SIZES
    baselines = ["relay", *(["redis"] if shutil.which("redis-server") else [])]
    if quick:  # one backend, the closed loop with acks only: a check that fan-out works, not figures
        backends = ["epoll" if "epoll" in backends else backends[0]]
    points: list[dict[str, Any]] = []
    for backend in [*baselines, *backends]:
        for members in sizes:
            runs = [group_fanout(backend, members, 0.0, seconds) for _ in range(repeats)]
            points.append(median_of(runs, "server_cpu_us_per_delivery"))
            if quick:
                continue
            points.append(group_fanout(backend, members, GROUP_PACED, seconds))
            if backend not in baselines:
                points.append(group_fanout(backend, members, 0.0, seconds, acks=False))
    for point in points:
        relay = next(p for p in points if p["backend"] == "relay" and p["asked_members"] == point["asked_members"]
                     and p["offered_rate"] == point["offered_rate"])  # fmt: skip
        ratio = point["server_cpu_us_per_delivery"] / max(0.01, relay["server_cpu_us_per_delivery"])
        point["vs_relay"] = None if point["backend"] == "relay" else round(ratio, 1)
    return {"points": points, "ack_cost": ack_cost(points)}


def ack_cost(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the members' acks cost the server, per backend and group size: µs of CPU per
    delivery in the closed loop with acks, without, and the difference (and its share)."""
    costs = []
    for with_acks in points:
        if not with_acks["acks"] or with_acks["offered_rate"]:
            continue
        key = (with_acks["backend"], with_acks["asked_members"])
        same = [p for p in points if (p["backend"], p["asked_members"]) == key]
        without = next((p for p in same if not p["acks"] and not p["offered_rate"]), None)
        if without is None:
            continue
        a, b = with_acks["server_cpu_us_per_delivery"], without["server_cpu_us_per_delivery"]
        costs.append({
            "backend": with_acks["backend"], "members": with_acks["members"], "us_per_delivery_acks": a,
            "us_per_delivery_no_acks": b, "ack_us_per_delivery": round(a - b, 2),
            "ack_share": round((a - b) / a, 3) if a else None, "deliveries_per_ack": with_acks["deliveries_per_read"],
        })  # fmt: skip
    return costs


def sustained(point: dict[str, Any]) -> bool:
    """The server kept up: it delivered 95 % of the offered load over the run and its drain
    (a queue that grew shows as a long drain), and the generator was not the limit."""
    return bool(point["delivered_per_s"] >= 0.95 * point["offered_rate"] and not point["generator_limited"])


def highest_sustained(backend: str, clients: int, closed_loop_rate: float, seconds: float) -> dict[str, Any]:
    """Workload 2's last point: the highest paced load ``backend`` sustains, to within 20 %.
    Offered first at 90 % of what the closed loop delivered, then 20 % less each time, at
    most three runs (one repeat each: the search is bounded in time). The point returned is
    the first load sustained (or the last tried), with every load tried beside it."""
    offered, tried = SEARCH_START * closed_loop_rate, []
    for _ in range(SEARCH_TRIES):
        point = throughput(backend, clients, float(round(offered, -2)), seconds)
        point["sustained"] = sustained(point)
        tried.append({"offered_rate": point["offered_rate"], "delivered_per_s": point["delivered_per_s"],
                      "p99_ms": point["latency"]["p99_ms"], "sustained": point["sustained"]})  # fmt: skip
        if point["sustained"]:
            break
        offered *= SEARCH_STEP
    point["tried"] = tried
    return point


def connections(backend: str, count: int, idle_seconds: float = 2.0) -> dict[str, Any]:
    """Workload 4: ``count`` idle logged-in connections on one backend."""
    server = Server(backend, count)
    try:
        time.sleep(0.2)
        base = proc.sample(server.pid)
        gen = Generator(server.port, "idle", "--connections", str(count))
        ready = gen.read()
        time.sleep(0.5)  # let the logins' work settle
        loaded = proc.sample(server.pid)
        time.sleep(idle_seconds)
        idle = proc.sample(server.pid)
        gen.say("go")
        probe = gen.read()
        gen.finish()
    finally:
        server.stop()
    held = max(1, ready["ready"])
    return {
        "backend": backend,
        "asked": count,
        "held": ready["ready"],
        "refused": ready["refused"],
        "rss_base_kib": base.rss_kib,
        "rss_loaded_kib": loaded.rss_kib,
        "rss_per_connection_bytes": round((loaded.rss_kib - base.rss_kib) * 1024 / held),
        "idle_cpu_utilisation": round((idle.cpu - loaded.cpu) / idle_seconds, 4),
        "server_threads": loaded.threads,
        "probe_latency": probe.get("latency", {}),
        "probe_delivered": probe.get("delivered", 0),
        "probe_sent": probe.get("sent", 0),
    }


def mixed_plan(backends: list[str], idles: list[int], thread_room: int, thread_limit: str) -> list[dict[str, Any]]:
    """Workload 7's points, in order: {"backend", "idle", "skipped"}; "skipped" says why a
    point is not measured (None: it is). select stops at FD_SETSIZE; threads, with two
    threads per connection, where the machine's thread limit (``thread_room`` more threads,
    ``thread_limit`` names it) would be passed."""
    plan = []
    for backend in backends:
        for idle in idles:
            connections, skipped = MIXED_ACTIVE + idle, None
            if backend == "select" and connections > SELECT_ROOM:
                skipped = "n/a (FD_SETSIZE)"
            elif backend == "threads" and 2 * connections > thread_room:
                skipped = f"stopped: {2 * connections:,} threads would pass {thread_limit}"
            plan.append({"backend": backend, "idle": idle, "skipped": skipped})
    return plan


def most_idle(fd_limit: int) -> int:
    """The most idle connections workload 7 asks for under the open-file limit (server and
    generator both run at ``fd_limit``): less the server's reserve, a margin, the active
    clients; in steps of 500."""
    from csce513msg.backends.common import FD_RESERVE

    return max(0, (fd_limit - FD_RESERVE - 200 - MIXED_ACTIVE) // 500 * 500)


STATS_WAITS = re.compile(r"\| ([\d,]+) wake-ups/s, ([\d.]+) µs CPU per wait")


def stats_rates(
    lines: list[tuple[float, str]], start: float, end: float, interval: float
) -> tuple[float, float] | None:
    """From ``msgsrv --stats`` lines (time read, text), the loop's wake-ups per second and
    the mean µs of CPU per wait over the lines whose interval lies within [start, end]
    (each line covers the ``interval`` before it); the mean is weighted by wake-ups.
    None without such a line (threads, uvloop: no wait of ours)."""
    rates = []
    for at, line in lines:
        found = STATS_WAITS.search(line)
        if found and start + interval <= at <= end:
            rates.append((float(found[1].replace(",", "")), float(found[2])))
    if not rates:
        return None
    woke = sum(r for r, _ in rates)
    per_wait = sum(r * us for r, us in rates) / woke if woke else 0.0
    return woke / len(rates), per_wait


def active_among_idle(backend: str, idle: int, seconds: float, perf: bool) -> dict[str, Any]:
    """Workload 7 on one backend: ``MIXED_ACTIVE`` clients at ``MIXED_RATE`` among ``idle``
    idle logged-in connections. Server CPU per message and per wake-up, the loop's wake-ups
    and the CPU inside each wait (the stats line), system calls per message (``perf``)."""
    server = Server(backend, MIXED_ACTIVE + idle, *MIXED_FLAGS, perf=perf)
    try:
        gen = Generator(server.port, "mixed", "--clients", str(MIXED_ACTIVE), "--idle", str(idle), "--rate",
                        str(MIXED_RATE), "--seconds", str(seconds))  # fmt: skip
        ready = gen.read()
        time.sleep(1.0)  # let the logins' work settle
        switches0 = proc.context_switches(server.pid)
        if perf:
            server.counting(True)
        before, t0 = proc.sample(server.pid), time.monotonic()
        gen.say("go")
        result = gen.read()
        after, t1 = proc.sample(server.pid), time.monotonic()
        if perf:
            server.counting(False)
        switches1 = proc.context_switches(server.pid)
        gen.finish()
    finally:
        server.stop()
    wall, cpu = t1 - t0, after.cpu - before.cpu
    delivered = max(1, result["delivered"])
    rates = stats_rates(server.stats, t0, t1, float(MIXED_FLAGS[-1]))
    counted = round(rates[0] * wall) if rates else None  # the server's own count of its waits
    syscalls = server.syscalls() if perf else None
    wakeups: int | None
    if backend == "threads":  # no loop: a thread per connection side blocks, and is woken
        wakeups, source = switches1[0] - switches0[0], "voluntary context switches, all threads"
    elif syscalls is not None:
        wakeups, source = sum(syscalls.get(n, 0) for n in WAIT_SYSCALLS), "wait system calls (perf)"
    else:
        wakeups, source = counted, "the server's count (--stats)"
    per_message = None
    if syscalls is not None:
        per_message = {name: round(count / delivered, 3) for name, count in syscalls.items()}
        # the wait clock (--stats) calls clock_gettime around each wait: measurement, not the server's work
        per_message["all_but_wait_clock"] = round((syscalls.get("all", 0) - syscalls.get("clock_gettime", 0))
                                                  / delivered, 2)  # fmt: skip
    result.update(
        backend=backend, idle=idle, skipped=None, offered_rate=MIXED_RATE, refused=ready["refused"],
        server_cpu_s=round(cpu, 3), server_cpu_utilisation=round(cpu / wall, 3),
        server_cpu_us_per_message=round(cpu / delivered * 1e6, 1),
        wakeups=wakeups, wakeups_source=source, server_counted_wakeups=counted,
        wakeups_per_message=round(wakeups / delivered, 3) if wakeups else None,
        server_cpu_us_per_wakeup=round(cpu / wakeups * 1e6, 1) if wakeups else None,
        wait_cpu_us=round(rates[1], 2) if rates else None,
        syscalls_per_message=per_message,
        context_switches={"voluntary": switches1[0] - switches0[0], "involuntary": switches1[1] - switches0[1]},
        server_threads=after.threads, server_rss_kib=after.rss_kib,
        generator_limited=result["generator_cpu_utilisation"] > GENERATOR_LIMIT,
    )  # fmt: skip
    return result


def mixed_runs(backends: list[str], quick: bool, seconds: float, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Workload 7, every point of its plan (skipped ones say why); perf where it can count."""
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if quick:
        chosen, idle_counts, seconds = [b for b in MIXED_QUICK[0] if b in backends], MIXED_QUICK[1], MIXED_QUICK[2]
    else:
        chosen, idle_counts = backends, [*MIXED_IDLE, *[n for n in [most_idle(fd_limit)] if n > MIXED_IDLE[-1]]]
    why_not = perf_usable()
    if why_not:
        report["not_run"]["workload 7 system calls"] = why_not
    room, limit = proc.thread_room()
    points = []
    for step in mixed_plan(chosen, idle_counts, room, limit):
        skipped = step["skipped"] is not None
        points.append(step if skipped else active_among_idle(step["backend"], step["idle"], seconds, not why_not))
    return points


def median_of(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median of the repeats, with every repeat's value beside it."""
    ordered = sorted(runs, key=lambda r: _get(r, key) or 0.0)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["repeats"] = [_get(r, key) for r in runs]
    return chosen


def _get(point: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        point = point[part]
    return point


def run(
    backends: list[str], quick: bool, repeats: int = 3, seconds: float = 10.0, workloads: str = ALL_WORKLOADS
) -> dict[str, Any]:
    """Every workload in ``workloads`` (their numbers; 2, 5 and 6 run in the full run only)."""
    clients = 100
    #: workload 1: (clients, offered rate; 0 = closed loop, as fast as each client's window allows)
    direct = [(100, PACED_LOAD)] if quick else [(100, 0.0), (1000, 0.0)]
    if quick:
        repeats, seconds = 1, 3.0
    conn_counts = [1000] if quick else [100, 1000, 5000, 10000]
    report: dict[str, Any] = {
        "schema": "csce513msg-bench/1",
        "mode": "quick" if quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": proc.machine(),
        "settings": {
            "server": "msgsrv --durability normal --log-level warning --kdf-cost test, pinned to core 0",
            "generator": "benchmarks.loadgen, one process pinned to core 1",
            "message_body_bytes": 60,
            "window_per_sender": 8,
            "presence": "not subscribed",
        },
        "relay_reference_us": RELAY_REFERENCE_US,
        "relay": None,
        "repeats": repeats,
        "seconds_per_run": seconds,
        "throughput": [],
        "latency_by_load": [],
        "highest_sustained": [],
        "connections": [],
        "durability": [],
        "login_burst": [],
        "group_fanout": {"points": [], "ack_cost": []},
        "active_among_idle": [],
        "not_run": {},
        "timings_s": {},
    }
    rate = direct[0][1]
    timings = report["timings_s"]
    for number in sorted(set(ALL_WORKLOADS) - set(workloads)):
        report["not_run"][f"workload {number}"] = "not asked for (--workloads)"
    relay: dict[str, Any] | None = None
    if "1" in workloads:
        with timed(timings, "baselines"):
            runs = [throughput("relay", clients, rate, seconds) for _ in range(repeats)]
            relay = report["relay"] = median_of(runs, "server_cpu_us_per_message")
            if shutil.which("redis-server"):  # a C server on the same workload, as a reference point
                runs = [throughput("redis", clients, rate, seconds) for _ in range(repeats)]
                report["redis"] = median_of(runs, "server_cpu_us_per_message")
    if not shutil.which("redis-server"):
        report["not_run"]["Redis baseline"] = "redis-server is not installed (apt-get install redis-server)"
    for backend in backends:
        if relay is not None:
            with timed(timings, "1 throughput"):
                trusted = relay["server_cpu_us_per_message"] <= RELAY_TRUSTED_US
                for count, offered in direct:
                    runs = [throughput(backend, count, offered, seconds) for _ in range(repeats)]
                    point = median_of(runs, "server_cpu_us_per_message")
                    ratio = point["server_cpu_us_per_message"] / relay["server_cpu_us_per_message"]
                    point["vs_relay"] = round(ratio, 2) if trusted else None
                    report["throughput"].append(point)
        if "2" in workloads and not quick:
            with timed(timings, "2 latency"):
                for offered in LATENCY_LOADS:  # latency at a fixed offered load
                    runs = [throughput(backend, clients, offered, seconds) for _ in range(repeats)]
                    load = median_of(runs, "latency.p99_ms")
                    load["sustained"] = sustained(load)
                    report["latency_by_load"].append(load)
                # and at the highest load it sustains, found from its closed-loop throughput (workload 1)
                closed = [p for p in report["throughput"] if p["backend"] == backend and p["clients"] == clients]
                if closed:
                    highest = highest_sustained(backend, clients, closed[0]["delivered_per_s"], seconds)
                    report["highest_sustained"].append(highest)
        if "4" in workloads:  # every backend (poll and asyncio too, since workload 7)
            with timed(timings, "4 connections"):
                for count in conn_counts:
                    report["connections"].append(connections(backend, count))
        if not quick and backend in SCALING_BACKENDS:  # workloads 5 and 6, one repeat each
            if "5" in workloads:
                with timed(timings, "5 durability"):
                    for mode in ("full", "normal", "memory"):  # at one paced load, so latency means something
                        point = throughput(backend, clients, PACED_LOAD, seconds, "--durability", mode)
                        report["durability"].append({**point, "durability": mode})
            if "6" in workloads:
                with timed(timings, "6 login burst"):
                    report["login_burst"].append(login_burst(backend, clients))
    if "3" in workloads:
        with timed(timings, "3 group fan-out"):
            report["group_fanout"] = group_runs(backends, quick, repeats, GROUP_QUICK_SECONDS if quick else seconds)
    if "7" in workloads:
        with timed(timings, "7 active among idle"):
            report["active_among_idle"] = mixed_runs(backends, quick, seconds, report)
    return report


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (the full run must stay under 30 min)."""
    start = time.monotonic()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.monotonic() - start, 1)


def login_burst(backend: str, clients: int) -> dict[str, Any]:
    """Workload 6: chat paced at ``PACED_LOAD`` and, halfway, ``BURST_LOGINS`` logins at
    ``BURST_RATE``/s at the production KDF cost; p99 with the burst against p99 before it."""
    point = throughput(backend, clients, PACED_LOAD, BURST_SECONDS, burst=BURST_LOGINS)
    before, during = point["burst"]["before"]["p99_ms"], point["burst"]["during"]["p99_ms"]
    point["p99_ratio"] = round(during / before, 2) if before and during else None
    return point


def check(report: dict[str, Any]) -> list[str]:
    """What must hold in any run, whatever the speed: [] if all is well."""
    problems = []
    baselines = [*([report["relay"]] if report["relay"] else []), *([report["redis"]] if "redis" in report else [])]
    measured = [*report["throughput"], *report["latency_by_load"], *report["highest_sustained"], *report["durability"],
                *report["login_burst"]]  # fmt: skip
    for point in [*baselines, *measured]:
        name = f"{point['backend']} at {point['offered_rate']:.0f}/s"
        if point["delivered"] != point["sent"] or point["sent"] == 0:
            problems.append(f"{name}: delivered {point['delivered']} of {point['sent']}")
        if point["order_violations"]:
            problems.append(f"{name}: {point['order_violations']} messages out of order")
        if point["duplicates"]:
            problems.append(f"{name}: {point['duplicates']} duplicate message ids")
        if point["latency_samples"] != point["delivered"]:
            problems.append(f"{name}: {point['latency_samples']} latency samples for {point['delivered']} deliveries")
        if point["server_cpu_s"] <= 0:
            problems.append(f"{name}: no server CPU read from /proc")
        if point.get("errors"):
            problems.append(f"{name}: {point['errors']} errors")
    for point in report["connections"]:
        name = f"{point['backend']} x{point['asked']}"
        if point["held"] + point["refused"] != point["asked"]:
            problems.append(f"{name}: {point['held']} held + {point['refused']} refused != {point['asked']}")
        if point["refused"] and point["backend"] != "select":
            problems.append(f"{name}: {point['refused']} connections refused")
        if point["probe_delivered"] != point["probe_sent"]:
            problems.append(f"{name}: probe delivered {point['probe_delivered']} of {point['probe_sent']}")
    problems += check_groups(report["group_fanout"]["points"])
    problems += check_mixed(report["active_among_idle"], "workload 7 system calls" not in report["not_run"])
    problems += validate(report)
    return problems


def overloaded(p: dict[str, Any]) -> bool:
    """A paced point the server did not sustain: it stored under 90 % of the offered rate (the
    sender's window held the rest back). Its last messages may not have reached every member
    when the bounded drain ended: the table shows the rate it did reach, and its latency."""
    return bool(p["offered_rate"]) and p["messages_per_s"] < 0.9 * p["offered_rate"]


def check_groups(points: list[dict[str, Any]]) -> list[str]:
    """Workload 3: every member got every message stored, once and in order; every send was
    answered (both unless the point was ``overloaded``); one latency sample a delivery; acks
    as asked; CPU read."""
    problems = []
    for p in points:
        name = f"group of {p['asked_members']} on {p['backend']} at {p['offered_rate']:.0f}/s"
        name += "" if p["acks"] or p["backend"] in ("relay", "redis") else " without acks"
        if p["refused"] and p["backend"] != "select":
            problems.append(f"{name}: {p['refused']} members refused")
        if p["members"] + p["refused"] != p["asked_members"]:
            problems.append(f"{name}: {p['members']} members + {p['refused']} refused != {p['asked_members']}")
        if p["sent"] == 0 or p["errors"]:
            problems.append(f"{name}: {p['sent']} sent, {p['errors']} errors")
        # paced past what the server sustains, the sender's window may still be on its way when
        # the bounded drain ends: then only what arrived is checked (once, in order, sampled)
        whole = not overloaded(p)
        if whole and p["answered"] != p["sent"]:
            problems.append(f"{name}: {p['sent']} sent, {p['answered']} answered")
        if whole and (p["deliveries"] != p["expected_deliveries"] or p["members_complete"] != p["members"]):
            problems.append(f"{name}: {p['deliveries']} deliveries of {p['expected_deliveries']} "
                            f"({p['members_complete']} of {p['members']} members got every message)")  # fmt: skip
        if p["duplicates"] or p["gaps"]:
            problems.append(f"{name}: {p['duplicates']} duplicates, {p['gaps']} messages skipped or out of order")
        if p["latency_samples"] != p["deliveries"]:
            problems.append(f"{name}: {p['latency_samples']} latency samples for {p['deliveries']} deliveries")
        if p["acks"] != (0 < p["acks_sent"] <= p["member_reads"]):
            problems.append(f"{name}: {p['acks_sent']} acks for {p['member_reads']} reads")
        if p["server_cpu_s"] <= 0:
            problems.append(f"{name}: no server CPU read from /proc")
    return problems


def check_mixed(points: list[dict[str, Any]], perf: bool) -> list[str]:
    """Workload 7: a point is skipped only where select meets FD_SETSIZE or threads the
    thread limit; a measured one delivered every active message once and in order, one
    latency sample each, refused no one, kept every idle connection logged in and open to
    the end; its CPU, wake-ups (and, with perf, system calls) were read."""
    problems = []
    for p in points:
        name = f"active among {p['idle']} idle on {p['backend']}"
        if p["skipped"] is not None:
            expected = {"select": "n/a (FD_SETSIZE)", "threads": "stopped: "}.get(p["backend"])
            if expected is None or not p["skipped"].startswith(expected):
                problems.append(f"{name}: skipped ({p['skipped']})")
            continue
        if p["refused"]:
            problems.append(f"{name}: {p['refused']} connections refused")
        if p["sent"] == 0 or p["delivered"] != p["sent"] or p["errors"]:
            problems.append(f"{name}: delivered {p['delivered']} of {p['sent']}, {p['errors']} errors")
        if p["duplicates"] or p["order_violations"]:
            problems.append(f"{name}: {p['duplicates']} duplicates, {p['order_violations']} out of order")
        if p["latency_samples"] != p["delivered"]:
            problems.append(f"{name}: {p['latency_samples']} latency samples for {p['delivered']} deliveries")
        if p["idle_logged_in"] != p["idle"] or p["idle_open"] != p["idle"]:
            problems.append(f"{name}: {p['idle_logged_in']} idle logged in, {p['idle_open']} still open at the end")
        if p["server_cpu_s"] <= 0:
            problems.append(f"{name}: no server CPU read from /proc")
        if not p["wakeups"]:
            problems.append(f"{name}: no wake-ups counted ({p['wakeups_source']})")
        if p["backend"] in ("select", "poll", "epoll", "asyncio") and p["wait_cpu_us"] is None:
            problems.append(f"{name}: no wait figures in the server's stats lines")
        if perf and not (p["syscalls_per_message"] or {}).get("all"):
            problems.append(f"{name}: no system calls counted by perf")
    return problems


def validate(report: dict[str, Any]) -> list[str]:
    """The report against benchmarks/schema.json (required keys and types; no extra package)."""
    schema = json.loads((Path(__file__).parent / "schema.json").read_text())
    return _validate(report, schema, "report")


def _validate(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    kinds: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list, "string": str,
             "number": (int, float), "integer": int, "boolean": bool, "null": type(None)}  # fmt: skip
    expected = schema.get("type")
    if expected:
        allowed = expected if isinstance(expected, list) else [expected]
        if not any(isinstance(value, kinds[k]) and not (k in ("number", "integer") and isinstance(value, bool))
                   for k in allowed):  # fmt: skip
            return [f"{where}: {type(value).__name__}, expected {expected}"]
    problems = []
    if isinstance(value, dict):
        problems += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += _validate(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += _validate(item, schema["items"], f"{where}[{i}]")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare the backends side by side.")
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--quick", action="store_true", help="the short gating run (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if an invariant is broken")
    parser.add_argument("--repeats", type=int, default=3, help="full run: repeats of workloads 1 and 2 (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="full run: seconds per run")
    parser.add_argument("--workloads", default=ALL_WORKLOADS, help="which workloads to run, e.g. 3 or 17")
    parser.add_argument(
        "--no-coalescing", action="store_true", help="chat clients ask for no coalesced frames (protocol 1.5)"
    )
    args = parser.parse_args()
    if args.no_coalescing:
        GENERATOR_FLAGS.append("--no-coalescing")
    report = run(args.backends.split(","), args.quick, args.repeats, args.seconds, args.workloads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{report['mode']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks.report import plots, table

    table(report)
    for png in plots(report, args.out):
        print(f"plot: {png}")
    print(f"report: {path}")
    if args.check:
        problems = check(report)
        for problem in problems:
            print(f"CHECK FAILED: {problem}")
        if problems:
            raise SystemExit(1)
        print("checks: delivered = sent, order kept, no duplicates, one latency sample each, CPU read, schema ok; "
              "groups: each member got every message once, in order; every send answered; acks as asked; "
              "active among idle: every idle connection logged in and still open, wake-ups counted")  # fmt: skip
