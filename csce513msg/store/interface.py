"""The storage interface: what the hub asks of a store, as plain data.

The hub never calls a store while it serves: it gathers what it needs into one
``Batch`` per loop pass and hands ``store.apply(batch)`` to the backend as a job, at
most one batch in flight (group commit): in the ``loop`` lane if the store never waits
on the disk (``on_loop``: the loop runs it itself, after the pass's flush), else in the
``store`` lane (one storage thread); what may wait (a checkpoint) is ``maintenance``, in
the ``store`` lane. The result comes back through ``engine.job_done``. A batch is applied in order:
accounts, logins, messages, then cursors, all in ONE transaction; then the fetches
read what is committed. So every store (SQLite now, PostgreSQL later) implements
the loads at start (``load_accounts``, ``load_device_tokens``, ``load_groups``) and ``apply``.

Terms:

- a *stream* is a conversation (``dm:alice,bob``); each message has a position in
  it, from 1, without gaps, and a message id that is unique and never reused;
- a *cursor* is how far one device of a user has acknowledged one stream;
- a *group* (schema v6, protocol 1.4) is a stream ``g:<id>`` whose membership changes (and,
  schema v7, moderation: deletion, mutes, slow mode, redaction) are messages in it
  (``GroupChange``): each member has intervals [joined, left] of positions, and reads only
  inside them.

The records made for every message (``NewMessage``, ``StoredMessage``,
``DeliveredNote``) are slotted dataclasses that nobody changes after making them, but
not ``frozen``: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, about 1.1 µs for 8 fields against 0.2 µs, and dropping it here
and for ``Frame`` took workload 1 (epoll) from 64 to 56 µs per message
(docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

ROLES = ("student", "instructor", "assistant")
STAFF = frozenset(("instructor", "assistant"))  #: the roles with the classroom's moderation powers


def is_staff(role: str | None) -> bool:
    """Whether ``role`` is staff: an instructor or a teaching assistant (docs/groups-plan.md,
    step 6: an assistant has the instructor's moderation powers, not accounts or roles)."""
    return role in STAFF


GROUP_PREFIX = "g:"  #: a group's stream is ``g:<id>``; the store assigns the id at CREATE and never reuses it
#: A group event's content type and the kinds of ``GroupChange.op``: protocol 1.4's
#: ``ContentType.GROUP_EVENT`` and ``GroupEventKind``, numbered alike (the store imports no
#: protocol module; tests/store/test_groups.py checks they agree)
GROUP_EVENT = 3
CREATE, JOIN, LEAVE, ADD, REMOVE, RENAME = 1, 2, 3, 4, 5, 6
DELETE, MUTE, UNMUTE, SLOW, REDACT = 7, 8, 9, 10, 11  #: the classroom's moderation (docs/groups-plan.md, step 6)
MAX_GROUP_MEMBERS = 1000  #: members a group may have at once (``--max-group-members``), unless the batch says
#: The announcements (schema v9): the group ``g:0``, owner "" (the server), invite-only, of which
#: every account is a member from position 1 (a trigger on ``users`` enrolls each new one), so
#: every account reads every announcement. Only posts are stored there (no event), with no
#: member limit and no "delivered" receipts; a device with no cursor on it starts at 0.
ANNOUNCEMENTS = "g:0"
ANNOUNCEMENTS_NAME = "announcements"
ASKS_CONFIRMATION = 4  #: the content type of an announcement asking to be confirmed (the protocol's, 1.4)
#: the kinds of ``Note`` (the classroom's records, applied in a batch's transaction)
CONFIRM, RAISE, LOWER, TAKE = "confirm", "raise", "lower", "take"


def hand_order(hand: Hand) -> tuple[int, str]:
    """A hand's place in the queue: raised earliest first, then by name (both stores, the engine)."""
    return (hand.raised_us, hand.user)


def is_group(stream: str) -> bool:
    """Whether ``stream`` is a group's (``g:<id>``) rather than a direct conversation's."""
    return stream.startswith(GROUP_PREFIX)


#: the kinds of ``KeyNote``: the key directory's records (protocol 1.7, end-to-end encryption)
PUBLISH, TAKE_PREKEY, SEEN, FORGET = "publish", "take_prekey", "seen", "forget"
IDENTITY = 128  #: the first bytes of a device's published keys that name its identity (docs/protocol.md s. 14)

TOKENS_PER_USER = 32  #: device tokens kept per account (one per device: the newest)


@dataclass(frozen=True, slots=True)
class Account:
    """A user who may log in."""

    name: str
    role: str  #: one of ``ROLES``
    password_hash: str  #: see ``crypto.passwords``; "" : no password set, no login
    created_us: int = 0


@dataclass(frozen=True, slots=True)
class DeviceToken:
    """A device token handed out at a login (OWASP's device cookies): a login presenting it
    is throttled apart from guesses against the account. Only its digest is kept."""

    digest: str  #: SHA-256 of the token, hex
    user: str
    device: str  #: the device id it was given to: one token per (user, device)
    created_us: int  #: wall time it was made; it is valid for a set time from then
    #: the password hash the login was checked against: kept only if it is still the
    #: account's (a password changed meanwhile revokes every token); not stored
    password_hash: str = ""


@dataclass(frozen=True, slots=True)
class LoginRead:
    """A device logs in: record it (its first login marks where it starts), count the
    messages waiting for it (up to ``count_up_to``), and read the delivered receipts it missed."""

    key: int
    user: str
    device: str
    new_device_history: int  #: as in ``Fetch``
    #: count no further (the protocol's cap on LoginOk.waiting): a login costs what it
    #: reports, not the length of a backlog
    count_up_to: int
    groups: bool = False  #: count group messages and give group receipts too (a 1.4 session with ``groups``)


@dataclass(frozen=True, slots=True)
class LoginInfo:
    """What the store knows of a device that logs in."""

    waiting: int  #: messages its catch-up will deliver, at most ``LoginRead.count_up_to``
    receipts: list[DeliveredNote]  #: delivered receipts it has not been sent yet


@dataclass(frozen=True, slots=True)
class GroupChange:
    """What a group event does, applied by the store in commit order (``op``: CREATE, JOIN,
    LEAVE, ADD, REMOVE, RENAME, DELETE, MUTE, UNMUTE, SLOW, REDACT). The event's position opens
    (CREATE, JOIN, ADD) or closes (LEAVE, REMOVE, DELETE: every member's) the users'
    membership intervals; both events are inside the interval. DELETE also marks the group
    deleted (its name is free); MUTE and UNMUTE write ``group_mutes`` (until the event's time
    plus ``seconds``); SLOW writes the group's ``slow_s``; REDACT turns the message at
    ``position`` into a tombstone in place, and the event's body is the store's (below)."""

    op: int
    #: who joins, leaves, is added, removed, muted or unmuted (CREATE, JOIN, LEAVE: the sender)
    users: tuple[str, ...] = ()
    name: str = ""  #: CREATE, RENAME: the group's (folded) name after the event
    invite_only: bool = False  #: CREATE: only members may add others (the engine's rule)
    seconds: int = 0  #: MUTE: for how long; SLOW: between a student's posts (0: off)
    position: int = 0  #: REDACT: the message to remove
    #: REDACT: the sender may remove anyone's message (staff, the owner); else only its own
    #: (refused "forbidden" at its turn: only the store knows a message's author).
    #: ADD, REMOVE, RENAME: the sender is staff and need not be a member (the owner must be
    #: one at the change's turn, as the sender of a post must)
    moderator: bool = False


@dataclass(slots=True)
class NewMessage:
    """A message to store once, in its stream.

    A group message (``stream`` ``g:<id>``; for a CREATE, ``g:``, and the store assigns the
    id) is stored only if the rules hold at its turn in the batch: the group exists (not
    deleted), the sender of a post or a LEAVE is a member now (of a JOIN: is not; the other
    changes' permissions are the engine's: staff act without joining), the name is free,
    the group is not full, a REDACT's message is there. Otherwise it is ``Refused`` with
    ``why`` set: never an exception, which would roll
    back everyone's batch."""

    stream: str
    members: tuple[str, ...]  #: the users of a direct stream (both ends); () for a group (the store knows them)
    sender: str
    device: str  #: the sender's device id
    client_msg_id: int  #: the sender's counter; with (sender, device) it identifies a resend; 0: none
    target_kind: int
    target: str
    content_type: int
    time_us: int  #: server wall time at arrival
    body: bytes
    change: GroupChange | None = None  #: a group event's effect (its body is the event, encoded by the hub)


@dataclass(slots=True)
class StoredMessage:
    """A message as stored: what a receipt and a delivery need."""

    message_id: int
    stream: str
    position: int
    sender: str
    device: str
    target_kind: int
    target: str
    content_type: int
    time_us: int
    body: bytes
    duplicate: bool = False  #: a resend: this is the copy stored earlier
    #: the group change it made, set only in the batch that stored it (the hub's roster applies
    #: it in commit order); a message read back (catch-up, History) has None
    change: GroupChange | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the store would not take: a resend of one older than history is kept, or
    (``reused``) a client message id the device used before for another message, or (``why``
    set) a group message that breaks a rule at its turn in commit order."""

    reason: str
    reused: bool = False
    #: a group rule: "no_group", "not_member", "name_taken", "full", "no_message" (a REDACT of a
    #: position that holds no message of the stream, an event, or a tombstone), "forbidden" (a
    #: REDACT of another's message without ``moderator``), or "unchanged" (a JOIN or ADD of
    #: members only, a REMOVE of non-members only: nothing to store, no event)
    why: str = ""


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read what one device of ``user`` has not acknowledged, at most ``limit`` messages."""

    key: int  #: the caller's token, echoed in the result
    user: str
    device: str
    limit: int
    #: a device with no cursor on a stream gets what came after its first login, and at
    #: least this many messages back (so a new device shows recent history)
    new_device_history: int
    #: read group streams too (a 1.4 session with ``groups``): the current membership
    #: interval only, from its join (an earlier interval is History's)
    groups: bool = False


@dataclass(slots=True)
class DeliveredNote:
    """A message a device of its recipient acknowledged: its sender gets a DELIVERED receipt."""

    sender: str
    message_id: int
    stream: str
    position: int
    time_us: int


@dataclass(frozen=True, slots=True)
class Note:
    """A classroom record (``Batch.notes``), applied at its turn in the batch's transaction:
    ``CONFIRM`` (``user`` read the announcement at ``position``), ``RAISE`` (``user`` raises a
    hand with ``question`` at ``time_us``; a hand raised already keeps its place and takes the
    new question), ``LOWER`` (``user``'s hand, if raised), ``TAKE`` (``user``, staff, takes
    ``student``'s hand: the first in the queue when the engine chose it; gone meanwhile, nothing)."""

    op: str  #: CONFIRM, RAISE, LOWER or TAKE
    user: str
    position: int = 0
    question: str = ""
    time_us: int = 0
    student: str = ""  #: TAKE: whose hand (the engine names it: the store never picks another)


@dataclass(frozen=True, slots=True)
class KeyNote:
    """A record of the key directory (``Batch.keys``, schema v10), applied at its turn in the
    batch's transaction. The store reads none of the keys' bytes but the identity's, to
    compare: ``PUBLISH`` sets ``device``'s published keys (whose first ``IDENTITY`` bytes, if
    they differ from what it had, drop its one-time prekeys: a new identity) and adds
    ``prekeys`` (an id it holds already is ignored); ``TAKE_PREKEY`` deletes one prekey (it was
    handed out); ``SEEN`` notes that the device logged in at ``time_us``; ``FORGET`` deletes the
    device's keys."""

    op: str  #: PUBLISH, TAKE_PREKEY, SEEN or FORGET
    user: str
    device: str
    published: bytes = b""  #: PUBLISH: the device's published keys
    prekeys: tuple[tuple[int, bytes], ...] = ()  #: PUBLISH: (id, public key) to add
    key_id: int = 0  #: TAKE_PREKEY: the prekey handed out
    time_us: int = 0  #: PUBLISH, SEEN: when the device was last seen (µs of wall time)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A device's entry in the key directory, as committed (``Store.load_keys``)."""

    published: bytes
    prekeys: tuple[tuple[int, bytes], ...]  #: (id, public key), ascending ids
    seen_us: int  #: its last login or publication (µs of wall time): it expires from then


@dataclass(frozen=True, slots=True)
class Hand:
    """A raised hand, as kept (``ClassroomRecord.hands``)."""

    user: str
    question: str
    raised_us: int


@dataclass(frozen=True, slots=True)
class ClassroomRecord:
    """The classroom as committed, for the engine at start (``Store.load_classroom``)."""

    confirmations: dict[int, tuple[str, ...]]  #: position in ``g:0`` -> who confirmed it, sorted
    hands: tuple[Hand, ...]  #: the queue, first first (raised earliest, then by name)
    asks: tuple[int, ...]  #: the positions of the announcements that ask to be confirmed, ascending


@dataclass(slots=True)
class Batch:
    """Everything one loop pass needs from the store."""

    accounts: list[Account] = field(default_factory=list)  #: to create (registration over the wire)
    #: made at this batch's logins: each replaces its device's older token, at most
    #: ``TOKENS_PER_USER`` per account are kept (the newest)
    device_tokens: list[DeviceToken] = field(default_factory=list)
    revoked_tokens: list[str] = field(default_factory=list)  #: digests of device tokens to delete
    logins: list[LoginRead] = field(default_factory=list)
    messages: list[NewMessage] = field(default_factory=list)
    cursors: dict[tuple[str, str, str], int] = field(default_factory=dict)  #: (user, device, stream) -> pos
    #: (stream, recipient) -> position acknowledged: messages up to it, from others, are delivered.
    #: The same ack's cursor comes in ``cursors`` (SQLite keeps only the cursors, and derives this)
    delivered: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (sender, device, stream) -> position: delivered receipts this device has been sent
    notified: dict[tuple[str, str, str], int] = field(default_factory=dict)
    fetches: list[Fetch] = field(default_factory=list)
    #: key -> (stream, before, limit, max_bytes): a page of history, positions below ``before``
    #: (0: from the newest), at most ``limit`` messages whose bodies add up to at most
    #: ``max_bytes`` (but at least one message)
    history: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)
    #: key -> the user who reads that History page. Of a group stream a page holds only what
    #: its reader could read: every membership interval it had, newest first, the gaps skipped
    #: (no reader, or never a member: an empty page; the engine answers NOT_A_MEMBER first)
    readers: dict[int, str] = field(default_factory=dict)
    poll_accounts: bool = False  #: report accounts changed by others (``msgsrv user``) since the last poll
    #: retention: delete messages older than this (µs of wall time; 0: keep all). Each device's
    #: highest client message id among them is kept, so a resend of one is refused, not stored again
    expire_before_us: int = 0
    expire_tokens_before_us: int = 0  #: delete device tokens made before this (µs of wall time; 0: none)
    max_group_members: int = MAX_GROUP_MEMBERS  #: a JOIN or ADD past it is refused ("full")
    #: index in ``messages`` -> the id of the queued change (``msgsrv group``) it applies: closed
    #: in the same transaction with the message's outcome (stored, or refused at its turn)
    queued: dict[int, int] = field(default_factory=dict)
    #: queued change id -> why the engine refused it before the store (closed with that outcome)
    queue_outcomes: dict[int, str] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)  #: the classroom's records, after the messages
    keys: list[KeyNote] = field(default_factory=list)  #: the key directory's records, after the notes
    expire_keys_before_us: int = 0  #: delete devices' keys last seen before this (µs of wall time; 0: none)

    def may_be_long(self) -> bool:
        """Work whose cost grows with what it finds: reads (a login's receipts and device
        check, a catch-up window, a history page) and retention's deletes (every 10 minutes).
        Such a batch goes to the storage thread even from a store that runs on the loop:
        a backlog or a cold page cache then delays the commits, not everyone's loop."""
        return bool(
            self.logins or self.fetches or self.history
            or self.expire_before_us or self.expire_tokens_before_us or self.expire_keys_before_us
        )  # fmt: skip

    def can_wait(self) -> bool:
        """Only acknowledgements' bookkeeping (cursors, delivered, notified): nobody waits for
        it, so it may ride with the next batch instead of costing a commit of its own."""
        return not (
            self.accounts or self.device_tokens or self.revoked_tokens or self.logins or self.messages
            or self.fetches or self.history or self.poll_accounts or self.expire_before_us
            or self.expire_tokens_before_us or self.queue_outcomes or self.notes or self.keys
            or self.expire_keys_before_us
        )  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.cursors or self.delivered or self.notified or not self.can_wait())


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``apply`` did: one entry per message, in order, and each fetch's messages.

    ``error`` is set when the transaction failed: nothing of the batch was stored.
    """

    stored: list[StoredMessage | Refused] = field(default_factory=list)
    fetched: dict[int, list[StoredMessage]] = field(default_factory=dict)
    error: str | None = None
    newly_delivered: list[DeliveredNote] = field(default_factory=list)  #: from this batch's acks
    logins: dict[int, LoginInfo] = field(default_factory=dict)  #: per login
    history: dict[int, list[StoredMessage]] = field(default_factory=dict)  #: per history page, oldest first
    #: accounts that others created, changed (their hash or role) or removed (None) since the last poll
    accounts: dict[str, Account | None] = field(default_factory=dict)
    #: with a poll: the group changes ``msgsrv group`` queued that no batch has closed, oldest first
    queued: list[QueuedChange] = field(default_factory=list)
    #: ``apply(batch, wait=False)`` found the database locked by another process's writer:
    #: nothing was done; the hub applies the batch again on the storage thread, which waits
    busy: bool = False


@dataclass(frozen=True, slots=True)
class QueuedChange:
    """A group change ``msgsrv group add|remove`` queued for the server (schema 8, ``group_queue``):
    the engine applies it as ``actor``'s GroupAdd or GroupRemove would be."""

    id: int
    op: int  #: ``ADD`` or ``REMOVE``
    group: str  #: a name, or the stream ``g:<id>``
    users: tuple[str, ...]
    actor: str  #: an instructor (staff need not be a member)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group as committed, for the engine's roster at start (``Store.load_groups``)."""

    stream: str  #: ``g:<id>``
    name: str
    owner: str
    invite_only: bool
    created_us: int
    members: tuple[str, ...]  #: members now, sorted
    former: tuple[str, ...]  #: users who were members and are not now (they may read their intervals' History)
    slow_s: int = 0  #: slow mode: seconds between a student's posts (0: off)
    #: (user, muted until: µs of wall time), sorted; a time passed is dead (the engine skips it)
    mutes: tuple[tuple[str, int], ...] = ()


