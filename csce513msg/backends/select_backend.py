"""select: one thread, and three bitmaps of descriptors rebuilt on every call.

How it works. ``select.select(readers, writers, [], timeout)`` takes lists of
sockets; Python turns them into ``fd_set`` bitmaps, the kernel checks every
descriptor up to the highest one and clears the bits of those not ready, and
Python scans the bitmaps back into lists. We keep the two sets ourselves::

        +--> select(r, w, timeout) - blocks until a socket is ready or a deadline -+
        |      listener ready  -> accept() until EAGAIN, register each new socket  |
        |                         (at the cap: SERVER_FULL; EMFILE: stop watching) |
        |      socket readable -> recv() once, engine.data_received -> actions     |
        |      socket writable -> send the rest of its queue                       |
        |      wake-up socket  -> SIGINT/SIGTERM: stop accepting, engine.shutdown  |
        +--- timers, engine.flush, then ONE send per connection with output <-----+
             (what the kernel does not take: into the write set, until it has room)

Level-triggered, like poll: a socket is reported for as long as it is ready, so
``receive`` calls ``recv`` once per wake-up (what is left is reported again), and a
socket is in the write set only while its output is stuck (one with room is always
writable: left there, it would wake every pass for nothing).

What it costs. Like poll, O(n) per call in the watched descriptors, plus the
building and scanning of the lists in Python on every call. It is the oldest and
most portable call (every Unix, and Windows for sockets).

Where it stops. An ``fd_set`` is a fixed bitmap of FD_SETSIZE = 1024 bits: a
descriptor numbered 1024 or more cannot be watched at all (Python raises
ValueError). So at about 1,010 clients (the listener, the wake-up socket, stdio,
the database and a few more hold the low numbers) ``accept`` refuses new
connections with a ``server full`` error, instead of crashing, as it does at the
``--max-connections`` cap; the log says so once per stretch of refusals. The
benchmark's connection-scaling figure shows select stopping there.

Helpers: ``driver.Driver`` (the connection table, the engine's actions, water marks,
closing, timers, the ``Admission`` at the door, and the job runner whose ``Inbox``
socket the loop watches: hashes and file chunks finish there; a storage batch runs on the
loop itself, at the flush, unless it may wait on the disk), ``common`` (``listen``,
``SignalWakeup``) and ``door.refuse``.
"""

from __future__ import annotations

import logging
import select
import socket
import time

from ..hub import EngineAPI
from .common import WAITS, Announce, BackendConfig, SignalWakeup, listen
from .door import refuse
from .driver import Conn, Driver

NAME = "select"
FD_SETSIZE = 1024  # fixed when the C library was built
log = logging.getLogger("csce513msg.backend")


class SelectStrategy:
    """What the driver may change: the events we wait for on each socket."""

    def __init__(self) -> None:
        self.readers: set[int] = set()
        self.writers: set[int] = set()

    def watch(self, fd: int, read: bool, write: bool) -> None:
        for wanted, fds in ((read, self.readers), (write, self.writers)):
            if wanted:
                fds.add(fd)
            else:
                fds.discard(fd)

    def forget(self, fd: int) -> None:
        self.readers.discard(fd)
        self.writers.discard(fd)


