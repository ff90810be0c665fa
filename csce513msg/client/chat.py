"""What ``msg`` does, whichever loop drives it: conversations, commands, receipts.

``ChatClient`` holds the state of a run and the rules a user sees: where a plain line
goes, what a receipt means, what a command typed while disconnected answers. It prints
through a ``View`` and never touches a socket or the keyboard: the teaching loop
(``client/terminal.py``, select/poll/epoll by hand) and the interactive mode
(``client/interactive.py``, prompt_toolkit's asyncio loop) both drive it with the same
steps (``client/steps.py``: ``receive``, ``transmit``, ``lost``, ``reconnected``), so the
two loops differ only in how they wait. Lines go to a ``View`` (``client/view.py``).

Everything from the network is printed through ``sanitize.inert``: a View receives
literal, inert text and never runs it through markup.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import socket
import time
from dataclasses import dataclass
from datetime import datetime

from ..protocol import (
    ANNOUNCEMENTS,
    WAITING_CAP,
    Confirmations,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    GroupEvent,
    GroupEventKind,
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
    RemoteProtocolError,
    Send,
    TargetKind,
    Welcome,
    WhoReply,
)
from ..protocol.names import fold_name
from .files import Outbox, Unsent
from .sanitize import inert, inert_name
from .session import ClientSession, ClientState
from .view import Style, View

ANNOUNCEMENTS_NAME = "announcements"  #: g:0's name (the receipt of an /announce shows it)
HISTORY_PAGE = 20  #: messages per /history and /more
HISTORY_MAX = 1000  #: the most /history N asks for (the server sends a page of what fits)
#: the commands that change or moderate a group (``_group_command``), with their usage
GROUP_USAGE = {
    "/create": "/create NAME [invite]",
    "/join": "/join #GROUP",
    "/leave": "/leave #GROUP",
    "/groups": "/groups [all]",
    "/members": "/members #GROUP",
    "/add": "/add #GROUP USER...",
    "/remove": "/remove #GROUP USER...",
    "/rename": "/rename #GROUP NEWNAME",
    "/delgroup": "/delgroup #GROUP",
    "/mute": "/mute #GROUP USER [MINUTES] (10 by default)",
    "/unmute": "/unmute #GROUP USER",
    "/slow": "/slow #GROUP SECONDS|off",
    "/delete": "/delete #GROUP/N (N: the number shown beside the message)",
}
#: the classroom's commands (``_classroom_command``): announcements and office hours
CLASSROOM = ("/announce", "/announce!", "/confirm", "/confirmed", "/raise", "/lower", "/queue", "/next")
COMMANDS = ("/msg", "/to", "/who", "/history", "/more", *GROUP_USAGE, *CLASSROOM, "/help", "/quit")
STAFF = ("instructor", "assistant")  #: roles that announce and hold office hours
#: group requests the lines after them wait for (the server checks a request against what is committed)
CHANGES = ("created", "joined", "left", "added", "removed", "renamed", "deleted")
GROUP_COMMANDS = ("/to", "/history", *(c for c in GROUP_USAGE if c not in ("/create", "/groups")))  #: take a #group
MUTE_MINUTES = 10  #: /mute without a time
MODERATED = ("muted ", "unmuted ", "slow mode", "removed message")  #: how a moderation's answer begins

HELP = """commands:
  /msg USER TEXT     send TEXT to USER, who becomes your conversation
  /to USER           talk to USER: plain lines go there
  TEXT               send to your conversation
  /who               who is online
  /history [USER] [N] the last N (20) messages with USER or #GROUP (default: your conversation)
  /more              earlier messages (after /history)
  #GROUP TEXT        send TEXT to the group, which becomes your conversation
  /to #GROUP         talk to the group: plain lines go there (/history #GROUP pages it)
  /create NAME [invite] create a group (invite: members join only when added)
  /join #GROUP       join a group; /leave #GROUP leaves it
  /groups [all]      your groups (all: every group you may see)
  /members #GROUP    a group's members
  /add #GROUP USER...    add users; /remove #GROUP USER... removes them
 group owners and staff (instructor, assistants):
  /rename #GROUP NEW  rename a group; /delgroup #GROUP deletes it
  /mute #GROUP USER [MINUTES]  USER cannot post there for MINUTES (10); /unmute #GROUP USER
  /slow #GROUP SECONDS|off  a student posts there at most once per SECONDS
  /delete #GROUP/N   remove message N (the number beside it: #lab/5); your own messages too
  /help              this help
  /quit              leave (what the server has not stored yet is kept and sent next time)"""
HELP_STUDENT = """the classroom:
  /confirm [N]       confirm you read announcement N (default: the newest that asks)
  /raise QUESTION    raise your hand in office hours (again: a new question, the same place)
  /lower             lower your hand"""
HELP_STAFF = """the classroom (staff):
  /announce TEXT     post an announcement to everyone
  /announce! TEXT    post one that asks everyone to /confirm it
  /confirmed [N]     who confirmed announcement N (default: the newest that asks), who has not
  /queue             the raised hands, first first
  /next              take the first hand: its student becomes your conversation"""


def clock(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6).strftime("%H:%M")


def day_of(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6).strftime("%A %d %B %Y")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def count_waiting(waiting: int) -> str:
    """LoginOk.waiting in words: the server counts no further than WAITING_CAP, so that
    value means "that many or more" (docs/protocol.md, LoginOk)."""
    if waiting >= WAITING_CAP:
        return f"{WAITING_CAP}+ messages"
    return plural(waiting, "message")


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error {code}"


MARKS = {"sending": " ·", "stored": " ✓", "delivered": "✓✓"}  #: two columns each: a line keeps its width


@dataclass(slots=True)
class Outgoing:
    """A message you sent, as long as its line may change."""

    to: str
    text: str
    time_us: int
    key: int
    state: str = "sending"
    position: int = 0  #: its place in the stream, once stored (a group message shows it: /delete #lab/5)


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
            to = "#" + m.target if m.target_kind == TargetKind.GROUP else m.target
            unsent[m.client_msg_id or object()] = Unsent(to, m.body.decode(errors="replace"), m.client_msg_id)
        for u in self.queued:
            unsent[u.client_msg_id or object()] = u
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
            kind, target = split_target(unsent.to)
            send = Send(kind, ContentType.TEXT, unsent.client_msg_id, target, unsent.text.encode())
            try:
                rid = self.session.request(send)
            except ValueError as exc:  # a poisoned outbox (a file edited by hand): drop that one, say so
                self.local_error(f"a kept message to {inert_name(unsent.to)} cannot be sent: {exc}")
                continue
            self.sent[rid] = Outgoing(unsent.to, unsent.text, int(time.time() * 1e6), next(self._keys))

    # ---- from the server ----------------------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, Deliver):
            self._deliver(msg)
        elif isinstance(msg, Receipt):
            self._receipt(msg)
        elif isinstance(msg, HistoryEnd):
            self._history_end(msg)
        elif isinstance(msg, Error):
            self._error(msg)
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
            self._group_info(msg)
        elif isinstance(msg, GroupListReply):
            self._group_list(msg)
        elif isinstance(msg, GroupMembersReply):
            self._group_members(msg)
        elif isinstance(msg, Confirmations):
            self._confirmations(msg)
        elif isinstance(msg, HandPlace):
            self._hand_place(msg)
        elif isinstance(msg, HandQueueReply):
            self._hand_queue(msg)
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

    def _date_line(self, time_us: int) -> None:
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
            return self._group_event(msg)
        self._date_line(msg.time_us)
        if group and msg.stream == ANNOUNCEMENTS:
            return self._announcement(msg, text)
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
        prefix = f"[{clock(msg.time_us)}] {who}: "
        human = prefix + inert(text, indent=" " * len(prefix))
        if self.verbose:
            human += f"  (#{msg.message_id}, {inert_name(msg.stream)} @{msg.position})"
        self.view.show(human, style=style, event="deliver", sender=msg.sender, to=msg.target, text=text,
                       id=msg.message_id, time_us=msg.time_us, stream=msg.stream, position=msg.position,
                       history=history, group=group)  # fmt: skip
        return None

    def _announcement(self, msg: Deliver, text: str) -> None:
        """An announcement (g:0): a line of its own style, ``[10:00] ANNOUNCEMENT from prof: ...``,
        and for one that asks, the hint to confirm it. Never anyone's conversation."""
        asks = msg.content_type == ContentType.ASKS_CONFIRMATION
        if asks:
            self.last_ask = max(self.last_ask, msg.position)
        prefix = f"[{clock(msg.time_us)}] ANNOUNCEMENT #{msg.position} from {inert_name(msg.sender)}: "
        human = prefix + inert(text, indent=" " * len(prefix))
        if asks and msg.sender != self.session.user:
            human += f"\n  (please confirm you read it: /confirm {msg.position})"
        self.view.show(human, style=Style.ANNOUNCEMENT, event="announcement", sender=msg.sender, text=text,
                       id=msg.message_id, time_us=msg.time_us, position=msg.position, asks=asks,
                       history=bool(msg.request_id))  # fmt: skip

    def _confirmations(self, msg: Confirmations) -> None:
        asked = self.classroom.pop(msg.request_id, "")
        if asked == "/confirm":
            human = f"you confirmed announcement #{msg.position}"
        else:
            done = inert_name(", ".join(msg.confirmed)) or "nobody"
            human = f"announcement #{msg.position}: confirmed by {done} ({len(msg.confirmed)})"
            human += f"; not yet: {inert_name(', '.join(msg.pending)) or 'nobody'} ({len(msg.pending)})"
        self.view.show(human, event="confirmations", position=msg.position, confirmed=list(msg.confirmed),
                       pending=list(msg.pending))  # fmt: skip

    def _hand_place(self, msg: HandPlace) -> None:
        """One line per change of place; a taken hand switches to the staff member who took it."""
        self.classroom.pop(msg.request_id, "")
        if msg.taken_by:
            self.partner = msg.taken_by
            self.known.add(msg.taken_by)
            human = f"* {inert_name(msg.taken_by)} took your hand: talking to {inert_name(msg.taken_by)}"
        elif msg.place:
            human = f"* your hand is up: place {msg.place} of {msg.size}"
        else:
            human = "* your hand is down"
        self.view.show(human, event="hand", place=msg.place, size=msg.size, question=msg.question,
                       taken_by=msg.taken_by)  # fmt: skip

    def _hand_queue(self, msg: HandQueueReply) -> None:
        asked = self.classroom.pop(msg.request_id, "")
        if msg.taken:
            self.partner = msg.taken
            self.known.add(msg.taken)
            self.view.show(f"you took {inert_name(msg.taken)}'s hand: talking to {inert_name(msg.taken)}",
                           event="taken", user=msg.taken)  # fmt: skip
        elif asked == "/next":
            self.view.show("no hand is raised", event="taken", user="")
        entries = [
            f"{n}. {inert_name(u)} ({w} s): {inert(q)}"
            for n, (u, q, w) in enumerate(zip(msg.users, msg.questions, msg.waited, strict=False), start=1)
        ]
        self.view.show("queue: " + ("; ".join(entries) or "empty"), event="queue", users=list(msg.users),
                       questions=list(msg.questions), waited=list(msg.waited))  # fmt: skip

    def _group_event(self, msg: Deliver) -> None:
        """A group's change, from its stream: ``* alice added bob, carol to #lab``."""
        try:
            event = GroupEvent.decode(msg.body)
        except RemoteProtocolError:
            event = GroupEvent(0, (), msg.target)
        before = "#" + msg.target
        after = "#" + (event.name or msg.target)
        if event.name:
            self.groups[msg.stream] = event.name
        who = "you" if msg.sender == self.session.user else inert_name(msg.sender)
        users = inert_name(", ".join(event.users))
        kind = GroupEventKind(event.kind) if event.kind in GroupEventKind._value2member_map_ else None
        if kind is GroupEventKind.CREATED:
            what = f"{who} created {inert_name(after)}"
        elif kind is GroupEventKind.JOINED:
            what = f"{users or who} joined {inert_name(after)}"
        elif kind is GroupEventKind.LEFT:
            what = f"{users or who} left {inert_name(after)}"
        elif kind is GroupEventKind.ADDED:
            what = f"{who} added {users} to {inert_name(after)}"
        elif kind is GroupEventKind.REMOVED:
            what = f"{who} removed {users} from {inert_name(after)}"
        elif kind is GroupEventKind.RENAMED:
            what = f"{who} renamed {inert_name(before)} to {inert_name(after)}"
        elif kind is GroupEventKind.DELETED:
            what = f"{who} deleted {inert_name(after)}"
        elif kind is GroupEventKind.MUTED:
            what = f"{who} muted {users} in {inert_name(after)} for {_duration(event.value)}"
        elif kind is GroupEventKind.UNMUTED:
            what = f"{who} unmuted {users} in {inert_name(after)}"
        elif kind is GroupEventKind.SLOW:
            pace = f"one post per {_duration(event.value)}" if event.value else "off"
            what = f"{who} set slow mode in {inert_name(after)}: {pace}"
        elif kind is GroupEventKind.REMOVED_MESSAGE:
            if msg.position == event.value:  # the tombstone itself (History, catch-up): the message's place
                what = f"[message {event.value} by {users} removed]"
            else:
                what = f"{who} removed message {event.value} (by {users}) in {inert_name(after)}"
        else:
            what = f"{who} changed {inert_name(after)}"
        self._date_line(msg.time_us)
        self.view.show(f"* {what}", event="group_event", group=event.name or msg.target,
                       stream=msg.stream, kind=kind.name.lower() if kind else str(event.kind), sender=msg.sender,
                       users=list(event.users), time_us=msg.time_us, position=msg.position,
                       history=bool(msg.request_id))  # fmt: skip

    def _group_info(self, msg: GroupInfo) -> None:
        asked, _ = self.group_requests.pop(msg.request_id, ("", ""))
        self.groups[msg.stream] = msg.name
        name = inert_name("#" + msg.name)
        members = plural(msg.members, "member")
        if asked == "created":
            human = f"created {name} ({inert_name(msg.stream)})" + (", invite only" if msg.invite_only else "")
        elif asked == "joined":
            human = f"joined {name} ({members})"
        elif asked == "left":
            human = f"left {name}"
        elif asked in ("added", "removed"):
            human = f"{asked}: {name} has {members}"
        elif asked == "renamed":
            human = f"renamed to {name}"
        elif asked == "deleted":
            human = f"deleted {name}"
        elif asked.startswith(MODERATED):  # "muted bob for 10 min", "slow mode: ...", "removed message 5"
            human = f"{inert(asked)} in {name}"
        else:
            human = f"{name}: {members}"
        if not msg.position and asked:
            human += " (nothing changed)"
        self.run_held()
        self.view.show(human, event="group", asked=asked, group=msg.name, stream=msg.stream, owner=msg.owner,
                       invite_only=bool(msg.invite_only), members=msg.members, member=bool(msg.member),
                       position=msg.position)  # fmt: skip

    def _group_list(self, msg: GroupListReply) -> None:
        asked, _ = self.group_requests.pop(msg.request_id, ("", ""))
        entries = []
        for stream, name, owner, size, flags in zip(msg.streams, msg.names, msg.owners, msg.sizes, msg.flags,
                                                    strict=False):  # fmt: skip
            self.groups[stream] = name
            extra = [plural(size, "member"), f"owner {inert_name(owner)}" if owner else "the server's"]
            extra += ["invite only"] if flags & 1 else []
            extra += ["member"] if flags & 2 and asked == "all" else []
            entries.append(f"{inert_name('#' + name)} ({', '.join(extra)})")
        if msg.flags and msg.flags[-1] & 4:  # the server cut the list: one frame's header holds it
            entries.append(f"and more after {inert_name('#' + msg.names[-1])}")
        self.view.show("groups: " + ("; ".join(entries) or "none"), event="groups", groups=list(msg.names),
                       owners=list(msg.owners), sizes=list(msg.sizes), flags=list(msg.flags))  # fmt: skip

    def _group_members(self, msg: GroupMembersReply) -> None:
        _, asked_for = self.group_requests.pop(msg.request_id, ("", ""))
        name = self.groups.get(msg.stream, asked_for or msg.stream)
        self.known.update(msg.users)
        entries = []
        for user, role, sessions in itertools.zip_longest(msg.users, msg.roles, msg.sessions):
            extra = [inert_name(role)] if role else []
            extra += [plural(sessions, "session")] if sessions else []
            entries.append(inert_name(user) + (f" ({', '.join(extra)})" if extra else ""))
        self.view.show(f"members of {inert_name('#' + name)}: " + ", ".join(entries), event="members", group=name,
                       stream=msg.stream, users=list(msg.users), roles=list(msg.roles),
                       sessions=list(msg.sessions))  # fmt: skip

    def _sent_line(self, out: Outgoing) -> str:
        to = f"{out.to}/{out.position}" if out.position and out.to.startswith("#") else out.to
        prefix = f"{MARKS.get(out.state, '  ')} [{clock(out.time_us)}] you -> {inert_name(to)}: "
        return prefix + inert(out.text, indent=" " * len(prefix))

    def _receipt(self, msg: Receipt) -> None:
        state = ReceiptState(msg.state).name.lower() if msg.state in ReceiptState._value2member_map_ else str(msg.state)

        def emit(human: str, to: str, key: int | None = None) -> None:
            self.view.show(human, style=Style.SELF, key=key, event="receipt", to=to, state=state, detail=msg.detail,
                           id=msg.message_id, request=msg.request_id, position=msg.position)  # fmt: skip

        out = self.sent.pop(msg.request_id, None) if msg.request_id else self.by_id.pop(msg.message_id, None)
        if out is None:  # a later state of a message sent before (by an earlier run, or another session)
            to = self._conversation_of(msg.stream)
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
            self._date_line(out.time_us)
        emit(human if self.live or first_state or self.verbose else "", out.to, key=out.key)

    def _history_end(self, msg: HistoryEnd) -> None:
        who = self.history_for.pop(msg.request_id, self._conversation_of(msg.stream))
        if msg.count:
            self.history_more = (who, msg.first)
            note = f"({plural(msg.count, 'earlier message')} with {inert_name(who)}: /more for more)"
        else:
            self.history_more = None
            note = f"(no earlier messages with {inert_name(who)})"
        self.view.show(note, event="history_end", stream=msg.stream, count=msg.count, first=msg.first)
        if self.deferred_more and not self.history_for:
            self.deferred_more -= 1
            self._command("/more")

    def _conversation_of(self, stream: str) -> str:
        """Who a stream is with: the other user of ``dm:a,b``, or ``#name`` for a group's ``g:<id>``."""
        if stream.startswith("g:"):
            return "#" + self.groups.get(stream, stream)
        return _partner_of(stream, self.session.user)

    def _error(self, msg: Error) -> None:
        failed_change = self.group_requests.pop(msg.request_id, ("", ""))[0] in CHANGES
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
        about = f" (your message to {inert_name(out.to)} was not sent)" if out is not None else ""
        if msg.retry_after_ms:
            about += f" (try again in {_duration(math.ceil(msg.retry_after_ms / 1000))})"
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
        except ValueError as exc:  # struct.error and LocalProtocolError are ValueErrors too
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
            if (name := self._group(group)) is not None and self._serves_groups():
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
            if self._user(to) is not None:
                self.send(to, text.strip())
        elif cmd == "/to":
            if not rest or " " in rest:
                return self.local_error("usage: /to USER, or /to #GROUP")
            if (user := self._conversation(rest)) is None:
                return None
            self.partner = user
            if not user.startswith("#"):
                self.known.add(user)
            self.unread.pop(self.partner, None)
            self.view.show(f"talking to {inert_name(self.partner)}", event="to", user=self.partner)
        elif cmd == "/who":
            if self._connected("/who"):
                self.session.who()
        elif cmd == "/history":
            who, _, count = rest.partition(" ")
            if who.isdecimal() and not count:  # /history N: your conversation
                who, count = "", who
            who = who or (self.partner or "")
            if not who or (count and not (count.isascii() and count.isdecimal() and 0 < int(count) <= HISTORY_MAX)):
                return self.local_error(f"usage: /history [USER|#GROUP] [N], N from 1 to {HISTORY_MAX}")
            if (target := self._conversation(who)) is not None and self._connected("/history"):
                self.history_for[self._history(target, int(count) if count else HISTORY_PAGE)] = target
        elif cmd == "/more":
            if self.history_for:  # a page is on its way: /more follows it (a script types ahead)
                self.deferred_more += 1
                return None
            if self.history_more is None:
                return self.local_error("nothing more: /history USER first")
            who, first = self.history_more
            if self._connected("/more"):
                self.history_for[self._history(who, HISTORY_PAGE, before=first)] = who
        elif cmd in GROUP_USAGE:
            self._group_command(cmd, rest.split())
        elif cmd in CLASSROOM:
            self._classroom_command(cmd, rest)
        elif cmd == "/help":
            extra = HELP_STAFF if self.role in STAFF else HELP_STUDENT
            text = f"{HELP}\n{extra}"
            self.view.show(text, event="help", text=text)
        elif cmd == "/quit":
            self.input_done = True
        else:
            self.local_error(f"unknown command {cmd}: /help lists them")

    def _group_command(self, cmd: str, args: list[str]) -> None:
        usage = GROUP_USAGE[cmd]
        if cmd in ("/rename", "/delgroup", "/mute", "/unmute", "/slow", "/delete"):
            return self._moderate(cmd, args, usage)
        if cmd == "/groups":
            if args not in ([], ["all"]):
                return self.local_error(f"usage: {usage}")
            if self._serves_groups() and self._connected(cmd):
                self.group_requests[self.session.group_list(mine=not args)] = ("all" if args else "mine", "")
            return None
        many = cmd in ("/add", "/remove")
        if not args or (many and len(args) < 2) or (not many and len(args) > (2 if cmd == "/create" else 1)):
            return self.local_error(f"usage: {usage}")
        if cmd == "/create" and args[1:] not in ([], ["invite"]):
            return self.local_error(f"usage: {usage}")
        if (group := self._group(args[0])) is None:
            return None
        users = [self._user(u) for u in args[1:]] if many else []
        if None in users or not self._serves_groups() or not self._connected(cmd):
            return None
        s = self.session
        if cmd == "/create":
            rid, asked = s.group_create(group, invite_only=len(args) > 1), "created"
        elif cmd == "/join":
            rid, asked = s.group_join(group), "joined"
        elif cmd == "/leave":
            rid, asked = s.group_leave(group), "left"
        elif cmd == "/members":
            rid, asked = s.group_members(group), "members"
        elif cmd == "/add":
            rid, asked = s.group_add(group, [u for u in users if u]), "added"
        else:
            rid, asked = s.group_remove(group, [u for u in users if u]), "removed"
        self.group_requests[rid] = (asked, group)
        return None

    def _classroom_command(self, cmd: str, rest: str) -> None:
        usage = {"/announce": "/announce TEXT", "/announce!": "/announce! TEXT", "/confirm": "/confirm [N]",
                 "/confirmed": "/confirmed [N]", "/raise": "/raise QUESTION", "/lower": "/lower",
                 "/queue": "/queue", "/next": "/next"}[cmd]  # fmt: skip
        numbered = cmd in ("/confirm", "/confirmed")
        if (
            (cmd in ("/announce", "/announce!", "/raise") and not rest)
            or (numbered and rest and not (rest.isascii() and rest.isdecimal() and 0 < int(rest) < 2**63))
            or (cmd in ("/lower", "/queue", "/next") and rest)
        ):
            return self.local_error(f"usage: {usage}")
        if cmd == "/confirm" and not rest and not self.last_ask:
            return self.local_error("no announcement asking to be confirmed has come yet: /confirm N")
        if not self._serves_groups() or not self._connected(cmd):
            return None
        s = self.session
        if cmd in ("/announce", "/announce!"):
            rid = s.announce(rest, confirm=cmd == "/announce!")
            self.sent[rid] = Outgoing("#" + ANNOUNCEMENTS_NAME, rest, int(time.time() * 1e6), next(self._keys))
            return None
        if cmd == "/confirm":
            rid = s.confirm(int(rest) if rest else self.last_ask)
        elif cmd == "/confirmed":
            rid = s.confirmed(int(rest) if rest else 0)
        elif cmd == "/raise":
            rid = s.raise_hand(rest)
        elif cmd == "/lower":
            rid = s.lower_hand()
        elif cmd == "/queue":
            rid = s.hand_queue()
        else:
            rid = s.take_next()
        self.classroom[rid] = cmd

    def _moderate(self, cmd: str, args: list[str], usage: str) -> None:
        """The owner's and staff's commands (the server says FORBIDDEN to anyone else)."""
        if cmd == "/delete" and len(args) == 1 and "/" in args[0]:
            args = args[0].rsplit("/", 1)  # /delete #lab/5, as the message's line shows it
        arity = {"/delgroup": (1,), "/unmute": (2,), "/mute": (2, 3)}.get(cmd, (2,))
        if len(args) not in arity:
            return self.local_error(f"usage: {usage}")
        number = args[2] if cmd == "/mute" and len(args) == 3 else args[1] if cmd in ("/slow", "/delete") else "1"
        if cmd == "/slow" and number == "off":
            number = "0"
        if not (number.isascii() and number.isdecimal() and len(number) < 10) or (cmd != "/slow" and int(number) < 1):
            return self.local_error(f"usage: {usage}")
        if (group := self._group(args[0])) is None:
            return None
        user = self._user(args[1]) if cmd in ("/mute", "/unmute") else ""
        name = self._group(args[1]) if cmd == "/rename" else ""
        if user is None or name is None or not self._serves_groups() or not self._connected(cmd):
            return None
        s, n = self.session, int(number)
        if cmd == "/rename":
            rid, asked = s.group_rename(group, name), "renamed"
        elif cmd == "/delgroup":
            rid, asked = s.group_delete(group), "deleted"
        elif cmd == "/mute":
            seconds = (n if len(args) == 3 else MUTE_MINUTES) * 60
            rid, asked = s.group_mute(group, [user], seconds), f"muted {user} for {_duration(seconds)}"
        elif cmd == "/unmute":
            rid, asked = s.group_mute(group, [user], 0), f"unmuted {user}"
        elif cmd == "/slow":
            pace = f"one post per {_duration(n)} for students" if n else "off"
            rid, asked = s.group_slow(group, n), f"slow mode: {pace}"
        else:
            rid, asked = s.redact(group, n), f"removed message {n}"
        self.group_requests[rid] = (asked, name if cmd == "/rename" else group)
        return None

    def _conversation(self, name: str) -> str | None:
        """A user, or a group written ``#name``, folded; None after saying why it cannot be one."""
        if not name.startswith("#"):
            return self._user(name)
        if (group := self._group(name)) is None or not self._serves_groups():
            return None
        return "#" + group

    def changing(self) -> bool:
        """A group change is on its way: what is typed after it waits for its answer (the server
        checks a request against what is committed when it arrives: an /add right after a
        /create would not find the group)."""
        return any(asked in CHANGES for asked, _ in self.group_requests.values())

    def run_held(self) -> None:
        """A group change was answered: run the lines typed after it (until the next change)."""
        if self.changing() or not self.ever_ready:
            return
        held, self.commands = self.commands, []
        for line in held:
            self.on_line(line)

    def _group(self, name: str) -> str | None:
        """A group written ``#name`` (or ``name``), folded, or None after saying why it cannot be one."""
        group = fold_name(name.removeprefix("#"))
        if group is None:
            self.local_error(f"invalid group name {inert_name(name[:40])!r}: #, then 1-32 letters, digits, _ . -")
        return group

    def _serves_groups(self) -> bool:
        """Groups can be asked for: the server serves them (or the connection is not up to tell)."""
        if self.session.has_groups or not (self.online and self.session.state is ClientState.READY):
            return True
        self.local_error("this server does not serve groups (it needs protocol 1.4)")
        return False

    def _history(self, who: str, limit: int, before: int = 0) -> int:
        kind, target = split_target(who)
        return self.session.history(target, limit, before=before, kind=kind)

    def _user(self, name: str) -> str | None:
        """``name`` as the server folds it, or None after saying why it cannot be one."""
        user = fold_name(name)
        if user is None:
            self.local_error(f"invalid user name {inert_name(name[:40])!r}: 1-32 letters, digits, '_', '.', '-'")
        return user

    def _connected(self, what: str) -> bool:
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
        now_us = int(time.time() * 1e6)
        if not (self.online and self.session.state is ClientState.READY):
            cid = self.session.new_client_msg_id()
            self.queued.append(Unsent(to, text, cid))
            self.keep_waiting()
            self.partner = to
            self.view.show(f"queued for {inert_name(to)}: sent when the connection is back "
                           f"({plural(len(self.queued), 'message')} waiting)", event="queued", to=to)  # fmt: skip
            return
        kind, target = split_target(to)
        rid = self.session.send_text(target, text, kind=kind)
        if kind == TargetKind.USER:
            self.known.add(to)
        out = Outgoing(to, text, now_us, next(self._keys))
        self.sent[rid] = out
        self.reverts[rid] = self.partner
        self.partner = to
        self.unread.pop(to, None)
        if self.live:
            self._date_line(now_us)
            self.view.show(self._sent_line(out), style=Style.SELF, key=out.key)

    def local_error(self, message: str) -> None:
        self.failures += 1
        self.view.show(f"! {message}", style=Style.ERROR, event="error", code="local", message=message, request=0)

    def ready_to_exit(self) -> bool:
        """End of input, and every request answered."""
        ready = self.session.state is ClientState.READY
        waiting = self.commands or self.session.pending or self.queued or self.deferred_more
        return ready and self.input_done and not waiting


def split_target(to: str) -> tuple[TargetKind, str]:
    """A conversation as the protocol names it: ``#lab`` is the group lab, else a user."""
    if to.startswith("#"):
        return TargetKind.GROUP, to[1:]
    return TargetKind.USER, to


def _duration(seconds: int) -> str:
    """Seconds in words: ``45 s``, ``10 min``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _who_entry(user: str, sessions: int | None, role: str | None) -> str:
    extra = [f"{sessions} sessions"] if sessions and sessions > 1 else []
    extra += [role] if role in STAFF else []
    return f"{user} ({', '.join(extra)})" if extra else user


def _partner_of(stream: str, me: str | None) -> str:
    """The other user of a direct stream ``dm:a,b`` (the stream itself if not one)."""
    if stream.startswith("dm:"):
        users = stream[3:].split(",")
        others = [u for u in users if u != me]
        return others[0] if others else (me or stream)
    return stream
