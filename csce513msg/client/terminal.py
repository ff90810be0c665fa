"""The command-line client's event loop: keyboard and socket in ONE thread.

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

import dataclasses
import enum
import itertools
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from ..paths import client_config_dir
from ..protocol import (
    WAITING_CAP,
    Deliver,
    Error,
    ErrorCode,
    HistoryEnd,
    LoginOk,
    Message,
    Presence,
    Receipt,
    ReceiptState,
    RemoteProtocolError,
    Send,
    Welcome,
    WhoReply,
)
from .mux import MUXES, Mux
from .sanitize import inert, inert_name
from .session import ClientSession, ClientState
from .tls import TrustError
from .tls import wrap as wrap_tls

RECONNECT_FOR = 30.0  #: after end of input, seconds to keep trying to reconnect before giving up
BUSY = (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_FULL)  #: refusals of a login worth trying again later

HELP = """commands:
  /msg USER TEXT   send TEXT to USER (later plain lines go to USER too)
  /who             list who is online
  /history USER [N] the last N messages with USER (default 20)
  /help            this help
  /quit            leave (after the server has answered what you sent)
  TEXT             send to your last conversation partner"""


class Outcome(enum.Enum):
    """What reading from the server means for the run."""

    OK = "ok"  #: go on
    LOST = "lost"  #: the connection is gone, or the server too busy to log in: reconnect later
    FATAL = "fatal"  #: nothing more to do (never got in, a refused login, a broken stream): exit


class Terminal:
    """Prints events, one line each (or one JSON object each with ``--json``)."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def show(self, human: str, /, **event: object) -> None:
        line = json.dumps(event, ensure_ascii=False) if self.as_json else human
        self.out.write(line + "\n")
        self.out.flush()


def _clock(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6).strftime("%H:%M:%S")


def _count_waiting(waiting: int) -> str:
    """LoginOk.waiting in words: the server counts no further than WAITING_CAP, so that
    value means "that many or more" (docs/protocol.md, LoginOk)."""
    if waiting >= WAITING_CAP:
        return f"{WAITING_CAP}+ messages"
    return f"{waiting} message" + ("" if waiting == 1 else "s")


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error {code}"