def serve(engine: EngineAPI, config: BackendConfig, announce: Announce) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    listener = listen(config)
    listener.setblocking(False)
    strategy = SelectStrategy()
    driver = Driver(engine, config, strategy)
    wake = SignalWakeup()
    listen_fd, wake_fd, jobs_fd = listener.fileno(), wake.fileno(), driver.inbox.fileno()
    for fd in (listen_fd, wake_fd, jobs_fd):
        strategy.watch(fd, True, False)
    announce(NAME, listener)  # the banner: where we listen, our limits
    accepting = True
    # stopping: the last batches commit first (on the storage thread, or left on the loop lane)
    while accepting or driver.conns or driver.jobs.pending or driver.loop_lane.jobs:
        timeout = driver.timeout(time.monotonic())
        with WAITS:  # one wake-up, counted (and, for --stats, the CPU spent inside the call)
            readable, writable, _ = select.select(strategy.readers, strategy.writers, [], timeout)  # we block here
        now = time.monotonic()
        events = [(fd, 1) for fd in readable] + [(fd, 4) for fd in writable]  # 1: read, 4: write
        for fd, mask in events:
            if fd == listen_fd:
                if not accept(listener, driver, strategy, now):  # out of descriptors: the listener stays readable,
                    strategy.forget(listen_fd)  # so stop watching it for a while, or we would spin
            elif fd == wake_fd:
                wake.drain()
                if accepting:
                    accepting = False
                    stop_accepting(listener, strategy, wake, watched=not driver.admission.paused)
                    driver.shutdown(now)  # goodbyes and closes; the loop drains them
            elif fd == jobs_fd:
                driver.jobs_done(now)  # password hashes, file chunks, checkpoints: finished off the loop
            elif (conn := driver.conns.get(fd)) is not None:
                if mask == 1:
                    receive(driver, conn, now)
                elif not conn.dead:
                    driver.writable(conn)  # room again: the send pass below sends the rest
        driver.timers(now)
        if driver.admission.resume(now) and accepting:  # the pause is over, or a connection closed
            strategy.watch(listen_fd, True, False)
        driver.flush(now)  # the engine's batched work: a storage batch is committed here (LoopLane)
        send_pass(driver, strategy, now)  # then ONE send per connection with output
    driver.jobs.close()
    wake.close()


def accept(listener: socket.socket, driver: Driver, strategy: SelectStrategy, now: float) -> bool:
    """Accept every pending connection: the kernel finished their handshakes.
    Returns False if the loop must stop watching the listener for a while."""
    while True:
        try:
            sock, _ = listener.accept()  # step 4: accept
        except BlockingIOError:
            return True  # no more waiting
        except OSError as exc:  # EMFILE: out of descriptors; the rest wait in the backlog
            if driver.admission.failed(exc, now):
                return False
            continue  # only that connection failed (reset while it waited): take the next
        if sock.fileno() >= FD_SETSIZE:  # select could never watch it: refuse, politely
            driver.admission.refused(f"descriptor {sock.fileno()} is over select's FD_SETSIZE ({FD_SETSIZE})")
            refuse(sock, driver.engine.server_full())
            continue
        if not driver.admission.admit(len(driver.conns), now):
            refuse(sock, driver.engine.server_full())  # at the cap: say so, and close
            continue
        conn = driver.add(sock)  # non-blocking, in the table
        strategy.watch(conn.fd, True, False)  # watch it: in the read set, for its first bytes
        driver.greet(conn, now)  # the engine queues the Welcome: step 5, the acknowledgement


def receive(driver: Driver, conn: Conn, now: float) -> None:
    """The socket is readable: ONE recv (select is level-triggered: the rest is reported again)."""
    try:
        data = conn.sock.recv(driver.config.recv_size)  # step 6: receive; it will not block
    except BlockingIOError:
        return  # a spurious wake-up: nothing to read after all
    except OSError as exc:  # ECONNRESET: the peer vanished abruptly
        driver.lose(conn, f"reset ({exc.strerror})", now)
        return
    driver.received(conn, data, now)  # to the engine, whose answer is queued (step 7)


def send_pass(driver: Driver, strategy: SelectStrategy, now: float) -> None:
    """End of a pass: one send per connection with output, so a burst of messages costs
    one system call, not one each (step 7: reply)."""
    for conn in driver.take_dirty():
        if conn.out.size:
            try:
                sent = conn.sock.send(conn.out.take())  # may take only part: the buffer is full
            except BlockingIOError:
                sent = 0  # not a byte: the client reads slower than we write
            except OSError as exc:  # EPIPE, ECONNRESET
                driver.lose(conn, f"send failed ({exc.strerror})", now)
                continue
            conn.out.sent(sent)  # the rest stays queued, in order
        interest = driver.sent(conn, now)  # water marks; a drained close sends its FIN
        if interest is not None and interest != conn.interest:
            conn.interest = interest  # output stuck: the write set on; drained: off again
            strategy.watch(conn.fd, *interest)  # no system call: the next select() sends the sets


def stop_accepting(listener: socket.socket, strategy: SelectStrategy, wake: SignalWakeup, watched: bool) -> None:
    """Close the listener, so new clients are refused while we drain."""
    if watched:  # (not while accept is paused)
        strategy.forget(listener.fileno())
    listener.close()
    log.info("shutting down (signal %s)", wake.signalled)
