"""The client: a pure session (``session``) under thin drivers: the blocking API
(``blocking``) and the command-line loop (``terminal``, with ``mux``)."""

from .blocking import Client, ConnectionClosed, ServerError
from .session import ClientSession, ClientState

__all__ = ["Client", "ClientSession", "ClientState", "ConnectionClosed", "ServerError"]
