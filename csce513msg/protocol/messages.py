"""Typed messages of protocol 1.x and their encoding to frames.

Each message is a frozen dataclass registered with its type byte and the kinds
of its header fields (see ``frames.HeaderCodec``), in field order. Messages with
a body keep it as ``body: bytes``, never decoded here. ``request_id`` travels in
the frame prefix; it is a field of every message so replies can carry it.

Wire messages are nouns. Requests (client to server) have types below 0x80,
everything the server sends has the high bit set::

    0x01 Hello    0x02 Login    0x03 Send    0x04 Ack    0x05 Who    0x06 Ping
    0x07 History  0x08 Register
    0x10 GroupCreate 0x11 GroupJoin 0x12 GroupLeave 0x13 GroupAdd 0x14 GroupRemove
    0x15 GroupRename 0x16 GroupList 0x17 GroupMembers 0x18 GroupDelete 0x19 GroupMute
    0x1a GroupSlow 0x1b Redact 0x1c Confirm 0x1d Confirmed 0x1e Hand 0x1f HandQueue
    0x20 Acks
    0x81 Welcome  0x82 LoginOk  0x83 Receipt 0x84 Deliver 0x85 WhoReply
    0x86 Presence 0x87 Pong     0x88 Error   0x89 HistoryEnd
    0x90 GroupInfo 0x91 GroupListReply 0x92 GroupMembersReply
    0x93 Confirmations 0x94 HandPlace 0x95 HandQueueReply
    0xa0 Receipts 0xa1 Delivers
    0x30 FileUpload 0x31 FileChunk 0x32 FileGet 0x33 FileCancel   (1.6: transfer.py)
    0x40 KeyPublish 0x41 KeyFetch 0x42 KeyForget                 (1.7: publickeys.py)
    0xb0 FileState 0xb1 FileData
    0xc0 KeyBundles 0xc1 KeyState

(``tests/protocol/test_frames.py`` keeps this table equal to ``MsgType``.) A field a later
minor version appended says so (``since`` in ``_message``), and ``encode`` leaves it out
for a peer of an older minor; a frame a later minor added says so too (``added``), and
is neither sent to nor taken from a peer of an older minor. ``docs/protocol.md`` is the normative description of every
field, and section 10 there is the plan for the numbers later versions take.
"""

from __future__ import annotations

import enum
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeAlias, TypeVar

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import Frame, HeaderCodec, encode_frame

VERSION_MAJOR = 1
#: 1.1: stored receipts, offline delivery, device and client message ids; 1.2: accounts;
#: 1.3: device tokens, the login and frame deadlines, u64 requests below 2^63; 1.4: groups;
#: 1.5: coalescing (several receipts or deliveries in one frame); 1.6: files; 1.7: the key
#: directory of end-to-end encryption; 1.8: file chunks larger than a frame (``max_chunk``)
VERSION_MINOR = 8
#: the largest value of a u64 field a client may send: every store keeps them as signed
#: 64-bit integers (SQLite's INTEGER), so 2^63 and above are refused with BAD_REQUEST
MAX_REQUEST_U64 = 2**63 - 1
#: the largest frame a client may send before its Login or Register is taken (Hello,
#: Login, Register and Ping need far less): a connection nobody has vouched for cannot
#: make the server hold ``max_frame`` bytes of a half-sent frame
PRE_LOGIN_MAX_FRAME = 4096
#: LoginOk.waiting counts up to this: the value means "this many or more" (show "1000+").
#: Counting further would cost the server a read of the whole backlog at every login.
WAITING_CAP = 1000


class MsgType(enum.IntEnum):
    """The type byte of each frame."""

    HELLO = 0x01
    LOGIN = 0x02
    SEND = 0x03
    ACK = 0x04
    WHO = 0x05
    PING = 0x06
    HISTORY = 0x07
    REGISTER = 0x08
    WELCOME = 0x81
    LOGIN_OK = 0x82
    RECEIPT = 0x83
    DELIVER = 0x84
    WHO_REPLY = 0x85
    PRESENCE = 0x86
    PONG = 0x87
    ERROR = 0x88
    HISTORY_END = 0x89
    # 1.4, groups (docs/protocol.md section 11)
    GROUP_CREATE = 0x10
    GROUP_JOIN = 0x11
    GROUP_LEAVE = 0x12
    GROUP_ADD = 0x13
    GROUP_REMOVE = 0x14
    GROUP_RENAME = 0x15
    GROUP_LIST = 0x16
    GROUP_MEMBERS = 0x17
    GROUP_DELETE = 0x18  # the classroom's moderation (docs/groups-plan.md step 6)
    GROUP_MUTE = 0x19
    GROUP_SLOW = 0x1A
    REDACT = 0x1B
    GROUP_INFO = 0x90
    GROUP_LIST_REPLY = 0x91
    GROUP_MEMBERS_REPLY = 0x92
    # 1.4, the classroom: announcements and office hours (docs/protocol.md section 11)
    CONFIRM = 0x1C
    CONFIRMED = 0x1D
    HAND = 0x1E
    HAND_QUEUE = 0x1F
    CONFIRMATIONS = 0x93
    HAND_PLACE = 0x94
    HAND_QUEUE_REPLY = 0x95
    # 1.5, coalescing (docs/protocol.md section 12)
    ACKS = 0x20
    RECEIPTS = 0xA0
    DELIVERS = 0xA1
    # 1.6, files (docs/protocol.md section 13; the frames are in ``transfer.py``)
    FILE_UPLOAD = 0x30
    FILE_CHUNK = 0x31
    FILE_GET = 0x32
    FILE_CANCEL = 0x33
    FILE_STATE = 0xB0
    FILE_DATA = 0xB1
    # 1.7, end-to-end encryption's key directory (docs/protocol.md section 14; ``publickeys.py``)
    KEY_PUBLISH = 0x40
    KEY_FETCH = 0x41
    KEY_FORGET = 0x42
    KEY_BUNDLES = 0xC0
    KEY_STATE = 0xC1


