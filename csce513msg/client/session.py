"""The client side of the protocol, with no I/O: the twin of the hub.

A driver (the command-line loop, the blocking API, the GUI) feeds it the bytes
that arrived with ``receive_data`` and sends whatever ``data_to_send`` returns,
in the manner of h11 and the websockets library. The session does the handshake
(it waits for Welcome, refuses another major version, answers with Hello and, if
a user was given, Login), numbers requests, remembers which are in flight, and
acknowledges deliveries: one cumulative Ack per stream for each batch of bytes.

It speaks the protocol's newest minor (``VERSION_MINOR``) unless told an older one
(``minor``, to play an old client), and asks for groups (1.4) with ``groups``: the
group requests return their request ids like the others, and a Send or History to a
group is one of ``kind=TargetKind.GROUP``.

From 1.5 it asks for ``coalescing`` (unless told not to) when the server's Welcome
offers it, and ``receive_data`` unpacks a Receipts or Delivers frame into the Receipt
and Deliver messages it carries: a driver never sees the coalesced frames.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable

from ..crypto import envelope as ev
from ..crypto.device import E2EError
from ..crypto.vault import VaultError
from ..protocol import (
    ANNOUNCEMENTS,
    VERSION_MAJOR,
    VERSION_MINOR,
    Ack,
    Confirm,
    Confirmed,
    ContentType,
    Deliver,
    Delivers,
    Error,
    ErrorCode,
    Feature,
    FileCancel,
    FileChunk,
    FileData,
    FileGet,
    FileState,
    FileUpload,
    FrameDecoder,
    GroupAdd,
    GroupCreate,
    GroupDelete,
    GroupInfo,
    GroupJoin,
    GroupLeave,
    GroupList,
    GroupListReply,
    GroupMembers,
    GroupMembersReply,
    GroupMute,
    GroupRemove,
    GroupRename,
    GroupSlow,
    Hand,
    HandOp,
    HandQueue,
    Hello,
    History,
    HistoryEnd,
    LocalProtocolError,
    Login,
    LoginOk,
    Message,
    Offer,
    Ping,
    Pong,
    QueueOp,
    Receipt,
    Receipts,
    Redact,
    Register,
    RemoteProtocolError,
    Send,
    TargetKind,
    Welcome,
    Who,
    WhoReply,
    acks_frames,
    decode,
    encode,
    offer_body,
)
from ..protocol.publickeys import E2E_MINOR, KeyBundles, KeyFetch, KeyForget, KeyState
from ..protocol.transfer import FILES_MINOR
from .secure import Secure

#: The client accepts frames up to this size from the server (a delivery is at
#: most the server's text limit plus its header).
CLIENT_MAX_FRAME = 16 * 1024 * 1024
#: How many recent message ids a session remembers to drop repeated deliveries.
SEEN_LIMIT = 10_000
#: Reply types that end a request (an Error with a request id does too).
_REPLIES = (
    LoginOk,
    Receipt,
    WhoReply,
    Pong,
    Error,
    HistoryEnd,
    GroupInfo,
    GroupListReply,
    GroupMembersReply,
    FileState,
    KeyBundles,
    KeyState,
)


def _unpacked(msg: Message) -> tuple[Message, ...]:
    """The messages a frame carries: those of a coalesced frame (1.5), else the one."""
    if isinstance(msg, Receipts):
        return msg.receipts
    if isinstance(msg, Delivers):
        return msg.delivers
    return (msg,)


class ClientState(enum.Enum):
    """Where the client is in the handshake."""

    AWAIT_WELCOME = "await-welcome"
    AWAIT_LOGIN = "await-login"  # Hello sent (and Login, if a user was given)
    READY = "ready"


class ClientSession:
    """A pure client session.

    Args:
        user: log in as this user right after the handshake (None: call ``login``).
        password: ``user``'s password.
        register: create the account ``user`` (Register) instead of logging in.
        presence: ask the server for presence events.
        client: the client program's name, sent in Hello.
        device_id: this installation's id (kept by the driver; "" : one anonymous device).
        device_token: the token an earlier LoginOk gave this device for ``user``.
        groups: ask the server for groups (the ``groups`` feature, protocol 1.4).
        minor: the newest protocol minor to announce (an older one plays an old client).
        coalescing: ask a server that offers it (1.5) for coalesced receipts and deliveries.
        files: ask a server that offers them (1.6) for files (uploads and downloads).
        e2e: ask a server that offers it (1.7) for the key directory of end-to-end encryption
            (its KeyState then follows the LoginOk).
        secure: this device's end-to-end state (``client/secure.py``; implies ``e2e``): direct
            messages to users with keys go encrypted, and what arrives encrypted is opened.
        keys: opens that state at the LoginOk (so a wrong password is the server's AUTH_FAILED,
            never a vault's answer); if it fails, ``keys_error`` says why and ``secure`` stays None.
    """

    def __init__(
        self,
        user: str | None = None,
        *,
        password: str = "",
        register: bool = False,
        presence: bool = False,
        client: str = "csce513msg",
        device_id: str = "",
        device_token: str = "",
        client_msg_seed: int = 0,
        drop_repeats: bool = True,
        groups: bool = False,
        minor: int = VERSION_MINOR,
        coalescing: bool = True,
        files: bool = True,
        e2e: bool = False,
        secure: Secure | None = None,
        keys: Callable[[], Secure] | None = None,
    ) -> None:
        if not 0 <= minor <= VERSION_MINOR:
            raise ValueError(f"this client speaks protocol {VERSION_MAJOR}.0 to {VERSION_MAJOR}.{VERSION_MINOR}")
        self.user = user
        self.password = password
        self.register_first = register
        self.presence = presence
        self.groups = groups
        self.coalescing = coalescing
        self.files = files
        self.e2e = e2e or secure is not None or keys is not None
        self.secure = secure
        self.keys = keys
        self.keys_error = ""  #: why ``keys`` could not open this device's keys (the driver stops)
        self.key_publish = 0  #: the request id of the KeyPublish in flight (0: none)
        #: FileChunk bytes sent and not yet answered, over every upload of this connection: the
        #: server allows ``transfer.UPLOAD_WINDOW`` (``client/transfer.py`` keeps to it)
        self.upload_bytes = 0
        self.version_minor = minor  #: the minor this client announces
        self.client = client
        self.device_id = device_id
        #: the device token for ``user`` from an earlier LoginOk (kept by the driver, privately):
        #: with it, this device's logins are throttled apart from others' guesses. A LoginOk
        #: replaces it; the driver should save the new one.
        self.device_token = device_token
        # with a device id, each Send carries a new client message id, so the server can tell a
        # resend from a new message; the driver seeds it (e.g. with the time in µs) so it grows
        # across restarts of the client too
        self._next_client_msg_id = client_msg_seed if device_id else 0
        self.state = ClientState.AWAIT_WELCOME
        self.welcome: Welcome | None = None
        self.pending: dict[int, Message] = {}  #: request id -> request awaiting its reply
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME)
        self._out: list[bytes] = []
        self._next_id = 0
        self.drop_repeats = drop_repeats  # False: show every delivery (tests of a server)
        self._seen: set[int] = set()  # message ids delivered lately, to drop a repeat
        self._seen_order: collections.deque[int] = collections.deque()

    # ---- input --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message]:
        """Take bytes from the server; return the messages they completed, in order.

        Raises:
            RemoteProtocolError: the server broke the protocol or speaks another
                major version; the connection should be closed.
        """
        events: list[Message] = []
        acks: dict[str, int] = {}
        for frame in self._decoder.feed(data):
            decoded = decode(frame, self.minor, self.version_minor)
            for msg in _unpacked(decoded):
                self._receive(msg, events, acks)
        if len(acks) > 1 and self.minor >= 5 and self.welcome is not None:  # several streams: Acks (1.5)
            self._out += acks_frames(acks, self.welcome.max_frame, self.welcome.window)
        else:
            for stream, position in acks.items():  # acknowledgements coalesce per batch
                self._out.append(encode(Ack(position, stream), self.minor))
        return events

    def _receive(self, msg: Message, events: list[Message], acks: dict[str, int]) -> None:
        """One message: the session's bookkeeping, then it joins ``events`` (unless a repeat)."""
        if isinstance(msg, Welcome):
            self._on_welcome(msg)
        elif isinstance(msg, Deliver) and msg.request_id:
            if msg.content_type == ContentType.ENVELOPE and self.secure is not None:
                if (opened := self.secure.open(msg)) is None:  # a page of history: shown, never acknowledged
                    return
                msg = opened
        elif isinstance(msg, Deliver):
            acks[msg.stream] = max(acks.get(msg.stream, 0), msg.position)
            if self.drop_repeats and msg.message_id in self._seen:
                return  # shown before (its ack was lost to a reconnect): acknowledge, don't repeat
            self._remember(msg.message_id)
            if msg.content_type == ContentType.ENVELOPE and self.secure is not None:
                if (opened := self.secure.open(msg)) is None:  # saved before the Ack this call queues
                    return  # taken in, not shown (acknowledged all the same)
                msg = opened
            elif msg.content_type in (ContentType.TEXT, ContentType.FILE_OFFER) and self.secure is not None:
                self.secure.check_clear(msg)
        elif isinstance(msg, KeyState) and self.secure is not None:
            if msg.request_id and msg.request_id == self.key_publish:
                self.key_publish = 0
            if (publish := self.secure.publication(msg)) is not None:
                self.key_publish = self.request(publish)
        elif isinstance(msg, KeyBundles) and self.secure is not None:
            self.secure.bundles(msg)
        elif isinstance(msg, LoginOk):
            self.state = ClientState.READY
            self.user = msg.user
            self.device_token = msg.device_token or self.device_token
            if self.secure is None and self.keys is not None:  # before the KeyState that follows
                try:
                    self.secure = self.keys()
                except (E2EError, VaultError) as exc:
                    self.keys_error = str(exc)
        if (isinstance(msg, _REPLIES) and msg.request_id) or (isinstance(msg, FileData) and msg.last):
            sent = self.pending.pop(msg.request_id, None)
            if isinstance(msg, Receipt) and isinstance(sent, Send) and self.secure is not None:
                self.secure.stored(sent, msg)  # our copy of what we sealed
        events.append(msg)

    def _remember(self, message_id: int) -> None:
        self._seen.add(message_id)
        self._seen_order.append(message_id)
        if len(self._seen_order) > SEEN_LIMIT:
            self._seen.discard(self._seen_order.popleft())

    def _on_welcome(self, msg: Welcome) -> None:
        if msg.version_major != VERSION_MAJOR:
            raise RemoteProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"server speaks protocol {msg.version_major}.{msg.version_minor}; this client speaks {VERSION_MAJOR}.x",
                fatal=True,
            )
        self.welcome = msg
        self.state = ClientState.AWAIT_LOGIN
        features: tuple[str, ...] = (Feature.PRESENCE.value,) if self.presence else ()
        if self.groups:
            features += (Feature.GROUPS.value,)
        if self.coalescing and self.minor >= 5 and Feature.COALESCING.value in msg.features:
            features += (Feature.COALESCING.value,)
        if self.files and self.minor >= FILES_MINOR and Feature.FILES.value in msg.features:
            features += (Feature.FILES.value,)
        if self.e2e and self.minor >= E2E_MINOR and Feature.E2E.value in msg.features:
            features += (Feature.E2E.value,)
        # the older of the server's minor and ours: what this session speaks either way
        self.request(Hello(VERSION_MAJOR, self.minor, features, self.client))
        self.pending.pop(self._next_id)  # Hello has no reply: only an Error if refused
        if self.user is not None:
            if self.register_first:
                self.register(self.user, self.password)
            else:
                self.login(self.user, self.password)

    @property
    def minor(self) -> int:
        """The minor this session speaks: the older of the server's (once its Welcome came) and ours."""
        if self.welcome is None:
            return self.version_minor
        return min(self.welcome.version_minor, self.version_minor)

    @property
    def has_groups(self) -> bool:
        """The server serves this session groups: both sides speak 1.4, it offered them, we asked."""
        return (
            self.groups
            and self.welcome is not None
            and self.minor >= 4
            and Feature.GROUPS.value in self.welcome.features
        )

    @property
    def has_files(self) -> bool:
        """The server keeps files for this session: both sides speak 1.6, it offered them, we asked."""
        welcome = self.welcome
        return (
            self.files and welcome is not None and self.minor >= FILES_MINOR and Feature.FILES.value in welcome.features
        )

    @property
    def has_e2e(self) -> bool:
        """The server keeps a key directory for this session: both speak 1.7, it offered it, we asked."""
        welcome = self.welcome
        return self.e2e and welcome is not None and self.minor >= E2E_MINOR and Feature.E2E.value in welcome.features

    # ---- output -------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes the driver must send now."""
        out, self._out = self._out, []
        return b"".join(out)

    def login(self, user: str, password: str) -> int:
        """Queue a Login; return its request id."""
        return self.request(Login(user, password, self.device_id, self.device_token))

    def register(self, user: str, password: str) -> int:
        """Queue a Register (create the account and log in); return its request id."""
        return self.request(Register(user, password, self.device_id))

    def send_repair(self, user: str) -> int:
        """Queue an end-to-end session repair to ``user`` (their keys fetched): an empty message
        that starts a new session, never shown (``envelope.REPAIR``)."""
        assert self.secure is not None
        cmid = self.new_client_msg_id()
        body = self.secure.seal(user.lower(), cmid, ev.REPAIR, b"")
        return self.request(Send(TargetKind.USER, ContentType.ENVELOPE, cmid, user, body))

    def send_text(self, target: str, text: str, kind: TargetKind = TargetKind.USER, client_msg_id: int = 0) -> int:
        """Queue a message to ``target`` (a user; with ``kind`` GROUP, a group's name or
        ``g:<id>``); return its request id. To a user with end-to-end keys (``secure``, after
        ``fetch_keys`` of the user and of ourselves), it goes encrypted (content type 2).
        ``client_msg_id``: the one it was given when it was first queued (0: a new one).

        Raises:
            crypto.device.E2EError: encryption is due and refused (see ``Secure.seal``).
        """
        cmid = client_msg_id or self.new_client_msg_id()
        if self.secure is not None and kind == TargetKind.USER and self.secure.wants_e2e(target.lower()):
            body = self.secure.seal(target.lower(), cmid, ev.TEXT, text.encode())
            return self.request(Send(kind, ContentType.ENVELOPE, cmid, target, body))
        if self.secure is not None and kind == TargetKind.GROUP:
            self.secure.clear_post_allowed(target)  # a group that had end-to-end posts: never in clear
        return self.request(Send(kind, ContentType.TEXT, cmid, target, text.encode()))

    def send_group_e2e(self, stream: str, members: list[str], text: str, client_msg_id: int = 0) -> int:
        """Queue an end-to-end post to the group ``stream`` (``members``: as GroupMembers said,
        their keys fetched): one Send of content type 2; return its request id.

        Raises:
            crypto.device.E2EError: see ``Secure.seal_group``.
        """
        assert self.secure is not None
        cmid = client_msg_id or self.new_client_msg_id()
        limit = self.welcome.max_text if self.welcome is not None else 0
        body = self.secure.seal_group(stream, members, cmid, ev.TEXT, text.encode(), limit)
        return self.request(Send(TargetKind.GROUP, ContentType.ENVELOPE, cmid, stream, body))

    def send_group_offer_e2e(self, stream: str, members: list[str], offer: Offer) -> int:
        """Queue an end-to-end file offer to the group ``stream``, as ``send_group_e2e`` does a
        text (inner type file offer: an encrypted file's key goes this way); return its request id.

        Raises:
            crypto.device.E2EError: see ``Secure.seal_group``.
        """
        assert self.secure is not None
        cmid = self.new_client_msg_id()
        limit = self.welcome.max_text if self.welcome is not None else 0
        body = self.secure.seal_group(stream, members, cmid, ev.FILE_OFFER, offer_body(offer), limit)
        return self.request(Send(TargetKind.GROUP, ContentType.ENVELOPE, cmid, stream, body))

    def forget_device(self, device: str = "") -> int:
        """Queue a KeyForget: take one of our devices ("": this one) out of the key directory
        (a lost laptop); answered by KeyState."""
        return self.request(KeyForget(device))

    def fetch_keys(self, user: str) -> int:
        """Queue a KeyFetch of ``user``'s devices (no one-time prekey spent on those we have a
        session with); answered by KeyBundles, which ``secure`` takes in."""
        known = self.secure.device.known(user.lower()) if self.secure is not None else ()
        return self.request(KeyFetch(user, known))

    def new_client_msg_id(self) -> int:
        """A fresh client message id (one per message, also for one queued to send later);
        0 without a device id."""
        if not self.device_id:
            return 0
        self._next_client_msg_id += 1
        return self._next_client_msg_id

    def who(self) -> int:
        """Queue a Who; return its request id."""
        return self.request(Who())

    def history(self, target: str, limit: int = 20, before: int = 0, kind: TargetKind = TargetKind.USER) -> int:
        """Queue a History request (a page of the conversation with ``target``, a user or,
        with ``kind`` GROUP, a group)."""
        return self.request(History(before, limit, kind, target))

    # ---- groups (1.4; answered by GroupInfo unless said otherwise) ----------------

    def group_create(self, name: str, invite_only: bool = False) -> int:
        """Queue a GroupCreate (we own it and are its first member)."""
        return self.request(GroupCreate(name, int(invite_only)))

    def group_join(self, group: str) -> int:
        """Queue a GroupJoin of ``group`` (its name or ``g:<id>``)."""
        return self.request(GroupJoin(group))

    def group_leave(self, group: str) -> int:
        """Queue a GroupLeave."""
        return self.request(GroupLeave(group))

    def group_add(self, group: str, users: tuple[str, ...] | list[str]) -> int:
        """Queue a GroupAdd of ``users`` (one event for all of them)."""
        return self.request(GroupAdd(group, tuple(users)))

    def group_remove(self, group: str, users: tuple[str, ...] | list[str]) -> int:
        """Queue a GroupRemove of ``users``."""
        return self.request(GroupRemove(group, tuple(users)))

    def group_rename(self, group: str, name: str) -> int:
        """Queue a GroupRename to ``name``."""
        return self.request(GroupRename(group, name))

    def group_list(self, mine: bool = True, after: str = "") -> int:
        """Queue a GroupList (ours, or every group we may see; by name, those after ``after``);
        answered by GroupListReply (cut short: its last entry's flags have bit 2)."""
        return self.request(GroupList(int(mine), after))

    def group_members(self, group: str) -> int:
        """Queue a GroupMembers; answered by GroupMembersReply."""
        return self.request(GroupMembers(group))

    def group_delete(self, group: str) -> int:
        """Queue a GroupDelete (the owner, or staff)."""
        return self.request(GroupDelete(group))

    def group_mute(self, group: str, users: tuple[str, ...] | list[str], seconds: int) -> int:
        """Queue a GroupMute of ``users`` for ``seconds`` (0 unmutes) (the owner, or staff)."""
        return self.request(GroupMute(group, tuple(users), seconds))

    def group_slow(self, group: str, seconds: int) -> int:
        """Queue a GroupSlow: a student posts at most once per ``seconds`` (0: off)."""
        return self.request(GroupSlow(group, seconds))

    def redact(self, group: str, position: int) -> int:
        """Queue a Redact of the message at ``position`` (staff; the owner; its sender)."""
        return self.request(Redact(group, position))

    # ---- the classroom (1.4, with groups): announcements and office hours -----------

    def announce(self, text: str, confirm: bool = False) -> int:
        """Queue an announcement (staff): a Send to ``g:0``, content type 4 with ``confirm``
        (it asks to be confirmed), else text; answered by a Receipt."""
        kind = ContentType.ASKS_CONFIRMATION if confirm else ContentType.TEXT
        return self.request(Send(TargetKind.GROUP, kind, self.new_client_msg_id(), ANNOUNCEMENTS, text.encode()))

    def confirm(self, position: int) -> int:
        """Queue a Confirm of the announcement at ``position``; answered by Confirmations."""
        return self.request(Confirm(position))

    def confirmed(self, position: int = 0) -> int:
        """Queue a Confirmed (staff; 0: the newest announcement that asks); answered by Confirmations."""
        return self.request(Confirmed(position))

    def raise_hand(self, question: str) -> int:
        """Queue a Hand raise (again: a new question, the same place); answered by HandPlace."""
        return self.request(Hand(HandOp.RAISE, question))

    def lower_hand(self) -> int:
        """Queue a Hand lower; answered by HandPlace (place 0)."""
        return self.request(Hand(HandOp.LOWER))

    def hand_queue(self) -> int:
        """Queue a HandQueue list (staff); answered by HandQueueReply."""
        return self.request(HandQueue(QueueOp.LIST))

    def take_next(self) -> int:
        """Queue a HandQueue take (staff): the first hand; HandQueueReply names the student."""
        return self.request(HandQueue(QueueOp.TAKE))

    # ---- files (1.6; the transfers themselves: ``client/transfer.py``) ------------------

    def file_upload(
        self, size: int, sha256: str, target: str, kind: TargetKind = TargetKind.USER, upload_id: str = ""
    ) -> int:
        """Queue a FileUpload (``upload_id``: resume that one); answered by FileState."""
        return self.request(FileUpload(size, sha256, kind, target, upload_id))

    def file_chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        """Queue a FileChunk; answered by FileState once the server wrote it."""
        return self.request(FileChunk(upload_id, offset, data))

    def file_get(self, upload_id: str, offset: int, length: int) -> int:
        """Queue a FileGet; answered by FileData frames, the last one marked."""
        return self.request(FileGet(upload_id, offset, length))

    def file_cancel(self, upload_id: str) -> int:
        """Queue a FileCancel; answered by FileState (CANCELLED)."""
        return self.request(FileCancel(upload_id))

    def send_offer(self, target: str, offer: Offer, kind: TargetKind = TargetKind.USER) -> int:
        """Queue the message that offers an uploaded file (content type 1); answered by a Receipt.
        To a user with end-to-end keys (``secure``) it goes sealed, as a text does (content type
        2); an encrypted file's offer, which carries its key, goes no other way.

        Raises:
            crypto.device.E2EError: sealing is due and refused, or an encrypted file's offer
                has no end-to-end conversation to go in.
        """
        body = offer_body(offer)
        cmid = self.new_client_msg_id()
        if self.secure is not None and kind == TargetKind.USER and self.secure.wants_e2e(target.lower()):
            sealed = self.secure.seal(target.lower(), cmid, ev.FILE_OFFER, body)
            return self.request(Send(kind, ContentType.ENVELOPE, cmid, target, sealed))
        if offer.encrypted:
            raise E2EError(f"an encrypted file's offer goes end-to-end only, and {target} is no such conversation")
        return self.request(Send(kind, ContentType.FILE_OFFER, cmid, target, body))

    def ping(self) -> int:
        """Queue a Ping (keep-alive); return its request id."""
        return self.request(Ping())

    @property
    def next_client_msg_id(self) -> int:
        """The counter's value: a new session of this device continues from here."""
        return self._next_client_msg_id

    def keepalive_interval(self) -> float | None:
        """Seconds of client silence after which to ping (a third of the idle timeout)."""
        if self.welcome is None:
            return None
        return self.welcome.idle_timeout_ms / 3000

    def request(self, msg: Message) -> int:
        """Queue any request with a fresh request id; return the id."""
        if self.state is ClientState.AWAIT_WELCOME:
            raise LocalProtocolError("wait for the server's Welcome before sending requests")
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # u32, never 0
        rid = self._next_id
        msg = dataclasses.replace(msg, request_id=rid)
        # first: a request that cannot be encoded (ValueError; LocalProtocolError for a frame newer
        # than the server speaks) is never pending
        data = encode(msg, self.minor)
        self.pending[rid] = msg
        self._out.append(data)
        return rid
