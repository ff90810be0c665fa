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

Helpers: ``driver.Driver`` (actions, output, closing, timers, the ``Admission`` at
the door, and the job runner whose ``Inbox`` socket the loop watches: storage batches
finish there) and ``common`` (``listen``, ``refuse``, ``SignalWakeup``, ``banner``).
"""

from __future__ import annotations

import logging
import select
import socket
import time

from ..hub import EngineAPI, HubConfig
from .common import BackendConfig, SignalWakeup, banner, listen, refuse
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


def serve(engine: EngineAPI, config: BackendConfig, hub_config: HubConfig) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    listener = listen(config)
    listener.setblocking(False)
    strategy = SelectStrategy()
    driver = Driver(engine, config, strategy)
    wake = SignalWakeup()
    listen_fd, wake_fd, jobs_fd = listener.fileno(), wake.fileno(), driver.inbox.fileno()
    for fd in (listen_fd, wake_fd, jobs_fd):
        strategy.watch(fd, True, False)
    banner(NAME, listener, config, hub_config)
    accepting = True
    while accepting or driver.conns or driver.jobs.pending:  # stopping: the last batches commit first
        timeout = driver.timeout(time.monotonic())
        readable, writable, _ = select.select(strategy.readers, strategy.writers, [], timeout)  # we block here
        now = time.monotonic()
        events = [(fd, 1) for fd in readable] + [(fd, 4) for fd in writable]  # 1: read, 4: write
        for fd, mask in events:
            if fd == listen_fd:
                if not accept(listener, driver, now):  # out of descriptors: the listener stays readable,
                    strategy.forget(listen_fd)  # so stop watching it for a while, or we would spin
            elif fd == wake_fd:
                wake.drain()
                if accepting:
                    accepting = False
                    stop_accepting(listener, strategy, wake, watched=not driver.admission.paused)
                    driver.shutdown(now)  # goodbyes and closes; the loop drains them
            elif fd == jobs_fd:
                driver.jobs_done(now)  # storage batches, password hashes: finished off the loop
            elif (conn := driver.conns.get(fd)) is not None:
                if mask == 1:
                    on_readable(driver, conn, now)
                elif not conn.dead:
                    on_writable(driver, conn)
        driver.timers(now)
        if driver.admission.resume(now) and accepting:  # the pause is over, or a connection closed
            strategy.watch(listen_fd, True, False)
        driver.flush(now)  # the engine's batch, then one send per connection
    driver.jobs.close()
    wake.close()


def accept(listener: socket.socket, driver: Driver, now: float) -> bool:
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
        driver.accepted(sock, now)  # the engine sends the Welcome: step 5, the acknowledgement


def on_readable(driver: Driver, conn: Conn, now: float) -> None:
    """Level-triggered: if we leave bytes unread, the next poll reports them again."""
    driver.readable(conn, now)  # step 6: receive; the engine's answer is queued (step 7)


def on_writable(driver: Driver, conn: Conn) -> None:
    """The socket's send buffer has room: the write pass sends the rest."""
    driver.writable(conn)


def stop_accepting(listener: socket.socket, strategy: SelectStrategy, wake: SignalWakeup, watched: bool) -> None:
    """Close the listener, so new clients are refused while we drain."""
    if watched:  # (not while accept is paused)
        strategy.forget(listener.fileno())
    listener.close()
    log.info("shutting down (signal %s)", wake.signalled)
