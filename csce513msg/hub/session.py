"""What the hub knows of one connection: its state in the handshake and its delivery
bookkeeping. Plain data: the engine (``engine.py``) and the store-and-forward half
(``delivery.py``) both read and change it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import VERSION_MINOR, FrameDecoder, Message
from .actions import ConnId


class State(enum.Enum):
    """Where a session is in the handshake."""

    #: each member is one object: hash it as one (C), not by its name as ``Enum`` does (a Python
    #: function): every request looks up ``TRANSITIONS`` by (state, type) twice, 0.17 µs each
    __hash__ = object.__hash__

    AWAIT_HELLO = "await-hello"
    AWAIT_LOGIN = "await-login"
    AUTHENTICATING = "authenticating"  #: a Login or Register is being checked; other requests wait
    READY = "ready"


@dataclass(slots=True, eq=False)
class StreamMark:
    """What one session was sent of one stream, and what it acknowledged."""

    delivered: int = 0  #: the last position delivered
    acked: int = 0  #: the last position acknowledged
    unacked: list[int] = field(default_factory=list)  #: positions delivered, not yet acknowledged


@dataclass(slots=True, eq=False)
class Session:
    """What the hub knows of one connection."""

    conn: ConnId
    peer: str
    decoder: FrameDecoder
    last_seen: float  #: monotonic time of the last bytes received
    connected: float  #: monotonic time of the connect (the login deadline counts from it)
    tokens: float  #: rate limiter: requests this connection may still send now
    last_token: float  #: when ``tokens`` was last topped up
    state: State = State.AWAIT_HELLO
    user: str | None = None
    presence: bool = False  #: subscribed to presence events
    #: its Hello announced 1.4 and the ``groups`` feature (and the hub serves 1.4): only such a
    #: session sends group requests and is sent group frames, events, messages and receipts
    groups: bool = False
    #: its Hello announced 1.5 and the ``coalescing`` feature (and the hub serves 1.5): the
    #: receipts and live deliveries one engine call writes to it in a row go as one frame (outbox.py)
    coalescing: bool = False
    #: its Hello announced 1.6 and the ``files`` feature (and the server keeps files): it may
    #: upload and download (files.py)
    files: bool = False
    #: its Hello announced 1.7 and the ``e2e`` feature: it may use the key directory (keys.py)
    e2e: bool = False
    minor: int = VERSION_MINOR  #: the protocol minor version its Hello announced (the newest until then)
    paused: bool = False  #: the backend's outbound queue is past its high-water mark
    closing: bool = False  #: a Close was issued; ignore further input
    device: str = ""  #: the client's device id ("" : one anonymous device per user)
    live: bool = False  #: caught up: new messages are delivered as they are stored
    fetching: bool = False  #: a catch-up read is queued or in flight
    #: stream -> what was delivered and acknowledged of it (one dict, not three: an idle session's
    #: empty dicts were 192 bytes of the 10,000-connection picture)
    streams: dict[str, StreamMark] = field(default_factory=dict)
    partial_since: float | None = None  #: when the frame now half-received began (frame deadline)
    in_flight: int = 0  #: the sum of len(streams[s].unacked), kept as deliveries and acks happen
    held: list[Message] = field(default_factory=list)  #: requests that arrived while AUTHENTICATING
    #: History requests waiting to be read, (request id, stream, before, limit): one is read at a
    #: time. A list, not a deque: at most HISTORY_QUEUE, and an empty deque costs 760 bytes a session
    histories: list[tuple[int, str, int, int]] = field(default_factory=list)
    reading_history: bool = False  #: a History page of this session is waiting for or in a batch

    def inflight(self) -> int:
        """Deliveries sent and not yet acknowledged: the window counts these."""
        return self.in_flight


Handler = Callable[..., None]  # (engine, session, message, now)


# Events of the state table besides the requests (past-tense facts, as the hub's inputs are):


class AnyRequest:
    """Any request: what AUTHENTICATING does with every request while the login is checked."""


class LoginAccepted:
    """The login's answer came back right and its record is stored: LoginOk is sent."""


class LoginRefused:
    """The login (or registration) was refused after it was taken: a wrong password, a
    throttle, a taken name, a busy server or a storage failure (the Error says which)."""