class TargetKind(enum.IntEnum):
    """Who a message is for: one user, or a group (1.4)."""

    USER = 1
    GROUP = 2


class ContentType(enum.IntEnum):
    """How to read a message body; the server forwards every kind unread."""

    TEXT = 0  # UTF-8 text
    FILE_OFFER = 1  # a file offer (1.6): ``transfer.offer_body``; the server forwards it unread
    ENVELOPE = 2  # an end-to-end envelope (1.7): ciphertext only its recipients' devices can open
    GROUP_EVENT = 3  # a group's event, written by the server (1.4): ``protocol.groups.GroupEvent``
    ASKS_CONFIRMATION = 4  # UTF-8 text: an announcement asking to be confirmed (1.4; only in g:0, from staff)


class ReceiptState(enum.IntEnum):
    """How far a sent message got. A 1.0 server sent ACCEPTED; since 1.1, STORED answers a
    Send and DELIVERED follows."""

    ACCEPTED = 1  # the server took it and forwarded it (1.0 only)
    STORED = 2  # committed to the server's storage (1.1)
    DELIVERED = 3  # a device of the recipient acknowledged it (1.1)


class Feature(enum.StrEnum):
    """Feature names exchanged in Welcome and Hello."""

    PRESENCE = "presence"  # hello: send me presence events
    GROUPS = "groups"  # 1.4: the server has groups; a client that asks gets group frames
    COALESCING = "coalescing"  # 1.5: a client that asks may get Receipts and Delivers frames
    FILES = "files"  # 1.6: the server keeps files; a client that asks may upload and download
    E2E = "e2e"  # 1.7: the server keeps a key directory; a client that asks may publish and fetch keys


@dataclass(frozen=True, slots=True)
class _Spec:
    msg_type: MsgType
    cls: Any  # the message class
    codec: HeaderCodec
    names: tuple[str, ...]
    has_body: bool
    fields_of: Callable[[Any], tuple[Any, ...]]  #: the header fields' values, in order
    #: a request's u64 fields, (index, name): each must be below 2^63 (see ``decode``)
    u64: tuple[tuple[int, str], ...]
    #: minor version -> the codec of the fields that version has, for a peer that announced
    #: an older minor than the newest field (fields are only ever appended: rule 1)
    older: dict[int, tuple[int, HeaderCodec]]
    added: int  #: the minor version that added this frame type (0: 1.0)
    #: (pack, unpack) for a frame whose header is no plain list of fields (1.5's Receipts and
    #: Delivers: arrays of entries); None: ``codec`` does it
    custom: tuple[Callable[[Any], bytes], Callable[[Frame], Any]] | None = None


_BY_TYPE: dict[int, _Spec] = {}
_BY_CLASS: dict[type, _Spec] = {}
M = TypeVar("M")


def _message(
    msg_type: MsgType, kinds: str, since: dict[str, int] | None = None, added: int = 0
) -> Callable[[type[M]], type[M]]:
    """Register a message class: its type byte, its header fields' kinds in order, the
    minor version that appended each later field (``since``; the others are from 1.0),
    and the minor version that added the frame type itself (``added``)."""

    def register(cls: type[M]) -> type[M]:
        names = tuple(f.name for f in fields(cls) if f.name not in ("body", "request_id"))  # type: ignore[arg-type]
        assert len(names) == len(kinds), f"{cls.__name__}: {names} vs {kinds!r}"
        has_body = "body" in {f.name for f in fields(cls)}  # type: ignore[arg-type]
        getter = operator.attrgetter(*names) if len(names) > 1 else None
        fields_of = getter if getter else (lambda m, n=names: tuple(getattr(m, x) for x in n))
        u64 = tuple((i, n) for i, (n, k) in enumerate(zip(names, kinds, strict=True)) if k == "Q" and msg_type < 0x80)
        appended = [(since or {}).get(n, 0) for n in names]
        assert appended == sorted(appended), f"{cls.__name__}: a newer field before an older one"
        older = {}
        for minor in range(max(appended, default=0)):
            count = sum(1 for a in appended if a <= minor)
            older[minor] = (count, HeaderCodec(kinds[:count]))
        spec = _Spec(msg_type, cls, HeaderCodec(kinds), names, has_body, fields_of, u64, older, added)
        _BY_TYPE[msg_type] = _BY_CLASS[cls] = spec
        cls.TYPE = msg_type  # type: ignore[attr-defined]
        return cls

    return register


# ---- client to server -------------------------------------------------------------


