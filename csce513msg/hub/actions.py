"""What the engine asks a backend to do: the only outputs of the hub.

Actions are imperatives. Performing one never blocks and never calls back into
the engine (see the engine contract in shared/STYLE.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ConnId = int  # chosen by the backend, unique for the server's lifetime


@dataclass(slots=True)
class Write:
    """Append ``data`` to the connection's outbound queue. Not frozen: one is made for
    every frame sent (a group's message, one per member), and a frozen one costs 2-3x
    to build (CONTRIBUTING.md, "The per-message path")."""

    conn: ConnId
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Stop reading, drain the queue for at most the close timeout, then close."""

    conn: ConnId
    reason: str  #: for the server log


@dataclass(frozen=True, slots=True)
class Abort:
    """Close now, dropping whatever is queued."""

    conn: ConnId
    reason: str  #: for the server log


class Lane(enum.Enum):
    """Where a backend runs a job off its loop."""

    STORE = "store"  #: one thread that owns the database: storage batches, one at a time, in order
    HASH = "hash"  #: a small pool at the lowest priority: password checks
    FILE = "file"  #: one thread for the bytes of file transfers (1.6): never the loop, never the store's


@dataclass(frozen=True, slots=True)
class Submit:
    """Run ``job`` off the loop in ``lane``; its result comes
    back through ``engine.job_done(job_id, result, now)``: a storage batch in the
    ``store`` lane, a password check in the ``hash`` lane."""

    job_id: int
    job: Callable[[], Any]
    lane: Lane


Action = Write | Close | Abort | Submit
