"""What every I/O strategy needs and that is not the strategy itself.

- ``BackendConfig``: the backend's limits (every one a server flag).
- ``listen``: the first three steps of any TCP server: socket, bind, listen.
- ``Outbound``: a connection's outbound queue with its water marks and hard limit.
- ``SignalWakeup``: SIGINT/SIGTERM turned into a readable socket, so a loop that is
  blocked in select/poll/epoll wakes up for them (``signal.set_wakeup_fd``).
- ``banner``: the start-up lines of the server window.
- ``guarded``: calls into the engine, where any exception is a bug that costs
  one connection, never the server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..hub import Action, HubConfig

log = logging.getLogger("csce513msg.backend")
#: SO_LINGER on, 0 seconds: close() resets the connection (RST) at once. An abort uses it,
#: so a peer blocked writing to us learns at once that we are gone, instead of waiting
#: on a closed window.
LINGER_RESET = struct.pack("ii", 1, 0)


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


def check_limits(backend: BackendConfig, hub: HubConfig) -> str | None:
    """Return why these limits cannot work together, or None if they can."""
    if not 0 < backend.low_water <= backend.high_water:
        return "the low-water mark must be positive and at most the high-water mark"
    need = backend.high_water + hub.window * hub.max_frame
    if backend.hard_limit < need:
        return (
            f"the outbound hard limit ({backend.hard_limit}) is below the high-water mark plus "
            f"window x max frame ({need}): a client honouring the window would be aborted"
        )
    if hub.max_text + 1024 > hub.max_frame:
        return "the max frame must exceed the text limit by at least 1024 bytes (the header)"
    return None


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


class Outbound:
    """One connection's queue of bytes to send, written once per loop pass.

    ``level`` tells the backend what crossing the marks means: ``"abort"`` past the
    hard limit, ``"pause"`` past the high-water mark, ``"resume"`` below the low one.
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

    def level(self, config: BackendConfig) -> str | None:
        """Return "abort", "pause", "resume" or None for the queue's current size."""
        if self.size > config.hard_limit:
            return "abort"
        if not self.paused and self.size > config.high_water:
            self.paused = True
            return "pause"
        if self.paused and self.size < config.low_water:
            self.paused = False
            return "resume"
        return None


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
