"""Reproductions of the defects a probe of a running server found (issue 9), each
giving the figure that shows the defect: memory, time, refused logins.

    python -m benchmarks.probe NAME [--tree DIR] [--backend B]

``--tree`` runs the server from another source tree (e.g. a ``git worktree`` of the
commit before a fix), so the same reproduction gives the figure before and after.
The client side always comes from this tree: it speaks the protocol, and newer fields
are trailing fields an older server ignores (docs/protocol.md, section 3).

Every probe talks only to 127.0.0.1, bounds its loops in count and time, and stops
only the processes it started. Each module here registers its probes with ``probe``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Probe = Callable[..., dict[str, Any]]
PROBES: dict[str, tuple[Probe, str]] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    """Register a probe: ``fn(server_args) -> figures`` (see ``__main__``)."""

    def register(fn: Probe) -> Probe:
        PROBES[name] = (fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register
