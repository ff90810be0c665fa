"""The hub's limits. Every one is a server flag (see ``msgsrv serve --help``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Limits and time constants of the chat core, with their defaults."""

    server_name: str = "csce513msg"
    max_frame: int = 65536  #: largest header + body accepted from a client, bytes
    max_text: int = 16384  #: largest message body, bytes
    window: int = 64  #: deliveries a client may leave unacknowledged (advertised)
    idle_timeout: float = 90.0  #: seconds of silence before a connection is closed
    rate: float = 500.0  #: requests per second per connection, sustained
    burst: int = 1000  #: requests a connection may send at once before the rate applies
    new_device_history: int = 100  #: a device's first catch-up starts this many messages back per stream
