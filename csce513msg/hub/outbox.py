"""What one engine call has to say: every part of the engine writes here.

The engine's parts (the gate, the mailroom, the engine itself) never return actions
to each other; each puts them in the one ``Outbox`` it was given, and the engine
hands them all to the backend at the end of the call (``take``). The outbox also
numbers jobs and reads, so a key is unique whichever part made it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol import Error, ErrorCode, Message, encode
from .actions import Action, Close, ConnId, Lane, Submit, Write
from .session import Session

MAX_HEADER = 0xFFFF  #: the largest header a frame can carry (``hlen`` is a u16): a reply's lists fit in it


def fitting(sizes: Iterable[int], fixed: int) -> int:
    """How many entries of a list reply fit in one header: ``fixed`` bytes for its other
    fields and lists' counts, then each entry's bytes in order (a reply without a body must
    fit, or encoding it fails: a class of 2,000 accounts would cost a GroupMembers its
    connection). The lists are cut there, and the protocol says how a reader can tell."""
    total, count = fixed, 0
    for size in sizes:
        total += size
        if total > MAX_HEADER:
            break
        count += 1
    return count


class Outbox:
    """The actions of one engine call, in order."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self._ids = itertools.count(1)

    def write(self, session: Session, msg: Message) -> None:
        """Send ``msg`` to ``session``, with the fields of the version its Hello announced."""
        if session.closing:
            return  # e.g. a receipt whose commit came after the connection was told to close
        self.actions.append(Write(session.conn, encode(msg, session.minor)))

    def error(self, session: Session, code: ErrorCode, message: str, request_id: int, retry_after_ms: int = 0) -> None:
        """An Error; ``retry_after_ms``: the wait, when known (1.4; left out for older peers)."""
        self.write(session, Error(code, message, retry_after_ms, request_id))

    def write_encoded(self, session: Session, data: bytes) -> None:
        """Send bytes encoded for the session's minor already: a receipt or a delivery encoded
        from its fields (``encode_fields``), or a Deliver encoded once for many sessions of one
        minor (the same object goes to each, nothing is copied)."""
        if not session.closing:
            self.actions.append(Write(session.conn, data))

    def write_bytes(self, conn: ConnId, data: bytes) -> None:
        """Send bytes encoded once for many connections (a presence event)."""
        self.actions.append(Write(conn, data))

    def close(self, session: Session, reason: str) -> None:
        """Close the connection after what is queued; nothing more is read from it."""
        session.closing = True
        self.actions.append(Close(session.conn, reason))

    def submit(self, job_id: int, job: Callable[[], Any], lane: Lane) -> None:
        self.actions.append(Submit(job_id, job, lane))

    def new_id(self) -> int:
        """A fresh key for a job or a read."""
        return next(self._ids)

    def take(self) -> list[Action]:
        """Everything said since the last take (the engine returns it to the backend)."""
        out, self.actions = self.actions, []
        return out


def retry_ms(seconds: float) -> int:
    """A wait in seconds as an Error's ``retry_after_ms``: rounded up (at least 1 ms, so a
    known wait is never read as "not known"), at most the u32's largest."""
    return min(2**32 - 1, max(1, math.ceil(seconds * 1000)))