@_message(MsgType.HELLO, "BBLs")
@dataclass(frozen=True, slots=True)
class Hello:
    """The client's answer to Welcome: its protocol version and wanted features."""

    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR
    features: tuple[str, ...] = ()  #: e.g. ("presence",)
    client: str = ""  #: free text naming the client program
    request_id: int = 0


@_message(MsgType.LOGIN, "ssss", since={"device_token": 3})
@dataclass(frozen=True, slots=True)
class Login:
    """Log in as ``user`` with ``password``, from the client's device (an id it generates
    once and keeps: the server keeps each device's place in every conversation)."""

    user: str
    password: str = ""
    device_id: str = ""
    device_token: str = ""  #: the token an earlier LoginOk gave this device for ``user`` (1.3)
    request_id: int = 0


@_message(MsgType.REGISTER, "sss")
@dataclass(frozen=True, slots=True)
class Register:
    """Create the account ``user`` (a student) and log in, as Login does; only on a server
    started with ``--self-register``. A name that exists gets NAME_TAKEN."""

    user: str
    password: str
    device_id: str = ""
    request_id: int = 0


@_message(MsgType.SEND, "BBQs")
@dataclass(frozen=True, slots=True)
class Send:
    """Send ``body`` to the target; answered by a Receipt or an Error."""

    target_kind: int  #: TargetKind
    content_type: int  #: ContentType
    client_msg_id: int  #: the client's own counter (u64); 0 if unused
    target: str  #: the recipient's name
    body: bytes = b""
    request_id: int = 0


@_message(MsgType.ACK, "Qs")
@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every delivery in ``stream`` up to ``position`` was received."""

    position: int
    stream: str
    request_id: int = 0


@_message(MsgType.WHO, "")
@dataclass(frozen=True, slots=True)
class Who:
    """Ask who is online; answered by WhoReply."""

    request_id: int = 0


@_message(MsgType.PING, "")
@dataclass(frozen=True, slots=True)
class Ping:
    """Keep the connection alive; answered by a Pong with the same body."""

    body: bytes = b""
    request_id: int = 0


@_message(MsgType.HISTORY, "QIBs")
@dataclass(frozen=True, slots=True)
class History:
    """Page back through a conversation: up to ``limit`` messages before ``before``.

    Answered by Deliver frames carrying this request's id (oldest first; not to be
    acknowledged), then a HistoryEnd."""

    before: int  #: a position in the stream; 0: from the newest
    limit: int
    target_kind: int
    target: str  #: the other user of the direct conversation
    request_id: int = 0


# ---- server to client -------------------------------------------------------------


@_message(
    MsgType.WELCOME,
    "BBIIIILsQQQII",
    since={"max_file": 6, "file_quota": 6, "disk_reserve": 6, "file_days": 6, "max_chunk": 8},
)
@dataclass(frozen=True, slots=True)
class Welcome:
    """Sent by the server on accept: who it is and every limit a client must know."""

    version_major: int
    version_minor: int
    max_frame: int  #: largest header + body accepted, bytes
    max_text: int  #: largest Send body, bytes
    window: int  #: outbound window: deliveries a client may leave unacknowledged
    idle_timeout_ms: int  #: silence after which the server closes; ping before it
    features: tuple[str, ...]
    server: str  #: the server's name
    max_file: int = 0  #: (1.6) the largest file an upload may declare, bytes (0: no files)
    file_quota: int = 0  #: (1.6) bytes of uploads one user may hold on the server at once
    disk_reserve: int = 0  #: (1.6) bytes the server keeps free on its disk: an upload past it is refused
    file_days: int = 0  #: (1.6) days an upload is kept from its start, then deleted
    #: (1.8) the largest chunk of a file in one frame, bytes of body (FileChunk and FileData),
    #: for a session that says 1.8 or later (never less than ``max_frame`` less 1024, what an
    #: older one keeps: ``transfer.chunk_limit``)
    max_chunk: int = 0
    request_id: int = 0


@_message(MsgType.LOGIN_OK, "QssIs", since={"role": 2, "waiting": 2, "device_token": 3})
@dataclass(frozen=True, slots=True)
class LoginOk:
    """The login (or registration) succeeded; the catch-up deliveries follow."""

    time_us: int  #: server wall time, microseconds since the Unix epoch
    user: str
    role: str = ""  #: "student" or "instructor" (1.2)
    waiting: int = 0  #: messages that arrived for this device while it was away, up to WAITING_CAP (1.2)
    #: this device's token for ``user``: keep it (privately) and send it with the next Logins (1.3)
    device_token: str = ""
    request_id: int = 0


@_message(MsgType.RECEIPT, "BQQQss")
@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of a sent message (request_id names the Send; 0 if later)."""

    state: int  #: ReceiptState
    message_id: int  #: the server's id for the message, u64, never repeated
    time_us: int  #: server wall time the message was accepted, µs since the epoch
    position: int  #: the message's position in its stream
    stream: str  #: the conversation's stream
    detail: str = ""  #: a human note, e.g. "bob is offline"
    request_id: int = 0


