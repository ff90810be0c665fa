"""What the server keeps: users, message streams, each device's cursors.

``interface`` defines the batch the hub hands over once per loop pass; ``memory``
and ``sqlite`` implement it (docs/storage.md).
"""

from .interface import Batch, BatchResult, DeliveredNote, Fetch, NewMessage, Store, StoredMessage
from .memory import MemoryStore

__all__ = ["Batch", "BatchResult", "DeliveredNote", "Fetch", "MemoryStore", "NewMessage", "Store", "StoredMessage"]
