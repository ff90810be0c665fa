"""The loop lane's bookkeeping in a backend (``backends/jobs.py`` ``LoopLane``, used by
``driver.Driver`` and asyncio's pass), with a stand-in engine: no sockets, no server.
A batch's answers may start another batch: a pass runs a few rounds, then leaves the
rest for the next pass without waiting; a loop-lane job never reaches a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest

from csce513msg.backends.common import BackendConfig
from csce513msg.backends.driver import Driver
from csce513msg.backends.jobs import JobRunner, LoopLane
from csce513msg.hub import Action, Lane, Submit


class Chain:
    """An engine whose every flush submits one loop-lane job (while ``left``), each
    job's result recorded in order, on the thread that ran it."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.ran: list[tuple[int, str]] = []  # (job id, thread name)
        self.next_id = 0

    def flush(self, now: float) -> list[Action]:
        if not self.left:
            return []
        self.left -= 1
        self.next_id += 1
        job_id = self.next_id
        return [Submit(job_id, lambda: (job_id, threading.current_thread().name), Lane.LOOP)]

    def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
        assert isinstance(result, tuple) and result[0] == job_id
        self.ran.append(result)
        return []

    def next_deadline(self) -> float | None:
        return None


class NoStrategy:
    def forget(self, fd: int) -> None:
        raise AssertionError("no connection here")


def driver(engine: Chain) -> Driver:
    return Driver(engine, BackendConfig(), NoStrategy())  # type: ignore[arg-type]  # a stand-in engine


def test_a_pass_runs_a_few_rounds_on_the_loop_then_comes_back_without_waiting() -> None:
    engine = Chain(left=LoopLane.ROUNDS + 3)
    d = driver(engine)
    assert d.timeout(0.0) is None  # nothing due: the loop may block
    d.flush(0.0)  # the first flush submits; then ROUNDS rounds, each job's answer and a flush
    assert [job_id for job_id, _ in engine.ran] == list(range(1, LoopLane.ROUNDS + 1))
    assert {name for _, name in engine.ran} == {threading.current_thread().name}  # on the loop's thread
    assert d.loop_lane.jobs and d.timeout(0.0) == 0.0  # one left: the next pass comes at once
    d.flush(0.0)
    assert [job_id for job_id, _ in engine.ran] == list(range(1, LoopLane.ROUNDS + 4))
    assert not d.loop_lane.jobs and d.timeout(0.0) is None
    assert d.jobs.pending == 0 and not d.jobs.threads  # no thread was started for them


def test_a_failed_loop_job_is_a_result_for_the_engine() -> None:
    got: list[object] = []

    class Engine:
        def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
            got.append(result)
            return []

        def flush(self, now: float) -> list[Action]:
            return []

    def boom() -> object:
        raise OSError("disk gone")

    lane = LoopLane()
    lane.add(7, boom)
    performed: list[Action] = []

    def perform(actions: Iterable[Action], now: float) -> None:
        performed.extend(actions)

    assert lane.drain(Engine(), perform, 0.0) is False  # type: ignore[arg-type]  # a stand-in engine
    assert not performed
    assert len(got) == 1 and isinstance(got[0], OSError)


def test_the_job_runner_refuses_the_loop_lane() -> None:
    runner = JobRunner(lambda job_id, result: None)
    with pytest.raises(AssertionError):
        runner.submit(1, lambda: None, Lane.LOOP)
    assert not runner.threads
