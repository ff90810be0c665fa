"""Groups (protocol 1.4): the engine's third part, and the roster the Mailroom asks.

A group is a stream ``g:<id>`` whose membership changes are messages in it (events,
content type 3). The store is the authority on membership: it applies each change at
its turn in commit order and refuses (``Refused.why``) a message that breaks a rule
then. ``Groups`` keeps the *committed* membership, as the store last reported it:

- for the requests' early checks (a group not found, not a member, the owner or staff
  rules of docs/protocol.md section 11, invite-only, the name rules, the member limit), answered at once
  with a clear Error; what passes becomes a ``NewMessage`` for the next batch, and the
  store may still refuse it (a removal committed meanwhile): the same codes follow;
- for the fan-out: per group, ``live`` holds the online member sessions that announced
  1.4 and ``groups`` (a 1.3 session of a member never hears of the group);
- as the Mailroom's *roster*: when a batch is committed, ``committed`` applies each
  event's change in order (a joiner's sessions before its event is delivered, a
  leaver's after), answers the requester with ``GroupInfo`` and says who the message
  goes to.

Nothing is applied before the commit, so a failed batch leaves nothing to undo. It is
given what it needs (config, the accounts, the users online, the outbox, who sees whom,
the wall clock, the groups the store loaded at start) and reaches nothing else; the
engine hands what it returns to the Mailroom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..protocol import (
    ContentType,
    ErrorCode,
    GroupAdd,
    GroupCreate,
    GroupDelete,
    GroupEvent,
    GroupEventKind,
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
    Redact,
    RemoteProtocolError,
    Send,
    TargetKind,
)
from ..protocol.names import checked_name
from ..store import Account, NewMessage, StoredMessage
from ..store.interface import (
    ADD,
    ANNOUNCEMENTS,
    ASKS_CONFIRMATION,
    CREATE,
    DELETE,
    GROUP_PREFIX,
    JOIN,
    LEAVE,
    MUTE,
    REDACT,
    REMOVE,
    RENAME,
    SLOW,
    UNMUTE,
    GroupChange,
    GroupRecord,
    QueuedChange,
)
from .classroom import staff
from .config import HubConfig
from .outbox import Outbox, fitting, retry_ms
from .session import Session

log = logging.getLogger("csce513msg.hub")

GROUPS_MINOR = 4  #: the protocol minor that added groups
GroupRequest = (
    GroupCreate | GroupJoin | GroupLeave | GroupAdd | GroupRemove | GroupRename | GroupList | GroupMembers
    | GroupDelete | GroupMute | GroupSlow | Redact
)  # fmt: skip
MAX_MUTE_S = 30 * 86400  #: the longest mute, seconds (a GroupMute past it: BAD_REQUEST)
MAX_SLOW_S = 86400  #: the longest slow mode interval, seconds

QUEUE_DEVICE = "msgsrv"  #: the device of an event a queued change (``msgsrv group``) made
LIST_HEADER = 5 * 2  #: a GroupListReply's five list counts
LIST_ENTRY = 3 * 2 + 2 * 4  #: per group: three string lengths, its size and flags (u32 each)
CUT = 4  #: GroupListReply flags, on the last entry: the list was cut after it (ask again ``after`` it)

#: the store's reason for refusing a group message (``Refused.why``) -> the error its sender gets
REFUSALS: dict[str, tuple[ErrorCode, str]] = {
    "no_group": (ErrorCode.GROUP_NOT_FOUND, "no such group"),
    "not_member": (ErrorCode.NOT_A_MEMBER, "you are not a member of the group (any more)"),
    "name_taken": (ErrorCode.NAME_TAKEN, "a group has that name already"),
    "full": (ErrorCode.GROUP_FULL, "the group has its largest number of members"),
    "bad_change": (ErrorCode.BAD_REQUEST, "the store cannot make that change to the group"),
    "no_message": (ErrorCode.NO_SUCH_MESSAGE, "no message at that position (an event, or removed already)"),
    "forbidden": (ErrorCode.FORBIDDEN, "only its sender, the group's owner or staff may remove a message"),
}


class Group:
    """One group as committed."""

    __slots__ = ("former", "invite_only", "last_post", "live", "members", "muted", "name", "owner", "slow_s", "stream")

    def __init__(
        self, stream: str, name: str, owner: str, invite_only: bool,
        members: Iterable[str] = (), former: Iterable[str] = (), slow_s: int = 0, muted: Iterable[tuple[str, int]] = (),
    ) -> None:  # fmt: skip
        self.stream = stream  #: ``g:<id>``: never changes, never reused
        self.name = name
        self.owner = owner
        self.invite_only = invite_only
        self.members: set[str] = set(members)  #: members now
        self.former: set[str] = set(former)  #: were members, are not now (they may read their History)
        #: the online sessions of members that announced groups, in the order they came (a
        #: dict: ordered, O(1) to drop one); the fan-out goes to these
        self.live: dict[Session, None] = {}
        self.slow_s = slow_s  #: slow mode: seconds between a student's posts (0: off)
        self.muted: dict[str, int] = dict(muted)  #: user -> muted until (µs of wall time; passed: dead)
        #: slow mode: user -> when (monotonic) the engine last accepted their post; not kept
        #: across a restart; emptied when slow mode goes off
        self.last_post: dict[str, float] = {}


class Groups:
    """The committed groups, the requests' early checks, and the Mailroom's roster.

    Args:
        config: the hub's limits (``max_group_members``).
        accounts: every account, by name (the gate's: roles, and who may be added).
        online: user -> their logged-in sessions (the engine's).
        outbox: where answers go.
        sees: whether a session may see that a user is online (``--visibility``).
        wall_us: the wall time in µs for a monotonic ``now`` (the engine's clock).
        records: the groups the store loaded at start (``Store.load_groups``).
    """

    def __init__(
        self, config: HubConfig, accounts: dict[str, Account], online: dict[str, tuple[Session, ...]], outbox: Outbox,
        sees: Callable[[Session, str], bool], wall_us: Callable[[float], int], records: dict[str, GroupRecord],
    ) -> None:  # fmt: skip
        self.config, self.accounts, self.online, self.out = config, accounts, online, outbox
        self._sees, self._wall_us = sees, wall_us
        self.by_id: dict[str, Group] = {}  #: stream -> group
        self.by_name: dict[str, Group] = {}  #: name -> group
        self.of_user: dict[str, set[str]] = {}  #: user -> the streams of the groups it is a member of now
        for r in records.values():
            group = Group(r.stream, r.name, r.owner, r.invite_only, r.members, r.former, r.slow_s, r.mutes)
            self.by_id[group.stream] = self.by_name[group.name] = group
            for user in group.members:
                self.of_user.setdefault(user, set()).add(group.stream)

    # ---- requests (READY, and the session announced groups: the engine checked) ------------

    def request(self, session: Session, msg: GroupRequest, now: float) -> NewMessage | None:
        """A group request, checked against the committed membership: the event to store
        (its GroupInfo follows the commit), or None when it was answered here.

        Raises:
            RemoteProtocolError: the request breaks a rule (the codes of section 11).
        """
        user = session.user
        assert user is not None  # READY
        rid = msg.request_id
        changes = (GroupJoin, GroupLeave, GroupAdd, GroupRemove, GroupRename, GroupDelete, GroupMute, GroupSlow, Redact)
        if isinstance(msg, changes) and self.find(msg.group, rid).stream == ANNOUNCEMENTS:  # always everyone's
            raise RemoteProtocolError(
                ErrorCode.FORBIDDEN, "nobody joins, leaves, changes or moderates the announcements (nor removes one "
                "yet)", request_id=rid,
            )  # fmt: skip
        match msg:
            case GroupCreate(name=name, invite_only=invite_only):
                folded = checked_name(name, rid)
                self._name_free(folded, rid)
                change = GroupChange(CREATE, (user,), folded, bool(invite_only))
                return self._event(session, GROUP_PREFIX, folded, change, GroupEvent(CREATE, (), folded), now)
            case GroupJoin(group=target):
                group = self.find(target, rid)
                if user in group.members:
                    self._answer(session, group, rid)  # a member already: no event
                    return None
                if group.invite_only and not (user == group.owner or self._staff(user)):
                    raise RemoteProtocolError(
                        ErrorCode.FORBIDDEN, f"{group.name} is invite-only: its owner or staff add members",
                        request_id=rid,
                    )  # fmt: skip
                self._room_for(group, 1, rid)
                return self._event(session, group.stream, group.name, GroupChange(JOIN, (user,)),
                                   GroupEvent(JOIN, (user,), group.name), now)  # fmt: skip
            case GroupLeave(group=target):
                group = self._member_of(target, user, rid)
                return self._event(session, group.stream, group.name, GroupChange(LEAVE, (user,)),
                                   GroupEvent(LEAVE, (user,), group.name), now)  # fmt: skip
            case GroupAdd(group=target, users=users):
                group = self._managed(target, user, rid)
                new = tuple(u for u in self._known_users(users, rid) if u not in group.members)
                if not new:
                    self._answer(session, group, rid)  # members already: no event
                    return None
                self._room_for(group, len(new), rid)
                change = GroupChange(ADD, new, moderator=self._staff(user))
                return self._event(session, group.stream, group.name, change, GroupEvent(ADD, new, group.name), now)
            case GroupRemove(group=target, users=users):
                group = self._managed(target, user, rid)
                gone = tuple(u for u in self._names(users, rid) if u in group.members)
                if not gone:
                    self._answer(session, group, rid)  # none of them is a member: no event
                    return None
                change = GroupChange(REMOVE, gone, moderator=self._staff(user))
                return self._event(session, group.stream, group.name, change, GroupEvent(REMOVE, gone, group.name), now)
            case GroupRename(group=target, name=name):
                group = self._managed(target, user, rid)
                folded = checked_name(name, rid)
                if folded == group.name:
                    self._answer(session, group, rid)  # its name already: no event
                    return None
                self._name_free(folded, rid)
                change = GroupChange(RENAME, (), folded, moderator=self._staff(user))
                return self._event(session, group.stream, group.name, change, GroupEvent(RENAME, (), folded), now)
            case GroupDelete(group=target):
                group = self._moderated(target, user, rid, "delete it")
                return self._event(session, group.stream, group.name, GroupChange(DELETE),
                                   GroupEvent(GroupEventKind.DELETED, (), group.name), now)  # fmt: skip
            case GroupMute(group=target, users=users, seconds=seconds):
                return self._mute(session, target, users, seconds, now, rid)
            case GroupSlow(group=target, seconds=seconds):
                group = self._moderated(target, user, rid, "set its slow mode")
                if seconds > MAX_SLOW_S:
                    raise RemoteProtocolError(
                        ErrorCode.BAD_REQUEST, f"slow mode is at most {MAX_SLOW_S} s between posts", request_id=rid
                    )  # fmt: skip
                if seconds == group.slow_s:
                    self._answer(session, group, rid)  # as it is: no event
                    return None
                return self._event(session, group.stream, group.name, GroupChange(SLOW, seconds=seconds),
                                   GroupEvent(GroupEventKind.SLOW, (), group.name, seconds), now)  # fmt: skip
            case Redact(group=target, position=position):
                group = self.find(target, rid)
                moderator = user == group.owner or self._staff(user)
                if not moderator and user not in group.members:
                    raise RemoteProtocolError(
                        ErrorCode.NOT_A_MEMBER, f"you are not a member of {group.name}", request_id=rid
                    )  # fmt: skip
                if position == 0:
                    raise RemoteProtocolError(ErrorCode.NO_SUCH_MESSAGE, "no message at position 0", request_id=rid)
                # whose message it is, only the store knows at its turn: it refuses another's ("forbidden")
                # unless the sender moderates, and writes the event's body (kind 11, the author, the position)
                change = GroupChange(REDACT, position=position, moderator=moderator)
                placeholder = GroupEvent(GroupEventKind.REMOVED_MESSAGE, (), group.name, position)
                return self._event(session, group.stream, group.name, change, placeholder, now)
            case GroupList(mine=mine, after=after):
                self._list(session, user, bool(mine), after, rid)
            case GroupMembers(group=target):
                self._members(session, self.find(target, rid), user, rid)
        return None

    def queued(self, change: QueuedChange, now: float) -> NewMessage | str:
        """A change ``msgsrv group add|remove`` queued (``QueuedChange``): the event its actor's
        GroupAdd or GroupRemove would store, by the same checks (the actor must be an
        instructor; staff need not be members), from the
        device ``QUEUE_DEVICE`` (so each of the actor's own sessions hears of it too); or why
        it is refused, in words."""
        try:
            account = self.accounts.get(change.actor)
            if account is None or account.role != "instructor":
                return f"refused: {change.actor!r} is not an instructor"
            group = self._managed(change.group, change.actor, 0)
            if change.op == ADD:
                users = tuple(u for u in self._known_users(change.users, 0) if u not in group.members)
                if users:
                    self._room_for(group, len(users), 0)
            elif change.op == REMOVE:
                users = tuple(u for u in self._names(change.users, 0) if u in group.members)
            else:
                return f"refused: unknown operation {change.op}"
        except RemoteProtocolError as exc:
            return f"refused: {exc.message}"
        if not users:
            return "done: nothing to change"
        body = GroupEvent(change.op, users, group.name).encode()
        return NewMessage(group.stream, (), change.actor, QUEUE_DEVICE, 0, TargetKind.GROUP, group.name,
                          ContentType.GROUP_EVENT, self._wall_us(now), body,
                          GroupChange(change.op, users, moderator=True))  # fmt: skip

    def post(self, session: Session, msg: Send, now: float) -> NewMessage:
        """A Send to a group (its body and content type checked by the engine), from a member.

        Raises:
            RemoteProtocolError: INVALID_NAME, GROUP_NOT_FOUND, NOT_A_MEMBER, MUTED, SLOW_MODE
                (these two with ``retry_after_ms``).
        """
        user = session.user
        assert user is not None
        rid = msg.request_id
        group = self._member_of(msg.target, user, rid)
        if group.stream == ANNOUNCEMENTS and not self._staff(user):
            raise RemoteProtocolError(ErrorCode.FORBIDDEN, "only staff post announcements", request_id=rid)
        if msg.content_type == ASKS_CONFIRMATION and group.stream != ANNOUNCEMENTS:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, "content type 4 is for the announcements only", request_id=rid
            )  # fmt: skip
        if group.muted or group.slow_s:
            self._may_post(group, user, now, rid)
        return NewMessage(group.stream, (), user, session.device, msg.client_msg_id, TargetKind.GROUP, group.name,
                          msg.content_type, self._wall_us(now), msg.body)  # fmt: skip

    def readable(self, session: Session, target: str, rid: int) -> str:
        """The stream of a group whose History ``session``'s user may read (a member now, or
        once: the store gives only its intervals).

        Raises:
            RemoteProtocolError: INVALID_NAME, GROUP_NOT_FOUND, NOT_A_MEMBER (never one).
        """
        group = self.find(target, rid)
        if session.user not in group.members and session.user not in group.former:
            raise RemoteProtocolError(
                ErrorCode.NOT_A_MEMBER, f"you were never a member of {group.name}", request_id=rid
            )  # fmt: skip
        return group.stream

    def find(self, target: str, rid: int) -> Group:
        """The group ``target`` names: its stream ``g:<id>``, or its name (which has no ":").

        Raises:
            RemoteProtocolError: INVALID_NAME for a malformed name, GROUP_NOT_FOUND.
        """
        if target.startswith(GROUP_PREFIX):
            group = self.by_id.get(target)
        else:
            group = self.by_name.get(checked_name(target, rid))
        if group is None:
            raise RemoteProtocolError(ErrorCode.GROUP_NOT_FOUND, f"no group {target!r}", request_id=rid)
        return group

    # ---- the roster: sessions come and go, batches commit -----------------------------

    def accounts_changed(self, changes: dict[str, Account | None]) -> None:
        """Accounts made or removed (registration, ``msgsrv user``): every account reads the
        announcements (the store enrolls it by a trigger; this cache follows)."""
        announcements = self.by_id.get(ANNOUNCEMENTS)
        if announcements is None:
            return
        for user, account in changes.items():
            if account is not None and user not in announcements.members:
                self._join(announcements, user)
            elif account is None and user in announcements.members:
                self._leave(announcements, user)

    def came_online(self, session: Session) -> None:
        """``session`` logged in: it joins the live set of each of its user's groups."""
        announcements = self.by_id.get(ANNOUNCEMENTS)
        if announcements is not None and session.user in self.accounts and session.user not in announcements.members:
            self._join(announcements, session.user)  # an account the cache has not heard of yet: a reader
        if session.groups:
            for stream in self.of_user.get(session.user or "", ()):
                self.by_id[stream].live[session] = None

    def gone(self, session: Session) -> None:
        """``session`` (logged in) is gone: it leaves every live set."""
        if session.groups:
            for stream in self.of_user.get(session.user or "", ()):
                self.by_id[stream].live.pop(session, None)

    def committed(self, sender: Session | None, rid: int, m: StoredMessage) -> Iterable[Session]:
        """A group message is committed (the store's turn is the truth): apply its change, in
        commit order, answer an event's requester with GroupInfo, and return the sessions the
        message goes to live: a joiner's included, a leaver's too (it sees its leaving)."""
        change = m.change
        group = self.by_id.get(m.stream)
        if change is None:  # a post (or an event read back): the members' sessions as they are
            return group.live if group is not None else ()
        if change.op == CREATE:
            group = Group(m.stream, change.name, m.sender, change.invite_only)
            self.by_id[group.stream] = self.by_name[group.name] = group
            log.info("group %s (%s) created by %s", group.name, group.stream, m.sender)
        if group is None:  # the store stored an event of a group this cache never had: a bug
            log.error("group event for unknown %s (position %d)", m.stream, m.position)
            return ()
        if change.op == DELETE:
            return self._deleted(group, sender, rid, m)
        if change.op == RENAME:
            del self.by_name[group.name]
            group.name = change.name
            self.by_name[group.name] = group
        elif change.op == MUTE:
            group.muted.update((u, m.time_us + change.seconds * 1_000_000) for u in change.users)
        elif change.op == UNMUTE:
            for user in change.users:
                group.muted.pop(user, None)
        elif change.op == SLOW:
            group.slow_s = change.seconds
            if not change.seconds:
                group.last_post.clear()
        joins = (m.sender,) if change.op in (CREATE, JOIN) else change.users if change.op == ADD else ()
        for user in joins:
            if user not in group.members:
                self._join(group, user)
        recipients = list(group.live)
        leaves = (m.sender,) if change.op == LEAVE else change.users if change.op == REMOVE else ()
        for user in leaves:
            if user in group.members:
                self._leave(group, user)
        if sender is not None:
            self.out.write(sender, self._info(group, sender.user, m.position, rid))
        return recipients

    def refused(self, session: Session, rid: int, new: NewMessage, why: str) -> None:
        """The store refused a group message at its turn (``Refused.why``): the same answer an
        early check gives (``unchanged``: GroupInfo with position 0)."""
        group = self.by_id.get(new.stream)
        if why == "unchanged" and group is not None:
            self.out.write(session, self._info(group, session.user, 0, rid))
            return
        code, text = REFUSALS.get(why, (ErrorCode.BAD_REQUEST, f"the group change was refused ({why})"))
        self.out.error(session, code, f"{text}: {group.name if group else new.target}", rid)

    def is_member(self, user: str, stream: str) -> bool:
        """Whether ``user`` is a member of the group ``stream`` now (committed)."""
        return stream in self.of_user.get(user, ())

    # ---- inside -------------------------------------------------------------------------

    def _deleted(self, group: Group, sender: Session | None, rid: int, m: StoredMessage) -> list[Session]:
        """A deletion is committed: every member's session hears it, then the group is gone
        from every cache (its name is free; its stream is never reused)."""
        recipients = list(group.live)
        for user in group.members:
            mine = self.of_user.get(user)
            if mine is not None:
                mine.discard(group.stream)
                if not mine:
                    del self.of_user[user]
        del self.by_id[group.stream]
        if self.by_name.get(group.name) is group:
            del self.by_name[group.name]
        group.members.clear()
        group.live.clear()
        log.info("group %s (%s) deleted by %s", group.name, group.stream, m.sender)
        if sender is not None:
            self.out.write(sender, self._info(group, sender.user, m.position, rid))
        return recipients

    def _mute(
        self, session: Session, target: str, users: Iterable[str], seconds: int, now: float, rid: int
    ) -> NewMessage | None:
        """GroupMute: members who are neither staff nor the owner, for ``seconds`` (0: unmute)."""
        assert session.user is not None
        group = self._moderated(target, session.user, rid, "mute its members")
        names = self._known_users(users, rid)
        for name in names:
            if name == group.owner or self._staff(name):
                raise RemoteProtocolError(
                    ErrorCode.FORBIDDEN, f"{name} is {'the owner' if name == group.owner else 'staff'}: "
                    "staff and a group's owner cannot be muted", request_id=rid,
                )  # fmt: skip
            if name not in group.members and seconds:
                raise RemoteProtocolError(
                    ErrorCode.BAD_REQUEST, f"{name} is not a member of {group.name}", request_id=rid
                )  # fmt: skip
        if seconds > MAX_MUTE_S:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, f"a mute lasts at most {MAX_MUTE_S} s ({MAX_MUTE_S // 86400} days)",
                request_id=rid,
            )  # fmt: skip
        if seconds:
            change, event = (
                GroupChange(MUTE, names, seconds=seconds),
                GroupEvent(GroupEventKind.MUTED, names, group.name, seconds),
            )
            return self._event(session, group.stream, group.name, change, event, now)
        wall = self._wall_us(now)
        muted = tuple(u for u in names if group.muted.get(u, 0) > wall)
        if not muted:
            self._answer(session, group, rid)  # none of them is muted: no event
            return None
        return self._event(session, group.stream, group.name, GroupChange(UNMUTE, muted),
                           GroupEvent(GroupEventKind.UNMUTED, muted, group.name), now)  # fmt: skip

    def _may_post(self, group: Group, user: str, now: float, rid: int) -> None:
        """Mute and slow mode, for a member's post (staff and the owner are exempt from both)."""
        if user == group.owner or self._staff(user):
            return
        until = group.muted.get(user)
        if until is not None:
            left = until - self._wall_us(now)
            if left > 0:
                raise RemoteProtocolError(
                    ErrorCode.MUTED, f"you are muted in {group.name}",  # how long: retry_after_ms
                    request_id=rid, retry_after_ms=retry_ms(left / 1e6),
                )  # fmt: skip
            del group.muted[user]  # passed: dead
        if group.slow_s:
            last = group.last_post.get(user)
            if last is not None and now < last + group.slow_s:
                wait = last + group.slow_s - now
                raise RemoteProtocolError(
                    ErrorCode.SLOW_MODE, f"{group.name} is in slow mode: one post per {group.slow_s} s",
                    request_id=rid, retry_after_ms=retry_ms(wait),  # the wait: a client shows it
                )  # fmt: skip
            group.last_post[user] = now  # counted from the post the engine accepted

    def _event(
        self, session: Session, stream: str, target: str, change: GroupChange, event: GroupEvent, now: float
    ) -> NewMessage:
        """A group event to store: the server's message (no client id), content type 3."""
        assert session.user is not None
        return NewMessage(stream, (), session.user, session.device, 0, TargetKind.GROUP, target,
                          ContentType.GROUP_EVENT, self._wall_us(now), event.encode(), change)  # fmt: skip

    def _answer(self, session: Session, group: Group, rid: int) -> None:
        """GroupInfo with position 0: the request changed nothing."""
        self.out.write(session, self._info(group, session.user, 0, rid))

    def _info(self, group: Group, user: str | None, position: int, rid: int) -> GroupInfo:
        member = int(user in group.members)
        return GroupInfo(group.stream, group.name, group.owner, int(group.invite_only), len(group.members),
                         position, member, rid)  # fmt: skip

    def _join(self, group: Group, user: str) -> None:
        group.members.add(user)
        group.former.discard(user)
        self.of_user.setdefault(user, set()).add(group.stream)
        for session in self.online.get(user, ()):
            if session.groups:
                group.live[session] = None

    def _leave(self, group: Group, user: str) -> None:
        group.members.discard(user)
        group.former.add(user)
        mine = self.of_user.get(user, set())
        mine.discard(group.stream)
        if not mine:
            self.of_user.pop(user, None)
        for session in self.online.get(user, ()):
            group.live.pop(session, None)

    def _member_of(self, target: str, user: str, rid: int) -> Group:
        group = self.find(target, rid)
        if user not in group.members:
            raise RemoteProtocolError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {group.name}", request_id=rid)
        return group

    def _managed(self, target: str, user: str, rid: int) -> Group:
        """A group ``user`` may change (add, remove, rename): its owner, a member; or staff,
        member or not (docs/groups-plan.md, step 6)."""
        group = self.find(target, rid)
        if self._staff(user):
            return group
        if user != group.owner:
            raise RemoteProtocolError(
                ErrorCode.FORBIDDEN, f"only the owner of {group.name} or staff (instructors, assistants) may "
                "add, remove or rename", request_id=rid,
            )  # fmt: skip
        if user not in group.members:
            raise RemoteProtocolError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {group.name}", request_id=rid)
        return group

    def _moderated(self, target: str, user: str, rid: int, action: str) -> Group:
        """A group ``user`` may moderate (delete, mute, slow mode): its owner, or staff."""
        group = self.find(target, rid)
        if user != group.owner and not self._staff(user):
            raise RemoteProtocolError(
                ErrorCode.FORBIDDEN, f"only the owner of {group.name} or staff (instructors, assistants) may {action}",
                request_id=rid,
            )  # fmt: skip
        return group

    def _room_for(self, group: Group, more: int, rid: int) -> None:
        limit = self.config.max_group_members
        if len(group.members) + more > limit:
            raise RemoteProtocolError(
                ErrorCode.GROUP_FULL, f"{group.name} would have over {limit} members", request_id=rid
            )  # fmt: skip

    def _name_free(self, name: str, rid: int) -> None:
        if name in self.by_name:
            raise RemoteProtocolError(ErrorCode.NAME_TAKEN, f"a group is named {name} already", request_id=rid)

    def _staff(self, user: str) -> bool:
        """An instructor or an assistant (``classroom.staff``, the one check of an account's role)."""
        return staff(self.accounts, user)

    def _names(self, users: Iterable[str], rid: int) -> tuple[str, ...]:
        """``users`` folded, each once, sorted (an empty list is a BAD_REQUEST)."""
        names = tuple(sorted({checked_name(u, rid) for u in users}))
        if not names:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "name at least one user", request_id=rid)
        return names

    def _known_users(self, users: Iterable[str], rid: int) -> tuple[str, ...]:
        names = self._names(users, rid)
        for name in names:
            if name not in self.accounts:
                raise RemoteProtocolError(ErrorCode.USER_NOT_FOUND, f"no user {name!r}", request_id=rid)
        return names

    def _list(self, session: Session, user: str, mine: bool, after: str, rid: int) -> None:
        """The groups by name after ``after``, as many as fit in one header (``hlen`` is a u16:
        the reply has no body); cut short, the last entry's flags say so (bit 2, ``CUT``)."""
        streams = self.of_user.get(user, set()) if mine else self.by_id.keys()
        groups = sorted((g for s in streams if (g := self.by_id[s]).name > after), key=lambda g: g.name)
        # names are ASCII (NAME_RULE), streams too: a character is a byte
        fit = fitting((LIST_ENTRY + len(g.stream) + len(g.name) + len(g.owner) for g in groups), LIST_HEADER)
        page = groups[:fit]
        flags = [int(g.invite_only) | (user in g.members) << 1 for g in page]
        if fit < len(groups):
            flags[-1] |= CUT
        self.out.write(
            session,
            GroupListReply(
                tuple(g.stream for g in page), tuple(g.name for g in page), tuple(g.owner for g in page),
                tuple(len(g.members) for g in page), tuple(flags), rid,
            ),
        )  # fmt: skip

    def _members(self, session: Session, group: Group, user: str, rid: int) -> None:
        """An invite-only group's members are its members' (and staff's) business."""
        if group.invite_only and user not in group.members and not self._staff(user):
            raise RemoteProtocolError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {group.name}", request_id=rid)
        if group.stream == ANNOUNCEMENTS and not self._staff(user):  # every account, with its role
            raise RemoteProtocolError(
                ErrorCode.FORBIDDEN, "the announcements' members are every account: listed for staff only",
                request_id=rid,
            )  # fmt: skip
        users = sorted(group.members)
        roles = tuple(a.role if (a := self.accounts.get(u)) is not None else "" for u in users)
        # cut to fit one header (g:0 holds every account): fewer users than GroupInfo's count says so
        fit = fitting(
            (2 + len(u) + 2 + len(r) + 4 for u, r in zip(users, roles, strict=True)), 2 + len(group.stream) + 6
        )
        users, roles = users[:fit], roles[:fit]
        sessions = tuple(len(self.online.get(u, ())) if self._sees(session, u) else 0 for u in users)
        self.out.write(session, GroupMembersReply(group.stream, tuple(users), roles, sessions, rid))
