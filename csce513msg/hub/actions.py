"""What the engine asks a backend to do: the only outputs of the hub.

Actions are imperatives. Performing one never blocks and never calls back into
the engine (see the engine contract in shared/STYLE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ConnId = int  # chosen by the backend, unique for the server's lifetime


@dataclass(frozen=True, slots=True)
class Write:
    """Append ``data`` to the connection's outbound queue."""

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


@dataclass(frozen=True, slots=True)
class Submit:
    """Run ``job`` off the loop in ``lane`` ("store" or "hash"); its result comes
    back through ``engine.job_done(job_id, result, now)``. Reserved: the accounts
    issue is its first user."""

    job_id: int
    job: Callable[[], Any]
    lane: str


Action = Write | Close | Abort | Submit
