"""What every I/O strategy needs and that is not the strategy itself.

- ``BackendConfig``: the backend's limits (every one a server flag).
- ``listen``: the first three steps of any TCP server: socket, bind, listen.
- ``Outbound``: a connection's outbound queue with its water marks and hard limit.
- ``SignalWakeup``: SIGINT/SIGTERM turned into a readable socket, so a loop that is
  blocked in select/poll/epoll wakes up for them (``signal.set_wakeup_fd``).
- ``Admission``: who may come in: the connection cap (``SERVER_FULL``), and what to
  do when ``accept`` fails for want of descriptors (back off, log once).
- ``DeadlineQueue``: connections in deadline order (closes, TLS handshakes), so a
  loop's timer work is proportional to what is due, not to how many connections there are.
- ``banner``: the start-up lines of the server window.
- ``guarded``: calls into the engine, where any exception is a bug that costs
  one connection, never the server.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import resource
import signal
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..hub import HISTORY_PAGE, Action, HubConfig

log = logging.getLogger("csce513msg.backend")
#: SO_LINGER on, 0 seconds: close() resets the connection (RST) at once. An abort uses it,
#: so a peer blocked writing to us learns at once that we are gone, instead of waiting
#: on a closed window.
LINGER_RESET = struct.pack("ii", 1, 0)
#: Descriptors the server keeps for its own use, below the open-file limit: the default
#: connection cap is the limit minus these. An idle server holds 12 to 18 (stdio, the
#: log, the database and its WAL, the listener, the wake-up and job sockets, the epoll
#: object; uvloop a few more); the rest is room for SQLite's temporary files, reading the
#: TLS certificate and ``--stats``' reads of /proc.
FD_RESERVE = 64
#: accept() errors that say the process or the system is out of something (descriptors,
#: socket buffers, memory). The connection stays queued in the backlog, so the listener
#: stays readable: retrying at once fails again, forever, at 100 % CPU.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors that concern only the connection being accepted (it was reset while
#: queued, or a network error passed on, as accept(2) says for Linux): take the next one.
ONE_CONNECTION = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
                 "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH")
    if hasattr(errno, name)
)  # fmt: skip
ACCEPT_PAUSE = 0.5  #: seconds a loop stops accepting after such an error (less if a connection closes)
#: a connection admitted this soon after a failed accept does not end the stretch of
#: failures: asyncio admits the ones it accepted just before running out only then
ACCEPT_QUIET = 0.05


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Limits and time constants of the I/O layer, with their defaults."""

    host: str = "127.0.0.1"
    port: int = 5130
    high_water: int = 256 * 1024  #: outbound bytes queued: above this, pause_writing
    low_water: int = 64 * 1024  #: ... and below this again, resume_writing
    hard_limit: int = 8 * 1024 * 1024  #: outbound bytes queued: above this, abort
    sndbuf: int = 0  #: SO_SNDBUF for accepted sockets; 0 keeps the kernel's default
    close_timeout: float = 5.0  #: seconds a closing connection may take to drain
    backlog: int = 1024  #: listen() backlog
    recv_size: int = 65536  #: bytes asked of each recv()
    #: connections served at once; past it a new one is told SERVER_FULL and closed.
    #: 0: the open-file limit minus ``FD_RESERVE`` (see ``connection_cap``)
    max_connections: int = 0


def check_limits(backend: BackendConfig, hub: HubConfig) -> str | None:
    """Return why these limits cannot work together, or None if they can."""
    if not 0 < backend.low_water <= backend.high_water:
        return "the low-water mark must be positive and at most the high-water mark"
    # below the high-water mark a connection may be sent a full window of deliveries and,
    # on top, one History page (at least one message: see page_room)
    need = backend.high_water + (hub.window + 1) * hub.max_frame
    if backend.hard_limit < need:
        return (
            f"the outbound hard limit ({backend.hard_limit}) is below the high-water mark plus "
            f"(window + 1) x max frame ({need}): a client honouring the window would be aborted"
        )
    if hub.max_text + 1024 > hub.max_frame:
        return "the max frame must exceed the text limit by at least 1024 bytes (the header)"
    for name, value in (("login timeout", hub.login_timeout), ("frame timeout", hub.frame_timeout)):
        if value <= 0:
            return f"the {name} must be more than 0 seconds"
    if hub.max_pending_logins < 1:
        return "--max-pending-logins must be 1 or more"
    return None


def page_room(backend: BackendConfig, hub: HubConfig) -> int:
    """The bytes of message bodies a History page may carry: what the hard limit has room
    for above the high-water mark and a full window (a page is read only below the mark),
    at most 1 MiB. Every page still carries one message, which ``check_limits`` made room for."""
    room = backend.hard_limit - backend.high_water - hub.window * hub.max_frame
    return max(hub.max_text, min(1 << 20, room - 1024 * HISTORY_PAGE))


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE this process runs with (``msgsrv`` raises it to the hard one)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20  # Linux's default fs.nr_open


