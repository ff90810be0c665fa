"""Workload 1 in windows on ONE server: what a paced load costs once the server has run it.

``suite.throughput`` starts a fresh server for every point, with a new database whose WAL
grows from nothing during the run. A class's server has run for hours: its WAL file is at
its working size. This runs the same load (``loadgen dm``) several times in a row against
one server and reports each window: server CPU a message, latency, and the WAL's size
after it. Compare the later windows; run two trees in turn for an A/B::

    python -m benchmarks.warm --backend epoll --rate 5000 --windows 3 --seconds 5

(docs/benchmarks.md, "The checkpoint beside the writer, measured again".)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import suite


def windows(backend: str, clients: int, rate: float, seconds: float, count: int, *flags: str) -> list[dict[str, Any]]:
    """``count`` runs of the direct-message load (``rate`` 0: closed loop) on one server."""
    server = suite.Server(backend, clients, *flags)
    wal = Path(server.data_dir) / "csce513msg.db-wal"
    found = []
    try:
        for number in range(count):
            # --durability memory keeps no accounts from before: the first window registers them
            register = ["--register"] if server.register and number == 0 else []
            gen = suite.Generator(server.port, "dm", "--clients", str(clients), "--rate", str(rate),
                                  "--seconds", str(seconds), *register)  # fmt: skip
            _ready, result, before, after, _wall = gen.run(server.pid)
            delivered = max(1, result["delivered"])
            found.append({
                "sent": result["sent"], "delivered": result["delivered"],
                "server_cpu_us_per_message": round((after.cpu - before.cpu) / delivered * 1e6, 1),
                "p50_ms": result["latency"]["p50_ms"], "p99_ms": result["latency"]["p99_ms"],
                "wal_mib": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0,
            })  # fmt: skip
    finally:
        server.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", default="epoll", choices=["threads", "select", "poll", "epoll", "asyncio", "uvloop"]
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s in all; 0: closed loop")
    parser.add_argument("--seconds", type=float, default=5.0, help="each window's length")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--server-flags", default="", help="more msgsrv flags, e.g. '--durability full'")
    args = parser.parse_args()
    found = windows(args.backend, args.clients, args.rate, args.seconds, args.windows, *args.server_flags.split())
    for number, window in enumerate(found, 1):
        print(json.dumps({"backend": args.backend, "rate": args.rate, "window": number, **window}))


if __name__ == "__main__":
    main()
