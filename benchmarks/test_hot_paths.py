"""Micro-benchmarks of the per-message hot paths (pytest-benchmark).

    pytest benchmarks --benchmark-columns=median,iqr,ops

Compare medians within one run: the machine is shared and noisy.
"""

from __future__ import annotations

from typing import Any

from csce513msg.hub import Engine, HubConfig, Submit, Write
from csce513msg.protocol import Deliver, FrameDecoder, Hello, Login, Send, decode, encode
from csce513msg.store import MemoryStore

SEND = Send(1, 0, 0, "bob", b"x" * 60, request_id=7)
DELIVER = Deliver(1, 0, 1795503896466795, 1795503896466795, 12, "alice", "bob", "dm:alice,bob", b"x" * 60)


def test_encode_deliver(benchmark: Any) -> None:
    assert benchmark(encode, DELIVER)


def test_decode_send_frame(benchmark: Any) -> None:
    wire = encode(SEND)
    decoder = FrameDecoder(65536)

    def run() -> object:
        return decode(next(iter(decoder.feed(wire))))

    assert benchmark(run) == SEND


def test_hub_routes_one_direct_message(benchmark: Any) -> None:
    """Bytes of one Send in; its batch stored (in memory); Receipt and Deliver out."""
    engine = Engine(MemoryStore(), HubConfig(rate=1e12, burst=10**12, window=10**9), 0.0)
    for conn, user in ((1, "alice"), (2, "bob")):
        engine.connection_made(conn, "bench", 0.0)
        engine.data_received(conn, encode(Hello()) + encode(Login(user)), 0.0)
        run_jobs(engine)
    wire = encode(SEND)

    def run() -> list[Any]:
        engine.data_received(1, wire, 1.0)
        return run_jobs(engine)

    actions = benchmark(run)
    assert [type(a) for a in actions] == [Write, Write]


def run_jobs(engine: Engine) -> list[Any]:
    """What a backend does at the end of a pass: flush, run the job, hand back its result."""
    out: list[Any] = []
    for job in engine.flush(1.0):
        assert isinstance(job, Submit)
        out += engine.job_done(job.job_id, job.job(), 1.0)
    return out
