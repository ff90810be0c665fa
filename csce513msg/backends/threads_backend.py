"""threads: a thread per connection (socketserver), and blocking calls everywhere.

How it works. ``socketserver.ThreadingTCPServer`` accepts in its own thread and
starts a *reader* thread per connection, which blocks in ``recv``. Each connection
also gets a *writer* thread that blocks in ``sendall``, so a client that stops
reading stalls only its own writer. The engine is not thread-safe, so every call
into it holds one mutex (as the websockets library's threaded driver does); the
main thread waits for signals and the engine's timer::

    acceptor thread:  accept() -> start a reader thread                (step 4)
                      (at the cap: SERVER_FULL; EMFILE: wait, then retry)
    reader thread:    recv() -> [mutex] engine.data_received -> queue  (step 6)
    writer thread:    wait for output -> sendall() -> [mutex] resume   (steps 5, 7)
    main thread:      select([wake-up socket, bell], timeout) -> timers, shutdown

What it costs. Code reads top to bottom, like the assignment's steps. But each
connection costs two threads: two stacks (we ask for 256 KiB each instead of the
default 8 MiB of address space), two kernel tasks, and a context switch for every
wake-up; the mutex lets only one thread run the engine at a time, and the GIL only
one thread run Python at all, so more cores do not help.

Where it stops. Memory and scheduling: thousands of connections mean thousands of
threads, and every message wakes at least two of them. The benchmark shows the
highest CPU per message and memory per connection of all six. The main thread's
work must not grow with them: it keeps closing connections in deadline order
(``DeadlineQueue``) and touches only the overdue ones, and another thread rings it
only when its next deadline moves earlier.

Stopping. ``serve_forever`` waits for the listener with a 0.5 s timeout
(``poll_interval``) only to look at its stop flag twice a second: ``shutdown()`` sets the
flag and waits, so stopping the acceptor takes up to half a second. A blocked ``accept``
could not be interrupted from another thread at all; a timeout is the simple way out
(the readiness loops use a wake-up socket for the same job).

The door. ``verify_request``, socketserver's hook between accept and the new
thread, applies the cap (``--max-connections``): over it, SERVER_FULL and close.
If ``accept`` fails (EMFILE: out of descriptors), the connection stays queued and
the listener readable, so ``serve_forever`` would call ``accept`` again at once,
forever; our ``get_request`` first waits for a connection to end, or half a second.

Helpers: ``common`` (``BackendConfig``, ``SignalWakeup``, ``guarded``,
``tune``, ``peer_name``), ``door`` (``Admission``, ``refuse``), ``queues`` (``Outbound``,
``DeadlineQueue``) and
``jobs.JobRunner`` (storage batches on their own thread; a result enters the engine
under the mutex, like any call).
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVarTuple

from ..hub import Abort, Action, Close, EngineAPI, Lane, Submit, Write
from .common import LINGER_RESET, Announce, BackendConfig, SignalWakeup, connection_cap, guarded, peer_name, tune
from .door import ACCEPT_PAUSE, Admission, refuse
from .jobs import JobRunner
from .queues import DeadlineQueue, Outbound, Water

NAME = "threads"
log = logging.getLogger("csce513msg.backend")
Ts = TypeVarTuple("Ts")
_ids = itertools.count(1)


class TConn:
    """One connection: its socket, its queue, and its writer's condition."""

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self.id = next(_ids)
        self.sock = sock
        self.out = Outbound()
        self.wakeup = threading.Condition(lock)  # the writer waits here for output
        self.closing = False  # drain, then shut the write side
        self.reason = ""  # why we aborted it, for the log
        self.dead = False


