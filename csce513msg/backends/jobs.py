"""Blocking work off the loop: the engine's ``Submit`` actions run here.

Two lanes, as the engine contract says (shared/STYLE.md):

- ``store``: ONE thread, so storage batches run one at a time and in order, on the
  thread that owns the database connection;
- ``hash``: a small pool for password hashing, its threads at ``SCHED_IDLE`` (Linux),
  so a hash never takes the loop's core from chat traffic.

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
import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from ..hub import Lane

log = logging.getLogger("csce513msg.backend")
Deliver = Callable[[int, object], None]


class JobRunner:
    """Worker threads per lane, started on first use."""

    #: lane -> (threads, idle priority)
    LANES: ClassVar[dict[Lane, tuple[int, bool]]] = {Lane.STORE: (1, False), Lane.HASH: (2, True)}

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.queues: dict[Lane, queue.SimpleQueue[tuple[int, Callable[[], object]] | None]] = {}
        self.threads: list[threading.Thread] = []
        #: jobs submitted whose results the engine has not had yet: a stopping server waits
        #: for them, since a result may lead to one more job (the storage batch queued behind)
        self.pending = 0
        self._counting = threading.Lock()  # submit and finished may run on different threads

    def submit(self, job_id: int, job: Callable[[], object], lane: Lane) -> None:
        """Queue ``job``; never blocks."""
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
            for _ in range(self.LANES[lane][0]):
                q.put(None)
        for thread in self.threads:
            thread.join(timeout=30)

    def _start(self, lane: Lane) -> None:
        count, idle = self.LANES[lane]
        self.queues[lane] = queue.SimpleQueue()
        for i in range(count):
            thread = threading.Thread(target=self._work, args=(lane, idle), name=f"{lane.value}-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _work(self, lane: Lane, idle: bool) -> None:
        if idle and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread, on Linux
            except OSError:
                pass
        q = self.queues[lane]
        while (item := q.get()) is not None:
            job_id, job = item
            try:
                result: object = job()
            except Exception as exc:  # a failed job is a result the engine must hear of
                log.exception("job %d in lane %s failed", job_id, lane.value)
                result = exc
            self.deliver(job_id, result)


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
