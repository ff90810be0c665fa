"""Issue 14's target table, every row, in one sitting: ``python -m benchmarks.targets``.

Each row is measured the way the issue defines it (workload 1's shape: 100 clients,
every guarantee on, ``--durability normal`` unless the row says otherwise; the server
pinned to one core, its CPU counted over every thread), on each backend asked for, with
the relay and Redis measured in the same run so the CPU rows read as ratios. Run it on
two trees in one sitting to get a before and an after (the machine's speed drifts:
compare within a sitting, never across).

    python -m benchmarks.targets --backends epoll,uvloop --repeats 3 --out targets.json

Bounded: every run stops by itself (``--seconds`` each); about 4 minutes a backend. The
paced rows are one run each on a fresh server, whose WAL grows from nothing during it; the
row "a warm server" is the paced 5k/s again in later windows on one server (``warm``), the
figure to quote for a change in how the WAL is checkpointed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks import proc, suite, warm

CLIENTS = 100
GROUP_MEMBERS = 1000
IDLE_CONNECTIONS = 10_000


def cpu_per_message(backend: str, repeats: int, seconds: float, *flags: str) -> dict[str, Any]:
    """Closed loop (workload 1): the median of ``repeats`` runs, by CPU per message."""
    runs = [suite.throughput(backend, CLIENTS, 0.0, seconds, *flags) for _ in range(repeats)]
    return suite.median_of(runs, "server_cpu_us_per_message")


def paced(backend: str, rate: float, seconds: float, *flags: str) -> dict[str, Any]:
    point = suite.throughput(backend, CLIENTS, rate, seconds, *flags)
    point["sustained"] = suite.sustained(point) and point["latency"]["p99_ms"] <= 10.0
    return point


def warmed(backend: str, rate: float, seconds: float) -> dict[str, Any]:
    """A paced load on a server that has run it before (``warm``: three windows on one
    server, the later two reported), as a class's server runs: its WAL file at its working
    size. A fresh server's WAL grows from nothing during its one run (``paced``)."""
    later = warm.windows(backend, CLIENTS, rate, seconds, 3)[1:]
    return {key: statistics.median(w[key] for w in later) for key in ("p99_ms", "p50_ms", "server_cpu_us_per_message")}


def highest(backend: str, closed_rate: float, seconds: float) -> dict[str, Any]:
    """The issue's "sustained": delivered at the offered rate with p99 <= 10 ms. Offered
    from 90 % of the closed loop's rate down by 10 % a step, at most six runs."""
    offered, tried = 0.9 * closed_rate, []
    for _ in range(6):
        point = paced(backend, float(round(offered, -2)), seconds)
        tried.append({"offered": point["offered_rate"], "delivered_per_s": point["delivered_per_s"],
                      "p99_ms": point["latency"]["p99_ms"], "sustained": point["sustained"]})  # fmt: skip
        if point["sustained"]:
            return {"rate": point["offered_rate"], "tried": tried}
        offered *= 0.9
    return {"rate": 0.0, "tried": tried}


def measure(backend: str, repeats: int, seconds: float) -> dict[str, Any]:
    closed = cpu_per_message(backend, repeats, seconds)
    memory = cpu_per_message(backend, repeats, seconds, "--durability", "memory")
    group = suite.group_fanout(backend, GROUP_MEMBERS, 0.0, seconds)
    five = paced(backend, 5000.0, seconds)
    five_warm = warmed(backend, 5000.0, seconds)
    ten = paced(backend, 10000.0, seconds)
    full = paced(backend, 5000.0, seconds, "--durability", "full")
    logins = suite.login_burst(backend, CLIENTS)
    idle = suite.connections(backend, IDLE_CONNECTIONS)
    return {
        "backend": backend,
        "cpu_us_per_message": closed["server_cpu_us_per_message"],
        "closed_loop_per_s": closed["delivered_per_s"],
        "memory_cpu_us_per_message": memory["server_cpu_us_per_message"],
        "group_cpu_us_per_delivery": group["server_cpu_us_per_delivery"],
        "paced_5k_cpu_utilisation": five["server_cpu_utilisation"],
        "paced_5k_p99_ms": five["latency"]["p99_ms"],
        "paced_5k_p50_ms": five["latency"]["p50_ms"],
        "paced_5k_warm_p99_ms": five_warm["p99_ms"],
        "paced_5k_warm_p50_ms": five_warm["p50_ms"],
        "paced_5k_warm_cpu_us_per_message": five_warm["server_cpu_us_per_message"],
        "paced_10k_p99_ms": ten["latency"]["p99_ms"],
        "paced_10k_delivered_per_s": ten["delivered_per_s"],
        "highest_sustained": highest(backend, closed["delivered_per_s"], seconds),
        "paced_5k_full_p99_ms": full["latency"]["p99_ms"],
        "login_median_ms": logins["burst"]["logins"]["median_ms"],
        "login_burst": logins["burst"],
        "login_chat_p99_ratio": logins["p99_ratio"],
        "rss_bytes_per_idle_connection": idle["rss_per_connection_bytes"],
        "idle_held": idle["held"],
    }


