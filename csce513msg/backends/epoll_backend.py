"""epoll: one thread, and a kernel object that remembers what we watch (Linux).

How it works. ``select.epoll()`` creates an interest list inside the kernel. We
add each socket once (``register``), change it only when what we wait for changes
(``modify``: add EPOLLOUT while output is stuck), and each ``poll`` returns only
the sockets that are ready::

        +--> ep.poll(timeout) ---- blocks until a socket is ready or a deadline ---+
        |      listener ready  -> accept() until EAGAIN, register each new socket  |
        |                         (at the cap: SERVER_FULL; EMFILE: stop watching) |
        |      socket readable -> recv() once, engine.data_received -> actions     |
        |      socket writable -> send the rest of its queue                       |
        |      wake-up socket  -> SIGINT/SIGTERM: stop accepting, engine.shutdown  |
        +--- timers, engine.flush, then ONE send per connection with output <-----+
             (what the kernel does not take: modify(EPOLLOUT) until it has room)

Level-triggered, the default. ``poll`` reports a socket for as long as it is ready:
bytes we leave unread are reported again next time, so ``receive`` calls ``recv`` once
per wake-up and a client that floods us cannot starve the others. Edge-triggered
(``EPOLLET``) reports a socket only when it *becomes* ready: the loop must then read
until EAGAIN, or the rest waits for bytes that may never come; it saves wake-ups, and
costs that care. ``EPOLLONESHOT`` disables a socket after one report until ``modify``
re-arms it: it is for several threads waiting on one epoll, so that two never serve the
same socket at once. One thread needs neither.

The same rule is why ``EPOLLOUT`` is asked for only while output is stuck: a socket
with room in its send buffer is always writable, so watching it for writing all the
time would wake the loop on every pass, for nothing.

What it costs. A poll call costs in proportion to the number of *ready* sockets,
not watched ones, so 10,000 idle connections cost nothing while they stay idle.
Per connection the kernel keeps a small entry (about 160 bytes) and we keep a
``Conn`` and the engine's session. One core runs everything: the engine's Python
code is the limit, not the system call.

Where it stops. One thread uses one core; the file descriptor limit (``ulimit
-n``) caps connections: ``--max-connections`` (by default that limit minus what the
server keeps for itself) turns the rest away with SERVER_FULL. Should ``accept`` fail
anyway (EMFILE), the connection stays in the backlog and the listener stays readable:
a level-triggered loop would wake for it at once, forever, so we unregister the
listener until a connection closes or half a second passes. epoll is Linux-only
(kqueue on BSD/macOS is the cousin). The benchmark's connection-scaling figure shows
its flat memory and idle CPU.

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

NAME = "epoll"
log = logging.getLogger("csce513msg.backend")


class EpollStrategy:
    """What the driver may change: the events we wait for on each socket."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.registered: set[int] = set()

    def watch(self, fd: int, read: bool, write: bool) -> None:
        mask = (select.EPOLLIN if read else 0) | (select.EPOLLOUT if write else 0)
        if fd in self.registered:
            self.ep.modify(fd, mask)  # epoll_ctl(EPOLL_CTL_MOD): a system call, so only on a change
        else:
            self.ep.register(fd, mask)  # epoll_ctl(EPOLL_CTL_ADD): once per socket
            self.registered.add(fd)

    def forget(self, fd: int) -> None:
        self.registered.discard(fd)
        self.ep.unregister(fd)  # before close(): a closed fd cannot be unregistered


def serve(engine: EngineAPI, config: BackendConfig, announce: Announce) -> None:
    """Run the server until SIGINT or SIGTERM, then say goodbye and return."""
    listener = listen(config)
    listener.setblocking(False)
    strategy = EpollStrategy()
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
            events = strategy.ep.poll(-1 if timeout is None else timeout)  # we block (rounded up to ms)
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
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):  # (recv reports HUP, ERR)
                    receive(driver, conn, now)
                if mask & select.EPOLLOUT and not conn.dead:
                    driver.writable(conn)  # room again: the send pass below sends the rest
        driver.timers(now)
        if driver.admission.resume(now) and accepting:  # the pause is over, or a connection closed
            strategy.watch(listen_fd, True, False)
        driver.flush(now)  # the engine's batched work: a storage batch is committed here (LoopLane)
        send_pass(driver, strategy, now)  # then ONE send per connection with output
    driver.jobs.close()
    wake.close()
    strategy.ep.close()


def accept(listener: socket.socket, driver: Driver, strategy: EpollStrategy, now: float) -> bool:
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
        strategy.watch(conn.fd, True, False)  # register it: EPOLLIN, for its first bytes
        driver.greet(conn, now)  # the engine queues the Welcome: step 5, the acknowledgement


def receive(driver: Driver, conn: Conn, now: float) -> None:
    """The socket is readable: ONE recv (level-triggered: the rest is reported again)."""
    try:
        data = conn.sock.recv(driver.config.recv_size)  # step 6: receive; it will not block
    except BlockingIOError:
        return  # a spurious wake-up: nothing to read after all
    except OSError as exc:  # ECONNRESET: the peer vanished abruptly
        driver.lose(conn, f"reset ({exc.strerror})", now)
        return
    driver.received(conn, data, now)  # to the engine, whose answer is queued (step 7)


def send_pass(driver: Driver, strategy: EpollStrategy, now: float) -> None:
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
            conn.interest = interest  # output stuck: EPOLLOUT on; drained: off again
            strategy.watch(conn.fd, *interest)


def stop_accepting(listener: socket.socket, strategy: EpollStrategy, wake: SignalWakeup, watched: bool) -> None:
    """Close the listener, so new clients are refused while we drain."""
    if watched:  # (not while accept is paused)
        strategy.forget(listener.fileno())
    listener.close()
    log.info("shutting down (signal %s)", wake.signalled)
