"""A blocking Python client: the API that tests, benchmarks and scripts share.

It is the pure ``ClientSession`` under the simplest possible driver: a blocking
socket with a timeout. Every message the server sends lands in an inbox; calls
that wait for a reply take it out by request id and leave the rest in order.

    with Client.connect("127.0.0.1", 5130, user="alice", password=pw) as alice:
        receipt = alice.send_text("bob", "hello")      # waits for the Receipt
        print(alice.who())                             # ['alice', 'bob']
        msg = alice.next_message(Deliver, timeout=5)   # a message for alice

With ``groups=True`` (protocol 1.4) the group calls answer with the typed replies:

        info = alice.group_create("lab-1")             # GroupInfo: stream "g:1", ...
        alice.group_add("lab-1", ["bob", "carol"])
        alice.send_text("lab-1", "hi all", kind=TargetKind.GROUP)
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, overload

from ..crypto.device import E2EError, UntrustedError
from ..protocol import (
    ANNOUNCEMENTS,
    VERSION_MINOR,
    Confirmations,
    Csce513Error,
    Deliver,
    Error,
    ErrorCode,
    GroupInfo,
    GroupListReply,
    GroupMembersReply,
    HandPlace,
    HandQueueReply,
    HistoryEnd,
    KeyBundles,
    KeyState,
    LoginOk,
    Message,
    Offer,
    Receipt,
    TargetKind,
    WhoReply,
)
from .downloads import PartialDownload, TransferError
from .sealed import Sealing
from .secure import Secure
from .session import ClientSession, ClientState
from .tls import wrap as wrap_tls
from .transfer import Download, Upload

M = TypeVar("M", bound=Message)
RETRY_FIRST = 0.2  #: seconds: the first pause before a login refused as RATE_LIMITED is tried again
RETRY_MOST = 5.0  #: ... doubling up to this


#: a transfer's progress: (bytes done, bytes in all)
Progress = Callable[[int, int], object]


def _trusted(secure: Secure, users: list[str]) -> None:
    """Raise UntrustedError for the first of ``users`` whose keys changed since they were trusted."""
    for user in users:
        contact = secure.device.contacts.get(user)
        if contact is not None and not contact.trusted:
            raise UntrustedError(user, contact.alerts)


class ServerError(Csce513Error):
    """The server answered a request with an Error."""

    def __init__(self, error: Error) -> None:
        try:
            name = ErrorCode(error.code).name
        except ValueError:
            name = str(error.code)
        super().__init__(f"{name}: {error.message}")
        self.code = error.code
        self.error = error
        #: (1.4) milliseconds to wait before the same request may succeed (MUTED, SLOW_MODE,
        #: RATE_LIMITED, AUTH_THROTTLED); 0: not known
        self.retry_after_ms = error.retry_after_ms


class ConnectionClosed(Csce513Error):  # noqa: N818 - an event, named as websockets' ConnectionClosed; public API
    """The server closed the connection."""


class Client:
    """A blocking connection to a csce513Msg server.

    Args:
        sock: a connected socket (see ``connect``).
        session: the pure session to drive.
        timeout: default seconds to wait for a reply.
    """

    def __init__(self, sock: socket.socket, session: ClientSession, timeout: float = 10.0) -> None:
        self.sock = sock
        self.session = session
        self.timeout = timeout
        self.inbox: deque[Message] = deque()
        self.closed = False
        self.login_reply: LoginOk | None = None  #: the server's answer to our login (role, waiting)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        user: str | None = None,
        password: str = "",
        register: bool = False,
        presence: bool = False,
        timeout: float = 10.0,
        tls: bool = False,
        fingerprint: str | None = None,
        ca: Path | None = None,
        known_servers: Path | None = None,
        device_id: str = "",
        device_token: str = "",
        rcvbuf: int = 0,
        drop_repeats: bool = True,
        groups: bool = False,
        minor: int = VERSION_MINOR,
        coalescing: bool = True,
        files: bool = True,
        secure: Secure | None = None,
    ) -> Client:
        """Connect, wait for the Welcome (the server's acknowledgement) and, if
        ``user`` is given, log in with ``password`` (or, with ``register``, create
        the account). With ``tls``, check the server's certificate first (see
        ``client.tls.wrap``: a fingerprint, a CA, or the pin on file). With ``groups``, ask
        for groups (1.4); ``minor`` announces an older protocol (to play an old client);
        ``coalescing`` False: no coalesced frames (1.5) even from a server that offers them
        (the messages are the same either way: the session unpacks them). With ``secure``
        (``Secure.from_vault``: this device's keys, for ``user`` on ``device_id``), direct
        messages to users with end-to-end keys go encrypted, and encrypted ones are opened.

        Raises:
            ServerError: the login was refused (AUTH_FAILED, NAME_TAKEN, ...).
            client.tls.TrustError: the certificate is not the one we trust.
            ConnectionClosed, OSError: the connection failed.
        """
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if rcvbuf:  # a small receive window (before connect): a slow reader, for tests
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock, _note = wrap_tls(sock, host, port, expected=fingerprint, ca=ca, known_servers=known_servers)
        seed = time.time_ns() // 1000
        session = ClientSession(
            presence=presence, device_id=device_id, device_token=device_token, client_msg_seed=seed,
            drop_repeats=drop_repeats, groups=groups, minor=minor, coalescing=coalescing, files=files,
            secure=secure,
        )  # fmt: skip
        client = cls(sock, session, timeout)
        client._wait(lambda: client.session.state is not ClientState.AWAIT_WELCOME, timeout)
        if user is not None:
            try:
                client.login(user, password, register=register)
            except BaseException:
                client.close()
                raise
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        if not self.closed:
            self.closed = True
            self.sock.close()
            if self.session.secure is not None:
                self.session.secure.close()

    # ---- requests ------------------------------------------------------------------

    def login(self, user: str, password: str, register: bool = False) -> LoginOk:
        """Log in as ``user`` (with ``register``: create the account first); raise ServerError
        if refused. A busy server's RATE_LIMITED (logins wait their turn for a password hash)
        is tried again after a random, growing pause ("full jitter", so many clients refused
        together do not come back together), for up to the client's timeout. The LoginOk's
        device token is in ``session.device_token``: keep it for the next ``connect``."""
        deadline = time.monotonic() + self.timeout
        pause = RETRY_FIRST
        while True:
            rid = self.session.register(user, password) if register else self.session.login(user, password)
            try:
                self.login_reply = self.request(rid, LoginOk)
                self._keys_published()
                return self.login_reply
            except ServerError as exc:
                if exc.code != ErrorCode.RATE_LIMITED or time.monotonic() + pause > deadline:
                    raise
            time.sleep(random.uniform(0, pause))
            pause = min(pause * 2, RETRY_MOST)

    def _keys_published(self) -> None:
        """With end-to-end encryption: wait for the directory's word on this device (the KeyState
        after the login) and for the keys it then publishes, so others can reach it at once."""
        if self.session.secure is None or not self.session.has_e2e:
            return
        self.next_message(lambda m: isinstance(m, KeyState) and m.request_id == 0)
        if self.session.key_publish:
            self.request(self.session.key_publish, KeyState)

    def send_text(self, target: str, text: str, kind: TargetKind = TargetKind.USER) -> Receipt:
        """Send a message (direct; with ``kind`` GROUP, to a group) and wait for its Receipt;
        raise ServerError if refused. With end-to-end encryption, the device lists of the
        recipient and of ourselves are read first, once a connection.

        Raises:
            crypto.device.E2EError: the message must go encrypted and cannot (and was not sent).
        """
        secure = self.session.secure
        if secure is not None and kind == TargetKind.USER and not secure.ready(target.lower()):
            for user in {target.lower(), secure.device.user}:
                self.fetch_keys(user)
        if secure is not None and kind == TargetKind.GROUP and target not in (ANNOUNCEMENTS, "announcements"):
            group = self.group_members(target)  # who reads it now: the sender key follows them
            secure.group_named(target, group.stream)
            for user in {*group.users, secure.device.user} - secure.fetched:
                self.fetch_keys(user)
            if secure.wants_e2e_group(group.stream, group.users):
                return self.request(self.session.send_group_e2e(group.stream, list(group.users), text), Receipt)
        return self.request(self.session.send_text(target, text, kind), Receipt)

    def fetch_keys(self, user: str) -> KeyBundles:
        """Read ``user``'s devices from the key directory (the session's ``secure`` takes them in)."""
        return self.request(self.session.fetch_keys(user), KeyBundles)

    def forget_device(self, device: str) -> KeyState:
        """Take one of your devices out of the key directory (a lost laptop): nobody can start a
        session with it any more."""
        return self.request(self.session.forget_device(device), KeyState)

    def trust(self, user: str) -> None:
        """Accept ``user``'s devices as they are now (after comparing safety numbers)."""
        assert self.session.secure is not None, "connect with secure= first"
        self.session.secure.trust(user.lower())

    def trust_group(self, group: str) -> None:
        """Accept ``group``'s members as they are now (a post waits after someone joined)."""
        assert self.session.secure is not None, "connect with secure= first"
        members = self.group_members(group)
        self.session.secure.trust_members(members.stream, members.users)

    def who(self) -> list[str]:
        """Return the users online."""
        return list(self.who_reply().users)

    def who_reply(self) -> WhoReply:
        """Return the users online with their session counts and roles."""
        return self.request(self.session.who(), WhoReply)

    def call(self, msg: Message, timeout: float | None = None) -> Message:
        """Send any request and return its reply; raise ServerError on an Error."""
        rid = self.session.request(msg)
        self.flush()
        reply = self.next_message(lambda m: m.request_id == rid, timeout=timeout)
        if isinstance(reply, Error):
            raise ServerError(reply)
        return reply

    def history(
        self, target: str, limit: int = 20, before: int = 0, kind: TargetKind = TargetKind.USER
    ) -> tuple[list[Deliver], HistoryEnd]:
        """A page of the conversation with ``target`` (a user; with ``kind`` GROUP, a group),
        oldest first, and its HistoryEnd."""
        rid = self.session.history(target, limit, before, kind)
        self.flush()
        reply = self.next_message(lambda m: m.request_id == rid and isinstance(m, (HistoryEnd, Error)))
        if isinstance(reply, Error):
            raise ServerError(reply)
        if not isinstance(reply, HistoryEnd):  # cannot be: the test above took only these two
            raise Csce513Error(f"expected HistoryEnd, got {reply!r}")
        page = [m for m in self.inbox if isinstance(m, Deliver) and m.request_id == rid]  # they came before it
        for msg in page:
            self.inbox.remove(msg)
        return page, reply

    # ---- groups (1.4: connect with groups=True); ServerError if refused ------------------

    def group_create(self, name: str, invite_only: bool = False) -> GroupInfo:
        """Create the group ``name``, owned by us, its first member."""
        return self.request(self.session.group_create(name, invite_only), GroupInfo)

    def group_join(self, group: str) -> GroupInfo:
        """Join ``group`` (its name or ``g:<id>``); a member already: position 0."""
        return self.request(self.session.group_join(group), GroupInfo)

    def group_leave(self, group: str) -> GroupInfo:
        """Leave ``group``: nothing posted after it reaches any of our sessions."""
        return self.request(self.session.group_leave(group), GroupInfo)

    def group_add(self, group: str, users: tuple[str, ...] | list[str]) -> GroupInfo:
        """Add ``users`` (the owner or an instructor): one event."""
        return self.request(self.session.group_add(group, users), GroupInfo)

    def group_remove(self, group: str, users: tuple[str, ...] | list[str]) -> GroupInfo:
        """Remove ``users`` (the owner or an instructor): one event."""
        return self.request(self.session.group_remove(group, users), GroupInfo)

    def group_rename(self, group: str, name: str) -> GroupInfo:
        """Rename ``group`` to ``name`` (the owner or an instructor); its stream stays."""
        return self.request(self.session.group_rename(group, name), GroupInfo)

    def group_list(self, mine: bool = True, after: str = "") -> GroupListReply:
        """Our groups (``mine``), or every group we may see, by name from after ``after``: one
        reply, which may be cut (its last entry's flags bit 2: ask again after its name)."""
        return self.request(self.session.group_list(mine, after), GroupListReply)

    def group_members(self, group: str) -> GroupMembersReply:
        """``group``'s members with their roles and online sessions."""
        return self.request(self.session.group_members(group), GroupMembersReply)

    def group_delete(self, group: str) -> GroupInfo:
        """Delete ``group`` (the owner, or staff): its members are told, its name is free."""
        return self.request(self.session.group_delete(group), GroupInfo)

    def group_mute(self, group: str, users: tuple[str, ...] | list[str], seconds: int) -> GroupInfo:
        """Mute ``users`` for ``seconds`` (0 unmutes) (the owner, or staff; not staff or the owner)."""
        return self.request(self.session.group_mute(group, users, seconds), GroupInfo)

    def group_slow(self, group: str, seconds: int) -> GroupInfo:
        """Slow mode: a student posts at most once per ``seconds`` (0: off) (the owner, or staff)."""
        return self.request(self.session.group_slow(group, seconds), GroupInfo)

    def redact(self, group: str, position: int) -> GroupInfo:
        """Remove the message at ``position`` (staff; the owner; its sender): a tombstone in its place."""
        return self.request(self.session.redact(group, position), GroupInfo)

    # ---- the classroom (1.4: connect with groups=True); ServerError if refused ----------

    def announce(self, text: str, confirm: bool = False) -> Receipt:
        """Post an announcement (staff); with ``confirm``, one that asks to be confirmed."""
        return self.request(self.session.announce(text, confirm), Receipt)

    def confirm(self, position: int) -> Confirmations:
        """Confirm the announcement at ``position`` (it must ask): the answer lists only us."""
        return self.request(self.session.confirm(position), Confirmations)

    def confirmed(self, position: int = 0) -> Confirmations:
        """Who confirmed the announcement at ``position`` (0: the newest that asks), who has not (staff)."""
        return self.request(self.session.confirmed(position), Confirmations)

    def raise_hand(self, question: str) -> HandPlace:
        """Raise a hand (not staff): our place in the queue."""
        return self.request(self.session.raise_hand(question), HandPlace)

    def lower_hand(self) -> HandPlace:
        """Lower our hand (place 0)."""
        return self.request(self.session.lower_hand(), HandPlace)

    def hand_queue(self) -> HandQueueReply:
        """The queue, first first (staff)."""
        return self.request(self.session.hand_queue(), HandQueueReply)

    def take_next(self) -> HandQueueReply:
        """Take the first hand (staff): ``taken`` names the student ("" for an empty queue)."""
        return self.request(self.session.take_next(), HandQueueReply)

    # ---- files (1.6) ---------------------------------------------------------------

    def upload_file(
        self, path: Path, target: str, kind: TargetKind = TargetKind.USER, upload_id: str = "",
        progress: Progress | None = None, sealing: Sealing | None = None,
    ) -> Upload:  # fmt: skip
        """Upload the file at ``path`` for the conversation with ``target`` (``upload_id``: resume
        that upload); return it once the server has every byte. Raise ServerError if refused.

        With end-to-end encryption (``secure``), a file for a user or a group whose conversation
        is end-to-end (as ``send_text`` decides) goes encrypted under a fresh key
        (``client/sealed.py``): the server is sent only its ciphertext. ``upload.sealing`` then
        holds the key: to resume that upload, pass it back as ``sealing`` with the
        ``upload_id``; keep it private, and no longer than that.

        Raises:
            crypto.device.E2EError: the file must go encrypted and cannot (the recipient's keys
                changed: ``trust`` first), or ``sealing`` is given for a conversation that is
                not end-to-end.
            ValueError: resuming an encrypted upload without its ``sealing``.
            client.sealed.FileChangedError: ``sealing`` is for another file than ``path``'s.
        """
        if self._end_to_end(target, kind):
            if sealing is None and upload_id:
                raise ValueError("an end-to-end upload resumes with its sealing (upload.sealing) only")
            if sealing is None:
                sealing = Sealing.fresh()
        elif sealing is not None:
            raise E2EError(f"{target} is no end-to-end conversation: an encrypted file's key could not reach it")
        upload = Upload(self.session, path, target, kind, upload_id, sealing=sealing)
        self._drive(upload, lambda: progress(upload.acked, upload.size) if progress else None)
        if upload.error is not None:
            raise ServerError(upload.error)
        return upload

    def send_file(
        self, target: str, path: Path, kind: TargetKind = TargetKind.USER, progress: Progress | None = None
    ) -> tuple[Upload, Receipt]:
        """Upload a file, then post its offer to ``target``: the server's Receipt for the offer.
        In an end-to-end conversation (direct, or a group whose members all have keys) both are
        encrypted (``upload_file``): the offer, with the file's name and key, goes as an
        end-to-end message (to a group: under our sender key, to its members at that moment)."""
        upload = self.upload_file(path, target, kind, progress=progress)
        if kind == TargetKind.GROUP and upload.sealing is not None:
            group = self._e2e_group(target)  # the members now: the offer's key goes to them
            if group is None:
                raise E2EError(f"{target}: a member without end-to-end keys joined during the upload: no offer sent")
            rid = self.session.send_group_offer_e2e(group.stream, list(group.users), upload.offer())
            return upload, self.request(rid, Receipt)
        return upload, self.request(self.session.send_offer(target, upload.offer(), kind), Receipt)

    def download(self, offer: Offer, directory: Path, progress: Progress | None = None) -> Path:
        """Fetch an offered file into ``directory`` (resuming a partial one there); return its
        path once its size and hash are checked. Raise TransferError if it fails (the partial
        file is removed then; a lost connection keeps it for a resume). An encrypted offer's
        file (one opened by ``secure``: it carries the key) is decrypted chunk by chunk as it
        comes; a chunk that does not authenticate fails it."""
        size, sha256 = offer.file_size, offer.file_sha256
        partial = PartialDownload.open(directory, offer.upload_id, offer.name, size, sha256)
        try:
            download = Download(self.session, offer, partial)
            self._drive(download, lambda: progress(download.received, size) if progress else None)
        except BaseException:
            partial.close()
            raise
        if download.path is None:
            raise TransferError(download.error)
        return download.path

    def _end_to_end(self, target: str, kind: TargetKind) -> bool:
        """Whether a file for ``target`` (a user, or a group) goes end-to-end encrypted: the
        device lists read first, as ``send_text`` does; a contact whose keys changed is refused
        before any byte is uploaded."""
        if kind == TargetKind.GROUP:
            return self._e2e_group(target) is not None
        secure, user = self.session.secure, target.lower()
        if secure is None or kind != TargetKind.USER:
            return False
        if not secure.ready(user):
            for who in {user, secure.device.user}:
                self.fetch_keys(who)
        if not secure.wants_e2e(user):
            return False
        _trusted(secure, [user])
        return True

    def _e2e_group(self, target: str) -> GroupMembersReply | None:
        """The members of the group ``target`` (their devices read) if a post there goes
        end-to-end now, else None (no ``secure``, the announcements, a member without keys)."""
        secure = self.session.secure
        if secure is None or target in (ANNOUNCEMENTS, "announcements"):
            return None
        group = self.group_members(target)  # who reads it now: the sender key follows them
        for user in {*group.users, secure.device.user} - secure.fetched:
            self.fetch_keys(user)
        if not secure.wants_e2e_group(group.stream, group.users):
            return None
        _trusted(secure, [u for u in group.users if u != secure.device.user])
        return group

    def _drive(self, transfer: Upload | Download, moved: Callable[[], object]) -> None:
        """Send and read until ``transfer`` is done; other messages wait in the inbox."""
        while not transfer.done:
            self.flush()
            self.next_message(transfer.handle)
            moved()
        self.flush()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for tests of malformed input)."""
        self.sock.sendall(data)

    def request(self, rid: int, reply_type: type[M], timeout: float | None = None) -> M:
        """Send what the session queued and wait for the reply to request ``rid``."""
        self.flush()
        reply = self.next_message(lambda m: m.request_id == rid, timeout=timeout)
        if isinstance(reply, Error):
            raise ServerError(reply)
        if not isinstance(reply, reply_type):
            raise Csce513Error(f"expected {reply_type.__name__}, got {reply!r}")
        return reply

    def flush(self) -> None:
        """Send whatever the session has queued (requests, acknowledgements)."""
        data = self.session.data_to_send()
        if data:
            self.sock.sendall(data)

    # ---- waiting ---------------------------------------------------------------------

    @overload
    def next_message(self, match: type[M], timeout: float | None = None) -> M: ...

    @overload
    def next_message(self, match: Callable[[Message], bool] | None = None, timeout: float | None = None) -> Message: ...

    def next_message(
        self, match: type[M] | Callable[[Message], bool] | None = None, timeout: float | None = None
    ) -> Message:
        """Return the first message in the inbox (waiting for it) that matches:
        a message class, a predicate, or None for any.

        Raises:
            TimeoutError: nothing matched within ``timeout`` seconds.
            ConnectionClosed: the server closed the connection first.
        """
        if match is None:
            test: Callable[[Message], bool] = lambda m: True  # noqa: E731
        elif isinstance(match, type):
            kind = match
            test = lambda m: isinstance(m, kind)  # noqa: E731
        else:
            test = match
        found: list[Message] = []

        def pick() -> bool:
            for msg in self.inbox:
                if test(msg):
                    self.inbox.remove(msg)
                    found.append(msg)
                    return True
            return False

        self._wait(pick, self.timeout if timeout is None else timeout)
        return found[0]

    def deliveries(self, count: int, timeout: float | None = None) -> list[Deliver]:
        """Wait for ``count`` deliveries and return them in arrival order."""
        return [self.next_message(Deliver, timeout) for _ in range(count)]

    def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except ssl.SSLError as exc:
                raise ConnectionClosed(f"TLS error: {exc.reason or exc}") from None
            if not data:
                raise ConnectionClosed("the server closed the connection")
            self.inbox.extend(self.session.receive_data(data))
            self.flush()  # acknowledgements the session queued