@_message(MsgType.DELIVER, "BBQQQsss")
@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for this session; acknowledge it with Ack(stream, position)."""

    target_kind: int
    content_type: int
    message_id: int
    time_us: int
    position: int
    sender: str
    target: str  #: the user (or later group) it was sent to
    stream: str
    body: bytes = b""
    request_id: int = 0


@_message(MsgType.WHO_REPLY, "LNL", since={"sessions": 2, "roles": 2})
@dataclass(frozen=True, slots=True)
class WhoReply:
    """The users online, sorted by name, each with their number of sessions and role."""

    users: tuple[str, ...]
    sessions: tuple[int, ...] = ()  #: one per user: how many clients they are logged in from (1.2)
    roles: tuple[str, ...] = ()  #: one per user (1.2)
    request_id: int = 0


@_message(MsgType.PRESENCE, "BQs")
@dataclass(frozen=True, slots=True)
class Presence:
    """A user came online (1) or went offline (0); only to subscribed sessions."""

    online: int
    time_us: int
    user: str
    request_id: int = 0


@_message(MsgType.PONG, "")
@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to Ping, with its body."""

    body: bytes = b""
    request_id: int = 0


@_message(MsgType.ERROR, "HsI", since={"retry_after_ms": 4})
@dataclass(frozen=True, slots=True)
class Error:
    """A request failed (request_id names it) or, with id 0, the connection did."""

    code: int  #: ErrorCode; an unknown code is shown by its message
    message: str
    #: (1.4) when the wait is known, milliseconds until the same request may succeed (MUTED,
    #: SLOW_MODE, RATE_LIMITED, AUTH_THROTTLED); 0: not known, or nothing to wait for
    retry_after_ms: int = 0
    request_id: int = 0


@_message(MsgType.HISTORY_END, "QIs")
@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """The last frame of a History answer: ``count`` messages, from position ``first``."""

    first: int  #: the oldest position sent (0 if none): ask again with ``before=first``
    count: int
    stream: str
    request_id: int = 0


# ---- 1.4: groups (docs/protocol.md, section 11) -----------------------------------
# A group is named like a user (``names.NAME_RULE``, its own namespace) and addressed by
# its name or its stream, ``g:<id>`` (a name has no ":"). Each change is an event in the
# group's stream (``ContentType.GROUP_EVENT``, ``protocol.groups.GroupEvent``).


@_message(MsgType.GROUP_CREATE, "sB", added=4)
@dataclass(frozen=True, slots=True)
class GroupCreate:
    """Create a group, owned by the sender, who is its first member; answered by GroupInfo."""

    name: str
    invite_only: int = 0  #: 1: members join only when added by the owner or an instructor
    request_id: int = 0


@_message(MsgType.GROUP_JOIN, "s", added=4)
@dataclass(frozen=True, slots=True)
class GroupJoin:
    """Join a public group; answered by GroupInfo (a member already: position 0, no event)."""

    group: str  #: its name, or its stream ``g:<id>``
    request_id: int = 0


@_message(MsgType.GROUP_LEAVE, "s", added=4)
@dataclass(frozen=True, slots=True)
class GroupLeave:
    """Leave a group; answered by GroupInfo. Nothing posted after reaches any session."""

    group: str
    request_id: int = 0


@_message(MsgType.GROUP_ADD, "sL", added=4)
@dataclass(frozen=True, slots=True)
class GroupAdd:
    """Add members (owner, or an instructor); one event for all of them."""

    group: str
    users: tuple[str, ...]
    request_id: int = 0


@_message(MsgType.GROUP_REMOVE, "sL", added=4)
@dataclass(frozen=True, slots=True)
class GroupRemove:
    """Remove members (owner, or an instructor); one event for all of them."""

    group: str
    users: tuple[str, ...]
    request_id: int = 0


@_message(MsgType.GROUP_RENAME, "ss", added=4)
@dataclass(frozen=True, slots=True)
class GroupRename:
    """Rename a group (owner, or an instructor); its stream keeps its id."""

    group: str
    name: str
    request_id: int = 0


@_message(MsgType.GROUP_LIST, "Bs", added=4)
@dataclass(frozen=True, slots=True)
class GroupList:
    """List groups: your own (``mine`` 1) or every one you may see (0), by name, from the
    first name after ``after`` ("": from the start); GroupListReply, cut where its header
    would outgrow the frame's 16-bit header length (the last entry's flags bit 2 then)."""

    mine: int = 1
    #: appended after 1.4 was first served (no ``since``: a 1.4 peer without it sends none, and
    #: the default "" is the list from its start; a 1.4 server without it ignores it, rule 2)
    after: str = ""
    request_id: int = 0


@_message(MsgType.GROUP_MEMBERS, "s", added=4)
@dataclass(frozen=True, slots=True)
class GroupMembers:
    """A group's members, with role and sessions; answered by GroupMembersReply."""

    group: str
    request_id: int = 0


@_message(MsgType.GROUP_DELETE, "s", added=4)
@dataclass(frozen=True, slots=True)
class GroupDelete:
    """Delete a group (its owner, or staff); answered by GroupInfo. Its name is free after."""

    group: str
    request_id: int = 0


@_message(MsgType.GROUP_MUTE, "sLI", added=4)
@dataclass(frozen=True, slots=True)
class GroupMute:
    """Mute members for ``seconds`` (0 unmutes) (the owner, or staff); answered by GroupInfo."""

    group: str
    users: tuple[str, ...]
    seconds: int  #: u32; 0: unmute
    request_id: int = 0


