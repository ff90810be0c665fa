"""The classroom (protocol 1.4): the engine's fourth part, announcements' confirmations and
office hours' queue of raised hands.

The announcements are the group ``g:0`` (``groups.py`` keeps its membership: every
account; only staff post there). An announcement of content type 4 asks to be confirmed:
``Classroom`` keeps, per such announcement, who confirmed it, and the queue of raised
hands, both *as committed*: a request is checked here (who may, which announcement) and
becomes a ``Note`` for the next storage batch, which the store applies in the batch's
transaction; once committed, the Mailroom hands each note back (``noted``), in commit order,
and only then does the cache change, the requester get its answer and the others their
pushes (a failed batch: ``STORE_FAILED`` to the requester, nothing to undo). A request that
changes nothing (a second Confirm, a Lower of no hand, a list, a take of an empty queue) is
answered at once.

Pushes: when the queue changes, each student whose place changed gets HandPlace (request
id 0) on every session that asked for ``groups`` (the requester's own session has its
answer), a student whose hand was taken gets place 0 with ``taken_by``, and every staff
session with ``groups`` gets the queue (HandQueueReply, ``taken`` ""), but the requester's.

It is given what it needs (the accounts, the users online, the outbox, the wall clock, the
classroom the store loaded at start) and reaches nothing else; the engine hands the notes
it returns to the Mailroom.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable

from ..protocol import (
    MAX_QUESTION,
    Confirm,
    Confirmations,
    Confirmed,
    ErrorCode,
    Hand,
    HandOp,
    HandPlace,
    HandQueue,
    HandQueueReply,
    QueueOp,
    RemoteProtocolError,
)
from ..store import Account
from ..store import interface as store
from ..store.interface import is_staff
from .outbox import Outbox, fitting
from .session import Session

log = logging.getLogger("csce513msg.hub")

ClassroomRequest = Confirm | Confirmed | Hand | HandQueue


def staff(accounts: dict[str, Account], user: str | None) -> bool:
    """Whether ``user`` has an account that is staff (``store.interface.is_staff``)."""
    account = accounts.get(user or "")
    return account is not None and is_staff(account.role)


class Classroom:
    """Confirmations and the queue of raised hands, as committed.

    Args:
        accounts: every account, by name (the gate keeps it current).
        online: user -> their logged-in sessions (the engine's).
        outbox: where everything to send goes.
        wall_us: monotonic seconds -> wall time, µs.
        record: the classroom the store loaded at start (``Store.load_classroom``).
    """

    def __init__(
        self, accounts: dict[str, Account], online: dict[str, tuple[Session, ...]], outbox: Outbox,
        wall_us: Callable[[float], int], record: store.ClassroomRecord | None = None,
    ) -> None:  # fmt: skip
        self.accounts, self.online, self.out, self._wall_us = accounts, online, outbox, wall_us
        record = record or store.ClassroomRecord({}, (), ())
        self.asks: list[int] = sorted(record.asks)  #: positions in g:0 of the announcements that ask
        self.confirmed: dict[int, set[str]] = {p: set(users) for p, users in record.confirmations.items()}
        self.hands: dict[str, store.Hand] = {h.user: h for h in record.hands}  #: user -> its raised hand

    # ---- requests (READY, and the session announced groups: the engine checked) ------------

    def request(self, session: Session, msg: ClassroomRequest, now: float) -> store.Note | None:
        """A classroom request: the note to store (its answer follows the commit), or None when
        it was answered here.

        Raises:
            RemoteProtocolError: FORBIDDEN (the role), NO_SUCH_MESSAGE, BAD_REQUEST.
        """
        user = session.user
        assert user is not None  # READY
        rid = msg.request_id
        match msg:
            case Confirm(position=position):
                self._asking(position, rid)
                if user in self.confirmed.get(position, ()):
                    self.out.write(session, Confirmations(position, (user,), (), rid))  # once is enough
                    return None
                return store.Note(store.CONFIRM, user, position, time_us=self._wall_us(now))
            case Confirmed(position=position):
                self._staff_only(user, "see who confirmed", rid)
                if position == 0:
                    if not self.asks:
                        raise RemoteProtocolError(
                            ErrorCode.NO_SUCH_MESSAGE, "no announcement asks to be confirmed yet", request_id=rid
                        )  # fmt: skip
                    position = self.asks[-1]
                self._asking(position, rid)
                done = self.confirmed.get(position, set())
                pending = sorted(u for u in self.accounts if u not in done and not staff(self.accounts, u))
                names = sorted(done) + pending  # cut to fit one header: the confirmed first
                fit = fitting((2 + len(u) for u in names), 8 + 4)
                confirmed, pending = names[: min(fit, len(done))], names[len(done) : fit]
                self.out.write(session, Confirmations(position, tuple(confirmed), tuple(pending), rid))
            case Hand(op=op, question=question):
                if op == HandOp.RAISE and staff(self.accounts, user):  # a lower: anyone (made staff with a hand up)
                    raise RemoteProtocolError(
                        ErrorCode.FORBIDDEN, "staff take hands (HandQueue), they do not raise them", request_id=rid
                    )  # fmt: skip
                if op == HandOp.RAISE:
                    if len(question) > MAX_QUESTION:
                        raise RemoteProtocolError(
                            ErrorCode.BAD_REQUEST, f"a question has at most {MAX_QUESTION} characters", request_id=rid
                        )  # fmt: skip
                    return store.Note(store.RAISE, user, question=question, time_us=self._wall_us(now))
                if op != HandOp.LOWER:
                    raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"unknown Hand op {op}", request_id=rid)
                if user not in self.hands:
                    self.out.write(session, HandPlace(0, len(self.hands), "", "", rid))  # no hand to lower
                    return None
                return store.Note(store.LOWER, user)
            case HandQueue(op=op):
                self._staff_only(user, "see the queue", rid)
                if op == QueueOp.LIST or (op == QueueOp.TAKE and not self.hands):
                    self.out.write(session, self._queue("", rid, now))
                    return None
                if op != QueueOp.TAKE:
                    raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"unknown HandQueue op {op}", request_id=rid)
                return store.Note(store.TAKE, user, student=self._order()[0].user)  # the first, as committed
        return None

    # ---- what the Mailroom and the engine report ----------------------------------------------

    def accounts_changed(self, changed: dict[str, Account | None], now: float) -> None:
        """Accounts removed (``None``; the store's trigger deleted their hands): their hands
        leave the queue, and the others' places and the staff's queue follow."""
        gone = [user for user, account in changed.items() if account is None and user in self.hands]
        if not gone:
            return
        before = self._places()
        for user in gone:
            del self.hands[user]
        self._pushed(before, None, None, now)

    def announced(self, position: int) -> None:
        """An announcement that asks to be confirmed was committed at ``position`` of g:0."""
        if not self.asks or position > self.asks[-1]:
            self.asks.append(position)
        elif position not in self.asks:
            bisect.insort(self.asks, position)

    def noted(self, session: Session | None, rid: int, note: store.Note, now: float) -> None:
        """A note is committed (in commit order): the cache follows the store, the requester
        (``session``, None if gone) gets its answer, the others their pushes."""
        if note.op == store.CONFIRM:
            self.confirmed.setdefault(note.position, set()).add(note.user)
            if session is not None:
                self.out.write(session, Confirmations(note.position, (note.user,), (), rid))
            return
        before = self._places()
        taken: store.Hand | None = None
        if note.op == store.RAISE:
            old = self.hands.get(note.user)
            self.hands[note.user] = store.Hand(note.user, note.question, old.raised_us if old else note.time_us)
        elif note.op == store.LOWER:
            self.hands.pop(note.user, None)
        elif note.op == store.TAKE:  # the hand the engine named (lowered meanwhile: none)
            taken = self.hands.pop(note.student, None)
            if taken is not None:
                log.info("%s took %s's hand", note.user, taken.user)
        after = self._places()
        if session is not None:
            if note.op == store.TAKE:
                self.out.write(session, self._queue(taken.user if taken else "", rid, now))
            else:
                hand = self.hands.get(note.user)
                self.out.write(session, HandPlace(after.get(note.user, 0), len(self.hands),
                                                  hand.question if hand else "", "", rid))  # fmt: skip
        if taken is not None:
            for s in self._sessions(taken.user, skip=None):
                self.out.write(s, HandPlace(0, len(self.hands), taken.question, note.user, 0))
        self._pushed(before, session, taken.user if taken else None, now, changed=note.op == store.RAISE)

    def _pushed(
        self, before: dict[str, int], skip: Session | None, taken: str | None, now: float, changed: bool = False
    ) -> None:
        """The queue moved from ``before``: each student whose place changed gets HandPlace, the
        staff the queue (``changed``: a question changed, the list with it); not ``skip``, the
        requester's session (it has its answer), nor the taken student (told who took it)."""
        after = self._places()
        for user in before.keys() | after.keys():
            if before.get(user, 0) == after.get(user, 0) or user == taken:
                continue
            hand = self.hands.get(user)
            place = HandPlace(after.get(user, 0), len(self.hands), hand.question if hand else "", "", 0)
            for s in self._sessions(user, skip=skip):
                self.out.write(s, place)
        if before != after or changed:
            queue = self._queue("", 0, now)
            for user in list(self.online):
                if staff(self.accounts, user):
                    for s in self._sessions(user, skip=skip):
                        self.out.write(s, queue)

    # ---- inside -----------------------------------------------------------------------------

    def _asking(self, position: int, rid: int) -> None:
        index = bisect.bisect_left(self.asks, position)
        if index == len(self.asks) or self.asks[index] != position:
            raise RemoteProtocolError(
                ErrorCode.NO_SUCH_MESSAGE, f"no announcement at {position} asks to be confirmed", request_id=rid
            )  # fmt: skip

    def _staff_only(self, user: str, what: str, rid: int) -> None:
        if not staff(self.accounts, user):
            raise RemoteProtocolError(ErrorCode.FORBIDDEN, f"only staff {what}", request_id=rid)

    def _order(self) -> list[store.Hand]:
        return sorted(self.hands.values(), key=store.hand_order)

    def _places(self) -> dict[str, int]:
        return {h.user: place for place, h in enumerate(self._order(), start=1)}

    def _queue(self, taken: str, rid: int, now: float) -> HandQueueReply:
        hands = self._order()
        # cut to fit one header: the first hands (HandPlace's size counts them all)
        fit = fitting((2 + len(h.user) + 2 + len(h.question.encode()) + 4 for h in hands), 2 + len(taken) + 6)
        hands = hands[:fit]
        wall = self._wall_us(now)
        waited = tuple(max(0, (wall - h.raised_us) // 1_000_000) for h in hands)
        return HandQueueReply(taken, tuple(h.user for h in hands), tuple(h.question for h in hands), waited, rid)

    def _sessions(self, user: str, skip: Session | None) -> list[Session]:
        """``user``'s sessions that are sent classroom frames (they asked for groups)."""
        return [s for s in self.online.get(user, ()) if s.groups and s is not skip and not s.closing]
