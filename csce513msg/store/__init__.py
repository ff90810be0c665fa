"""What the server keeps: users, message streams, each device's cursors.

``interface`` defines the batch the hub hands over once per loop pass; ``memory``
and ``sqlite`` implement it (docs/storage.md).
"""

from .interface import (
    ROLES,
    TOKENS_PER_USER,
    Account,
    Batch,
    BatchResult,
    DeliveredNote,
    DeviceToken,
    Fetch,
    LoginInfo,
    LoginRead,
    NewMessage,
    Refused,
    Store,
    StoredMessage,
)
from .memory import MemoryStore

__all__ = [
    "ROLES",
    "TOKENS_PER_USER",
    "Account",
    "LoginInfo",
    "LoginRead",
    "Batch",
    "Refused",
    "BatchResult",
    "DeliveredNote",
    "DeviceToken",
    "Fetch",
    "MemoryStore",
    "NewMessage",
    "Store",
    "StoredMessage",
]
