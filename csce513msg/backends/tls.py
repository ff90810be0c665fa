"""TLS as a wrapper engine: every backend speaks TLS without a line of change.

How it works. ``TlsEngine`` sits between any backend and the chat engine and looks
like an engine to both. For each connection it runs an ``ssl.SSLObject`` over two
memory buffers (``ssl.MemoryBIO``): ciphertext from the socket goes into ``incoming``,
the SSL object turns it into plaintext for the inner engine; plaintext the inner
engine writes goes through the SSL object and comes out of ``outgoing`` as TLS
records for the socket::

    socket bytes -> incoming BIO -> SSLObject.read()  -> inner.data_received
    inner Write  -> SSLObject.write() -> outgoing BIO -> Write(ciphertext)

The inner engine hears of a connection only after the handshake (so its Welcome is
the first thing sent inside TLS); a handshake that does not finish within the
handshake timeout, or fails (a plaintext client, TLS 1.2), is logged with its reason
and closed. An inner Close becomes TLS's close_notify alert, then Close.

What it costs. One encryption per write pass and connection (writes are gathered
into one record per pass), and one decryption per read; AES-GCM is cheap next to
the Python around it. The handshake (ECDHE on P-256) costs about a millisecond of
CPU per connection.

Only TLS 1.3 is accepted. The server's certificate comes from ``crypto.certs``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..hub import Abort, Action, Close, ConnId, Write
from ..hub.contract import EngineAPI
from .queues import DeadlineQueue

log = logging.getLogger("csce513msg.tls")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS 1.3-only server context for this certificate and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


@dataclass(eq=False)
class TlsConn:
    """One connection's TLS state."""

    peer: str
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    established: bool = False  #: handshake done; the inner engine knows this connection
    closed: bool = False  #: we sent Close or Abort
    pending: list[bytes] = field(default_factory=list)


HANDSHAKE_TIMEOUT = 10.0  #: seconds a client has to finish the TLS handshake (msgsrv --handshake-timeout)


