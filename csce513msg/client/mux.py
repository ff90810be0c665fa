"""The client's multiplexer: wait on the keyboard and the socket at once.

Three interchangeable implementations of one tiny interface, so a student can
compare them line by line: ``register(fd)`` once, then ``wait(timeout)`` returns
the descriptors that are readable. (The teaching loop only ever waits to *read*:
its writes are small requests, handed to the kernel whole with a blocking
``sendall`` that waits only if the send buffer is full. The interactive mode never
waits to write: it asks its loop to call back when the socket is writable.)

epoll refuses descriptors that cannot be polled, such as a regular file or
/dev/null on stdin (``PermissionError``/EPERM): ``register`` returns False for
those, and the caller treats them as always readable, which they are.
"""

from __future__ import annotations

import select
from typing import Protocol


class Mux(Protocol):
    """What the client's loop needs from a multiplexer."""

    def register(self, fd: int) -> bool: ...
    def unregister(self, fd: int) -> None: ...
    def wait(self, timeout: float | None) -> list[int]: ...


class SelectMux:
    """select(): rebuilds the descriptor bitmap on every call; fds < 1024 only."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def register(self, fd: int) -> bool:
        self.fds.append(fd)
        return True

    def unregister(self, fd: int) -> None:
        self.fds.remove(fd)

    def wait(self, timeout: float | None) -> list[int]:
        readable, _, _ = select.select(self.fds, [], [], timeout)
        return readable


class PollMux:
    """poll(): a list of (fd, events) handed to the kernel on every call."""

    def __init__(self) -> None:
        self.p = select.poll()

    def register(self, fd: int) -> bool:
        self.p.register(fd, select.POLLIN)
        return True

    def unregister(self, fd: int) -> None:
        self.p.unregister(fd)

    def wait(self, timeout: float | None) -> list[int]:
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return [fd for fd, _ in self.p.poll(ms)]  # POLLHUP/POLLERR count as readable: read() tells


class EpollMux:
    """epoll: the kernel keeps the interest list; Linux only."""

    def __init__(self) -> None:
        self.ep = select.epoll()

    def register(self, fd: int) -> bool:
        try:
            self.ep.register(fd, select.EPOLLIN)
        except PermissionError:  # a regular file or /dev/null: always readable
            return False
        return True

    def unregister(self, fd: int) -> None:
        self.ep.unregister(fd)  # before the socket is closed

    def wait(self, timeout: float | None) -> list[int]:
        return [fd for fd, _ in self.ep.poll(-1 if timeout is None else timeout)]


MUXES: dict[str, type[Mux]] = {"select": SelectMux, "poll": PollMux, "epoll": EpollMux}


def best_mux() -> str:
    """The best mechanism this platform has."""
    if hasattr(select, "epoll"):
        return "epoll"
    return "poll" if hasattr(select, "poll") else "select"
