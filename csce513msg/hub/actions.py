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
    #: a storage batch of a store that never waits on the disk (``Store.on_loop``): a loop runs it
    #: itself at the end of its pass, no thread hand-off; a backend with no pass (threads) runs it
    #: in the ``store`` lane. Never in flight together with a ``store`` job (the mailroom's one slot)
    LOOP = "loop"
    HASH = "hash"  #: a small pool at the lowest priority: password checks
    FILE = "file"  #: one thread for the bytes of file transfers (1.6): never the loop, never the store's


@dataclass(frozen=True, slots=True)
class Submit:
    """Run ``job`` in ``lane`` (off the loop, but for ``loop``); its result comes
    back through ``engine.job_done(job_id, result, now)``: a storage batch in the
    ``store`` or ``loop`` lane, a password check in the ``hash`` lane."""

    job_id: int
    job: Callable[[], Any]
    lane: Lane


Action = Write | Close | Abort | Submit
