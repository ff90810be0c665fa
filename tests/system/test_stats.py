"""``msgsrv --stats``: the live line in the server window (a thread reading the engine's
counters and /proc; nothing in it depends on the I/O strategy, so one backend)."""

from __future__ import annotations

import re
import time

from tests.conformance.wire import connect
from tests.servers import IS_LINUX

BACKENDS = ["epoll" if IS_LINUX else "select"]
SERVER_FLAGS = ("--stats", "--stats-interval", "0.2")


def test_the_stats_line_follows_connections_and_messages(server: object, names: object) -> None:
    alice, bob = names("alice"), names("bob")  # type: ignore[operator]
    a, b = connect(server, alice), connect(server, bob)
    server.wait_log("2 connections, 2 users online")  # type: ignore[attr-defined]
    for i in range(50):
        a.send_text(bob, f"m{i}")
    b.deliveries(50)
    deadline = time.monotonic() + 10
    rates: list[float] = []
    while time.monotonic() < deadline and not any(rates):
        rates = [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,.]+) msg/s", server.log())]  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert any(rate > 0 for rate in rates), server.log()[-2000:]  # type: ignore[attr-defined]
    assert re.search(r"stats: \w+ \| 2 connections.*CPU \d+% \| RSS [\d.]+ MB", server.log())  # type: ignore[attr-defined]
    a.close()
    b.close()
