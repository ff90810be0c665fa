"""csce513Msg: a chat system for a class, and a lesson in I/O multiplexing.

The layers, from the wire inwards (see docs/design.md):

- ``protocol``: the wire format, sans-I/O (bytes in, typed messages out).
- ``hub``: the chat server's behaviour as a pure state machine (the engine).
- ``backends``: six interchangeable I/O strategies that move bytes for the engine.
- ``store``: what the server keeps across restarts (SQLite by default; in memory for tests).
- ``crypto``: password hashing and the TLS certificate (end-to-end encryption later).
- ``client``: a pure client session under the CLI's event loop and a blocking API.
- ``cli``: the ``msgsrv`` and ``msg`` commands.
"""

__version__ = "0.1.0"