class Shared:
    """The engine behind one mutex, and what every thread shares."""

    def __init__(self, engine: EngineAPI, config: BackendConfig) -> None:
        self.engine = engine
        self.config = config
        self.lock = threading.Lock()  # held for every engine call and queue change
        self.conns: dict[int, TConn] = {}
        self.closing: DeadlineQueue[TConn] = DeadlineQueue()  # closes under way, by deadline
        self.admission = Admission(connection_cap(config))
        self.admitted = 0  # connections counted against the cap: from verify_request to Handler.finish
        self.freed = threading.Event()  # a connection ended: an acceptor waiting out EMFILE tries again
        self.bell, self._ringer = socket.socketpair()  # wakes the main thread for an earlier deadline
        self._ringer.setblocking(False)  # never block while holding the mutex: one byte pending is enough
        self.sleeping_until: float | None = None  # the deadline the main thread sleeps towards
        # a finished job enters the engine from its worker thread, under the mutex like any call
        self.jobs = JobRunner(self.job_result, config.hash_nice)
        self.stopping = False

    def job_result(self, job_id: int, result: object) -> None:
        """In the worker thread that ran the job."""
        self.call(None, self.engine.job_done, job_id, result)
        self.jobs.finished()
        if self.stopping and not self.jobs.pending:
            self.ring()  # the main thread was waiting for the last batch

    def call(self, conn: TConn | None, fn: Callable[[*Ts, float], list[Action]], *args: *Ts) -> None:
        """Call the engine under the mutex, perform its actions, then flush."""
        with self.lock:
            now = time.monotonic()
            actions = guarded(fn, *args, now)
            if actions is None and conn is not None:
                actions = [Abort(conn.id, "engine error")]
            self.perform(actions or [], now)
            self.perform(guarded(self.engine.flush, now) or [], now)
            deadline = self.next_deadline()
            if deadline is not None and (self.sleeping_until is None or deadline < self.sleeping_until):
                self.sleeping_until = deadline
                self.ring()  # the main thread must wake sooner than it planned

    def next_deadline(self) -> float | None:
        """When the main thread must next wake (mutex held): the engine's timer or the
        first close deadline. O(1): never a walk over the connections."""
        deadlines = [d for d in (self.engine.next_deadline(), self.closing.next_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    def ring(self) -> None:
        """Wake the main thread (any thread may ring)."""
        try:
            self._ringer.send(b"!")
        except BlockingIOError:
            pass  # the bell is ringing already

    def perform(self, actions: Iterable[Action], now: float) -> None:
        """Queue writes and wake writers; never blocks (the mutex is held)."""
        touched: set[TConn] = set()
        for action in actions:
            if isinstance(action, Submit):  # a loop-lane batch too: with no pass to run it at, the store thread does
                self.jobs.submit(action.job_id, action.job, Lane.STORE if action.lane is Lane.LOOP else action.lane)
                continue
            conn = self.conns.get(action.conn)
            if conn is None or conn.dead:
                continue
            if isinstance(action, Write):
                conn.out.append(action.data)
                touched.add(conn)
            elif isinstance(action, Close) and not conn.closing:
                conn.closing = True
                self.closing.add(conn, now + self.config.close_timeout)  # past it, the main thread aborts
            elif isinstance(action, Abort):
                self.abort(conn, action.reason)
            conn.wakeup.notify()
        for conn in touched:
            self.water(conn, now)

    def water(self, conn: TConn, now: float) -> None:
        """Check the marks (mutex held): abort past the hard limit, else pause/resume."""
        crossed = conn.out.crossing(self.config)
        if crossed is Water.ABORT:
            self.abort(conn, "outbound limit")
        elif crossed is not None:
            call = self.engine.pause_writing if crossed is Water.PAUSE else self.engine.resume_writing
            self.perform(guarded(call, conn.id, now) or [], now)

    def abort(self, conn: TConn, reason: str) -> None:
        """Wake both of the connection's threads: their blocked calls fail at once."""
        if not conn.reason:
            conn.reason = reason
            log.warning("abort #%d: %s (%d bytes queued)", conn.id, reason, conn.out.size)
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)  # close() will send RST
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down
        conn.wakeup.notify()


class Handler(socketserver.BaseRequestHandler):
    """Runs in the reader thread socketserver starts for each connection."""

    server: Server

    def handle(self) -> None:
        shared = self.server.shared
        sock: socket.socket = self.request
        tune(sock, shared.config)
        conn = TConn(sock, shared.lock)
        with shared.lock:
            shared.conns[conn.id] = conn
        writer = threading.Thread(target=write_loop, args=(shared, conn), name=f"writer-{conn.id}")
        writer.start()
        shared.call(conn, shared.engine.connection_made, conn.id, peer_name(sock))  # queues the Welcome
        try:
            while True:
                data = sock.recv(shared.config.recv_size)  # blocks this thread only
                if not data:
                    break  # the peer closed, or we shut the socket down to abort it
                if not conn.closing:
                    shared.call(conn, shared.engine.data_received, conn.id, data)
        except OSError:
            pass  # reset by the peer
        with shared.lock:
            conn.dead = True
            shared.closing.discard(conn)
            conn.wakeup.notify()
        writer.join()
        with shared.lock:
            del shared.conns[conn.id]
        shared.call(None, shared.engine.connection_lost, conn.id)  # exactly once, last
        if shared.stopping and not shared.conns:
            shared.ring()  # the last one: the main thread can finish
        # socketserver closes the socket when handle() returns

    def finish(self) -> None:
        """After handle(), whatever happened: the connection no longer counts against the cap."""
        self.server.release()


def write_loop(shared: Shared, conn: TConn) -> None:
    """The writer thread: send whatever is queued, in as few sendall calls as possible."""
    while True:
        with shared.lock:
            while not conn.out.size and not conn.closing and not conn.dead:
                conn.wakeup.wait()
            if conn.dead or conn.reason:
                return
            if not conn.out.size:  # closing, and everything is sent
                break
            data = conn.out.take()
        try:
            conn.sock.sendall(data)  # blocks this writer only, never the mutex
        except OSError:
            return  # the reader sees the failure too and reports the loss
        with shared.lock:
            conn.out.sent(len(data))
            shared.water(conn, time.monotonic())
    try:
        conn.sock.shutdown(socket.SHUT_WR)  # FIN after our last byte; the reader waits for theirs
    except OSError:
        pass


class Server(socketserver.ThreadingTCPServer):
    """socketserver's threading server: the acceptor, one thread per connection."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.request_queue_size = shared.config.backlog
        family = socket.AF_INET6 if ":" in shared.config.host else socket.AF_INET
        self.address_family = family
        # create, bind and listen (steps 1-3) happen inside socketserver's constructor
        super().__init__((shared.config.host, shared.config.port), Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """accept(), called by serve_forever when the listener is readable (step 4).

        If it fails for want of descriptors, the connection stays queued and the
        listener readable: serve_forever would call again at once, forever. So we wait
        here first, until a connection ends (``freed``) or ``ACCEPT_PAUSE`` passes."""
        try:
            return super().get_request()
        except OSError as exc:
            with self.shared.lock:
                pause = self.shared.admission.failed(exc, time.monotonic())
            if pause:
                self.shared.freed.clear()
                self.shared.freed.wait(ACCEPT_PAUSE)
            raise  # serve_forever gives up on this round and selects again

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook after accept: True to serve the connection; at the cap,
        send SERVER_FULL and return False (socketserver then closes it)."""
        shared = self.shared
        with shared.lock:
            if shared.admission.admit(shared.admitted, time.monotonic()):
                shared.admitted += 1
                return True
            goodbye = shared.engine.server_full()
        refuse(request, goodbye)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's reader thread (ThreadingMixIn)."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.release()  # no thread, so no Handler.finish: it never counted
            raise

    def release(self) -> None:
        """A connection admitted by verify_request is over."""
        with self.shared.lock:
            self.shared.admitted -= 1
        self.shared.freed.set()


def serve(engine: EngineAPI, config: BackendConfig, announce: Announce) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    threading.stack_size(256 * 1024)
    shared = Shared(engine, config)
    server = Server(shared)
    wake = SignalWakeup()
    acceptor = threading.Thread(target=server.serve_forever, name="acceptor")
    acceptor.start()
    announce(NAME, server.socket)  # the banner: where we listen, our limits
    while not shared.stopping or shared.conns or shared.jobs.pending:  # stopping: the last batches commit first
        with shared.lock:
            now = time.monotonic()
            shared.sleeping_until = deadline = shared.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - now)
        ready, _, _ = select.select([wake.reader, shared.bell], [], [], timeout)  # main thread: timers, signals
        if shared.bell in ready:
            shared.bell.recv(4096)
        if wake.reader in ready:
            wake.drain()
        if wake.signalled and not shared.stopping:
            shared.stopping = True
            log.info("shutting down (signal %s)", wake.signalled)
            server.shutdown()  # stop the acceptor; new clients are refused once the socket closes
            server.server_close()
            shared.call(None, engine.shutdown)
        timers(shared)
    acceptor.join()
    shared.jobs.close()
    wake.close()


def timers(shared: Shared) -> None:
    """Run the engine's timer and abort closes that overran their timeout."""
    with shared.lock:
        now = time.monotonic()
        for conn in shared.closing.due(now):  # only the overdue ones, oldest first
            if not conn.dead and not conn.reason:
                shared.abort(conn, "close timeout")
        deadline = shared.engine.next_deadline()
    if deadline is not None and deadline <= now:
        shared.call(None, shared.engine.handle_timer)