class ChatClient:
    """The loop's state: the session, what we sent, and how the run is going."""

    def __init__(self, sock: socket.socket, session: ClientSession, term: Terminal) -> None:
        self.sock = sock
        self.session = session
        self.term = term
        self.partner: str | None = None  # where a plain line goes
        self.sent: dict[int, tuple[str, str]] = {}  # request id -> (recipient, text)
        self.shown: dict[int, tuple[str, str]] = {}  # message id -> (recipient, text), lately sent
        self.commands: list[str] = []  # lines read before the login finished
        self.failures = 0
        self.input_done = False
        self.finished = False
        self.last_send = time.monotonic()
        self.online = True  # False between a lost connection and the next one
        self.ever_ready = False  # logged in once: a lost connection is worth reconnecting
        self.retry_at = 0.0  # when to try to reconnect
        self.lost_at = 0.0  # when the connection was lost (0: it is up)
        self.backoff = 0.5  # the longest wait before the next attempt (drawn at random), doubling up to 5
        self.resend: list[Send] = []  # unacknowledged sends of the last connection
        self.server_key = ""  # "host:port", under which the device token is kept
        self.busy = False  # the server refused the login as busy: retrying quietly until a LoginOk

    def unacknowledged(self) -> list[Send]:
        """Sends the server has not answered: they go again, with the same client ids."""
        return [m for m in self.session.pending.values() if isinstance(m, Send)]

    def resend_unacknowledged(self) -> None:
        """After a reconnect and login: the server recognises what it had already stored."""
        for send in self.resend:
            target_text = self.sent.pop(send.request_id, (send.target, send.body.decode(errors="replace")))
            rid = self.session.request(dataclasses.replace(send, request_id=0))
            self.sent[rid] = target_text
        self.resend = []

    # ---- from the server --------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        t = self.term
        if isinstance(msg, HistoryEnd):
            note = f"({msg.count} earlier messages" + (f", from #{msg.first})" if msg.count else ")")
            t.show(f"  {note}", event="history_end", stream=msg.stream, count=msg.count, first=msg.first)
        elif isinstance(msg, Deliver):
            text = msg.body.decode(errors="replace")
            if not msg.request_id:  # new mail, not a page of history
                self.partner = msg.sender
            t.show(
                f"[{_clock(msg.time_us)}] {inert_name(msg.sender)}: {inert(text)}",
                event="deliver",
                sender=msg.sender,
                to=msg.target,
                text=text,
                id=msg.message_id,
                time_us=msg.time_us,
                stream=msg.stream,
                position=msg.position,
                history=bool(msg.request_id),
            )
        elif isinstance(msg, Receipt):
            if msg.request_id:
                to, text = self.sent.pop(msg.request_id, ("?", ""))
                self.shown[msg.message_id] = (to, text)  # a later "delivered" names it
                if len(self.shown) > 10_000:
                    self.shown.pop(next(iter(self.shown)))
            else:  # a later state of a message sent before (perhaps by an earlier run)
                to, text = self.shown.get(msg.message_id, (msg.stream, f"message #{msg.message_id}"))
            state = (
                ReceiptState(msg.state).name.lower() if msg.state in ReceiptState._value2member_map_ else str(msg.state)
            )
            shown = f"{state} ({msg.detail})" if msg.detail else state
            t.show(
                f"[{_clock(msg.time_us)}] you -> {inert_name(to)}: {inert(text)}  [{inert(shown)}]",
                event="receipt",
                to=to,
                state=state,
                detail=msg.detail,
                id=msg.message_id,
                request=msg.request_id,
                position=msg.position,
            )
        elif isinstance(msg, Error):
            name = _code_name(msg.code)
            self.sent.pop(msg.request_id, None)
            if msg.request_id or msg.code != ErrorCode.SHUTTING_DOWN:
                self.failures += 1
            human = f"! {name}: {inert(msg.message)}"
            t.show(human, event="error", code=name, message=msg.message, request=msg.request_id)
        elif isinstance(msg, Presence):
            what = "is online" if msg.online else "went offline"
            t.show(f"* {inert_name(msg.user)} {what}", event="presence", user=msg.user, online=bool(msg.online))
        elif isinstance(msg, WhoReply):
            names = [_who_entry(u, n, r) for u, n, r in itertools.zip_longest(msg.users, msg.sessions, msg.roles)]
            sessions = dict(zip(msg.users, msg.sessions, strict=False))
            t.show("online: " + inert_name(", ".join(names)), event="who", users=list(msg.users), sessions=sessions)
        elif isinstance(msg, LoginOk):
            away = f"; {_count_waiting(msg.waiting)} arrived while you were away" if msg.waiting else ""
            t.show(
                f"logged in as {inert_name(msg.user)} ({inert_name(msg.role or 'student')}){away}; /help for commands",
                event="login", user=msg.user, role=msg.role, waiting=msg.waiting,
                waiting_or_more=msg.waiting >= WAITING_CAP,
            )  # fmt: skip
        elif isinstance(msg, Welcome):
            t.show(
                f"connected to {inert_name(msg.server)} (protocol {msg.version_major}.{msg.version_minor})",
                event="welcome",
                server=msg.server,
                version=f"{msg.version_major}.{msg.version_minor}",
            )

    # ---- from the keyboard -------------------------------------------------------------

    def on_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if self.session.state is not ClientState.READY:
            self.commands.append(line)  # run once the login is through
            return
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd == "/msg":
                to, _, text = rest.strip().partition(" ")
                if not to or not text.strip():
                    return self.local_error("usage: /msg USER TEXT")
                self.send(to, text.strip())
            elif cmd == "/who":
                self.session.who()
            elif cmd == "/history":
                who, _, count = rest.strip().partition(" ")
                if not who or (count and not count.strip().isdigit()):
                    return self.local_error("usage: /history USER [N]")
                self.session.history(who, int(count) if count.strip() else 20)
            elif cmd == "/help":
                self.term.show(HELP, event="help", text=HELP)
            elif cmd == "/quit":
                self.input_done = True
            else:
                self.local_error(f"unknown command {cmd}: /help lists them")
        elif self.partner is None:
            self.local_error("no conversation yet: use /msg USER TEXT")
        else:
            self.send(self.partner, line)

    def send(self, to: str, text: str) -> None:
        rid = self.session.send_text(to, text)
        self.sent[rid] = (to, text)
        self.partner = to

    def local_error(self, message: str) -> None:
        self.failures += 1
        self.term.show(f"! {message}", event="error", code="local", message=message, request=0)

    def ready_to_exit(self) -> bool:
        """End of input, and every request answered."""
        ready = self.session.state is ClientState.READY
        return ready and self.input_done and not self.commands and not self.session.pending


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
    term: Terminal

    def open(self) -> socket.socket:
        """Create a socket and connect (TLS handshake included); raises OSError or TrustError."""
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self.tls is not None:
            sock, note = wrap_tls(sock, self.host, self.port, expected=self.tls.fingerprint, ca=self.tls.ca)
            self.term.show(f"tls: {note}", event="tls", message=note)
        sock.setblocking(False)
        return sock


