"""asyncio: the standard library's event loop calls us back (uvloop: the same, in C).

How it works. The loop is an epoll loop like ours (``selectors.EpollSelector`` on
Linux), with callbacks instead of a hand-written dispatch: it accepts, reads and
buffers writes itself, and calls a ``Protocol`` object per connection. The engine
contract was named after ``asyncio.Protocol``, so the glue is nearly one to one::

    loop: epoll_wait -> accept       -> ChatProtocol.connection_made -> engine  (steps 4-5)
                                        (at the cap: SERVER_FULL, close)
                     -> readable     -> ChatProtocol.data_received   -> engine  (step 6)
                     -> buffer drains/fills -> resume_writing / pause_writing
          call_soon(flush_pass): engine.flush (and the storage batch, committed
          here: ``LoopLane``), then ONE transport.write per connection with
          output (step 7); call_later: the engine's timer

What it costs. Per-event overhead in Python is higher than our own epoll loop
(handles, callbacks, the transport's buffer), in exchange for not writing the loop.
uvloop runs the same code on libuv, in C, which takes most of that overhead away.

Where it stops. One thread, one core, like epoll. The transport buffers without
limit, so the hard limit is our check after each write pass; its water marks come
from ``set_write_buffer_limits`` with our flags. A transport call in the write pass
can raise (``write_eof`` shuts the socket down, which fails with ENOTCONN if the peer
reset meanwhile): that costs its connection only, never the pass, or everyone else's
output from it would wait for their next write.

The door. The loop accepts on its own; the cap (``--max-connections``, by default
the open-file limit less a reserve) is checked in ``connection_made``, which answers
SERVER_FULL and closes. If ``accept`` fails anyway (EMFILE), asyncio's loop stops
watching the listener for a second, and reports each failure to the exception
handler, with a traceback; ours counts them and logs once per stretch (CPython 3.11
even tries ``backlog`` times in that one pass, python/cpython#151615). uvloop's
libuv keeps a spare descriptor for this: it closes it, accepts and closes every
queued connection (they see the connection end, with no SERVER_FULL), and reopens
it; no spin, nothing logged.

Wake-ups. The standard library's loop waits in its selector's ``select``; the loop is
given a ``CountingSelector`` that wraps that call in ``common.WAITS``, as our own loops
wrap theirs, so ``msgsrv --stats`` counts its wake-ups too. uvloop's wait is inside
libuv, in C: not counted (the benchmark counts its ``epoll_wait`` calls with perf).

Helpers: ``common`` (``BackendConfig``, ``Admission``, ``listen``, ``guarded``,
``tune``, ``peer_name``, ``WAITS``), ``jobs.LoopLane`` (the storage batches this loop
commits itself) and ``jobs.JobRunner`` (hashes, file chunks, a storage batch that may wait:
off the loop; results come back with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVarTuple, cast

from ..hub import Abort, Action, Close, EngineAPI, Lane, Submit, Write
from .common import WAITS, Announce, BackendConfig, connection_cap, guarded, listen, peer_name, tune
from .door import EXHAUSTED, Admission
from .jobs import JobRunner, LoopLane

NAME = "asyncio"
log = logging.getLogger("csce513msg.backend")
Ts = TypeVarTuple("Ts")
_ids = itertools.count(1)


class CountingSelector(selectors.DefaultSelector):
    """The loop's selector, each wait counted in ``WAITS`` (one wake-up of the loop)."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        with WAITS:
            return super().select(timeout)


