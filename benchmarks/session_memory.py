"""What the hub holds for each logged-in connection, by allocation site (``tracemalloc``).

The C10K picture's memory row (RSS per idle connection at 10,000) is the backend's
connection plus the hub's session; this measures the hub's part alone, deterministically:
the pure engine (no sockets, no threads), a memory store, ``--sessions`` logins of
distinct users and devices, each with a device token, as ``loadgen idle`` makes them::

    python -m benchmarks.session_memory --sessions 3000

Allocations the memory store makes for itself (its copies of accounts and tokens) are left
out: the SQLite store keeps those on disk. Python's own overhead per object is counted, the
allocator's free lists and the kernel's pages are not (RSS is larger; compare the two only
as before and after of one change).
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from typing import Any

from benchmarks.test_hot_paths import run_jobs
from csce513msg.crypto.passwords import COSTS, Scrypt
from csce513msg.hub import Engine, HubConfig
from csce513msg.protocol import Feature, Hello, Login, encode
from csce513msg.store import Account, MemoryStore

PASSWORD = "bench password"


def measure(sessions: int, top: int = 12) -> dict[str, Any]:
    """Bytes the engine holds per logged-in session, in all and by the line that allocated them."""
    passwords = Scrypt(COSTS["test"])
    stored = passwords.hash(PASSWORD)
    store = MemoryStore([Account(f"u{i}", "student", stored) for i in range(sessions + 1)])
    engine = Engine(store, HubConfig(), 0.0, passwords, store.load_accounts())
    hello = encode(Hello(version_minor=5, features=(Feature.COALESCING.value,)))  # as loadgen's clients

    def log_in(conn: int, user: str) -> None:
        engine.connection_made(conn, "127.0.0.1:40000", 0.0)
        engine.data_received(conn, hello + encode(Login(user, PASSWORD, f"device-{conn}", request_id=1)), 0.0)
        run_jobs(engine)

    log_in(10**9, f"u{sessions}")  # the first login's one-time allocations (caches, the sweep) are not a session's
    gc.collect()
    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        for i in range(sessions):
            log_in(i + 1, f"u{i}")
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(engine.sessions) == sessions + 1 and all(s.user for s in engine.sessions.values())
    sites: dict[str, int] = {}
    for stat in after.compare_to(before, "traceback"):
        frames = [f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" for frame in stat.traceback]
        if any(name.startswith("memory.py:") for name in frames):
            continue  # the memory store's own copies
        where = " < ".join(reversed(frames[-3:]))  # the allocating line first, then its callers
        sites[where] = sites.get(where, 0) + stat.size_diff
    ranked = sorted(sites.items(), key=lambda item: -item[1])
    return {
        "sessions": sessions,
        "bytes_per_session": round(sum(sites.values()) / sessions),
        "sites": [{"where": where, "bytes_per_session": round(size / sessions, 1)} for where, size in ranked[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = measure(args.sessions)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['bytes_per_session']} B a session ({report['sessions']} sessions)")
    for site in report["sites"]:
        print(f"{site['bytes_per_session']:8.1f} B  {site['where']}")


if __name__ == "__main__":
    main()