@_message(MsgType.GROUP_SLOW, "sI", added=4)
@dataclass(frozen=True, slots=True)
class GroupSlow:
    """Slow mode: a student posts at most once per ``seconds`` (0: off) (the owner, or staff)."""

    group: str
    seconds: int
    request_id: int = 0


@_message(MsgType.REDACT, "sQ", added=4)
@dataclass(frozen=True, slots=True)
class Redact:
    """Remove the message at ``position`` of the group (staff; the owner; its sender): it
    becomes a tombstone in place. Answered by GroupInfo."""

    group: str
    position: int
    request_id: int = 0


@_message(MsgType.GROUP_INFO, "sssBIQB", added=4)
@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group as it is now: the answer to Create, Join, Leave, Add, Remove, Rename, Delete,
    Mute, Slow and Redact (after a Delete: ``members`` 0, ``member`` 0)."""

    stream: str  #: ``g:<id>``: the group's stream, which never changes
    name: str
    owner: str
    invite_only: int
    members: int  #: how many members it has
    position: int  #: the position of the event the request made (0: it made none)
    member: int  #: 1 if you are a member now
    request_id: int = 0


@_message(MsgType.GROUP_LIST_REPLY, "LLLNN", added=4)
@dataclass(frozen=True, slots=True)
class GroupListReply:
    """Groups, one entry per list index."""

    streams: tuple[str, ...]
    names: tuple[str, ...]
    owners: tuple[str, ...]
    sizes: tuple[int, ...]  #: members
    #: bit 0: invite-only; bit 1: you are a member; bit 2 (on the last entry only): the list
    #: was cut after this entry, ask again with ``after`` = its name for the rest
    flags: tuple[int, ...]
    request_id: int = 0


@_message(MsgType.GROUP_MEMBERS_REPLY, "sLLN", added=4)
@dataclass(frozen=True, slots=True)
class GroupMembersReply:
    """A group's members: name, role and online sessions (as ``--visibility`` allows)."""

    stream: str
    users: tuple[str, ...]
    roles: tuple[str, ...]
    sessions: tuple[int, ...]
    request_id: int = 0


# ---- 1.4: the classroom (docs/protocol.md, section 11) -----------------------------
# The announcements are the group ``g:0`` (``ANNOUNCEMENTS``); office hours are one queue of
# raised hands. *Staff* are instructors and assistants.

ANNOUNCEMENTS = "g:0"  #: the announcements' stream: every account reads it, staff post to it
MAX_QUESTION = 200  #: the most characters a raised hand's question may have


class HandOp(enum.IntEnum):
    """Hand's ``op``."""

    RAISE = 1  # raise a hand (again: a new question, the same place)
    LOWER = 2


class QueueOp(enum.IntEnum):
    """HandQueue's ``op``."""

    LIST = 0
    TAKE = 1  # take the first hand


@_message(MsgType.CONFIRM, "Q", added=4)
@dataclass(frozen=True, slots=True)
class Confirm:
    """ "I have read it": of the announcement at ``position`` in ``g:0`` that asks (content
    type 4); answered by Confirmations listing only the sender."""

    position: int
    request_id: int = 0


@_message(MsgType.CONFIRMED, "Q", added=4)
@dataclass(frozen=True, slots=True)
class Confirmed:
    """Who confirmed the announcement at ``position`` (0: the newest that asks), and which
    students have not (staff only); answered by Confirmations."""

    position: int = 0
    request_id: int = 0


@_message(MsgType.HAND, "Bs", added=4)
@dataclass(frozen=True, slots=True)
class Hand:
    """Raise or lower a hand in office hours (not staff); answered by HandPlace."""

    op: int  #: HandOp
    question: str = ""  #: at most MAX_QUESTION characters (raise)
    request_id: int = 0


@_message(MsgType.HAND_QUEUE, "B", added=4)
@dataclass(frozen=True, slots=True)
class HandQueue:
    """The queue (``op`` 0), or take its first hand (1); staff only; answered by HandQueueReply."""

    op: int = 0  #: QueueOp
    request_id: int = 0


@_message(MsgType.CONFIRMATIONS, "QLL", added=4)
@dataclass(frozen=True, slots=True)
class Confirmations:
    """Who confirmed the announcement at ``position``, and the students who have not."""

    position: int
    confirmed: tuple[str, ...]
    pending: tuple[str, ...]
    request_id: int = 0


@_message(MsgType.HAND_PLACE, "IIss", added=4)
@dataclass(frozen=True, slots=True)
class HandPlace:
    """Your place in the queue: the answer to Hand, and pushed (request id 0) when it changes."""

    place: int  #: 1: first; 0: not in the queue
    size: int  #: hands in the queue
    question: str
    taken_by: str = ""  #: the staff member who took your hand (place 0), else ""
    request_id: int = 0


@_message(MsgType.HAND_QUEUE_REPLY, "sLLN", added=4)
@dataclass(frozen=True, slots=True)
class HandQueueReply:
    """The queue, first first: the answer to HandQueue, and pushed (request id 0) to staff
    sessions with ``groups`` whenever it changes."""

    taken: str  #: the user a take took ("" for a list, or an empty queue)
    users: tuple[str, ...]
    questions: tuple[str, ...]
    waited: tuple[int, ...]  #: seconds each has waited since raising
    request_id: int = 0


