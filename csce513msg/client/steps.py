"""The steps both client loops take: connect, receive, send, lose and regain the connection.

The teaching loop (``client/terminal.py``) calls them from its select/poll/epoll loop;
the interactive mode (``client/interactive.py``) from asyncio callbacks. Each works on
the ``ChatClient`` (``client/chat.py``) and shows what happens through its View.
"""

from __future__ import annotations

import enum
import random
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..protocol import Error, ErrorCode, LoginOk, RemoteProtocolError
from .chat import ChatClient, code_name, plural
from .files import save_token
from .privacy import lost as lost_keys
from .sanitize import inert
from .session import ClientSession, ClientState
from .sharing import paused, resume_all
from .tls import TrustError
from .tls import wrap as wrap_tls
from .view import Style, View

RECONNECT_FOR = 30.0  #: after end of input, seconds to keep trying to reconnect before giving up
BUSY = (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_FULL)  #: refusals of a login worth trying again later


class Outcome(enum.Enum):
    """What reading from the server means for the run."""

    OK = "ok"  #: go on
    LOST = "lost"  #: the connection is gone, or the server too busy to log in: reconnect later
    FATAL = "fatal"  #: nothing more to do (never got in, a refused login, a broken stream): exit


@dataclass(frozen=True)
class TlsOptions:
    """``msg --tls``: how to trust the server (see ``client.tls``)."""

    fingerprint: str | None = None
    ca: Path | None = None


@dataclass
class Connector:
    """How to (re)connect: the address, and TLS trust if any."""

    host: str
    port: int
    tls: TlsOptions | None
    view: View

    note: str = ""  #: what the last TLS handshake found (shown by ``show_note``)

    def open(self) -> socket.socket:
        """Create a socket and connect (TLS handshake included); raises OSError or TrustError.
        It may run on another thread (the interactive mode's executor): it shows nothing."""
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self.tls is not None:
            sock, self.note = wrap_tls(sock, self.host, self.port, expected=self.tls.fingerprint, ca=self.tls.ca)
        sock.setblocking(False)
        return sock

    def show_note(self) -> None:
        """Show what the TLS handshake found (on the loop's thread), once."""
        if self.note:
            self.view.show(f"tls: {self.note}", event="tls", message=self.note)
            self.note = ""


class Watcher(Protocol):
    """How a loop watches a socket for reading: a mux, or the asyncio loop's add_reader."""

    def register(self, fd: int) -> object: ...
    def unregister(self, fd: int) -> object: ...


def receive(chat: ChatClient) -> Outcome:
    """The socket is readable: read, hand the bytes to the session, show what came."""
    assert chat.sock is not None
    try:
        data = chat.sock.recv(65536)
        while isinstance(chat.sock, ssl.SSLSocket) and chat.sock.pending():
            data += chat.sock.recv(65536)  # decrypted bytes select() cannot see
    except (BlockingIOError, ssl.SSLWantReadError):
        return Outcome.OK
    except OSError as exc:
        text = f"connection lost: {exc.strerror or exc}"
        chat.view.show(f"! {text}", style=Style.ERROR, event="closed", message=text)
        return Outcome.LOST if chat.ever_ready else Outcome.FATAL
    if not data:
        text = "the server closed the connection"
        if chat.session.state is ClientState.AWAIT_WELCOME:
            text += " before its Welcome (does it expect TLS? try --tls)"
        chat.view.show(f"! {text}", style=Style.ERROR, event="closed", message=text)
        if not chat.ever_ready:
            chat.failures += 1
            return Outcome.FATAL  # never got in: nothing to come back to
        return Outcome.LOST
    try:
        events = chat.session.receive_data(data)
    except RemoteProtocolError as exc:
        chat.view.show(f"! {inert(exc.message)}", style=Style.ERROR, event="error", code=exc.code.name.lower(),
                       message=exc.message, request=0)  # fmt: skip
        chat.failures += 1
        return Outcome.FATAL
    for msg in events:
        if isinstance(msg, Error) and msg.code in BUSY and chat.session.state is not ClientState.READY:
            if not chat.busy:  # once per stretch of refusals, not once per attempt
                text = f"the server is busy ({code_name(msg.code)}): trying again shortly"
                chat.view.show(f"! {text}", style=Style.ERROR, event="busy", message=text)
                chat.busy = True
            return Outcome.LOST  # not a failure: reconnect and log in again, later (with jitter)
        chat.on_message(msg)
        if isinstance(msg, Error) and chat.session.state is not ClientState.READY:
            return Outcome.FATAL  # the login was refused: nothing more to do
        if isinstance(msg, Error) and msg.code == ErrorCode.ACCOUNT_CHANGED:
            chat.ever_ready = False  # the password changed or the account is gone: do not log in again
        if isinstance(msg, LoginOk) and chat.session.keys_error:  # the password opened the account, not the keys
            chat.view.show(f"! {inert(chat.session.keys_error)}", style=Style.ERROR, event="error", code="keys",
                           message=chat.session.keys_error, request=0)  # fmt: skip
            chat.failures += 1
            return Outcome.FATAL
        if isinstance(msg, LoginOk):
            logged_in(chat, msg)
    return Outcome.OK


def logged_in(chat: ChatClient, msg: LoginOk) -> None:
    chat.ever_ready = True
    chat.busy = False
    chat.backoff = 0.5
    if msg.device_token and chat.server_key:
        save_token(chat.server_key, msg.user, msg.device_token)
    if chat.live:
        chat.session.who()  # who is online: shown, and names for Tab to complete
    chat.resend_unacknowledged()
    resume_all(chat)  # transfers a lost connection paused
    pending, chat.commands = chat.commands, []
    for line in pending:
        chat.on_line(line)
    chat.keep_waiting()