def baselines(repeats: int, seconds: float) -> dict[str, Any]:
    """The relay (and Redis, where installed) on the closed loop and the group fan-out."""
    out: dict[str, Any] = {}
    for name in ["relay", *(["redis"] if shutil.which("redis-server") else [])]:
        out[name] = {
            "cpu_us_per_message": cpu_per_message(name, repeats, seconds)["server_cpu_us_per_message"],
            "group_cpu_us_per_delivery": suite.group_fanout(name, GROUP_MEMBERS, 0.0, seconds)[
                "server_cpu_us_per_delivery"
            ],
            "paced_5k_cpu_utilisation": paced(name, 5000.0, seconds)["server_cpu_utilisation"],
        }
    return out


def table(report: dict[str, Any]) -> str:
    """The rows as the issue words them, one column a backend."""
    relay = report["baselines"]["relay"]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("server CPU per direct message", lambda p: f"{p['cpu_us_per_message']} µs "
         f"({p['cpu_us_per_message'] / relay['cpu_us_per_message']:.1f}x relay)"),
        ("the same with --durability memory", lambda p: f"{p['memory_cpu_us_per_message']} µs"),
        ("per group delivery, 1,000 members", lambda p: f"{p['group_cpu_us_per_delivery']} µs"),
        ("server CPU at a paced 5k/s", lambda p: f"{p['paced_5k_cpu_utilisation']:.0%}"),
        ("p99 at a paced 5k/s, normal", lambda p: f"{p['paced_5k_p99_ms']:.1f} ms (p50 {p['paced_5k_p50_ms']:.1f})"),
        ("the same, a warm server (windows 2-3)", lambda p: f"{p['paced_5k_warm_p99_ms']:.1f} ms "
         f"(p50 {p['paced_5k_warm_p50_ms']:.1f}; {p['paced_5k_warm_cpu_us_per_message']:.0f} µs/msg)"),
        ("p99 at a paced 10k/s", lambda p: f"{p['paced_10k_p99_ms']:.1f} ms ({p['paced_10k_delivered_per_s']:,.0f}/s)"),
        ("highest paced load sustained", lambda p: f"{p['highest_sustained']['rate']:,.0f}/s"),
        ("p99 at a paced 5k/s, full", lambda p: f"{p['paced_5k_full_p99_ms']:.1f} ms"),
        ("login median during 5k/s chat", lambda p: f"{p['login_median_ms']} ms, p99 x{p['login_chat_p99_ratio']}"),
        ("RSS per idle connection at 10k", lambda p: f"{p['rss_bytes_per_idle_connection'] / 1000:.2f} kB"),
    ]  # fmt: skip
    points = report["backends"]
    lines = ["| figure | " + " | ".join(p["backend"] for p in points) + " |", "|---" * (len(points) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(p) for p in points) + " |" for name, cell in rows]
    base = ", ".join(
        f"{n} {b['cpu_us_per_message']} µs/msg, {b['group_cpu_us_per_delivery']} µs/delivery, "
        f"{b['paced_5k_cpu_utilisation']:.0%} at 5k/s"
        for n, b in report["baselines"].items()
    )
    return "\n".join([*lines, "", f"Baselines: {base}."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="epoll,uvloop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": proc.machine(), "seconds": args.seconds, "repeats": args.repeats}
    report["baselines"] = baselines(args.repeats, args.seconds)
    report["backends"] = []
    for backend in args.backends.split(","):
        report["backends"].append(measure(backend, args.repeats, args.seconds))
        print(f"{backend} done", file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(table(report))


if __name__ == "__main__":
    main()