def connection_cap(config: BackendConfig) -> int:
    """The connection cap: ``--max-connections``, or the open-file limit minus the reserve."""
    return config.max_connections or max(1, open_file_limit() - FD_RESERVE)


def listen(config: BackendConfig) -> socket.socket:
    """Create, bind and listen: the server's first three steps."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)  # step 1: create a socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without TIME_WAIT trouble
    sock.bind((config.host, config.port))  # step 2: bind it to an address
    sock.listen(config.backlog)  # step 3: listen; the kernel now completes handshakes for us
    return sock


def tune(sock: socket.socket, config: BackendConfig) -> None:
    """Options for an accepted socket: no Nagle delay, and the send buffer flag."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # chat is small messages
    if config.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.sndbuf)


def peer_name(sock: socket.socket) -> str:
    """Return ``host:port`` of the peer, or "?" if it is already gone."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Water(enum.Enum):
    """What an outbound queue's size crossed (``Outbound.crossing``)."""

    ABORT = "abort"  #: past the hard limit: the connection is aborted
    PAUSE = "pause"  #: up past the high-water mark: engine.pause_writing
    RESUME = "resume"  #: down below the low-water mark again: engine.resume_writing


class Outbound:
    """One connection's queue of bytes to send, written once per loop pass.

    ``crossing`` tells the backend which water mark the queue's size crossed, if any.
    """

    __slots__ = ("chunks", "paused", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.paused = False

    def append(self, data: bytes) -> None:
        """Queue ``data``; never blocks."""
        self.chunks.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        """Return everything queued as one buffer (one send call for many writes).

        The bytes stay queued until ``sent`` says the kernel took them; what is
        appended meanwhile queues behind them."""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = [data]
        return data

    def sent(self, n: int) -> None:
        """Forget the first ``n`` bytes of what ``take`` returned (the kernel has them)."""
        if n:
            rest = self.chunks[0][n:]
            self.chunks[0:1] = [rest] if rest else []
            self.size -= n

    def crossing(self, config: BackendConfig) -> Water | None:
        """The mark the queue's size crossed since the last call, if any. It remembers
        being past the high-water mark (``paused``), so each crossing is told once."""
        if self.size > config.hard_limit:
            return Water.ABORT
        if not self.paused and self.size > config.high_water:
            self.paused = True
            return Water.PAUSE
        if self.paused and self.size < config.low_water:
            self.paused = False
            return Water.RESUME
        return None


class Admission:
    """Who may come in: the connection cap, and what to do when accept() fails.

    Two limits meet at ``accept``. The cap (``--max-connections``) is ours, set below the
    descriptor limit: a connection over it is accepted, told ``SERVER_FULL`` and closed,
    so the client learns why. The descriptor limit is the kernel's: past it ``accept``
    fails with EMFILE and the connection stays in the backlog, so the listener stays
    readable and a loop that just tries again spins at 100 % CPU, logging each failure.
    On EMFILE and its kin (``EXHAUSTED``; and on any error that is not about the one
    connection) a loop therefore stops accepting until ``paused_until``: ``ACCEPT_PAUSE``
    seconds, or until a connection closes and frees a descriptor (``freed``), whichever
    comes first.

    How often either happens is up to the network, so the log gets one line when a
    stretch of refusals (or of failed accepts) begins and one when it ends, with a count,
    never one per connection.

    A backend calls ``admit`` after each successful ``accept``, ``failed`` when
    ``accept`` raises, ``freed`` when a connection is gone, and ``resume`` once per loop
    pass while paused.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.paused_until: float | None = None  #: not accepting until then (None: accepting)
        self._refused = 0  # connections refused in this stretch at the cap
        self._failures = 0  # accept() failures in this stretch
        self._failing_since = self._last_failure = 0.0

    def admit(self, count: int, now: float) -> bool:
        """``accept`` returned a connection while ``count`` are served: True to serve it;
        False at the cap (the caller sends ``SERVER_FULL`` and closes it)."""
        if self._failures and now - self._last_failure >= ACCEPT_QUIET:
            log.warning(
                "accepting again after %d failed accepts over %.1f s", self._failures, now - self._failing_since
            )
            self._failures = 0
        if count < self.cap:
            if self._refused:
                log.warning("below the cap again: %d connections were refused with SERVER_FULL", self._refused)
                self._refused = 0
            return True
        self.refused(f"{count} connections, the cap (--max-connections {self.cap})")
        return False

    def refused(self, why: str) -> None:
        """Count one refusal; the first of a stretch is logged with ``why``."""
        if not self._refused:
            log.warning("server full: %s; refusing new connections with SERVER_FULL", why)
        self._refused += 1

    def failed(self, exc: OSError, now: float) -> bool:
        """``accept`` raised ``exc``: False if only that one connection failed
        (``ONE_CONNECTION``), so the loop takes the next one; True if the loop must stop
        accepting for a while (``EXHAUSTED``, or anything unexpected: trying again at
        once could spin)."""
        if exc.errno in ONE_CONNECTION:
            log.debug("accept failed: %s", exc)
            return False
        if not self._failures:
            self._failing_since = now
            log.warning("accept failed (%s): not accepting for a while; a line follows when it works", exc.strerror)
        self._failures += 1
        self._last_failure = now
        self.paused_until = now + ACCEPT_PAUSE
        return True

    @property
    def paused(self) -> bool:
        """Whether accepting is paused (the loop is not watching the listener)."""
        return self.paused_until is not None

    def freed(self) -> None:
        """A connection is gone and its descriptor free: a pause may end now."""
        if self.paused_until is not None:
            self.paused_until = 0.0

    def resume(self, now: float) -> bool:
        """True once, when a pause is over: the loop watches the listener again (if it
        still accepts at all)."""
        if self.paused_until is not None and self.paused_until <= now:
            self.paused_until = None
            return True
        return False


def refuse(sock: socket.socket, goodbye: bytes) -> None:
    """Send ``goodbye`` (the engine's SERVER_FULL) and close: best effort, never waits."""
    try:
        sock.setblocking(False)
        sock.send(goodbye)  # a fresh socket's buffer is empty: it fits, unless the peer is gone
    except OSError:
        pass
    sock.close()


T = TypeVar("T", bound=Hashable)


class DeadlineQueue(Generic[T]):
    """Connections with a deadline, earliest first: closes (the close timeout), TLS
    handshakes (the handshake timeout).

    Every entry gets the same length of time from a monotonic clock, so deadlines come
    due in the order they were added: a first-in, first-out queue is a timer queue here.
    The next deadline is the first entry and the overdue ones are a prefix, so a loop
    pays for what is due, never for a walk over every connection (with 10,000 of them,
    a walk on each wake-up of a loop costs more than the work). ``OrderedDict`` keeps the
    order and removes an entry that is done early in O(1).
    """

    def __init__(self) -> None:
        self._queue: OrderedDict[T, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, conn: T, deadline: float) -> None:
        """``conn`` is due at ``deadline`` (never earlier than the last one added)."""
        self._queue.setdefault(conn, deadline)

    def discard(self, conn: T) -> None:
        """``conn`` is done (or gone): it needs no deadline any more."""
        self._queue.pop(conn, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        return next(iter(self._queue.values()), None)

    def due(self, now: float) -> list[T]:
        """Remove and return the connections whose deadline has passed, oldest first."""
        out = []
        while self._queue:
            conn, deadline = next(iter(self._queue.items()))
            if deadline > now:
                break
            del self._queue[conn]
            out.append(conn)
        return out


class SignalWakeup:
    """SIGINT and SIGTERM, as a socket that becomes readable when one arrives.

    The C-level handler writes the signal number to ``set_wakeup_fd``'s socket, so
    a loop blocked in select/poll/epoll wakes; the Python handler only records it.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.signalled: int | None = None
        signal.set_wakeup_fd(self._writer.fileno())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.signalled = signum

    def fileno(self) -> int:
        return self.reader.fileno()

    def drain(self) -> None:
        """Empty the wake-up socket."""
        try:
            while self.reader.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.reader.close()
        self._writer.close()


def banner(backend: str, sock: socket.socket, backend_cfg: BackendConfig, hub_cfg: HubConfig) -> None:
    """Print the server window's start-up lines (stdout: tests read the port here)."""
    host, port = sock.getsockname()[:2]
    print(f"csce513msg server: backend {backend}, listening on {host}:{port}, pid {os.getpid()}", flush=True)
    cap, files = connection_cap(backend_cfg), open_file_limit()
    origin = "--max-connections" if backend_cfg.max_connections else f"open files {files} - {FD_RESERVE} kept"
    print(f"connections: at most {cap} ({origin}); past that, SERVER_FULL", flush=True)
    if cap > files - FD_RESERVE:
        print(f"connections: {cap} is within {FD_RESERVE} of the open-file limit ({files}): accept may fail "
              "(EMFILE) before the cap is reached", flush=True)  # fmt: skip
    print(
        f"limits: frame {hub_cfg.max_frame} B, text {hub_cfg.max_text} B, window {hub_cfg.window}, "
        f"idle {hub_cfg.idle_timeout:g} s, rate {hub_cfg.rate:g}/s (burst {hub_cfg.burst}), "
        f"outbound high/low/hard {backend_cfg.high_water}/{backend_cfg.low_water}/{backend_cfg.hard_limit} B, "
        f"close {backend_cfg.close_timeout:g} s",
        flush=True,
    )


def guarded(call: Callable[..., list[Action]], *args: Any) -> list[Action] | None:
    """Call the engine; on an exception (a bug) log the traceback and return None,
    so the caller aborts that one connection and keeps serving everyone else."""
    try:
        return call(*args)
    except Exception:
        log.exception("engine bug in %s%r", call.__name__, args[:1])
        return None
