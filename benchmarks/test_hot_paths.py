"""Micro-benchmarks of the per-message hot paths (pytest-benchmark): frame encode and
decode, the engine routing one message (and eight of one sender, plain and coalesced),
the SQLite store's group commit.

    pytest benchmarks --benchmark-columns=median,iqr,ops

Compare medians within one run: the machine is shared and noisy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from csce513msg.crypto.passwords import COSTS, Scrypt
from csce513msg.hub import Engine, HubConfig, Submit, Write
from csce513msg.protocol import Ack, Deliver, Feature, FrameDecoder, Hello, Login, Receipt, Send, decode, encode
from csce513msg.protocol.names import direct_stream
from csce513msg.store import Account, Batch, BatchResult, MemoryStore, NewMessage
from csce513msg.store.sqlite import SqliteStore

SEND = Send(1, 0, 0, "bob", b"x" * 60, request_id=7)
DELIVER = Deliver(1, 0, 1795503896466795, 1795503896466795, 12, "alice", "bob", "dm:alice,bob", b"x" * 60)
RECEIPT = Receipt(2, 1795503896466795, 1795503896466795, 12, "dm:alice,bob", "", 7)
ACK = Ack(12, "dm:alice,bob", request_id=9)


def test_encode_deliver(benchmark: Any) -> None:
    assert benchmark(encode, DELIVER)


def test_encode_receipt(benchmark: Any) -> None:
    assert benchmark(encode, RECEIPT)


def test_decode_ack_frame(benchmark: Any) -> None:
    """The header's decoding and the message made, from a frame already split off the stream
    (``test_decode_send_frame`` includes the FrameDecoder)."""
    frame = next(iter(FrameDecoder(65536).feed(encode(ACK))))
    assert benchmark(decode, frame) == ACK


def test_decode_send_frame(benchmark: Any) -> None:
    wire = encode(SEND)
    decoder = FrameDecoder(65536)

    def run() -> object:
        return decode(next(iter(decoder.feed(wire))))

    assert benchmark(run) == SEND


def _engine(hello: Hello) -> Engine:
    """An engine (memory store, no limits in the way) with alice (conn 1) and bob (conn 2)
    logged in, both having said ``hello``."""
    passwords = Scrypt(COSTS["test"])
    accounts = [Account(user, "student", passwords.hash("bench password")) for user in ("alice", "bob")]
    store = MemoryStore(accounts)
    config = HubConfig(rate=1e12, burst=10**12, window=10**9)
    engine = Engine(store, config, 0.0, passwords, store.load_accounts())
    for conn, user in ((1, "alice"), (2, "bob")):
        engine.connection_made(conn, "bench", 0.0)
        engine.data_received(conn, encode(hello) + encode(Login(user, "bench password")), 0.0)
        run_jobs(engine)
    return engine


def test_hub_routes_one_direct_message(benchmark: Any) -> None:
    """Bytes of one Send in; its batch stored (in memory); Receipt and Deliver out."""
    engine = _engine(Hello())
    wire = encode(SEND)

    def run() -> list[Any]:
        engine.data_received(1, wire, 1.0)
        return run_jobs(engine)

    actions = benchmark(run)
    assert [type(a) for a in actions] == [Write, Write]


@pytest.mark.parametrize("minor", [4, 5], ids=["1.4", "1.5-coalescing"])
def test_hub_routes_eight_messages_of_one_sender(benchmark: Any, minor: int) -> None:
    """A closed-loop client's window: eight Sends in one ``data_received``, one batch; their
    receipts and deliveries as sixteen plain frames (1.4), or as one Receipts and one
    Delivers (1.5, both sessions asked for coalescing). Per message: the median / 8."""
    features = (Feature.COALESCING.value,) if minor >= 5 else ()
    engine = _engine(Hello(version_minor=minor, features=features))
    wire = encode(SEND) * 8

    def run() -> list[Any]:
        engine.data_received(1, wire, 1.0)
        return run_jobs(engine)

    actions = benchmark(run)
    assert [type(a) for a in actions] == [Write] * (16 if minor < 5 else 2)


def sqlite_batches(path: Path, kind: int = 0, size: int = 60) -> tuple[Callable[[], BatchResult], SqliteStore]:
    """One group commit as a loaded server makes them, again and again: 10 messages (content
    type ``kind``, ``size`` bytes) to 10 streams, and the acknowledgements of 10 earlier ones
    (cursors, delivered receipts), `--durability normal`; the store's maintenance run after
    each, as the hub runs it (the WAL's tail checkpoint every ``TAIL_EVERY`` batches: the
    writer's own, as with no checkpointer thread; a server's tail runs beside the writer,
    on a thread this in-process measure would not count the same way)."""
    store = SqliteStore(path, "normal", checkpoint_interval=0)
    peers = [f"u{i}" for i in range(10)]
    rounds = itertools.count()

    def batch() -> BatchResult:
        n = next(rounds)
        messages = [NewMessage(direct_stream("alice", p), tuple(sorted(("alice", p))), "alice", "d", 0, 1, p, kind,
                               n, b"x" * size) for p in peers]  # fmt: skip
        cursors = {(p, "d", direct_stream("alice", p)): n for p in peers if n}
        delivered = {(direct_stream("alice", p), p): n for p in peers if n}
        result = store.apply(Batch(messages=messages, cursors=cursors, delivered=delivered))
        if (job := store.maintenance()) is not None:
            job()
        return result

    return batch, store


def test_sqlite_stores_a_batch_of_ten(benchmark: Any, tmp_path: Path) -> None:
    """One group commit as a loaded server makes them (``sqlite_batches``)."""
    batch, store = sqlite_batches(tmp_path / "bench.db")
    result = benchmark(batch)
    assert result.error is None and len(result.stored) == 10
    store.close()


def run_jobs(engine: Engine) -> list[Any]:
    """What a backend does at the end of a pass: flush, run each job (and the jobs its result
    leads to, as a login's), hand back the results; returns the other actions."""
    out: list[Any] = []
    pending = engine.flush(1.0)
    while pending:
        action = pending.pop(0)
        if isinstance(action, Submit):
            pending += engine.job_done(action.job_id, action.job(), 1.0) + engine.flush(1.0)
        else:
            out.append(action)
    return out
