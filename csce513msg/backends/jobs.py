"""Where the engine's ``Submit`` actions run: blocking work off the loop, and the storage
batches a loop may run itself.

The lanes, as the engine contract says (CONTRIBUTING.md; shared/STYLE.md had two):

- ``store``: ONE thread, so storage batches run one at a time and in order, on the
  thread that owns the database connection;
- ``loop``: a storage batch of a store that never waits on the disk (the memory store;
  SQLite with ``--durability normal``, whose commit syncs nothing): a loop runs it
  itself, at the end of its pass (``LoopLane``), so its receipts and deliveries leave in
  that pass's send; a thread would cost a wake-up of the storage thread, a wake-up of
  the loop to come back, and on one core the switches between them. The threads
  backend has no pass: its ``perform`` gives these to the ``store`` lane;
- ``hash``: a small pool for password hashing at a lower CPU priority than the loop
  (``BackendConfig.hash_nice``): nice steps below it, so while chat keeps the core busy
  the scheduler still gives logins a bounded share of it (10 steps: each hash thread
  weighs about a tenth of the loop), or ``SCHED_IDLE`` (-1), where a hash runs only on a
  core chat leaves idle. (The threads backend runs the engine's answer to a hash on the
  hash thread, under its mutex: that short step runs at the lane's priority too.)
- ``file``: ONE thread for the bytes of file transfers (1.6): chunk writes and reads, the
  re-hash of a resumed upload. Not the store's thread, where a large write would delay
  every commit behind it; one thread, so the disk serves transfers in turn; at the lowest
  priority (``FILE_NICE``), so on a busy core the loop (chat) goes first and a transfer takes
  what it leaves (SHA-256 releases the GIL, so the hashing competes for the core, not the GIL).

A finished job's result (or the exception it raised) goes to ``deliver(job_id,
result)``, called in the worker thread: the threads backend takes its engine mutex
there; a readiness loop uses ``Inbox``, which queues the result and makes a socket
readable so the loop wakes up; asyncio uses ``call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import ClassVar

from ..hub import Action, EngineAPI, Lane
from .common import guarded

log = logging.getLogger("csce513msg.backend")
FILE_NICE = 19  #: the file lane's priority below the loop (nice steps; see ``lower_priority``): the floor
Deliver = Callable[[int, object], None]


class JobRunner:
    """Worker threads per lane, started on first use. ``hash_nice``: the hash lane's priority
    (a nice value, or -1 for ``SCHED_IDLE``)."""

    #: lane -> threads
    LANES: ClassVar[dict[Lane, int]] = {Lane.STORE: 1, Lane.HASH: 2, Lane.FILE: 1}

    def __init__(self, deliver: Deliver, hash_nice: int = 10) -> None:
        self.deliver = deliver
        self.nice = {Lane.STORE: 0, Lane.HASH: hash_nice, Lane.FILE: FILE_NICE}
        self.queues: dict[Lane, queue.SimpleQueue[tuple[int, Callable[[], object]] | None]] = {}
        self.threads: list[threading.Thread] = []
        #: jobs submitted whose results the engine has not had yet: a stopping server waits
        #: for them, since a result may lead to one more job (the storage batch queued behind)
        self.pending = 0
        self._counting = threading.Lock()  # submit and finished may run on different threads

    def submit(self, job_id: int, job: Callable[[], object], lane: Lane) -> None:
        """Queue ``job``; never blocks. (Not the ``loop`` lane: ``LoopLane`` runs those.)"""
        assert lane is not Lane.LOOP, "the loop lane runs on the loop (LoopLane)"
        with self._counting:
            self.pending += 1
        if lane not in self.queues:
            self._start(lane)
        self.queues[lane].put((job_id, job))

    def finished(self) -> None:
        """The engine has had a job's result (the backend calls this after ``job_done``)."""
        with self._counting:
            self.pending -= 1

    def close(self) -> None:
        """Let queued jobs finish, then stop the threads (storage batches get committed)."""
        for lane, q in self.queues.items():
            for _ in range(self.LANES[lane]):
                q.put(None)
        for thread in self.threads:
            thread.join(timeout=30)

    def _start(self, lane: Lane) -> None:
        self.queues[lane] = queue.SimpleQueue()
        for i in range(self.LANES[lane]):
            thread = threading.Thread(target=self._work, args=(lane,), name=f"{lane.value}-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _work(self, lane: Lane) -> None:
        lower_priority(self.nice[lane])
        q = self.queues[lane]
        while (item := q.get()) is not None:
            job_id, job = item
            self.deliver(job_id, run(job_id, job, lane))


def run(job_id: int, job: Callable[[], object], lane: Lane) -> object:
    """The job's result, or the exception it raised: a failed job is a result the engine
    must hear of."""
    try:
        return job()
    except Exception as exc:
        log.exception("job %d in lane %s failed", job_id, lane.value)
        return exc


class LoopLane:
    """The ``loop`` lane of a readiness or asyncio loop: jobs wait here until the end of
    the pass, after the engine's flush; then ``drain`` runs each on the loop's thread and
    hands its result to the engine at once."""

    ROUNDS = 4  #: runs a pass makes at most: a batch's answers may start another (a login's poll)

    def __init__(self) -> None:
        self.jobs: list[tuple[int, Callable[[], object]]] = []

    def add(self, job_id: int, job: Callable[[], object]) -> None:
        self.jobs.append((job_id, job))

    def drain(self, engine: EngineAPI, perform: Callable[[Iterable[Action], float], None], now: float) -> bool:
        """Run the jobs, each result to the engine and its answer to ``perform``, then the
        engine's flush again (a batch's answers may start the next batch), at most
        ``ROUNDS`` times. True if a job is left: the loop must come back at once."""
        for _ in range(self.ROUNDS):
            if not self.jobs:
                return False
            jobs, self.jobs = self.jobs, []
            for job_id, job in jobs:
                perform(guarded(engine.job_done, job_id, run(job_id, job, Lane.LOOP), now) or [], now)
            perform(guarded(engine.flush, now) or [], now)
        return bool(self.jobs)


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by ``nice`` steps below the process's (Linux: a
    thread has a nice value of its own; elsewhere it would be the whole process's, so
    nothing is done there). Relative, so a server started with ``nice`` keeps its hash lane
    below its loop; 19 is the floor. ``nice`` 0: as it is; -1: ``SCHED_IDLE``."""
    if not nice or not sys.platform.startswith("linux"):
        return
    try:
        if nice < 0:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
        else:
            tid = threading.get_native_id()  # the thread's id, not the process's
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # not allowed here: the thread runs at the loop's priority
        log.warning("could not lower the %s lane's priority", threading.current_thread().name)


class Inbox:
    """Results for a readiness loop: a queue plus a socket that wakes the loop."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._results: deque[tuple[int, object]] = deque()

    def fileno(self) -> int:
        return self._reader.fileno()

    def put(self, job_id: int, result: object) -> None:
        """Called in a worker thread."""
        self._results.append((job_id, result))
        self._writer.send(b"!")  # wake the loop

    def take(self) -> list[tuple[int, object]]:
        """Called by the loop when the socket is readable."""
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._results:
            out.append(self._results.popleft())
        return out
