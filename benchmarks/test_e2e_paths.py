"""The server's per-message paths with end-to-end encrypted bodies (protocol 1.7) against plain
ones (pytest-benchmark): the hub never reads an envelope, so only its size can cost anything.

    pytest benchmarks/test_e2e_paths.py --benchmark-columns=median,iqr

The sizes are what ``python -m benchmarks.e2e`` measured: a 100-byte text, its envelope for
one recipient device (326 bytes), and for three devices and two of the sender's own (850).
``benchmarks.e2e`` times the same two paths itself, the bodies taking turns (round after
round), which a drift of a shared machine's speed cannot favour; here each runs alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.test_hot_paths import _engine, run_jobs, sqlite_batches
from csce513msg.hub import Write
from csce513msg.protocol import ContentType, Hello, Send, encode
from csce513msg.store import BatchResult
from csce513msg.store.sqlite import SqliteStore

BODIES = {"text 100": (ContentType.TEXT, 100), "envelope 326": (ContentType.ENVELOPE, 326),
          "envelope 850": (ContentType.ENVELOPE, 850)}  # fmt: skip


def router(body: str) -> Callable[[], list[Any]]:
    """As ``test_hub_routes_one_direct_message``: bytes of one Send in, its batch stored in
    memory, Receipt and Deliver out; the body a text or an envelope of that size."""
    kind, size = BODIES[body]
    engine = _engine(Hello())
    wire = encode(Send(1, kind, 0, "bob", b"x" * size, request_id=7))

    def run() -> list[Any]:
        engine.data_received(1, wire, 1.0)
        return run_jobs(engine)

    return run


def batcher(body: str, path: Path) -> tuple[Callable[[], BatchResult], SqliteStore]:
    """As ``test_sqlite_stores_a_batch_of_ten`` (``sqlite_batches``), the bodies a text or an
    envelope of that size."""
    kind, size = BODIES[body]
    return sqlite_batches(path, kind, size)


@pytest.mark.parametrize("body", list(BODIES))
def test_hub_routes_one_direct_message_by_body(benchmark: Any, body: str) -> None:
    actions = benchmark(router(body))
    assert [type(a) for a in actions] == [Write, Write]


@pytest.mark.parametrize("body", list(BODIES))
def test_sqlite_stores_a_batch_of_ten_by_body(benchmark: Any, body: str, tmp_path: Path) -> None:
    batch, store = batcher(body, tmp_path / "bench.db")
    result = benchmark(batch)
    assert result.error is None and len(result.stored) == 10
    store.close()
