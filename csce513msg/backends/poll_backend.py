"""poll: one thread, and a list of every socket handed to the kernel each call.

How it works. ``select.poll()`` keeps our interest list *in user space*: one
(fd, events) entry per socket, changed with ``register``/``modify``. Each ``poll``
call copies the whole list into the kernel, which checks every socket and marks
the ready ones; Python then returns just those::

        +--> p.poll(timeout_ms) -- blocks until a socket is ready or a deadline ---+
        |      listener ready  -> accept() until EAGAIN, register each new socket  |
        |                         (at the cap: SERVER_FULL; EMFILE: stop watching) |
        |      socket readable -> recv() once, engine.data_received -> actions     |
        |      socket writable -> send the rest of its queue                       |
        |      wake-up socket  -> SIGINT/SIGTERM: stop accepting, engine.shutdown  |
        +--- timers, engine.flush, then ONE send per connection with output <-----+
             (what the kernel does not take: POLLOUT on, until it has room)

Level-triggered: poll reports a socket for as long as it is ready, so ``receive``
calls ``recv`` once per wake-up (what is left is reported again) and POLLOUT is asked
for only while output is stuck (a socket with room is always writable: watched all
the time, it would wake every pass for nothing). The timeout is in whole milliseconds
and we round it *up*: rounded down, the loop would wake just before a deadline, find
nothing due, and call ``poll(0)`` again and again until it is, a busy spin of up to a
millisecond at every deadline (``selectors.PollSelector`` rounds up for the same reason).

What it costs. Every call costs in proportion to the number of *watched* sockets,
ready or not: with 10,000 mostly idle connections, each wake-up walks 10,000
entries to find the few that matter. Unlike select there is no fixed ceiling on
descriptor numbers. One core runs everything.

Where it stops. The O(n) walk per call: at thousands of connections with steady
traffic, the walk costs more than the work. Past ``--max-connections`` (by
default the open-file limit less a reserve) a client is told SERVER_FULL; if
``accept`` fails anyway (EMFILE), the listener leaves the list for a while, since
poll would report it readable at once, forever. It is POSIX, so it runs on macOS
too. The benchmark's connection-scaling figure shows poll's idle cost rising with n
while epoll's stays flat.

Helpers: ``driver.Driver`` (the connection table, the engine's actions, water marks,
closing, timers, the ``Admission`` at the door, and the job runner whose ``Inbox``
socket the loop watches: hashes and file chunks finish there; a storage batch runs on the
loop itself, at the flush, unless it may wait on the disk), ``common`` (``listen``,
``SignalWakeup``) and ``door.refuse``.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time

from ..hub import EngineAPI
from .common import WAITS, Announce, BackendConfig, SignalWakeup, listen
from .door import refuse
from .driver import Conn, Driver

NAME = "poll"
log = logging.getLogger("csce513msg.backend")


class PollStrategy:
    """What the driver may change: the events we wait for on each socket."""

    def __init__(self) -> None:
        self.p = select.poll()

    def watch(self, fd: int, read: bool, write: bool) -> None:
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        self.p.register(fd, mask)  # no system call: poll() sends the whole list each time

    def forget(self, fd: int) -> None:
        self.p.unregister(fd)


def serve(engine: EngineAPI, config: BackendConfig, announce: Announce) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    listener = listen(config)
    listener.setblocking(False)
    strategy = PollStrategy()
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
            events = strategy.p.poll(None if timeout is None else math.ceil(timeout * 1000))  # ms, rounded up; we block
        now = time.monotonic()
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
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):  # (recv reports HUP, ERR)
                    receive(driver, conn, now)
                if mask & select.POLLOUT and not conn.dead:
                    driver.writable(conn)  # room again: the send pass below sends the rest
        driver.timers(now)
        if driver.admission.resume(now) and accepting:  # the pause is over, or a connection closed
            strategy.watch(listen_fd, True, False)
        driver.flush(now)  # the engine's batched work: a storage batch is committed here (LoopLane)
        send_pass(driver, strategy, now)  # then ONE send per connection with output
    driver.jobs.close()
    wake.close()


def accept(listener: socket.socket, driver: Driver, strategy: PollStrategy, now: float) -> bool:
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
        if not driver.admission.admit(len(driver.conns), now):
            refuse(sock, driver.engine.server_full())  # at the cap: say so, and close
            continue
        conn = driver.add(sock)  # non-blocking, in the table
        strategy.watch(conn.fd, True, False)  # register it: POLLIN, for its first bytes
        driver.greet(conn, now)  # the engine queues the Welcome: step 5, the acknowledgement


def receive(driver: Driver, conn: Conn, now: float) -> None:
    """The socket is readable: ONE recv (poll is level-triggered: the rest is reported again)."""
    try:
        data = conn.sock.recv(driver.config.recv_size)  # step 6: receive; it will not block
    except BlockingIOError:
        return  # a spurious wake-up: nothing to read after all
    except OSError as exc:  # ECONNRESET: the peer vanished abruptly
        driver.lose(conn, f"reset ({exc.strerror})", now)
        return
    driver.received(conn, data, now)  # to the engine, whose answer is queued (step 7)


def send_pass(driver: Driver, strategy: PollStrategy, now: float) -> None:
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
            conn.interest = interest  # output stuck: POLLOUT on; drained: off again
            strategy.watch(conn.fd, *interest)  # no system call: the next poll() sends the list


def stop_accepting(listener: socket.socket, strategy: PollStrategy, wake: SignalWakeup, watched: bool) -> None:
    """Close the listener, so new clients are refused while we drain."""
    if watched:  # (not while accept is paused)
        strategy.forget(listener.fileno())
    listener.close()
    log.info("shutting down (signal %s)", wake.signalled)
