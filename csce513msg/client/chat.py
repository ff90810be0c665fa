"""What ``msg`` does, whichever loop drives it: conversations, commands, receipts.

``ChatClient`` holds the state of a run and the rules a user sees: where a plain line
goes, what a receipt means, what a command typed while disconnected answers. It prints
through a ``View`` and never touches a socket or the keyboard: the teaching loop
(``client/terminal.py``, select/poll/epoll by hand) and the interactive mode
(``client/interactive.py``, prompt_toolkit's asyncio loop) both drive it with the same
steps (``client/steps.py``: ``receive``, ``transmit``, ``lost``, ``reconnected``), so the
two loops differ only in how they wait. Lines go to a ``View`` (``client/view.py``).

This module is the core: direct conversations, sending, receipts, history, errors, and
the dispatch of what arrives and what is typed. Groups and their moderation are in
``client/groups.py``, the classroom (announcements, office hours) in
``client/classroom.py``, the wording of times and counts in ``client/words.py``: each
is plain functions of the ``ChatClient``, called from here.

Everything from the network is printed through ``sanitize.inert``: a View receives
literal, inert text and never runs it through markup.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import math
import socket
import struct
import time
from dataclasses import dataclass

from ..crypto.device import E2EError
from ..protocol import (
    ANNOUNCEMENTS,
    WAITING_CAP,
    Confirmations,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    GroupInfo,
    GroupListReply,
    GroupMembersReply,
    HandPlace,
    HandQueueReply,
    HistoryEnd,
    LoginOk,
    Message,
    Presence,
    Receipt,
    ReceiptState,
    Send,
    TargetKind,
    Welcome,
    WhoReply,
)
from ..protocol.names import fold_name
from .classroom import (
    CLASSROOM,
    HELP_STAFF,
    HELP_STUDENT,
    STAFF,
    classroom_command,
    show_announcement,
    show_confirmations,
    show_hand_place,
    show_hand_queue,
)
from .downloads import default_downloads_dir
from .files import Outbox, Unsent
from .groups import (
    CHANGES,
    GROUP_COMMANDS,
    GROUP_USAGE,
    HELP_GROUPS,
    group_command,
    show_group_event,
    show_group_info,
    show_group_list,
    show_group_members,
)
from .history import history_command, more_command, show_history_end
from .privacy import (
    E2E_COMMANDS,
    HELP_E2E,
    LOCK,
    Privacy,
    conversation_note,
    e2e_command,
    is_private,
    notice,
    privacy_message,
    send_private,
)
from .sanitize import inert, inert_name
from .session import ClientSession, ClientState
from .sharing import FILE_COMMANDS, HELP_FILES, Sharing, file_command, offer_delivered, transfer_message
from .view import Style, View
from .words import clock, code_name, count_waiting, day_of, duration, partner_of, plural, split_target

#: this module's names, and those other modules import from here though groups.py and words.py define them
__all__ = ["COMMANDS", "HELP", "MARKS", "ChatClient", "Outgoing", "GROUP_COMMANDS", "code_name", "plural"]

COMMANDS = (
    "/msg", "/to", "/who", "/history", "/more", *GROUP_USAGE, *CLASSROOM, *FILE_COMMANDS, *E2E_COMMANDS, "/help",
    "/quit",
)  # fmt: skip

HELP = f"""commands:
  /msg USER TEXT     send TEXT to USER, who becomes your conversation
  /to USER           talk to USER: plain lines go there
  TEXT               send to your conversation
  /who               who is online
  /history [USER] [N] the last N (20) messages with USER or #GROUP (default: your conversation)
  /more              earlier messages (after /history)
 {HELP_GROUPS}
{HELP_FILES}
{HELP_E2E}
  /help              this help
  /quit              leave (what the server has not stored yet is kept and sent next time)"""

#: two columns each: a line keeps its width
MARKS = {"sending": " ·", "stored": " ✓", "delivered": "✓✓", "failed": " ✗"}


@dataclass(slots=True)
class Outgoing:
    """A message you sent, as long as its line may change."""

    to: str
    text: str
    time_us: int
    key: int
    state: str = "sending"
    position: int = 0  #: its place in the stream, once stored (a group message shows it: /delete #lab/5)
    private: bool = False  #: it went end-to-end encrypted


class ChatClient:
    """The run's state: the session, your conversations, what you sent."""

    def __init__(self, session: ClientSession, view: View, *, live: bool = False, verbose: bool = False) -> None:
        self.sock: socket.socket | None = None
        self.session = session
        self.view = view
        self.live = live  #: the View rewrites lines: a sent message is one line whose mark changes
        self.verbose = verbose  #: ids and every state change, even where lines cannot be rewritten
        self.partner: str | None = None  #: the current conversation: where a plain line goes
        self.unread: dict[str, int] = {}  #: messages from others than the current conversation
        self.known: set[str] = set()  #: user names seen (for completion)
        self.groups: dict[str, str] = {}  #: stream g:<id> -> the group's name, as last seen (for completion)
        self.group_requests: dict[int, tuple[str, str]] = {}  #: request id -> (what was asked: "created"..., group)
        self.sent: dict[int, Outgoing] = {}  #: request id -> message awaiting its receipt
        self.by_id: dict[int, Outgoing] = {}  #: message id -> message whose delivery is awaited
        self.reverts: dict[int, str | None] = {}  #: request id -> the conversation before it
        self._keys = itertools.count(1)  #: a sent message's line, across connections (request ids restart)
        self.history_more: tuple[str, int] | None = None  #: (user, first position) for /more
        self.history_for: dict[int, str] = {}  #: request id -> whose history
        self.deferred_more = 0  #: /more typed while a page was on its way
        self.last_day = ""
        self.commands: list[str] = []  #: lines read before the login finished
        self.queued: list[Unsent] = []  #: messages typed while disconnected, or left from a run before
        self.outbox: Outbox | None = None
        self.failures = 0
        self.input_done = False
        self.finished = False
        self.last_send = time.monotonic()
        self.online = True  #: False between a lost connection and the next one
        self.ever_ready = False  #: logged in once: a lost connection is worth reconnecting
        self.retry_at = 0.0  #: when to try to reconnect
        self.lost_at = 0.0  #: when the connection was lost (0: it is up)
        self.backoff = 0.5  #: the longest wait before the next attempt (drawn at random), doubling up to 5
        self.resend: list[Send] = []  #: unacknowledged sends of the last connection
        self.backlog = b""  #: bytes the kernel did not take yet (interactive: sent when writable)
        self.server_key = ""  #: "host:port", under which the device token is kept
        self.busy = False  #: the server refused the login as busy: retrying quietly until a LoginOk
        self.role = ""  #: this user's role, from LoginOk: /help lists what it may do
        self.last_ask = 0  #: the position of the newest announcement seen that asks to be confirmed
        self.classroom: dict[int, str] = {}  #: request id -> the command that asked ("/confirm"...)
        #: the raised hands as the last queue said (staff): a pushed queue is shown as what changed
        self.hands: dict[str, str] = {}
        self.sharing = Sharing(default_downloads_dir())  #: files offered, sent, received (``client/sharing.py``)
        self.privacy = Privacy()  #: what waits for the key directory (``client/privacy.py``)

    # ---- what waits to be sent ------------------------------------------------------------

    def unacknowledged(self) -> list[Send]:
        """Sends the server has not answered: they go again, with the same client ids."""
        return [m for m in self.session.pending.values() if isinstance(m, Send)]

    def waiting(self) -> list[Unsent]:
        """Everything the server has not stored yet: sent but unanswered (on this connection, or
        the last one: after a loss the old session's pending and ``resend`` hold the same sends),
        and queued; each once, in order."""
        sends = [*self.resend, *self.unacknowledged()]
        unsent: dict[object, Unsent] = {}
        for m in sends:  # a client message id names one message (0: no device id, every one apart)
            if m.content_type == ContentType.FILE_OFFER:
                continue  # resent on this run (``resend``), never kept as text: a later run cannot resume its upload
            to = "#" + m.target if m.target_kind == TargetKind.GROUP else m.target
            if m.content_type == ContentType.ENVELOPE:  # its text is ours (kept with its line), its bytes as sent
                out = self.sent.get(m.request_id)
                text, envelope = (out.text if out else ""), base64.b64encode(m.body).decode()
                unsent[m.client_msg_id or object()] = Unsent(to, text, m.client_msg_id, envelope)
                continue
            unsent[m.client_msg_id or object()] = Unsent(to, m.body.decode(errors="replace"), m.client_msg_id)
        for u in self.queued:
            unsent[u.client_msg_id or object()] = u
        for held in (self.privacy.waiting, self.privacy.untrusted):  # for the key directory, or for /trust
            for to, items in held.items():
                unsent.update((cmid or object(), Unsent(to, text, cmid)) for text, cmid in items)
        return list(unsent.values())

    def keep_waiting(self) -> None:
        """Save what waits to the outbox on disk (or clear it): the next run sends it."""
        if self.outbox is not None:
            self.outbox.save(self.waiting())

    def _settled(self) -> None:
        """A kept message was stored (or refused): the outbox on disk must not send it again."""
        if self.outbox is not None and self.outbox.path.exists():
            self.keep_waiting()

    def resend_unacknowledged(self) -> None:
        """After a login: what the last connection left unanswered, then what was queued.
        The server recognises what it had already stored by the client message id."""
        for send in self.resend:
            old = self.sent.pop(send.request_id, None)
            rid = self.session.request(dataclasses.replace(send, request_id=0))
            if old is not None:
                self.sent[rid] = old
            if send.request_id in self.reverts:
                self.reverts[rid] = self.reverts.pop(send.request_id)
        self.resend = []
        queued, self.queued = self.queued, []
        for unsent in queued:
            if not unsent.envelope and send_private(self, unsent.to, unsent.text, unsent.client_msg_id):
                continue  # end to end: sealed once the directory answered
            kind, target = split_target(unsent.to)
            try:
                if unsent.envelope:  # sealed in an earlier run: the same bytes again
                    body = base64.b64decode(unsent.envelope, validate=True)
                    rid = self.session.request(Send(kind, ContentType.ENVELOPE, unsent.client_msg_id, target, body))
                else:  # sealed now if its conversation is end to end (never in clear where it was)
                    rid = self.session.send_text(target, unsent.text, kind, unsent.client_msg_id)
            except E2EError as exc:
                self.local_error(f"a kept message to {inert_name(unsent.to)} was not sent: {inert(str(exc))}")
                continue
            except (ValueError, struct.error) as exc:  # a poisoned outbox (a file edited by hand): drop it, say so
                self.local_error(f"a kept message to {inert_name(unsent.to)} cannot be sent: {exc}")
                continue
            self.sending(rid, unsent.to, unsent.text)

    def sending(self, rid: int, to: str, text: str) -> Outgoing:
        """A message on its way under request ``rid`` (a Send, an /announce): its line, kept
        until its receipts come."""
        send = self.session.pending.get(rid)
        private = isinstance(send, Send) and send.content_type == ContentType.ENVELOPE
        out = self.sent[rid] = Outgoing(to, text, int(time.time() * 1e6), self.new_key(), private=private)
        if self.live:  # the line now, its mark changes in place; plain: shown once stored
            self.date_line(out.time_us)
            self.view.show(self._sent_line(out), style=Style.SELF, key=out.key)
        return out

    # ---- from the server ----------------------------------------------------------------------

    def new_key(self) -> int:
        """A key for a line that may be rewritten (a sent message, a transfer's progress)."""
        return next(self._keys)

    def on_message(self, msg: Message) -> None:
        if self.sharing.items and transfer_message(self, msg):
            return
        if self.session.secure is not None and privacy_message(self, msg):
            return
        if isinstance(msg, Deliver):
            self._deliver(msg)
        elif isinstance(msg, Receipt):
            self._receipt(msg)
        elif isinstance(msg, HistoryEnd):
            show_history_end(self, msg)
        elif isinstance(msg, Error):
            self.show_error(msg)
        elif isinstance(msg, Presence):
            self.known.add(msg.user)
            what = "is online" if msg.online else "went offline"
            self.view.show(f"* {inert_name(msg.user)} {what}", event="presence", user=msg.user, online=bool(msg.online))
        elif isinstance(msg, WhoReply):
            self.known.update(msg.users)
            names = [_who_entry(u, n, r) for u, n, r in itertools.zip_longest(msg.users, msg.sessions, msg.roles)]
            sessions = dict(zip(msg.users, msg.sessions, strict=False))
            self.view.show("online: " + inert_name(", ".join(names)), event="who", users=list(msg.users),
                           sessions=sessions)  # fmt: skip
        elif isinstance(msg, GroupInfo):
            show_group_info(self, msg)
        elif isinstance(msg, GroupListReply):
            show_group_list(self, msg)
        elif isinstance(msg, GroupMembersReply):
            show_group_members(self, msg)
        elif isinstance(msg, Confirmations):
            show_confirmations(self, msg)
        elif isinstance(msg, HandPlace):
            show_hand_place(self, msg)
        elif isinstance(msg, HandQueueReply):
            show_hand_queue(self, msg)
        elif isinstance(msg, LoginOk):
            self.role = msg.role
            away = f"; {count_waiting(msg.waiting)} arrived while you were away" if msg.waiting else ""
            self.view.show(
                f"logged in as {inert_name(msg.user)} ({inert_name(msg.role or 'student')}){away}; /help for commands",
                event="login", user=msg.user, role=msg.role, waiting=msg.waiting,
                waiting_or_more=msg.waiting >= WAITING_CAP,
            )  # fmt: skip
        elif isinstance(msg, Welcome):
            self.view.show(
                f"connected to {inert_name(msg.server)} (protocol {msg.version_major}.{msg.version_minor})",
                event="welcome", server=msg.server, version=f"{msg.version_major}.{msg.version_minor}",
            )  # fmt: skip

    def date_line(self, time_us: int) -> None:
        day = day_of(time_us)
        if day != self.last_day:
            self.last_day = day
            self.view.show(f"--- {day} ---", style=Style.DATE)

    def _deliver(self, msg: Deliver) -> None:
        text = msg.body.decode(errors="replace")
        history = bool(msg.request_id)
        self.known.add(msg.sender)
        group = msg.target_kind == TargetKind.GROUP
        if group:
            self.groups[msg.stream] = msg.target
        if group and msg.content_type == ContentType.GROUP_EVENT:
            return show_group_event(self, msg)
        self.date_line(msg.time_us)
        if group and msg.stream == ANNOUNCEMENTS:
            return show_announcement(self, msg, text)
        me = self.session.user
        conversation = "#" + msg.target if group else msg.sender  # where an answer goes
        place = f"{conversation}/{msg.position}"  # how /delete names a group message
        if msg.sender == me:  # my own message: another of my sessions sent it, or a page of history
            who = f"you -> {inert_name(place if group else msg.target)}"
            style = Style.SELF
        else:
            who = (inert_name(place) + " " if group else "") + inert_name(msg.sender)
            style = Style.OTHER
            if not history:
                if self.partner is None:
                    self.partner = conversation  # the first to write becomes the conversation
                elif conversation != self.partner:
                    self.unread[conversation] = self.unread.get(conversation, 0) + 1
        if msg.content_type == ContentType.ENVELOPE and notice(self, msg.message_id, msg.sender):
            return None  # could not be opened: the notice said so, without content
        private = is_private(self, msg.message_id)
        prefix = f"[{clock(msg.time_us)}] {who}{' ' + LOCK if private else ''}: "
        if msg.content_type == ContentType.FILE_OFFER:
            return offer_delivered(self, msg, who, prefix)
        human = prefix + inert(text, indent=" " * len(prefix))
        if self.verbose:
            human += f"  (#{msg.message_id}, {inert_name(msg.stream)} @{msg.position})"
        self.view.show(human, style=style, event="deliver", sender=msg.sender, to=msg.target, text=text,
                       id=msg.message_id, time_us=msg.time_us, stream=msg.stream, position=msg.position,
                       history=history, group=group, e2e=private)  # fmt: skip
        return None

    def _sent_line(self, out: Outgoing) -> str:
        to = f"{out.to}/{out.position}" if out.position and out.to.startswith("#") else out.to
        lock = " " + LOCK if out.private else ""
        prefix = f"{MARKS.get(out.state, '  ')} [{clock(out.time_us)}] you -> {inert_name(to)}{lock}: "
        return prefix + inert(out.text, indent=" " * len(prefix))

    def _receipt(self, msg: Receipt) -> None:
        state = ReceiptState(msg.state).name.lower() if msg.state in ReceiptState._value2member_map_ else str(msg.state)

        def emit(human: str, to: str, key: int | None = None) -> None:
            self.view.show(human, style=Style.SELF, key=key, event="receipt", to=to, state=state, detail=msg.detail,
                           id=msg.message_id, request=msg.request_id, position=msg.position)  # fmt: skip

        out = self.sent.pop(msg.request_id, None) if msg.request_id else self.by_id.pop(msg.message_id, None)
        if out is None:  # a later state of a message sent before (by an earlier run, or another session)
            to = self.conversation_of(msg.stream)
            verbose = f"   {state}: an earlier message to {inert_name(to)} (#{msg.message_id})"
            emit(verbose if self.verbose else "", to)  # a plain View prints nothing for "" (--json does)
            return
        self.reverts.pop(msg.request_id, None)
        first_state = out.state == "sending"
        if first_state:
            self._settled()
        out.state = state
        out.position = out.position or msg.position
        if state == "stored":
            self.by_id[msg.message_id] = out  # its delivery comes later
            if len(self.by_id) > 10_000:
                self.by_id.pop(next(iter(self.by_id)))
        human = self._sent_line(out) + (f"  ({inert(msg.detail)})" if msg.detail else "")
        if self.verbose:
            human += f"  (#{msg.message_id})"
        # live: the line's mark changes in place; plain: the line once, when stored (every state with --verbose)
        if first_state and not self.live:
            self.date_line(out.time_us)
        emit(human if self.live or first_state or self.verbose else "", out.to, key=out.key)

    def conversation_of(self, stream: str) -> str:
        """Who a stream is with: the other user of ``dm:a,b``, or ``#name`` for a group's ``g:<id>``."""
        if stream.startswith("g:"):
            return "#" + self.groups.get(stream, stream)
        return partner_of(stream, self.session.user)

    def show_error(self, msg: Error) -> None:
        failed_change = self.group_requests.pop(msg.request_id, ("", ""))[0] in CHANGES
        self.classroom.pop(msg.request_id, None)
        name = code_name(msg.code)
        out = self.sent.pop(msg.request_id, None)
        if msg.request_id in self.reverts:  # a failed send does not move the conversation
            before = self.reverts.pop(msg.request_id)
            if out is not None and self.partner == out.to:
                self.partner = before
        if msg.request_id or msg.code != ErrorCode.SHUTTING_DOWN:
            self.failures += 1
        if out is not None:
            self._settled()
            if self.live:  # its line's mark: not sent
                out.state = "failed"
                self.view.show(self._sent_line(out), style=Style.SELF, key=out.key)
        about = f" (your message to {inert_name(out.to)} was not sent)" if out is not None else ""
        if msg.retry_after_ms:
            about += f" (try again in {duration(math.ceil(msg.retry_after_ms / 1000))})"
        self.view.show(f"! {name}: {inert(msg.message)}{about}", style=Style.ERROR, event="error", code=name,
                       message=msg.message, request=msg.request_id)  # fmt: skip
        if failed_change:
            self.run_held()

    # ---- from the keyboard ----------------------------------------------------------------------

    def on_line(self, line: str) -> None:
        """One line (or a multi-line message) typed by the user. Nothing typed can stop the
        client: a request that cannot be encoded (a field too long) is a local error."""
        try:
            self._on_line(line)
        except (ValueError, struct.error) as exc:  # LocalProtocolError is a ValueError; struct.error is not
            self.local_error(f"cannot send that: {exc}")

    def _on_line(self, line: str) -> None:
        if not line.strip():
            return
        if (self.session.state is not ClientState.READY and not self.ever_ready) or self.changing():
            self.commands.append(line)  # run once the first login is through, or the group change answered
            return
        stripped = line.strip()
        if stripped.startswith("/"):
            self._command(stripped)
        elif stripped.startswith("#") and not stripped.startswith("# "):  # #GROUP TEXT
            group, _, text = stripped.partition(" ")
            if not text.strip():
                return self.local_error("usage: #GROUP TEXT")
            if (name := self.as_group(group)) is not None and self.serves_groups():
                self.send("#" + name, text.strip())
        elif self.partner is None:
            self.local_error("no conversation yet: /to USER, or /msg USER TEXT")
        else:
            self.send(self.partner, line.rstrip("\n"))

    def _command(self, line: str) -> None:
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if cmd == "/msg":
            to, _, text = rest.partition(" ")
            if not to or not text.strip():
                return self.local_error("usage: /msg USER TEXT")
            if self.as_user(to) is not None:
                self.send(to, text.strip())
        elif cmd == "/to":
            if not rest or " " in rest:
                return self.local_error("usage: /to USER, or /to #GROUP")
            if (user := self.as_conversation(rest)) is None:
                return None
            self.partner = user
            if not user.startswith("#"):
                self.known.add(user)
            self.unread.pop(self.partner, None)
            note = conversation_note(self, self.partner)
            self.view.show(f"talking to {inert_name(self.partner)}{note}", event="to", user=self.partner,
                           e2e=bool(note))  # fmt: skip
        elif cmd == "/who":
            if self.connected("/who"):
                self.session.who()
        elif cmd == "/history":
            history_command(self, rest)
        elif cmd == "/more":
            more_command(self)
        elif cmd in GROUP_USAGE:
            group_command(self, cmd, rest.split())
        elif cmd in CLASSROOM:
            classroom_command(self, cmd, rest)
        elif cmd in FILE_COMMANDS:
            file_command(self, cmd, rest)
        elif cmd in E2E_COMMANDS:
            e2e_command(self, cmd, rest)
        elif cmd == "/help":
            extra = HELP_STAFF if self.role in STAFF else HELP_STUDENT
            text = f"{HELP}\n{extra}"
            self.view.show(text, event="help", text=text)
        elif cmd == "/quit":
            self.input_done = True
        else:
            self.local_error(f"unknown command {cmd}: /help lists them")

    def as_conversation(self, name: str) -> str | None:
        """A user, or a group written ``#name``, folded; None after saying why it cannot be one."""
        if not name.startswith("#"):
            return self.as_user(name)
        if (group := self.as_group(name)) is None or not self.serves_groups():
            return None
        return "#" + group

    def changing(self) -> bool:
        """A group change is on its way: what is typed after it waits for its answer (the server
        checks a request against what is committed when it arrives: an /add right after a
        /create would not find the group). So does what is typed after an end-to-end message
        that waits for the key directory (``privacy.py``): lines keep their order."""
        return bool(self.privacy.asked) or any(asked in CHANGES for asked, _ in self.group_requests.values())

    def run_held(self) -> None:
        """A group change was answered: run the lines typed after it (until the next change)."""
        if self.changing() or not self.ever_ready:
            return
        held, self.commands = self.commands, []
        for line in held:
            self.on_line(line)

    def as_group(self, name: str) -> str | None:
        """A group written ``#name`` (or ``name``), folded, or None after saying why it cannot be one."""
        group = fold_name(name.removeprefix("#"))
        if group is None:
            self.local_error(f"invalid group name {inert_name(name[:40])!r}: #, then 1-32 letters, digits, _ . -")
        return group

    def serves_groups(self) -> bool:
        """Groups can be asked for: the server serves them (or the connection is not up to tell)."""
        if self.session.has_groups or not (self.online and self.session.state is ClientState.READY):
            return True
        self.local_error("this server does not serve groups (it needs protocol 1.4)")
        return False

    def as_user(self, name: str) -> str | None:
        """``name`` as the server folds it, or None after saying why it cannot be one."""
        user = fold_name(name)
        if user is None:
            self.local_error(f"invalid user name {inert_name(name[:40])!r}: 1-32 letters, digits, '_', '.', '-'")
        return user

    def connected(self, what: str) -> bool:
        if self.online and self.session.state is ClientState.READY:
            return True
        wait = max(0.0, self.retry_at - time.monotonic())
        self.local_error(f"{what}: not connected; retrying in {wait:.0f} s")
        return False

    def max_text(self) -> int | None:
        welcome = self.session.welcome
        return welcome.max_text if welcome is not None else None

    def send(self, to: str, text: str) -> None:
        """Send ``text`` to ``to``: a user, or a group written ``#name``."""
        if not to.startswith("#"):
            to = fold_name(to) or to
        limit = self.max_text()
        size = len(text.encode())
        if limit is not None and size > limit:
            return self.local_error(f"message too long: {size} bytes; the server takes at most {limit}")
        if not (self.online and self.session.state is ClientState.READY):
            cid = self.session.new_client_msg_id()
            self.queued.append(Unsent(to, text, cid))
            self.keep_waiting()
            self.partner = to
            self.view.show(f"queued for {inert_name(to)}: sent when the connection is back "
                           f"({plural(len(self.queued), 'message')} waiting)", event="queued", to=to)  # fmt: skip
            return
        if send_private(self, to, text):  # end to end: now, or once the key directory answered (then the
            return None  # conversation moves, and what was typed after it runs)
        kind, target = split_target(to)
        self.sent_now(self.session.send_text(target, text, kind=kind), to, text)
        return None

    def sent_now(self, rid: int, to: str, text: str) -> None:
        """A message to ``to`` went out under request ``rid``: its line, and the conversation."""
        if not to.startswith("#"):
            self.known.add(to)
        self.reverts[rid] = self.partner
        self.partner = to
        self.unread.pop(to, None)
        self.sending(rid, to, text)

    def local_error(self, message: str) -> None:
        self.failures += 1
        self.view.show(f"! {message}", style=Style.ERROR, event="error", code="local", message=message, request=0)

    def ready_to_exit(self) -> bool:
        """End of input, and every request answered."""
        ready = self.session.state is ClientState.READY
        waiting = self.commands or self.session.pending or self.queued or self.deferred_more or self.sharing.active()
        return ready and self.input_done and not waiting


def _who_entry(user: str, sessions: int | None, role: str | None) -> str:
    extra = [f"{sessions} sessions"] if sessions and sessions > 1 else []
    extra += [role] if role in STAFF else []
    return f"{user} ({', '.join(extra)})" if extra else user
