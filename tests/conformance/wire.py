"""Small wire-level helpers for the conformance suite (protocol only, no server internals)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from csce513msg.client import Client, ServerError
from csce513msg.protocol import (
    VERSION_MAJOR,
    VERSION_MINOR,
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
M = TypeVar("M", bound=Message)


class Endpoint(Protocol):
    """Where a server listens: a test server (``tests.servers``) or anything with an address."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def connect(
    server: Endpoint, user: str | None = None, presence: bool = False, *, password: str = PASSWORD, **options: Any
) -> Client:
    """A client of ``server``, logged in as ``user`` if given: the first time a name is
    used it is registered over the wire (a taken name, e.g. after a restart on the same
    data directory, logs in). It shows repeated deliveries, so a server that delivers
    something twice is caught. ``options`` go to ``Client.connect`` (device_id, tls...)."""
    options.setdefault("drop_repeats", False)
    host, port = server.host, server.port
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


def register(server: Endpoint, user: str, password: str = PASSWORD, **options: Any) -> None:
    """Make the account ``user`` over the wire (if it is new), and leave."""
    connect(server, user, password=password, **options).close()


def next_of(
    client: Client, kind: type[M], where: Callable[[M], bool] = lambda m: True, timeout: float | None = None
) -> M:
    """The first message of type ``kind`` that ``where`` accepts, waiting for it: a
    ``client.next_message`` whose answer is typed (``next_of(c, Presence, lambda p: p.online)``)."""
    found = client.next_message(lambda m: isinstance(m, kind) and where(m), timeout)
    assert isinstance(found, kind), found  # next_message kept to the predicate
    return found


def wait_gone(watcher: Client, user: str, timeout: float = 10.0) -> None:
    """Wait until ``user`` is no longer online (the server has processed their close)."""
    deadline = time.monotonic() + timeout
    while user in watcher.who():
        assert time.monotonic() < deadline, f"{user} still online after {timeout} s"
        time.sleep(0.02)


class RawConn:
    """A bare socket that speaks frames, for tests of the handshake and bad input."""

    def __init__(self, server: Endpoint, timeout: float = 10.0, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:  # before connect, so the advertised TCP window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((server.host, server.port))
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

    def expect(self, kind: type[M], timeout: float = 10.0) -> M:
        """The next message, which must be a ``kind``."""
        msg = self.recv(timeout)
        assert isinstance(msg, kind), msg
        return msg

    def welcome(self) -> Welcome:
        return self.expect(Welcome)

    def handshake(self, presence: bool = False, minor: int = VERSION_MINOR, groups: bool = False) -> Welcome:
        """Wait for the Welcome; send a Hello of protocol 1.``minor`` (asking for groups too, with ``groups``)."""
        welcome = self.welcome()
        features = ("presence",) if presence else ()
        self.send(Hello(VERSION_MAJOR, minor, (*features, *(("groups",) if groups else ())), request_id=1))
        return welcome

    def login_ok(self) -> LoginOk:
        """Wait for the LoginOk of a Login sent (skipping what comes before it); an Error fails."""
        while not isinstance(msg := self.recv(), LoginOk):
            assert not isinstance(msg, Error), msg
        return msg

    def expect_error(self, code: int, request_id: int | None = None) -> Error:
        msg = self.expect(Error)
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
