"""Six interchangeable I/O strategies behind one engine (see docs/backends.md).

``BACKENDS`` names them in teaching order; ``load(name)`` returns a module with
``serve(engine, config, announce)`` (``announce(name, listener)`` prints the
banner once the server listens) or raises ``BackendUnavailable`` with the
reason (the CLI exits with status 2 and prints it).
"""

from __future__ import annotations

import importlib
import select
import sys
from types import ModuleType

BACKENDS = ("threads", "select", "poll", "epoll", "asyncio", "uvloop")
DESCRIPTIONS = {
    "threads": "socketserver, a reader and a writer thread per connection",
    "select": "one thread, select() over fd bitmaps (stops at FD_SETSIZE=1024)",
    "poll": "one thread, poll() over a list of every socket",
    "epoll": "one thread, epoll: the kernel keeps the interest list (Linux)",
    "asyncio": "the standard library's event loop and Protocol callbacks",
    "uvloop": "the asyncio backend on uvloop's C loop (pip install csce513msg[fast])",
}


class BackendUnavailable(Exception):  # noqa: N818 - a condition of the machine, not a fault; public (CLI, tests)
    """The backend cannot run on this machine; the message says why."""


def default_backend() -> str:
    """epoll where the platform has it, else select."""
    return "epoll" if hasattr(select, "epoll") else "select"


def load(name: str) -> ModuleType:
    """Return the backend module called ``name``."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "epoll" and not hasattr(select, "epoll"):
        raise BackendUnavailable(f"epoll is Linux-only; this is {sys.platform}: try poll or select")
    if name == "poll" and not hasattr(select, "poll"):
        raise BackendUnavailable(f"poll is not available on {sys.platform}: try select")
    module = importlib.import_module(f"{__name__}.{name}_backend")
    reason = module.available() if hasattr(module, "available") else None
    if reason:
        raise BackendUnavailable(reason)
    return module
