"""``msg``'s groups: the commands that make, change and moderate a group, and the lines
that show the server's answers (GroupInfo, GroupListReply, GroupMembersReply) and a
group's events. Plain functions of the ``ChatClient`` whose state they read and change
(``chat.groups``, ``chat.group_requests``): ``chat.py`` calls them from its dispatch.

A group's name from the network is printed only through ``sanitize.inert_name``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from ..protocol import (
    Deliver,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupListReply,
    GroupMembersReply,
    RemoteProtocolError,
)
from .sanitize import inert, inert_name
from .words import duration, plural

if TYPE_CHECKING:
    from .chat import ChatClient

#: the commands that change or moderate a group (``group_command``), with their usage
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
#: the owner's and staff's commands (``_moderate``; the server says FORBIDDEN to anyone else)
MODERATION = ("/rename", "/delgroup", "/mute", "/unmute", "/slow", "/delete")
#: group requests the lines after them wait for (the server checks a request against what is committed)
CHANGES = ("created", "joined", "left", "added", "removed", "renamed", "deleted")
GROUP_COMMANDS = ("/to", "/history", *(c for c in GROUP_USAGE if c not in ("/create", "/groups")))  #: take a #group
MUTE_MINUTES = 10  #: /mute without a time
#: the largest number each command takes: a mute lasts at most 30 days, slow mode a day (the
#: server's limits), a message's number fits a u64
MAX_NUMBER = {"/mute": 30 * 24 * 60, "/slow": 86400, "/delete": 2**63 - 1, "/delgroup": 1, "/unmute": 1, "/rename": 1}
MODERATED = ("muted ", "unmuted ", "slow mode", "removed message")  #: how a moderation's answer begins
#: /help's lines for groups (``chat.HELP`` puts them between the core's and /help, /quit)
HELP_GROUPS = """  #GROUP TEXT        send TEXT to the group, which becomes your conversation
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
  /delete #GROUP/N   remove message N (the number beside it: #lab/5); your own messages too"""


# ---- from the keyboard ----------------------------------------------------------------------


def group_command(chat: ChatClient, cmd: str, args: list[str]) -> None:
    usage = GROUP_USAGE[cmd]
    if cmd in MODERATION:
        return _moderate(chat, cmd, args, usage)
    if cmd == "/groups":
        if args not in ([], ["all"]):
            return chat.local_error(f"usage: {usage}")
        if chat.serves_groups() and chat.connected(cmd):
            chat.group_requests[chat.session.group_list(mine=not args)] = ("all" if args else "mine", "")
        return None
    many = cmd in ("/add", "/remove")
    if not args or (many and len(args) < 2) or (not many and len(args) > (2 if cmd == "/create" else 1)):
        return chat.local_error(f"usage: {usage}")
    if cmd == "/create" and args[1:] not in ([], ["invite"]):
        return chat.local_error(f"usage: {usage}")
    if (group := chat.as_group(args[0])) is None:
        return None
    users = [chat.as_user(u) for u in args[1:]] if many else []
    if None in users or not chat.serves_groups() or not chat.connected(cmd):
        return None
    s = chat.session
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
    chat.group_requests[rid] = (asked, group)
    return None


def _moderate(chat: ChatClient, cmd: str, args: list[str], usage: str) -> None:
    """The owner's and staff's commands (the server says FORBIDDEN to anyone else)."""
    if cmd == "/delete" and len(args) == 1 and "/" in args[0]:
        args = args[0].rsplit("/", 1)  # /delete #lab/5, as the message's line shows it
    arity = {"/delgroup": (1,), "/unmute": (2,), "/mute": (2, 3)}.get(cmd, (2,))
    if len(args) not in arity:
        return chat.local_error(f"usage: {usage}")
    number = args[2] if cmd == "/mute" and len(args) == 3 else args[1] if cmd in ("/slow", "/delete") else "1"
    if cmd == "/slow" and number == "off":
        number = "0"
    if not (number.isascii() and number.isdecimal() and len(number) < 10) or (cmd != "/slow" and int(number) < 1):
        return chat.local_error(f"usage: {usage}")
    if int(number) > MAX_NUMBER[cmd]:  # the server's limits (a field would overflow past them anyway)
        return chat.local_error(f"{cmd}: at most {MAX_NUMBER[cmd]}")
    if (group := chat.as_group(args[0])) is None:
        return None
    user = chat.as_user(args[1]) if cmd in ("/mute", "/unmute") else ""
    name = chat.as_group(args[1]) if cmd == "/rename" else ""
    if user is None or name is None or not chat.serves_groups() or not chat.connected(cmd):
        return None
    s, n = chat.session, int(number)
    if cmd == "/rename":
        rid, asked = s.group_rename(group, name), "renamed"
    elif cmd == "/delgroup":
        rid, asked = s.group_delete(group), "deleted"
    elif cmd == "/mute":
        seconds = (n if len(args) == 3 else MUTE_MINUTES) * 60
        rid, asked = s.group_mute(group, [user], seconds), f"muted {user} for {duration(seconds)}"
    elif cmd == "/unmute":
        rid, asked = s.group_mute(group, [user], 0), f"unmuted {user}"
    elif cmd == "/slow":
        pace = f"one post per {duration(n)} for students" if n else "off"
        rid, asked = s.group_slow(group, n), f"slow mode: {pace}"
    else:
        rid, asked = s.redact(group, n), f"removed message {n}"
    chat.group_requests[rid] = (asked, name if cmd == "/rename" else group)
    return None