class ChatProtocol(asyncio.Protocol):
    """One connection, forwarding the loop's callbacks to the engine."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server
        self.id = next(_ids)
        self.pending: list[bytes] = []  # this pass's writes, sent together by flush_pass
        self.refused = False  # over the cap: told SERVER_FULL, never seen by the engine
        self.closing = False
        self.pause_flag: bool | None = None  # set mid-write by the transport, forwarded after
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream's transport: asyncio's Transport, or uvloop's, which has its methods but is not a subclass
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.admission.admit(len(self.server.conns), time.monotonic()):
            self.refused = True
            self.transport.write(self.server.engine.server_full())  # at the cap: say so,
            self.transport.close()  # and close once it is sent
            return
        sock = transport.get_extra_info("socket")
        tune(sock, self.server.config)
        self.transport.set_write_buffer_limits(high=self.server.config.high_water, low=self.server.config.low_water)
        self.server.conns[self.id] = self
        self.server.call(self, self.server.engine.connection_made, self.id, peer_name(sock))  # Welcome

    def data_received(self, data: bytes) -> None:
        if not self.closing and not self.refused:  # a closing connection's input is read and discarded
            self.server.call(self, self.server.engine.data_received, self.id, data)

    def eof_received(self) -> bool:
        return False  # the peer closed its side: close ours (connection_lost follows)

    def pause_writing(self) -> None:
        self.pause_flag = True  # may come from inside transport.write: only note it
        self.server.mark(self)  # the next flush_pass tells the engine

    def resume_writing(self) -> None:
        self.pause_flag = False  # the buffer drained below the low-water mark
        self.server.mark(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return  # the engine never heard of it
        self.server.conns.pop(self.id, None)
        self.server.call(None, self.server.engine.connection_lost, self.id)  # exactly once, last
        self.server.maybe_done()


class AsyncServer:
    """The engine, the connections, and the once-per-wake-up flush."""

    def __init__(self, engine: EngineAPI, config: BackendConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.config = config
        self.loop = loop
        self.conns: dict[int, ChatProtocol] = {}
        self.dirty: set[ChatProtocol] = set()
        self.flush_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.stopping = False
        self.done = loop.create_future()
        self.jobs = JobRunner(self.job_finished, config.hash_nice)
        self.loop_lane = LoopLane()  # storage batches this loop runs itself, in flush_pass
        self.admission = Admission(connection_cap(config))

    def job_finished(self, job_id: int, result: object) -> None:
        """In a worker thread: hop onto the loop's thread, then tell the engine."""
        self.loop.call_soon_threadsafe(self.job_result, job_id, result)

    def job_result(self, job_id: int, result: object) -> None:
        self.call(None, self.engine.job_done, job_id, result)
        self.jobs.finished()

    def call(self, proto: ChatProtocol | None, fn: Callable[[*Ts, float], list[Action]], *args: *Ts) -> None:
        """Call the engine now; perform its actions; flush once, later in this wake-up."""
        now = time.monotonic()
        actions = guarded(fn, *args, now)
        if actions is None and proto is not None:
            actions = [Abort(proto.id, "engine error")]
        self.perform(actions or [], now)
        self.schedule_flush()

    def mark(self, proto: ChatProtocol) -> None:
        """Visit ``proto`` in the next flush_pass (a water mark was crossed)."""
        self.dirty.add(proto)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush_pass)  # after every callback of this wake-up

    def perform(self, actions: Iterable[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Submit):
                if action.lane is Lane.LOOP:
                    self.loop_lane.add(action.job_id, action.job)
                else:
                    self.jobs.submit(action.job_id, action.job, action.lane)
                continue
            proto = self.conns.get(action.conn)
            if proto is None or proto.transport is None:
                continue
            if isinstance(action, Write):
                proto.pending.append(action.data)
                self.dirty.add(proto)
            elif isinstance(action, Close) and not proto.closing:
                proto.closing = True  # flush_pass sends the rest, then write_eof()
                self.dirty.add(proto)
                self.loop.call_later(self.config.close_timeout, self.close_timeout, proto)
            elif isinstance(action, Abort):
                self.abort(proto, action.reason)

    def flush_pass(self) -> None:
        """After the wake-up's callbacks: the engine's batch, one write per connection."""
        self.flush_scheduled = False
        now = time.monotonic()
        self.perform(guarded(self.engine.flush, now) or [], now)
        if self.loop_lane.drain(self.engine, self.perform, now):  # a storage batch: here, its answers in these writes
            self.schedule_flush()  # (a job left over: the next iteration goes on)
        dirty, self.dirty = self.dirty, set()
        for proto in dirty:
            transport = proto.transport
            if transport is None or transport.is_closing():
                continue
            try:
                if proto.pending:
                    data, proto.pending = b"".join(proto.pending), []
                    transport.write(data)  # may call pause_writing before it returns
                if transport.get_write_buffer_size() > self.config.hard_limit:
                    self.abort(proto, "outbound limit")
                elif proto.closing and transport.can_write_eof():
                    transport.write_eof()  # FIN after the buffer drains; we read until theirs
            except OSError as exc:  # e.g. write_eof's shutdown(): ENOTCONN, the peer reset meanwhile
                self.abort(proto, f"output failed ({exc.strerror})", quiet=True)  # this one only: the pass goes on
                continue
            if proto.pause_flag is not None:
                paused, proto.pause_flag = proto.pause_flag, None
                call = self.engine.pause_writing if paused else self.engine.resume_writing
                self.perform(guarded(call, proto.id, now) or [], now)
        self.schedule_timer()
        self.maybe_done()

    def abort(self, proto: ChatProtocol, reason: str, quiet: bool = False) -> None:
        """Reset the connection: past a limit or a timeout, or an engine bug (a warning), or
        its socket failed already (``quiet``: the peer is gone; a debug line)."""
        assert proto.transport is not None
        if quiet:
            log.debug("abort #%d: %s", proto.id, reason)
        else:
            size = proto.transport.get_write_buffer_size()
            log.warning("abort #%d: %s (%d bytes queued)", proto.id, reason, size)
        proto.transport.abort()  # connection_lost follows on the next loop pass

    def close_timeout(self, proto: ChatProtocol) -> None:
        if proto.id in self.conns:
            self.abort(proto, "close timeout")

    def schedule_timer(self) -> None:
        """Turn the engine's next deadline into one call_later."""
        deadline = self.engine.next_deadline()
        if deadline == self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = None if deadline is None else self.loop.call_later(deadline - time.monotonic(), self.on_timer)

    def on_timer(self) -> None:
        self.timer = self.timer_at = None
        self.call(None, self.engine.handle_timer)

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: accept() out of descriptors is expected, and
        counted (``Admission.failed``: a line per stretch), not logged with a traceback."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in EXHAUSTED and "accept" in context.get("message", ""):
            self.admission.failed(exc, time.monotonic())  # the loop itself tries again in a second
            return
        loop.default_exception_handler(context)

    def maybe_done(self) -> None:
        """Stopping, everyone gone, and the last storage batches back: serve() may return."""
        idle = not self.conns and not self.jobs.pending and not self.loop_lane.jobs and not self.flush_scheduled
        if self.stopping and idle and not self.done.done():
            self.done.set_result(None)


async def main(engine: EngineAPI, config: BackendConfig, announce: Announce, name: str) -> None:
    loop = asyncio.get_running_loop()
    server = AsyncServer(engine, config, loop)
    loop.set_exception_handler(server.loop_error)
    sock = listen(config)  # steps 1-3; the loop accepts on it (step 4)
    listener = await loop.create_server(lambda: ChatProtocol(server), sock=sock)
    stop: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, int(sig))
    announce(name, sock)  # the banner: where we listen, our limits
    log.info("shutting down (signal %s)", await stop)
    listener.close()  # stop accepting
    server.stopping = True
    server.call(None, engine.shutdown)
    server.maybe_done()
    await server.done
    await asyncio.to_thread(server.jobs.close)  # queued storage batches still commit


def serve(
    engine: EngineAPI,
    config: BackendConfig,
    announce: Announce,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    name: str = NAME,
) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    if loop_factory is None:  # the standard library's loop, its waits counted
        loop_factory = lambda: asyncio.SelectorEventLoop(CountingSelector())  # noqa: E731 - one line, said above
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(engine, config, announce, name))