# ---- 1.5: coalescing (docs/protocol.md, section 12) --------------------------------
# What one pass of the server has for one session, in one frame: several receipts
# (Receipts) or several live deliveries (Delivers), each entry exactly the fields of a
# Receipt or a Deliver. A header here is arrays, not a list of fields: a count, the size of
# each entry's fixed part, the fixed parts back to back (one precompiled struct each: the
# decoder walks them with ``iter_unpack``), then each entry's strings in turn. The size lets
# a later minor append fixed fields to every entry (rule 1, for an array: a reader takes the
# fields it knows of each entry and skips the rest); anything else a later minor adds comes
# after these arrays (rule 2: a reader ignores what follows what it knows).

_COUNTS = struct.Struct("!HH")  #: the number of entries, the size of each entry's fixed part
#: state, request_id (the Send it answers; 0: a delivered receipt), message_id, time_us, position
RECEIPT_ENTRY = struct.Struct("!BIQQQ")  # 29 bytes
#: target_kind, content_type, message_id, time_us, position, the length of its body
DELIVER_ENTRY = struct.Struct("!BBQQQI")  # 30 bytes
#: position (then the entry's stream)
ACK_ENTRY = struct.Struct("!Q")  # 8 bytes
_STR_LEN = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Receipts:
    """Several receipts in one frame (1.5: only to a session that asked for ``coalescing``),
    in the order they were written. Each carries its own ``request_id``; the frame's is 0."""

    receipts: tuple[Receipt, ...]
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class Delivers:
    """Several deliveries to one session in one frame (1.5, as Receipts), in order; the
    frame's body is their bodies back to back, and each carries the frame's ``request_id``
    (0: live deliveries, the only ones this server coalesces)."""

    delivers: tuple[Deliver, ...]
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class Acks:
    """Several Acks in one frame (1.5, the client's side of coalescing): for each stream, the
    highest position received, as one Ack would say it. The server applies all or none: an
    entry beyond what was delivered refuses the whole frame (BAD_REQUEST)."""

    streams: tuple[str, ...]
    positions: tuple[int, ...]  #: u64 each, below 2^63 (as Ack's)
    request_id: int = 0