def run(
    host: str,
    port: int,
    user: str,
    password: str,
    mux_name: str,
    as_json: bool,
    tls: TlsOptions | None = None,
    out: TextIO = sys.stdout,
    register: bool = False,
) -> int:
    """Run the client until /quit or end of input; return the exit status."""
    term = Terminal(out, as_json)
    connector = Connector(host, port, tls, term)
    try:
        sock = connector.open()  # create a socket, connect
    except TrustError as exc:
        term.show(f"! REFUSED: {exc.args[0]}", event="error", code="untrusted", message=str(exc.args[0]), request=0)
        return 1
    except ssl.SSLError as exc:
        hint = " (is the server started with --tls?)"
        text = f"TLS handshake with {host}:{port} failed: {exc.reason or exc}{hint}"
        term.show(f"! {text}", event="error", code="tls", message=text, request=0)
        return 1
    except OSError as exc:
        text = f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        term.show(f"! {text}", event="error", code="connect", message=text, request=0)
        return 1
    device = device_id(user.lower())
    server_key = f"{host}:{port}"
    session = ClientSession(
        user, password=password, register=register, presence=True, client="msg", device_id=device,
        device_token=load_token(server_key, user.lower()), client_msg_seed=time.time_ns() // 1000,
    )  # fmt: skip
    chat = ChatClient(sock, session, term)
    chat.server_key = server_key
    mux: Mux = MUXES[mux_name]()
    mux.register(sock.fileno())
    stdin_fd = _stdin_fd()
    stdin_always_ready = not mux.register(stdin_fd)  # a regular file: epoll refuses it
    buffered = b""
    while not chat.finished:
        timeout = _timeout(chat, stdin_always_ready)
        ready = mux.wait(timeout)  # the one place we block
        if chat.online and chat.sock.fileno() in ready:
            outcome = _receive(chat)
            if outcome is Outcome.FATAL:
                break
            if outcome is Outcome.LOST:
                _lost(chat, mux)
        if (stdin_fd in ready or stdin_always_ready) and not chat.input_done:
            data = os.read(stdin_fd, 65536)
            if not data:
                chat.input_done = True
                data = b"\n" if buffered else b""
            *lines, buffered = (buffered + data).split(b"\n")
            for raw in lines:
                chat.on_line(raw.decode(errors="replace"))
        if not chat.online:
            if not _reconnect(chat, connector, mux):
                break
            continue
        if chat.session.state is ClientState.READY:
            chat.resend_unacknowledged()
            pending, chat.commands = chat.commands, []
            for line in pending:
                chat.on_line(line)
            interval = chat.session.keepalive_interval()
            if interval and time.monotonic() - chat.last_send > interval:
                chat.session.ping()
        if not _transmit(chat):
            _lost(chat, mux)
        elif chat.ready_to_exit():
            chat.finished = True
    if chat.online:
        chat.sock.close()
    return 0 if chat.finished and chat.failures == 0 else 1


