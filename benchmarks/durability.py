"""Messages per second and server CPU per message with ``--durability full``, ``normal``
and ``memory``: one backend, one run each, the same closed loop (window 64, 60-byte
bodies) as ``quick_probe``. Prints one JSON object.

    python -m benchmarks.durability [--backend epoll] [--messages 20000]
"""

from __future__ import annotations

import argparse
import json
import platform

from benchmarks.quick_probe import message_cpu, start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="epoll")
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    results = {}
    for mode in ("full", "normal", "memory"):
        proc, port = start(args.backend, "--durability", mode)
        try:
            us, rate = message_cpu(port, proc.pid, args.messages)
        finally:
            proc.terminate()
            proc.wait(30)
        results[mode] = {"server_cpu_us_per_message": round(us, 1), "messages_per_second": round(rate)}
    report = {
        "benchmark": "durability",
        "backend": args.backend,
        "messages": args.messages,
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
