"""The door: who may come in, and what to do when accept() fails.

- ``Admission``: the connection cap (``SERVER_FULL``), and the pause after ``accept``
  fails for want of descriptors (back off, log once per stretch);
- ``refuse``: tell a connection over the cap why, and close it.

Every backend uses both, whatever its strategy: the door is the same for all six.
"""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger("csce513msg.backend")
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