def resent(m: NewMessage, old: StoredMessage) -> StoredMessage | Refused:
    """What the store answers a Send whose (sender, device, client id) it has: a resend gets the
    stored copy; another message under a used id is refused (a client bug: answering it
    with the old receipt would say that a message never stored was). A group message is
    compared by its stream, not its target: a rename between the two changes the name."""
    where, was = (m.stream, old.stream) if is_group(old.stream) else (m.target, old.target)
    if (old.target_kind, was, old.content_type, old.body) != (m.target_kind, where, m.content_type, m.body):
        return Refused(f"client_msg_id {m.client_msg_id} was used for another message: use a new one", reused=True)
    return dataclasses.replace(old, duplicate=True)


def page_within(newest_first: Iterable[StoredMessage], max_bytes: int) -> list[StoredMessage]:
    """A History page (both stores): from its newest message back, while the bodies fit ``max_bytes``
    (at least one): what a page adds to a connection's output stays within its limit."""
    page: list[StoredMessage] = []
    total = 0
    for m in newest_first:
        total += len(m.body)
        if page and total > max_bytes:
            break
        page.append(m)
    return page


class Store(Protocol):
    """A store the hub can use. ``apply`` runs in one lane at a time: on the loop itself when
    ``on_loop`` (the store never waits on the disk there), else on the storage thread;
    ``maintenance``'s jobs always on the storage thread, never beside an ``apply``."""

    #: ``apply`` never waits on the disk (no fsync, nothing but memory and the page cache): the
    #: loop may run it itself, saving a thread hand-off per batch (docs/design.md, "The store
    #: on the loop"). False: every ``apply`` goes to the storage thread.
    on_loop: bool

    def load_accounts(self) -> dict[str, Account]:
        """Every account, by name; called once, before the server serves."""
        ...

    def load_device_tokens(self) -> dict[str, DeviceToken]:
        """Every device token in force, by digest; called once, before the server serves."""
        ...

    def load_groups(self) -> dict[str, GroupRecord]:
        """Every group not deleted, by stream; called once, before the server serves."""
        ...

    def load_classroom(self) -> ClassroomRecord:
        """The confirmations, the raised hands and the announcements that ask; once, at start."""
        ...

    def load_keys(self) -> dict[tuple[str, str], KeyRecord]:
        """The key directory: (user, device) -> its keys; once, at start."""
        ...

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
        """Apply ``batch`` in one transaction, then run its fetches. ``wait`` False (on the
        loop): return ``BatchResult(busy=True)``, having done nothing, rather than wait for a lock."""
        ...

    def maintenance(self) -> Callable[[], object] | None:
        """After a batch: work that may wait on the disk (a checkpoint), for the storage
        thread, while no batch runs; None if there is none due."""
        ...
