"""The bookkeeping shared by the readiness strategies (select, poll, epoll).

A readiness strategy asks the kernel "which of these sockets can I read or write
without blocking?" and then does exactly that. The system calls of that cycle
(``accept``, ``recv``, ``send`` and its partial writes, the change of what we wait
for) are in each strategy's own module, where a reader sees them in order. What is
left is the same for all three, is not a system call on the data path, and lives here:

- the connection table, and the calls into the engine (``received``, ``greet``),
  each guarded so an engine bug costs one connection, not the server;
- ``perform``: the engine's actions (Write queues, Close drains, Abort drops), then
  the water marks (pause/resume/abort past the hard limit), then the losses, in
  that order, so performing an action never calls back into the engine;
- the connections with output this pass (``take_dirty``), and what follows a send
  (``sent``): the water marks, and for a closing connection whose queue is empty
  ``shutdown(SHUT_WR)``, then reading and discarding until the peer closes too (so
  our last bytes are not destroyed by a reset), all bounded by the close timeout
  (``DeadlineQueue``: the earliest deadline first, so a pass pays only for the
  overdue ones);
- ``lose``: close a socket and tell the engine, exactly once;
- admission (``door.Admission``): the connection cap, and accept's pause when the
  process is out of descriptors; a lost connection ends the pause;
- timers: the engine's deadline, the first close deadline and the end of an accept
  pause become the strategy's timeout.

The driver calls one method of the strategy: ``forget(fd)``, before it closes a socket.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVarTuple

from ..hub import Abort, Action, Close, EngineAPI, Lane, Submit, Write
from .common import LINGER_RESET, BackendConfig, connection_cap, guarded, peer_name, tune
from .door import Admission
from .jobs import Inbox, JobRunner, LoopLane
from .queues import DeadlineQueue, Outbound, Water

log = logging.getLogger("csce513msg.backend")
Ts = TypeVarTuple("Ts")
_ids = itertools.count(1)


class Strategy(Protocol):
    """What the driver needs from a readiness strategy."""

    def forget(self, fd: int) -> None: ...


class Conn:
    """One accepted connection."""

    __slots__ = ("closing", "dead", "fd", "id", "interest", "lingering", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.id = next(_ids)
        self.sock = sock
        self.fd = sock.fileno()
        self.out = Outbound()
        self.interest = (True, False)  # (read, write) as registered with the strategy
        self.closing = False  # Close received: no more input for the engine
        self.lingering = False  # write side shut down; reading until the peer closes
        self.dead = False  # closed and reported lost


class Driver:
    """Connections, actions and output for one readiness loop."""

    def __init__(self, engine: EngineAPI, config: BackendConfig, strategy: Strategy) -> None:
        self.engine = engine
        self.config = config
        self.strategy = strategy
        self.conns: dict[int, Conn] = {}  # fd -> connection
        self.by_id: dict[int, Conn] = {}  # engine's id -> connection
        self.dirty: set[Conn] = set()  # connections with output to send this pass
        self.closing: DeadlineQueue[Conn] = DeadlineQueue()  # closes under way, by deadline
        self.admission = Admission(connection_cap(config))
        self._doomed: list[tuple[Conn, str]] = []
        self.inbox = Inbox()  # finished jobs; the strategy watches inbox.fileno() for reading
        self.jobs = JobRunner(self.inbox.put, config.hash_nice)
        self.loop_lane = LoopLane()  # storage batches the loop runs itself, at the end of the pass (flush)

    # ---- events from the strategy ----------------------------------------------------

    def add(self, sock: socket.socket) -> Conn:
        """A new connection from ``accept``: non-blocking, tuned, in the table."""
        sock.setblocking(False)
        tune(sock, self.config)
        conn = Conn(sock)
        self.conns[conn.fd] = self.by_id[conn.id] = conn
        return conn

    def greet(self, conn: Conn, now: float) -> None:
        """Once the strategy watches it: the engine greets it (the Welcome)."""
        self._engine(conn, now, self.engine.connection_made, conn.id, peer_name(conn.sock), now)

    def received(self, conn: Conn, data: bytes, now: float) -> None:
        """``recv`` returned ``data``: hand it to the engine; ``b""`` means the peer closed."""
        if not data:  # end of stream: the peer closed its side
            self.lose(conn, "closed by peer", now)
        elif not conn.closing:  # (a lingering close discards what the peer still sends)
            self._engine(conn, now, self.engine.data_received, conn.id, data, now)

    def jobs_done(self, now: float) -> None:
        """The inbox socket is readable: hand each finished job's result to the engine."""
        for job_id, result in self.inbox.take():
            self.perform(guarded(self.engine.job_done, job_id, result, now) or [], now)
            self.jobs.finished()

    def writable(self, conn: Conn) -> None:
        """The kernel has room again: send in this pass's send pass."""
        self.dirty.add(conn)

    # ---- actions -----------------------------------------------------------------------

    def perform(self, actions: Iterable[Action], now: float) -> None:
        """Do the engine's actions, then the water marks, then the losses."""
        batches = [actions]
        while batches:
            touched: set[Conn] = set()
            for action in batches.pop():
                if type(action) is Write:  # most actions (a group's message: one per member)
                    conn = self.by_id.get(action.conn)
                    if conn is not None and not conn.dead:  # else gone: connection_lost is on its way or done
                        conn.out.append(action.data)
                        self.dirty.add(conn)
                        touched.add(conn)
                    continue
                if isinstance(action, Submit):
                    if action.lane is Lane.LOOP:
                        self.loop_lane.add(action.job_id, action.job)
                    else:
                        self.jobs.submit(action.job_id, action.job, action.lane)
                    continue
                conn = self.by_id.get(action.conn)
                if conn is None or conn.dead:
                    continue
                if isinstance(action, Close):
                    self._start_close(conn, action.reason, now)
                elif isinstance(action, Abort):
                    self._doomed.append((conn, action.reason))
            for conn in touched:
                if conn.out.size > self.config.high_water or conn.out.paused:  # else no mark was crossed
                    batches.append(self._water(conn, now))
            while self._doomed:
                conn, reason = self._doomed.pop()
                batches.append(self.lose(conn, reason, now, report=False, reset=True))

    def take_dirty(self) -> set[Conn]:
        """The connections that have output (or a close to finish) this pass."""
        dirty, self.dirty = self.dirty, set()
        return {conn for conn in dirty if not conn.dead}

    def sent(self, conn: Conn, now: float) -> tuple[bool, bool] | None:
        """After the pass's send: finish a close whose queue is empty (FIN), check the
        water marks, and return what to wait for next, (read, write); None if it is gone."""
        if conn.closing and not conn.out.size and not conn.lingering:
            self._shut_write(conn, now)
            if conn.dead:
                return None
        if conn.out.paused or conn.out.size > self.config.high_water:  # else no mark was crossed
            self.perform(self._water(conn, now), now)
        if conn.dead:
            return None
        return (not conn.closing or conn.lingering, conn.out.size > 0)

    def lose(self, conn: Conn, reason: str, now: float, report: bool = True, reset: bool = False) -> list[Action]:
        """Close the socket and tell the engine, exactly once per connection. ``reset``: an
        abort (past the outbound limit or the close timeout, an engine bug), which resets."""
        if conn.dead:
            return []
        conn.dead = True
        self.strategy.forget(conn.fd)
        if reset:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        conn.sock.close()
        del self.conns[conn.fd], self.by_id[conn.id]
        self.dirty.discard(conn)
        self.closing.discard(conn)
        self.admission.freed()  # a descriptor is free: if accept was paused, try again
        if reset:
            log.warning("abort #%d: %s (%d bytes queued)", conn.id, reason, conn.out.size)
        else:
            log.debug("lost #%d: %s", conn.id, reason)
        actions = guarded(self.engine.connection_lost, conn.id, now) or []
        if report:
            self.perform(actions, now)
            return []
        return actions

    # ---- time ------------------------------------------------------------------------------

    def timeout(self, now: float) -> float | None:
        """Seconds the strategy may block: until the next engine, close or accept deadline."""
        if self.loop_lane.jobs:  # a batch left for the next pass (flush's rounds ran out): no wait
            return 0.0
        candidates = (self.engine.next_deadline(), self.closing.next_deadline(), self.admission.paused_until)
        deadlines = [d for d in candidates if d is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def timers(self, now: float) -> None:
        """Run what is due: the engine's timer, and aborts of overdue closes."""
        deadline = self.engine.next_deadline()
        if deadline is not None and deadline <= now:
            self.perform(guarded(self.engine.handle_timer, now) or [], now)
        for conn in self.closing.due(now):  # only the overdue ones, oldest first
            self.lose(conn, "close timeout", now, reset=True)

    def flush(self, now: float) -> None:
        """End of a loop pass: the engine's batched work (the strategy then sends). A storage
        batch of the ``loop`` lane runs here, so its receipts and deliveries join this pass's
        send; its answers may start another batch: a few rounds, then the next pass."""
        self.perform(guarded(self.engine.flush, now) or [], now)
        self.loop_lane.drain(self.engine, self.perform, now)  # (a job left over: timeout() is 0)

    def shutdown(self, now: float) -> None:
        """Stop: the engine says goodbye and closes everyone; the loop drains them."""
        self.perform(guarded(self.engine.shutdown, now) or [], now)

    # ---- helpers ------------------------------------------------------------------------------

    def _engine(self, conn: Conn, now: float, call: Callable[[*Ts], list[Action]], *args: *Ts) -> None:
        actions = guarded(call, *args)
        self.perform([Abort(conn.id, "engine error")] if actions is None else actions, now)

    def _water(self, conn: Conn, now: float) -> list[Action]:
        crossed = conn.out.crossing(self.config)
        if crossed is Water.ABORT:
            self._doomed.append((conn, "outbound limit"))
        elif crossed is Water.PAUSE:
            return guarded(self.engine.pause_writing, conn.id, now) or []
        elif crossed is Water.RESUME:
            return guarded(self.engine.resume_writing, conn.id, now) or []
        return []

    def _start_close(self, conn: Conn, reason: str, now: float) -> None:
        if conn.closing:
            return
        log.debug("close #%d: %s", conn.id, reason)
        conn.closing = True
        self.closing.add(conn, now + self.config.close_timeout)  # past it, the close becomes an abort
        self.dirty.add(conn)  # the write pass drains, then shuts the write side

    def _shut_write(self, conn: Conn, now: float) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # FIN after our last byte
        except OSError:
            self.lose(conn, "closed", now)
            return
        conn.lingering = True
