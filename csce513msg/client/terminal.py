"""The teaching loop: keyboard and socket in ONE thread, multiplexed by hand.

``msg`` uses it when its input is a pipe or a file, or with ``--plain``; on a terminal
the interactive mode (``client/interactive.py``) does the same steps on prompt_toolkit's
asyncio loop. What the client does with a line or a message is in ``client/chat.py``;
this module is only the loop.

The client's steps: create a socket and connect; wait for the server's Welcome
(the acknowledgement); then loop::

    +--> mux.wait(timeout) --- blocks until a key line or server bytes arrive ---+
    |      stdin readable  -> read, split lines, run commands -> session queues  |
    |      socket readable -> recv, session.receive_data -> print events         |
    |      timeout         -> keep-alive Ping (a third of the idle timeout)      |
    +--- sock.send(session.data_to_send()) <-------------------------------------+

Nothing busy-waits: between events the process sleeps in the kernel. stdin may be
a terminal, a pipe or a file; at end of input the client waits until the server
has answered every request it sent, then exits (status 0 only if all succeeded).
A lost connection is retried (backing off to every 5 s, each wait drawn at random
up to the current step, so a class whose server restarted does not come back all
at once); so is a login the server is too busy to take (RATE_LIMITED, SERVER_FULL),
and whatever was typed meanwhile waits. After a reconnect and login, the sends the
server never confirmed go again with their client message ids, so the server stores
each once. The device token each LoginOk brings is kept (``tokens.json``, mode 0600)
and shown with the next logins: this device's logins are then throttled apart from
anyone guessing the account's password.
On Windows, where select() takes only sockets, one reader thread copying stdin
into a socket pair is the documented exception.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from .chat import ChatClient
from .mux import MUXES, Mux
from .session import ClientState
from .steps import Connector, Outcome, due_to_reconnect, keepalive, lost, next_timeout, receive, reconnected, transmit


class _StopRequestedError(Exception):
    """SIGTERM or SIGHUP (the terminal closed): leave as at the end of input."""


def _stop(signum: int, frame: object) -> None:
    raise _StopRequestedError


def run(chat: ChatClient, connector: Connector, mux_name: str) -> int:
    """Run the client until /quit or end of input; return the exit status. Whatever the
    server has not stored yet is kept on disk for the next run, however the run ends."""
    before = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(chat, connector, mux_name)
    except (_StopRequestedError, KeyboardInterrupt):
        return 1
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if chat.online and chat.sock is not None:
            chat.sock.close()
        chat.keep_waiting()  # what the server has not stored waits on disk for the next run


def _run(chat: ChatClient, connector: Connector, mux_name: str) -> int:
    assert chat.sock is not None
    mux: Mux = MUXES[mux_name]()
    mux.register(chat.sock.fileno())
    stdin_fd = _stdin_fd()
    stdin_always_ready = not mux.register(stdin_fd)  # a regular file: epoll refuses it
    buffered = b""
    while not chat.finished:
        ready = mux.wait(_timeout(chat, stdin_always_ready))  # the one place we block
        if chat.online and chat.sock.fileno() in ready:
            outcome = receive(chat)  # recv, decode, show
            if outcome is Outcome.FATAL:
                break
            if outcome is Outcome.LOST:
                lost(chat, mux)
        if (stdin_fd in ready or stdin_always_ready) and not chat.input_done:
            data = os.read(stdin_fd, 65536)
            if not data:
                chat.input_done = True
                data = b"\n" if buffered else b""
            *lines, buffered = (buffered + data).split(b"\n")
            for raw in lines:
                chat.on_line(raw.decode(errors="replace"))
            if chat.input_done and not stdin_always_ready:
                mux.unregister(stdin_fd)  # at its end (or after /quit) a pipe stays readable: it would spin
                stdin_always_ready = True  # (and is never read again: input_done)
        if not chat.online:
            due = due_to_reconnect(chat)
            if due is None:
                break  # end of input, and no connection for RECONNECT_FOR seconds
            if due:
                try:
                    sock: socket.socket | OSError = connector.open()
                except OSError as exc:  # ssl.SSLError and TrustError included
                    sock = exc
                connector.show_note()
                if not reconnected(chat, sock, mux):
                    break
            continue
        keepalive(chat)
        if not transmit(chat):  # sock.send: what the session queued
            lost(chat, mux)
        elif chat.ready_to_exit():
            chat.finished = True
    return 0 if chat.finished and chat.failures == 0 else 1


def _timeout(chat: ChatClient, stdin_always_ready: bool) -> float | None:
    if stdin_always_ready and chat.online and not chat.input_done and chat.session.state is ClientState.READY:
        return 0.0  # a file has more lines now
    return next_timeout(chat)


def _stdin_fd() -> int:
    """stdin's descriptor; on Windows, a socket fed by one reader thread."""
    if sys.platform != "win32":
        return sys.stdin.fileno()
    reader, writer = socket.socketpair()

    def pump() -> None:  # the documented exception: Windows select() takes only sockets
        for line in sys.stdin.buffer:
            writer.sendall(line)
        writer.close()

    threading.Thread(target=pump, daemon=True).start()
    return reader.fileno()
