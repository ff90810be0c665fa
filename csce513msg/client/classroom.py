"""``msg``'s classroom (protocol 1.4): announcements (the group ``g:0``) and their
confirmations, and office hours (raised hands, the staff's queue). The commands and the
lines for the server's answers, as plain functions of the ``ChatClient`` whose state they
read and change (``chat.last_ask``, ``chat.classroom``, ``chat.partner`` when a hand is
taken): ``chat.py`` calls them from its dispatch.

An announcement's text, like every text from the network, is printed only through
``sanitize.inert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import Confirmations, ContentType, Deliver, HandPlace, HandQueueReply
from .sanitize import inert, inert_name
from .view import Style
from .words import clock, duration

if TYPE_CHECKING:
    from .chat import ChatClient

ANNOUNCEMENTS_NAME = "announcements"  #: g:0's name (the receipt of an /announce shows it)
#: the classroom's commands (``classroom_command``): announcements and office hours, with their usage
CLASSROOM_USAGE = {
    "/announce": "/announce TEXT",
    "/announce!": "/announce! TEXT",
    "/confirm": "/confirm [N]",
    "/confirmed": "/confirmed [N]",
    "/raise": "/raise QUESTION",
    "/lower": "/lower",
    "/queue": "/queue",
    "/next": "/next",
}
CLASSROOM = tuple(CLASSROOM_USAGE)
STAFF = ("instructor", "assistant")  #: roles that announce and hold office hours
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


# ---- from the keyboard ----------------------------------------------------------------------


def classroom_command(chat: ChatClient, cmd: str, rest: str) -> None:
    """Announce, confirm, raise or lower a hand, list or take the queue (the server says
    FORBIDDEN to a role that may not)."""
    usage = CLASSROOM_USAGE[cmd]
    numbered = cmd in ("/confirm", "/confirmed")
    if (
        (cmd in ("/announce", "/announce!", "/raise") and not rest)
        or (numbered and rest and not (rest.isascii() and rest.isdecimal() and 0 < int(rest) < 2**63))
        or (cmd in ("/lower", "/queue", "/next") and rest)
    ):
        return chat.local_error(f"usage: {usage}")
    if cmd == "/confirm" and not rest and not chat.last_ask:
        return chat.local_error("no announcement asking to be confirmed has come yet: /confirm N")
    if not chat.serves_groups() or not chat.connected(cmd):
        return None
    s = chat.session
    if cmd in ("/announce", "/announce!"):
        rid = s.announce(rest, confirm=cmd == "/announce!")
        chat.sending(rid, "#" + ANNOUNCEMENTS_NAME, rest)  # its receipt shows it as #announcements/N
        return None
    if cmd == "/confirm":
        rid = s.confirm(int(rest) if rest else chat.last_ask)
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
    chat.classroom[rid] = cmd


# ---- from the server ----------------------------------------------------------------------


def show_announcement(chat: ChatClient, msg: Deliver, text: str) -> None:
    """An announcement (g:0): a line of its own style, ``[10:00] ANNOUNCEMENT from prof: ...``,
    and for one that asks, the hint to confirm it. Never anyone's conversation."""
    asks = msg.content_type == ContentType.ASKS_CONFIRMATION
    if asks:
        chat.last_ask = max(chat.last_ask, msg.position)
    prefix = f"[{clock(msg.time_us)}] ANNOUNCEMENT #{msg.position} from {inert_name(msg.sender)}: "
    human = prefix + inert(text, indent=" " * len(prefix))
    if asks and msg.sender != chat.session.user:
        human += f"\n  (please confirm you read it: /confirm {msg.position})"
    chat.view.show(human, style=Style.ANNOUNCEMENT, event="announcement", sender=msg.sender, text=text,
                   id=msg.message_id, time_us=msg.time_us, position=msg.position, asks=asks,
                   history=bool(msg.request_id))  # fmt: skip


def show_confirmations(chat: ChatClient, msg: Confirmations) -> None:
    asked = chat.classroom.pop(msg.request_id, "")
    if asked == "/confirm":
        human = f"you confirmed announcement #{msg.position}"
    else:
        done = inert_name(", ".join(msg.confirmed)) or "nobody"
        human = f"announcement #{msg.position}: confirmed by {done} ({len(msg.confirmed)})"
        human += f"; not yet: {inert_name(', '.join(msg.pending)) or 'nobody'} ({len(msg.pending)})"
    chat.view.show(human, event="confirmations", position=msg.position, confirmed=list(msg.confirmed),
                   pending=list(msg.pending))  # fmt: skip


def show_hand_place(chat: ChatClient, msg: HandPlace) -> None:
    """One line per change of place; a taken hand switches to the staff member who took it."""
    chat.classroom.pop(msg.request_id, "")
    if msg.taken_by:
        chat.partner = msg.taken_by
        chat.unread.pop(msg.taken_by, None)
        chat.known.add(msg.taken_by)
        human = f"* {inert_name(msg.taken_by)} took your hand: talking to {inert_name(msg.taken_by)}"
    elif msg.place:
        human = f"* your hand is up: place {msg.place} of {msg.size}"
    else:
        human = "* your hand is down"
    chat.view.show(human, event="hand", place=msg.place, size=msg.size, question=msg.question,
                   taken_by=msg.taken_by)  # fmt: skip


def show_hand_queue(chat: ChatClient, msg: HandQueueReply) -> None:
    """The queue: as asked (/queue, /next), every hand on a line of its own; pushed by the
    server (request id 0) as it changes, one line saying what changed."""
    asked = chat.classroom.pop(msg.request_id, "")
    before, chat.hands = chat.hands, dict(zip(msg.users, msg.questions, strict=False))
    if msg.taken:
        chat.partner = msg.taken
        chat.unread.pop(msg.taken, None)
        chat.known.add(msg.taken)
        chat.view.show(f"you took {inert_name(msg.taken)}'s hand: talking to {inert_name(msg.taken)}",
                       event="taken", user=msg.taken)  # fmt: skip
    elif asked == "/next":
        chat.view.show("no hand is raised", event="taken", user="")
    waiting = f"{len(msg.users)} waiting"
    if not msg.request_id:  # pushed: what changed
        raised = [u for u in msg.users if u not in before]
        if raised:
            human = "; ".join(f"{inert_name(u)} raised a hand: {inert(chat.hands[u])}" for u in raised)
        elif gone := [u for u in before if u not in chat.hands]:
            human = f"{inert_name(', '.join(gone))} left the queue"
        else:
            changed = [u for u in msg.users if before.get(u) != chat.hands[u]]
            human = "; ".join(f"{inert_name(u)} asks now: {inert(chat.hands[u])}" for u in changed) or "the queue"
        human = f"* {human} ({waiting})"
    else:
        entries = [
            f"\n  {n}. {inert_name(u)} ({duration(w)}): {inert(q)}"
            for n, (u, q, w) in enumerate(zip(msg.users, msg.questions, msg.waited, strict=False), start=1)
        ]
        human = f"queue: {waiting}" + "".join(entries) if entries else "queue: empty"
    chat.view.show(human, event="queue", users=list(msg.users), questions=list(msg.questions),
                   waited=list(msg.waited), pushed=not msg.request_id)  # fmt: skip