class TlsEngine:
    """Wrap ``inner`` so that every connection speaks TLS 1.3.

    Args:
        inner: the chat engine (or any engine).
        context: a server context (see ``server_context``).
        handshake_timeout: seconds a client has to finish the TLS handshake.
    """

    def __init__(self, inner: EngineAPI, context: ssl.SSLContext, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.inner = inner
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.conns: dict[ConnId, TlsConn] = {}
        self.handshakes: DeadlineQueue[ConnId] = DeadlineQueue()  # under way, by deadline: O(1) per timer

    # ---- the engine contract -----------------------------------------------------

    def connection_made(self, conn: ConnId, peer: str, now: float) -> list[Action]:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.context.wrap_bio(incoming, outgoing, server_side=True)
        self.conns[conn] = TlsConn(peer, obj, incoming, outgoing)
        self.handshakes.add(conn, now + self.handshake_timeout)
        return []  # the client speaks first (ClientHello)

    def data_received(self, conn: ConnId, data: bytes, now: float) -> list[Action]:
        tls = self.conns[conn]
        if tls.closed:
            return []
        tls.incoming.write(data)
        out: list[Action] = []
        if not tls.established:
            try:
                tls.obj.do_handshake()
            except ssl.SSLWantReadError:
                return self._records(conn, tls)  # our part of the handshake, if any
            except ssl.SSLError as exc:
                return self._fail(conn, tls, f"TLS handshake failed: {exc.reason or exc}")
            tls.established = True
            self.handshakes.discard(conn)
            log.debug("TLS #%d: %s, %s", conn, tls.obj.version(), tls.obj.cipher())
            out += self.inner.connection_made(conn, tls.peer, now)
        plaintext, closing = self._read(conn, tls)
        if plaintext:
            out += self.inner.data_received(conn, plaintext, now)
        if closing:
            out.append(Close(conn, "TLS close_notify"))
        return self._seal(out)

    def connection_lost(self, conn: ConnId, now: float) -> list[Action]:
        tls = self.conns.pop(conn)
        self.handshakes.discard(conn)
        if not tls.established:
            return []
        return self._seal(self.inner.connection_lost(conn, now))

    def pause_writing(self, conn: ConnId, now: float) -> list[Action]:
        return self._forward(conn, self.inner.pause_writing, now)

    def resume_writing(self, conn: ConnId, now: float) -> list[Action]:
        return self._forward(conn, self.inner.resume_writing, now)

    def job_done(self, job_id: int, result: object, now: float) -> list[Action]:
        return self._seal(self.inner.job_done(job_id, result, now))

    def flush(self, now: float) -> list[Action]:
        return self._seal(self.inner.flush(now))

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.handshakes.next_deadline(), self.inner.next_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        for conn in self.handshakes.due(now):  # only the overdue handshakes, never every connection
            tls = self.conns[conn]
            if not tls.closed:
                out += self._fail(conn, tls, "TLS handshake timeout")
        inner = self.inner.next_deadline()
        if inner is not None and inner <= now:
            out += self._seal(self.inner.handle_timer(now))
        return out

    def shutdown(self, now: float) -> list[Action]:
        out: list[Action] = []
        for conn, tls in self.conns.items():
            if not tls.established and not tls.closed:
                tls.closed = True
                out.append(Close(conn, "shutdown"))
        return out + self._seal(self.inner.shutdown(now))

    def server_full(self) -> bytes:
        """Nothing readable can be sent before a handshake: the backend just closes."""
        return b""

    # ---- helpers --------------------------------------------------------------------

    def _read(self, conn: ConnId, tls: TlsConn) -> tuple[bytes, bool]:
        """All the plaintext the records so far decrypt to, and whether the peer closed TLS."""
        chunks: list[bytes] = []
        try:
            while True:
                chunk = tls.obj.read(65536)
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            return b"".join(chunks), False
        except ssl.SSLZeroReturnError:
            return b"".join(chunks), True
        except ssl.SSLError as exc:
            log.info("TLS error #%d (%s): %s", conn, tls.peer, exc.reason or exc)
            return b"".join(chunks), True

    def _seal(self, actions: Iterable[Action]) -> list[Action]:
        """Encrypt the inner engine's writes: one TLS record batch per connection."""
        out: list[Action] = []
        touched: list[ConnId] = []
        for action in actions:
            tls = self.conns.get(action.conn) if isinstance(action, (Write, Close, Abort)) else None
            if tls is None or not isinstance(action, (Write, Close, Abort)):
                out.append(action)
            elif isinstance(action, Write):
                if not tls.pending:
                    touched.append(action.conn)
                tls.pending.append(action.data)
            else:
                out += self._drain(action.conn, tls)
                if isinstance(action, Close) and not tls.closed:
                    try:
                        tls.obj.unwrap()  # queue close_notify
                    except ssl.SSLError:
                        pass  # WantRead: the peer's close_notify has not come; we do not wait for it
                    out += self._records(action.conn, tls)
                tls.closed = True
                out.append(action)
        for conn in touched:
            tls = self.conns[conn]
            if not tls.closed:
                out += self._drain(conn, tls)
        return out

    def _drain(self, conn: ConnId, tls: TlsConn) -> list[Action]:
        if tls.pending and not tls.closed:
            tls.obj.write(b"".join(tls.pending))
        tls.pending.clear()
        return self._records(conn, tls)

    def _records(self, conn: ConnId, tls: TlsConn) -> list[Action]:
        data = tls.outgoing.read()
        return [Write(conn, data)] if data else []

    def _fail(self, conn: ConnId, tls: TlsConn, reason: str) -> list[Action]:
        log.warning("%s from %s (#%d)", reason, tls.peer, conn)
        tls.closed = True
        return [*self._records(conn, tls), Close(conn, reason)]  # the alert, if OpenSSL made one

    def _forward(self, conn: ConnId, call: Callable[[ConnId, float], list[Action]], now: float) -> list[Action]:
        tls = self.conns.get(conn)
        if tls is None or not tls.established:
            return []
        return self._seal(call(conn, now))
