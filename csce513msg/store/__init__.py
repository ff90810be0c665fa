"""What the hub keeps between messages.

The foundation keeps it in memory (``MemoryStore``); the accounts issue adds an
SQLite store behind the same small interface, run on a storage thread.
"""

from .memory import MemoryStore

__all__ = ["MemoryStore"]