def transmit(chat: ChatClient, blocking: bool = True) -> bool:
    """Send what the session queued; False if the connection broke.

    ``blocking``: hand it all to the kernel, waiting if its send buffer is full (the
    teaching loop: requests are small, and it waits only to read). Else send what the
    kernel takes now and keep the rest in ``chat.backlog`` for the next call (the
    interactive mode calls again when the socket is writable: typing never waits)."""
    data = chat.backlog + chat.session.data_to_send()
    chat.backlog = b""
    if not data or chat.sock is None:
        return True
    try:
        if blocking:
            chat.sock.setblocking(True)
            chat.sock.sendall(data)
            chat.sock.setblocking(False)
        else:
            try:
                sent = chat.sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError):
                sent = 0
            chat.backlog = data[sent:]
    except OSError as exc:
        chat.view.show(f"! send failed: {exc.strerror}", style=Style.ERROR, event="error", code="connection",
                       message=str(exc), request=0)  # fmt: skip
        return False
    chat.last_send = time.monotonic()
    return True


def lost(chat: ChatClient, watcher: Watcher) -> None:
    """The connection broke: keep what was not acknowledged, and try again soon."""
    assert chat.sock is not None
    watcher.unregister(chat.sock.fileno())
    chat.sock.close()
    chat.online = False
    chat.retry_at = time.monotonic() + random.uniform(0, chat.backoff)  # jitter: not all at once
    chat.backoff = min(5.0, chat.backoff * 2)  # back to 0.5 s at the next LoginOk
    chat.lost_at = chat.lost_at or time.monotonic()
    seen = {s.client_msg_id for s in chat.resend}  # a loss before the login finished: keep the earlier ones
    chat.resend += [s for s in chat.unacknowledged() if s.client_msg_id not in seen]
    lost_keys(chat)  # messages that waited for the key directory: queued
    chat.keep_waiting()
    if chat.changing():  # a group change whose answer will never come: run what waited for it after the login
        chat.view.show("! a group change was interrupted by the lost connection: check it with /groups",
                       style=Style.ERROR, event="error", code="local", message="group change interrupted",
                       request=0)  # fmt: skip
    chat.group_requests.clear()
    paused(chat)
    chat.run_held()  # in the order typed: a message queued, a command answered "not connected"
    if chat.history_for or chat.deferred_more:  # a page the server will never send now
        chat.history_for.clear()
        chat.deferred_more = 0
        chat.view.show("! /history interrupted by the lost connection: ask again", style=Style.ERROR,
                       event="error", code="local", message="history interrupted", request=0)  # fmt: skip
    if chat.busy:
        return  # said once already: "the server is busy"
    unacked = len(chat.waiting())
    text = "connection lost: reconnecting" + (f" ({plural(unacked, 'message')} to send)" if unacked else "")
    chat.view.show(f"! {text}", style=Style.ERROR, event="reconnecting", message=text)


def due_to_reconnect(chat: ChatClient) -> bool | None:
    """True when a reconnect attempt is due; None when it is time to give up."""
    now = time.monotonic()
    if chat.input_done and now - chat.lost_at > RECONNECT_FOR:
        chat.local_error(f"no connection for {RECONNECT_FOR:.0f} s: giving up")
        return None
    return now >= chat.retry_at


def reconnected(chat: ChatClient, sock: socket.socket | BaseException, watcher: Watcher) -> bool:
    """The result of a reconnect attempt (a socket, or why it failed); False to give up."""
    if isinstance(sock, TrustError):
        chat.view.show(f"! REFUSED: {sock.args[0]}", style=Style.ERROR, event="error", code="untrusted",
                       message=str(sock.args[0]))  # fmt: skip
        chat.failures += 1
        return False
    if isinstance(sock, BaseException):  # still down (ssl.SSLError included): later, a little later each time
        chat.retry_at = time.monotonic() + random.uniform(0, chat.backoff)
        chat.backoff = min(5.0, chat.backoff * 2)
        return True
    old = chat.session
    registered = chat.ever_ready or not old.register_first  # a busy server may have refused the Register
    chat.session = ClientSession(  # registered already, if that was asked: now a login
        old.user, password=old.password, register=not registered, presence=True, groups=True, client="msg",
        device_id=old.device_id, device_token=old.device_token, client_msg_seed=old.next_client_msg_id,
        secure=old.secure, keys=old.keys,  # the keys opened once: a reconnect keeps them (and re-reads devices)
    )  # fmt: skip
    if old.secure is not None:
        old.secure.fetched.clear()
    chat.sock, chat.online, chat.lost_at = sock, True, 0.0
    chat.backlog = b""  # the old connection's bytes: what they carried is resent after the login
    watcher.register(sock.fileno())
    if not chat.busy:
        chat.view.show("reconnected", event="reconnected", message="reconnected")
    return True


def keepalive(chat: ChatClient) -> None:
    """Ping when the connection has been quiet for a third of the server's idle timeout."""
    interval = chat.session.keepalive_interval()
    ready = chat.online and chat.session.state is ClientState.READY
    if ready and interval and time.monotonic() - chat.last_send > interval:
        chat.session.ping()


def next_timeout(chat: ChatClient) -> float | None:
    """How long a loop may wait before the client has something to do by itself."""
    if not chat.online:
        return max(0.0, chat.retry_at - time.monotonic())
    interval = chat.session.keepalive_interval()
    if interval is None:
        return None
    return max(0.0, chat.last_send + interval - time.monotonic())