def _lost(chat: ChatClient, mux: Mux) -> None:
    """The connection broke: keep what was not acknowledged, and try again soon."""
    mux.unregister(chat.sock.fileno())
    chat.sock.close()
    chat.online = False
    chat.retry_at = time.monotonic() + random.uniform(0, chat.backoff)  # jitter: not all at once
    chat.backoff = min(5.0, chat.backoff * 2)  # back to 0.5 s at the next LoginOk
    chat.lost_at = chat.lost_at or time.monotonic()
    if chat.busy:
        return  # said once already: "the server is busy"
    unacked = len(chat.unacknowledged())
    text = "connection lost: reconnecting" + (f" ({unacked} messages to resend)" if unacked else "")
    chat.term.show(f"! {text}", event="reconnecting", message=text)


def _reconnect(chat: ChatClient, connector: Connector, mux: Mux) -> bool:
    """Try once when due; False when it is time to give up (see RECONNECT_FOR)."""
    now = time.monotonic()
    if now < chat.retry_at:
        return True
    if chat.input_done and now - chat.lost_at > RECONNECT_FOR:
        chat.local_error(f"no connection for {RECONNECT_FOR} s: giving up")
        return False
    try:
        sock = connector.open()
    except TrustError as exc:
        chat.term.show(f"! REFUSED: {exc.args[0]}", event="error", code="untrusted", message=str(exc.args[0]))
        chat.failures += 1
        return False
    except OSError:  # still down (ssl.SSLError included): try again later, a little later each time
        chat.retry_at = now + random.uniform(0, chat.backoff)
        chat.backoff = min(5.0, chat.backoff * 2)
        return True
    old = chat.session
    chat.resend = chat.unacknowledged()
    registered = chat.ever_ready or not old.register_first  # a busy server may have refused the Register
    chat.session = ClientSession(  # registered already, if that was asked: now a login
        old.user, password=old.password, register=not registered, presence=True, client="msg",
        device_id=old.device_id, device_token=old.device_token, client_msg_seed=old.next_client_msg_id,
    )  # fmt: skip
    chat.sock, chat.online, chat.lost_at = sock, True, 0.0
    mux.register(sock.fileno())
    if not chat.busy:
        chat.term.show("reconnected", event="reconnected", message="reconnected")
    return True


def _who_entry(user: str, sessions: int | None, role: str | None) -> str:
    extra = [f"{sessions} sessions"] if sessions and sessions > 1 else []
    extra += [role] if role == "instructor" else []
    return f"{user} ({', '.join(extra)})" if extra else user