def _strings(texts: list[str]) -> bytes:
    """``str`` fields back to back: each a u16 byte count, then its UTF-8."""
    parts = []
    for text in texts:
        raw = text.encode()
        parts.append(_STR_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _framed(msg_type: MsgType, request_id: int, header: bytes, body: bytes = b"") -> bytes:
    if len(header) > 0xFFFF:  # the outbox cuts a long run into several frames before this
        raise ValueError(f"{msg_type.name}: a header of {len(header)} bytes is over the u16 limit")
    return encode_frame(msg_type, request_id, header, body)


#: A receipt's row, as ``receipts_frame`` takes it: its entry's fixed fields, then its strings
ReceiptRow = tuple[
    int, int, int, int, int, str, str
]  # state, request_id, message_id, time_us, position, stream, detail
#: A delivery's row, as ``delivers_frame`` takes it: a Deliver's header fields in order, then its body
DeliverRow = tuple[int, int, int, int, int, str, str, str, bytes]


def receipts_frame(rows: Sequence[ReceiptRow], request_id: int = 0) -> bytes:
    """The Receipts frame of ``rows`` (the hub's outbox builds one from rows, not Receipts)."""
    pack = RECEIPT_ENTRY.pack
    fixed = [pack(state, rid, mid, time_us, position) for state, rid, mid, time_us, position, _, _ in rows]
    texts = [text for row in rows for text in row[5:]]
    header = _COUNTS.pack(len(rows), RECEIPT_ENTRY.size) + b"".join(fixed) + _strings(texts)
    return _framed(MsgType.RECEIPTS, request_id, header)


def delivers_frame(rows: Sequence[DeliverRow], request_id: int = 0) -> bytes:
    """The Delivers frame of ``rows``: the bodies, back to back, are its body."""
    pack = DELIVER_ENTRY.pack
    fixed = [pack(kind, content, mid, time_us, position, len(body)) for kind, content, mid, time_us, position, *_, body
             in rows]  # fmt: skip
    texts = [text for row in rows for text in row[5:8]]
    header = _COUNTS.pack(len(rows), DELIVER_ENTRY.size) + b"".join(fixed) + _strings(texts)
    return _framed(MsgType.DELIVERS, request_id, header, b"".join(row[8] for row in rows))


def _pack_receipts(msg: Receipts) -> bytes:
    rows = [(r.state, r.request_id, r.message_id, r.time_us, r.position, r.stream, r.detail) for r in msg.receipts]
    return receipts_frame(rows, msg.request_id)


def _pack_delivers(msg: Delivers) -> bytes:
    rows = [(d.target_kind, d.content_type, d.message_id, d.time_us, d.position, d.sender, d.target, d.stream, d.body)
            for d in msg.delivers]  # fmt: skip
    return delivers_frame(rows, msg.request_id)


def _pack_acks(msg: Acks) -> bytes:
    if len(msg.streams) != len(msg.positions):
        raise ValueError("Acks: as many positions as streams")
    fixed = b"".join(ACK_ENTRY.pack(p) for p in msg.positions)
    header = _COUNTS.pack(len(msg.positions), ACK_ENTRY.size) + fixed + _strings(list(msg.streams))
    return _framed(MsgType.ACKS, msg.request_id, header)


def acks_frames(acks: dict[str, int], max_frame: int, max_entries: int) -> list[bytes]:
    """The Acks frames that acknowledge ``acks`` (stream -> position), in order: each with at
    most ``max_entries`` entries (the server's window) and a header of at most ``max_frame``
    bytes (the server's limit) and 65,535 (a u16); a stream that fits no Acks alone goes as
    a plain Ack (the server then says why it is refused, as it would for an Ack)."""
    limit = min(max_frame, 0xFFFF) - _COUNTS.size
    frames: list[bytes] = []
    chunk: dict[str, int] = {}
    size = 0
    for stream, position in acks.items():
        entry = ACK_ENTRY.size + _STR_LEN.size + len(stream.encode())
        if chunk and (size + entry > limit or len(chunk) >= max(1, max_entries)):
            frames.append(_acks_frame(chunk))
            chunk, size = {}, 0
        chunk[stream] = position
        size += entry
    if chunk:
        frames.append(_acks_frame(chunk))
    return frames


def _acks_frame(chunk: dict[str, int]) -> bytes:
    if len(chunk) == 1:
        ((stream, position),) = chunk.items()
        return encode(Ack(position, stream))
    return encode(Acks(tuple(chunk), tuple(chunk.values())))


def _entries(header: bytes, entry: struct.Struct) -> tuple[list[tuple[Any, ...]], int]:
    """The fixed parts of a coalesced frame's entries, and the offset of their strings."""
    count, size = _COUNTS.unpack_from(header, 0)  # struct.error when cut short
    end = _COUNTS.size + count * size
    if size < entry.size or end > len(header):
        raise ValueError(f"{count} entries of {size} bytes do not fit (an entry has {entry.size} or more)")
    if size == entry.size:
        fixed = list(entry.iter_unpack(memoryview(header)[_COUNTS.size : end]))
    else:  # a later minor's longer entries: the fields this side knows of each
        fixed = [entry.unpack_from(header, _COUNTS.size + i * size) for i in range(count)]
    return fixed, end


def _string_at(header: bytes, off: int) -> tuple[str, int]:
    (n,) = _STR_LEN.unpack_from(header, off)  # struct.error when cut short
    off += 2
    if off + n > len(header):
        raise ValueError("string cut short")
    return header[off : off + n].decode(), off + n


def _unpack_receipts(frame: Frame) -> Receipts:
    header = frame.header
    fixed, off = _entries(header, RECEIPT_ENTRY)
    receipts = []
    for state, rid, message_id, time_us, position in fixed:
        stream, off = _string_at(header, off)
        detail, off = _string_at(header, off)
        receipts.append(Receipt(state, message_id, time_us, position, stream, detail, rid))
    return Receipts(tuple(receipts), frame.request_id)


def _unpack_delivers(frame: Frame) -> Delivers:
    header, body, rid = frame.header, frame.body, frame.request_id
    fixed, off = _entries(header, DELIVER_ENTRY)
    delivers = []
    start = 0
    for kind, content, message_id, time_us, position, length in fixed:
        sender, off = _string_at(header, off)
        target, off = _string_at(header, off)
        stream, off = _string_at(header, off)
        if start + length > len(body):
            raise ValueError("the bodies' lengths run past the frame's body")
        delivers.append(Deliver(kind, content, message_id, time_us, position, sender, target, stream,
                                body[start : start + length], rid))  # fmt: skip
        start += length
    return Delivers(tuple(delivers), rid)


def _unpack_acks(frame: Frame) -> Acks:
    header = frame.header
    fixed, off = _entries(header, ACK_ENTRY)
    streams = []
    for _ in fixed:
        stream, off = _string_at(header, off)
        streams.append(stream)
    positions = tuple(p for (p,) in fixed)
    if any(p > MAX_REQUEST_U64 for p in positions):  # as decode checks a request's u64 fields
        raise RemoteProtocolError(
            ErrorCode.BAD_REQUEST, "Acks: a position is over 2^63 - 1, the largest a request may carry",
            request_id=frame.request_id,
        )  # fmt: skip
    return Acks(tuple(streams), positions, frame.request_id)


def _custom(msg_type: MsgType, cls: type, pack: Callable[[Any], bytes], unpack: Callable[[Frame], Any]) -> None:
    """Register a 1.5 coalesced frame: packed and unpacked by its own functions, not a codec."""
    spec = _Spec(msg_type, cls, HeaderCodec(""), (), False, lambda m: (), (), {}, 5, (pack, unpack))
    _BY_TYPE[msg_type] = _BY_CLASS[cls] = spec
    cls.TYPE = msg_type  # type: ignore[attr-defined]


_custom(MsgType.RECEIPTS, Receipts, _pack_receipts, _unpack_receipts)
_custom(MsgType.DELIVERS, Delivers, _pack_delivers, _unpack_delivers)
_custom(MsgType.ACKS, Acks, _pack_acks, _unpack_acks)


# 1.6's frames live in their own module, which registers them with ``_message`` above
# ... and 1.7's too (publickeys.py)
from .publickeys import KeyBundles, KeyFetch, KeyForget, KeyPublish, KeyState  # noqa: E402
from .transfer import FileCancel, FileChunk, FileData, FileGet, FileState, FileUpload  # noqa: E402

Message: TypeAlias = (
    Hello
    | Login
    | Send
    | Ack
    | Who
    | Ping
    | History
    | Register
    | Welcome
    | LoginOk
    | Receipt
    | Deliver
    | WhoReply
    | Presence
    | Pong
    | Error
    | HistoryEnd
    | GroupCreate
    | GroupJoin
    | GroupLeave
    | GroupAdd
    | GroupRemove
    | GroupRename
    | GroupList
    | GroupMembers
    | GroupDelete
    | GroupMute
    | GroupSlow
    | Redact
    | GroupInfo
    | GroupListReply
    | GroupMembersReply
    | Confirm
    | Confirmed
    | Hand
    | HandQueue
    | Confirmations
    | HandPlace
    | HandQueueReply
    | Receipts
    | Delivers
    | Acks
    | FileUpload
    | FileChunk
    | FileGet
    | FileCancel
    | FileState
    | FileData
    | KeyPublish
    | KeyFetch
    | KeyForget
    | KeyBundles
    | KeyState
)
REQUEST_TYPES = frozenset(t for t in MsgType if t < 0x80)


def encode(msg: Message, minor: int = VERSION_MINOR) -> bytes:
    """Return the wire bytes of ``msg`` for a peer of protocol 1.``minor``: without the
    fields a later minor version appended (the peer would skip them anyway; it is not
    sent what it did not ask for)."""
    spec = _BY_CLASS[type(msg)]
    if spec.custom is not None:  # 1.5's coalesced frames
        if minor < spec.added:
            raise LocalProtocolError(f"{spec.cls.__name__} is protocol 1.{spec.added}; the peer speaks 1.{minor}")
        return spec.custom[0](msg)
    body: bytes = msg.body if spec.has_body else b""  # type: ignore[union-attr]
    return _encoded(spec, spec.fields_of(msg), msg.request_id, body, minor)


def encode_fields(
    cls: type[Message], values: Sequence[Any], request_id: int = 0, body: bytes = b"", minor: int = VERSION_MINOR
) -> bytes:
    """The bytes ``encode(cls(*values, body, request_id), minor)`` returns, without making the
    message: ``values`` are its header's fields, in order. For the hub's per-message path,
    where a Receipt or a Deliver was made only to be encoded at once: making a frozen
    dataclass sets each field through ``object.__setattr__`` (a Receipt 1.3 µs, a Deliver 2 µs
    here, against 0.05 µs for the tuple of its values)."""
    spec = _BY_CLASS[cls]
    assert len(values) == len(spec.names), f"{cls.__name__} has {len(spec.names)} header fields"
    return _encoded(spec, values, request_id, body, minor)


def _encoded(spec: _Spec, values: Sequence[Any], request_id: int, body: bytes, minor: int) -> bytes:
    if minor < spec.added:
        raise LocalProtocolError(f"{spec.cls.__name__} is protocol 1.{spec.added}; the peer speaks 1.{minor}")
    codec = spec.codec
    if minor in spec.older:
        count, codec = spec.older[minor]
        values = values[:count]
    return encode_frame(spec.msg_type, request_id, codec.encode(values), body)


def decode(frame: Frame, minor: int = VERSION_MINOR, ours: int | None = None) -> Message:
    """Return the typed message of ``frame``, from a peer of protocol 1.``minor``, read by a
    side that speaks 1.``ours`` (None: ``VERSION_MINOR``; the hub passes the minor it serves,
    ``HubConfig.max_minor``, so its tests can serve 1.4 before this module says 1.4).

    Raises:
        RemoteProtocolError: UNSUPPORTED (not fatal) for a type this version does not
            know, or one a later minor than the peer's (or this side's) added; BAD_FRAME
            (fatal) for a header that cannot be decoded; BAD_REQUEST (not fatal: a bad
            value, not a broken frame) for a request's u64 field at or over 2^63, which
            storage (SQLite's signed 64-bit integers) cannot hold.
    """
    spec = _BY_TYPE.get(frame.type)
    if spec is None or spec.added > minor or spec.added > (VERSION_MINOR if ours is None else ours):
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED,
            f"frame type 0x{frame.type:02x} is not supported",
            request_id=frame.request_id,
        )
    if spec.custom is not None:  # 1.5's coalesced frames
        try:
            coalesced: Message = spec.custom[1](frame)
        except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"malformed {spec.cls.__name__} header: {exc}", request_id=frame.request_id,
                fatal=True,
            ) from None  # fmt: skip
        return coalesced
    try:
        values: list[Any] = spec.codec.decode(frame.header)
    except RemoteProtocolError as exc:  # the prefix was read: the error names its request
        exc.request_id = frame.request_id
        raise
    for i, name in spec.u64:
        if values[i] > MAX_REQUEST_U64:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{spec.cls.__name__}: {name} {values[i]} is over 2^63 - 1, the largest a request may carry",
                request_id=frame.request_id,
            )
    if spec.has_body:
        values.append(frame.body)
    values.append(frame.request_id)
    msg: Message = spec.cls(*values)
    return msg
