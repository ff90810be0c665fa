"""uvloop: the asyncio backend, unchanged, on a loop written in C over libuv.

How it works. ``asyncio_backend`` runs as it is; only the loop underneath
changes: ``uvloop.new_event_loop()`` replaces the standard library's Python loop
with one written in Cython over libuv (the loop of Node.js). Protocol callbacks,
transports and ``call_soon`` behave the same, so not one line of the glue differs.

What it costs. The loop's own work (polling, buffering, scheduling callbacks)
moves from Python to C, so what remains per message is mostly the engine. It is
an extra dependency (``pip install csce513msg[fast]``), Linux and macOS only.

Where it stops. One thread, one core, like epoll and asyncio. The benchmark shows
how much of asyncio's cost was the loop (the gap to asyncio) and how much is ours
(the gap that stays to the bare relay).

Where it differs. Out of descriptors, libuv does not spin or log: it keeps one spare
descriptor, and on EMFILE closes it, accepts and closes every queued connection, and
opens it again (those clients see the connection end with no SERVER_FULL; our cap,
below the limit, normally answers first). Its ``write_eof`` queues the shutdown and
reports a failure through a callback, so it never raises in our write pass.
"""

from __future__ import annotations

from ..hub import EngineAPI
from . import asyncio_backend
from .common import Announce, BackendConfig

NAME = "uvloop"


def available() -> str | None:
    """Return why uvloop cannot be used here, or None if it can."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "uvloop is not installed: pip install 'csce513msg[fast]' (or pip install uvloop)"
    return None


def serve(engine: EngineAPI, config: BackendConfig, announce: Announce) -> None:
    """Run the asyncio backend on a uvloop loop."""
    import uvloop

    asyncio_backend.serve(engine, config, announce, loop_factory=uvloop.new_event_loop, name=NAME)