def device_id(user: str) -> str:
    """This machine's device id for ``user``: made once, kept in the client config directory."""
    path = client_config_dir() / "devices.json"
    try:
        devices = json.loads(path.read_text())
    except (OSError, ValueError):
        devices = {}
    if user not in devices:
        devices[user] = uuid.uuid4().hex
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(devices, indent=2, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home: this run is a new device each time
    return str(devices[user])


def load_token(server: str, user: str) -> str:
    """The device token this machine keeps for ``user`` on ``server`` ("" if none yet)."""
    try:
        tokens = json.loads((client_config_dir() / "tokens.json").read_text())
        return str(tokens.get(server, {}).get(user, ""))
    except (OSError, ValueError, AttributeError):
        return ""


def save_token(server: str, user: str, token: str) -> None:
    """Keep ``token`` for the next logins, readable by this user only (mode 0600): with it,
    this device logs in even while others' wrong guesses throttle the account."""
    path = client_config_dir() / "tokens.json"
    try:
        tokens = json.loads(path.read_text())
    except (OSError, ValueError):
        tokens = {}
    if not isinstance(tokens.get(server), dict):
        tokens[server] = {}
    if tokens[server].get(user) == token:
        return
    tokens[server][user] = token
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file made earlier with looser bits, too
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(tokens, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home: the next login is an ordinary one


def _timeout(chat: ChatClient, stdin_always_ready: bool) -> float | None:
    if not chat.online:
        return max(0.0, chat.retry_at - time.monotonic())
    if stdin_always_ready and not chat.input_done and chat.session.state is ClientState.READY:
        return 0.0  # a file has more lines now
    interval = chat.session.keepalive_interval()
    if interval is None:
        return None
    return max(0.0, chat.last_send + interval - time.monotonic())


def _receive(chat: ChatClient) -> Outcome:
    """Read from the server and print what came; say how the run goes on."""
    try:
        data = chat.sock.recv(65536)
        while isinstance(chat.sock, ssl.SSLSocket) and chat.sock.pending():
            data += chat.sock.recv(65536)  # decrypted bytes select() cannot see
    except (BlockingIOError, ssl.SSLWantReadError):
        return Outcome.OK
    except OSError as exc:
        text = f"connection lost: {exc.strerror or exc}"
        chat.term.show(f"! {text}", event="closed", message=text)
        return Outcome.LOST if chat.ever_ready else Outcome.FATAL
    if not data:
        text = "the server closed the connection"
        if chat.session.state is ClientState.AWAIT_WELCOME:
            text += " before its Welcome (does it expect TLS? try --tls)"
        chat.term.show(f"! {text}", event="closed", message=text)
        if not chat.ever_ready:
            chat.failures += 1
            return Outcome.FATAL  # never got in: nothing to come back to
        return Outcome.LOST
    try:
        events = chat.session.receive_data(data)
    except RemoteProtocolError as exc:
        chat.term.show(f"! {exc.message}", event="error", code=exc.code.name.lower(), message=exc.message, request=0)
        chat.failures += 1
        return Outcome.FATAL
    for msg in events:
        if isinstance(msg, Error) and msg.code in BUSY and chat.session.state is not ClientState.READY:
            if not chat.busy:  # once per stretch of refusals, not once per attempt
                text = f"the server is busy ({_code_name(msg.code)}): trying again shortly"
                chat.term.show(f"! {text}", event="busy", message=text)
                chat.busy = True
            return Outcome.LOST  # not a failure: reconnect and log in again, later (with jitter)
        chat.on_message(msg)
        if isinstance(msg, Error) and chat.session.state is not ClientState.READY:
            return Outcome.FATAL  # the login was refused: nothing more to do
        if isinstance(msg, Error) and msg.code == ErrorCode.ACCOUNT_CHANGED:
            chat.ever_ready = False  # the password changed or the account is gone: do not log in again
        if isinstance(msg, LoginOk):
            chat.ever_ready = True
            chat.busy = False
            chat.backoff = 0.5
            if msg.device_token and chat.server_key:
                save_token(chat.server_key, msg.user, msg.device_token)
    return Outcome.OK


def _transmit(chat: ChatClient) -> bool:
    data = chat.session.data_to_send()
    if not data:
        return True
    try:
        chat.sock.setblocking(True)  # small requests: let the kernel take them whole
        chat.sock.sendall(data)
        chat.sock.setblocking(False)
    except OSError as exc:
        chat.term.show(f"! send failed: {exc.strerror}", event="error", code="connection", message=str(exc), request=0)
        chat.failures += 1
        return False
    chat.last_send = time.monotonic()
    return True


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
