"""Small wire-level helpers for the conformance suite (protocol only, no server internals)."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from csce513msg.client import Client, ServerError
from csce513msg.protocol import (
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LoginOk,
    Message,
    Ping,
    Pong,
    Welcome,
    decode,
    encode,
)

#: Every account the suite makes has this password; the servers run with --self-register.
PASSWORD = "conformance password"
_registered: set[tuple[str, int, str]] = set()


def connect(
    server: object, user: str | None = None, presence: bool = False, *, password: str = PASSWORD, **options: Any
) -> Client:
    """A client of ``server``, logged in as ``user`` if given: the first time a name is
    used it is registered over the wire (a taken name, e.g. after a restart on the same
    data directory, logs in). It shows repeated deliveries, so a server that delivers
    something twice is caught. ``options`` go to ``Client.connect`` (device_id, tls...)."""
    options.setdefault("drop_repeats", False)
    host, port = server.host, server.port  # type: ignore[attr-defined]
    client = Client.connect(host, port, presence=presence, **options)
    if user is None:
        return client
    key = (host, port, user.lower())
    try:
        if key in _registered:
            client.login(user, password)
        else:
            try:
                client.login(user, password, register=True)
            except ServerError as exc:
                if exc.code != ErrorCode.NAME_TAKEN:
                    raise
                client.login(user, password)
            _registered.add(key)
    except BaseException:
        client.close()
        raise
    return client


def register(server: object, user: str, password: str = PASSWORD, **options: Any) -> None:
    """Make the account ``user`` over the wire (if it is new), and leave."""
    connect(server, user, password=password, **options).close()


def wait_gone(watcher: Client, user: str, timeout: float = 10.0) -> None:
    """Wait until ``user`` is no longer online (the server has processed their close)."""
    deadline = time.monotonic() + timeout
    while user in watcher.who():
        assert time.monotonic() < deadline, f"{user} still online after {timeout} s"
        time.sleep(0.02)


class RawConn:
    """A bare socket that speaks frames, for tests of the handshake and bad input."""

    def __init__(self, server: object, timeout: float = 10.0, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:  # before connect, so the advertised TCP window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((server.host, server.port))  # type: ignore[attr-defined]
        self.decoder = FrameDecoder(1 << 24)
        self.inbox: list[Message] = []
        self.eof = False

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(encode(m) for m in msgs))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 10.0) -> Message:
        """The next message; raises EOFError when the server closed first."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            if self.eof:
                raise EOFError("server closed the connection")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                data = b""  # the server closed (abruptly, or without TLS's close_notify)
            if not data:
                self.eof = True
                continue
            self.inbox.extend(decode(f) for f in self.decoder.feed(data))
        return self.inbox.pop(0)

    def welcome(self) -> Welcome:
        msg = self.recv()
        assert isinstance(msg, Welcome), msg
        return msg

    def handshake(self, presence: bool = False) -> Welcome:
        welcome = self.welcome()
        self.send(Hello(features=("presence",) if presence else (), request_id=1))
        return welcome

    def login_ok(self) -> LoginOk:
        """Wait for the LoginOk of a Login sent (skipping what comes before it); an Error fails."""
        while not isinstance(msg := self.recv(), LoginOk):
            assert not isinstance(msg, Error), msg
        return msg

    def expect_error(self, code: int, request_id: int | None = None) -> Error:
        msg = self.recv()
        assert isinstance(msg, Error), msg
        assert msg.code == code, (msg, code)
        if request_id is not None:
            assert msg.request_id == request_id
        return msg

    def expect_closed(self, timeout: float = 10.0) -> None:
        """The server closes the connection (after anything still in flight)."""
        try:
            while True:
                extra = self.recv(timeout)
                assert not isinstance(extra, Pong), f"connection still served: {extra}"
        except EOFError:
            return

    def alive(self, request_id: int = 999) -> None:
        """A ping round trip: the connection is still served."""
        self.send(Ping(b"alive?", request_id=request_id))
        msg = self.recv()
        assert isinstance(msg, Pong) and msg.request_id == request_id and msg.body == b"alive?", msg

    def close(self) -> None:
        self.sock.close()