# ---- from the server ----------------------------------------------------------------------


def show_group_event(chat: ChatClient, msg: Deliver) -> None:
    """A group's change, from its stream: ``* alice added bob, carol to #lab``."""
    try:
        event = GroupEvent.decode(msg.body)
    except RemoteProtocolError:
        event = GroupEvent(0, (), msg.target)
    before = "#" + msg.target
    after = "#" + (event.name or msg.target)
    if event.name:
        chat.groups[msg.stream] = event.name
    who = "you" if msg.sender == chat.session.user else inert_name(msg.sender)
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
        what = f"{who} muted {users} in {inert_name(after)} for {duration(event.value)}"
    elif kind is GroupEventKind.UNMUTED:
        what = f"{who} unmuted {users} in {inert_name(after)}"
    elif kind is GroupEventKind.SLOW:
        pace = f"one post per {duration(event.value)}" if event.value else "off"
        what = f"{who} set slow mode in {inert_name(after)}: {pace}"
    elif kind is GroupEventKind.REMOVED_MESSAGE:
        if msg.position == event.value:  # the tombstone itself (History, catch-up): the message's place
            what = f"[message {event.value} by {users} removed]"
        else:
            what = f"{who} removed message {event.value} (by {users}) in {inert_name(after)}"
    else:
        what = f"{who} changed {inert_name(after)}"
    chat.date_line(msg.time_us)
    chat.view.show(f"* {what}", event="group_event", group=event.name or msg.target,
                   stream=msg.stream, kind=kind.name.lower() if kind else str(event.kind), sender=msg.sender,
                   users=list(event.users), time_us=msg.time_us, position=msg.position,
                   history=bool(msg.request_id))  # fmt: skip


def show_group_info(chat: ChatClient, msg: GroupInfo) -> None:
    asked, _ = chat.group_requests.pop(msg.request_id, ("", ""))
    chat.groups[msg.stream] = msg.name
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
    chat.view.show(human, event="group", asked=asked, group=msg.name, stream=msg.stream, owner=msg.owner,
                   invite_only=bool(msg.invite_only), members=msg.members, member=bool(msg.member),
                   position=msg.position)  # fmt: skip
    chat.run_held()  # the lines typed after the change, below its answer


def show_group_list(chat: ChatClient, msg: GroupListReply) -> None:
    asked, _ = chat.group_requests.pop(msg.request_id, ("", ""))
    entries = []
    for stream, name, owner, size, flags in zip(msg.streams, msg.names, msg.owners, msg.sizes, msg.flags,
                                                strict=False):  # fmt: skip
        chat.groups[stream] = name
        extra = [plural(size, "member"), f"owner {inert_name(owner)}" if owner else "the server's"]
        extra += ["invite only"] if flags & 1 else []
        extra += ["member"] if flags & 2 and asked == "all" else []
        entries.append(f"{inert_name('#' + name)} ({', '.join(extra)})")
    if msg.flags and msg.flags[-1] & 4:  # the server cut the list: one frame's header holds it
        entries.append(f"and more after {inert_name('#' + msg.names[-1])}")
    chat.view.show("groups: " + ("; ".join(entries) or "none"), event="groups", groups=list(msg.names),
                   owners=list(msg.owners), sizes=list(msg.sizes), flags=list(msg.flags))  # fmt: skip


def show_group_members(chat: ChatClient, msg: GroupMembersReply) -> None:
    _, asked_for = chat.group_requests.pop(msg.request_id, ("", ""))
    name = chat.groups.get(msg.stream, asked_for or msg.stream)
    chat.known.update(msg.users)
    entries = []
    for user, role, sessions in itertools.zip_longest(msg.users, msg.roles, msg.sessions):
        extra = [inert_name(role)] if role else []
        extra += [plural(sessions, "session")] if sessions else []
        entries.append(inert_name(user) + (f" ({', '.join(extra)})" if extra else ""))
    chat.view.show(f"members of {inert_name('#' + name)}: " + ", ".join(entries), event="members", group=name,
                   stream=msg.stream, users=list(msg.users), roles=list(msg.roles),
                   sessions=list(msg.sessions))  # fmt: skip
