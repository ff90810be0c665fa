"""What one engine call has to say: every part of the engine writes here.

The engine's parts (the gate, the mailroom, the engine itself) never return actions
to each other; each puts them in the one ``Outbox`` it was given, and the engine
hands them all to the backend at the end of the call (``take``). The outbox also
numbers jobs and reads, so a key is unique whichever part made it.

Coalescing (1.5, docs/protocol.md section 12): to a session that asked for it, the
receipts written in one engine call go as one Receipts frame, put where the first of them
was written, and its live deliveries as one Delivers frame, where the first of those was.
So a receipt may overtake a delivery written before it, and a delivery a receipt, but only
of another stream: a message of a stream never passes one of the same stream (alice's
laptop is sent bob's delivered receipt for a message her phone sent, and that message
itself: their order stays), so a write of one kind whose stream the other kind's run has
seen since this kind's run opened starts a new run. Nothing else moves: any other frame
written to the session (an Error, a GroupInfo, a history page, a group's Deliver written
with ``write_encoded``) closes both of its runs, and what follows it starts new ones; a
run keeps its entries' order.
A run holds rows, each message's fields as a tuple in the frame's order (``ReceiptRow``,
``DeliverRow``): no Receipt or Deliver object is made only to be encoded. Its place in
``actions`` is an empty Write that ``take`` fills: with the plain frame for a run of one,
the coalesced frame otherwise. The cost in clarity: a Write in ``actions`` is final only
at ``take``, and a session's receipts and deliveries are kept in two runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol import (
    Deliver,
    DeliverRow,
    Error,
    ErrorCode,
    Message,
    Receipt,
    ReceiptRow,
    delivers_frame,
    encode,
    encode_fields,
    receipts_frame,
)
from ..protocol.messages import DELIVER_ENTRY, RECEIPT_ENTRY
from .actions import Action, Close, ConnId, Lane, Submit, Write
from .session import Session

MAX_HEADER = 0xFFFF  #: the largest header a frame can carry (``hlen`` is a u16): a reply's lists fit in it
COALESCING_MINOR = 5  #: the protocol minor that added Receipts and Delivers
MAX_ERROR_TEXT = 500  #: characters of an Error's message, at most (then "..."): 2 KB of UTF-8
#: the most bytes of bodies one Delivers frame carries (a single larger delivery goes alone, as
#: a plain Deliver): far below the 16 MiB every client accepts, so a client never waits long for
#: a whole frame before it can show the first message of it
COALESCED_BODIES = 1 << 20


def fitting(sizes: Iterable[int], fixed: int) -> int:
    """How many entries of a list reply fit in one header: ``fixed`` bytes for its other
    fields and lists' counts, then each entry's bytes in order (a reply without a body must
    fit, or encoding it fails: a class of 2,000 accounts would cost a GroupMembers its
    connection). The lists are cut there, and the protocol says how a reader can tell."""
    total, count = fixed, 0
    for size in sizes:
        total += size
        if total > MAX_HEADER:
            break
        count += 1
    return count


class _Run:
    """The receipts (or the live deliveries) written to one coalescing session since its
    runs were last closed, as rows: the frame they become takes the place of
    ``actions[index]``. ``passed``: the streams of the other kind written to the session
    since this run opened (a message of one of them may not join this run: it would pass it)."""

    __slots__ = ("conn", "index", "kind", "minor", "passed", "rows")

    def __init__(self, index: int, session: Session, kind: type[Receipt] | type[Deliver]) -> None:
        self.index, self.conn, self.minor, self.kind = index, session.conn, session.minor, kind
        self.rows: list[Any] = []  # ReceiptRow or DeliverRow, as ``kind`` says
        self.passed: set[str] = set()


class Outbox:
    """The actions of one engine call, in order."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self._ids = itertools.count(1)
        self._runs: list[_Run] = []  #: the runs of this call of two or more, encoded at ``take``
        #: session -> its open runs, by kind (Receipt, Deliver): at most one of each
        self._open: dict[ConnId, dict[type, _Run]] = {}

    def write(self, session: Session, msg: Message) -> None:
        """Send ``msg`` to ``session``, with the fields of the version its Hello announced."""
        if session.closing:
            return  # e.g. a receipt whose commit came after the connection was told to close
        if self._open:
            self._open.pop(session.conn, None)  # anything else closes the session's runs
        self.actions.append(Write(session.conn, encode(msg, session.minor)))

    def receipt(self, session: Session, row: ReceiptRow) -> None:
        """A Receipt to a session that coalesces (1.5), as its row (the others' are encoded
        by ``Mailroom`` and written with ``write_encoded``)."""
        if not session.closing:
            self._add(session, Receipt, row, row[5])

    def delivery(self, session: Session, row: DeliverRow) -> None:
        """A live Deliver to a session that coalesces (1.5), as its row."""
        if not session.closing:
            self._add(session, Deliver, row, row[7])

    def _add(self, session: Session, kind: type[Receipt] | type[Deliver], row: Any, stream: str) -> None:
        runs = self._open.get(session.conn)
        if runs is None:  # (not setdefault: it would build an empty dict on every call)
            runs = self._open[session.conn] = {}
        other = runs.get(Deliver if kind is Receipt else Receipt)
        if other is not None:
            other.passed.add(stream)  # its kind may not pass this one any more
        run = runs.get(kind)
        if run is None or stream in run.passed:  # a new run, where this message would have been
            run = runs[kind] = _Run(len(self.actions), session, kind)
            self._runs.append(run)
            self.actions.append(Write(session.conn, b""))  # its place: filled at take
        run.rows.append(row)

    def error(self, session: Session, code: ErrorCode, message: str, request_id: int, retry_after_ms: int = 0) -> None:
        """An Error; ``retry_after_ms``: the wait, when known (1.4; left out for older peers).
        A message is cut at ``MAX_ERROR_TEXT`` characters: it may quote what a client sent (a
        stream name of 65,000 bytes made it too long to encode, which cost the connection)."""
        if len(message) > MAX_ERROR_TEXT:
            message = message[:MAX_ERROR_TEXT] + "..."
        self.write(session, Error(code, message, retry_after_ms, request_id))

    def write_encoded(self, session: Session, data: bytes) -> None:
        """Send bytes encoded for the session's minor already: a receipt or a delivery encoded
        from its fields (``encode_fields``), or a Deliver encoded once for many sessions of one
        minor (the same object goes to each, nothing is copied)."""
        if not session.closing:
            if self._open:
                self._open.pop(session.conn, None)  # what follows starts new runs (coalescing)
            self.actions.append(Write(session.conn, data))

    def write_bytes(self, conn: ConnId, data: bytes) -> None:
        """Send bytes encoded once for many connections (a presence event)."""
        if self._open:
            self._open.pop(conn, None)
        self.actions.append(Write(conn, data))

    def close(self, session: Session, reason: str) -> None:
        """Close the connection after what is queued; nothing more is read from it."""
        session.closing = True
        if self._open:
            self._open.pop(session.conn, None)
        self.actions.append(Close(session.conn, reason))

    def submit(self, job_id: int, job: Callable[[], Any], lane: Lane) -> None:
        self.actions.append(Submit(job_id, job, lane))

    def new_id(self) -> int:
        """A fresh key for a job or a read."""
        return next(self._ids)

    def take(self) -> list[Action]:
        """Everything said since the last take (the engine returns it to the backend)."""
        out, self.actions = self.actions, []
        runs, self._runs = self._runs, []  # (forgotten before encoding: a failure cannot leave
        self._open.clear()  # stale indexes behind for the next call's actions)
        for run in runs:  # each run's place gets its frame (or frames)
            out[run.index] = Write(run.conn, coalesced(run.kind, run.rows, run.minor))
        return out


def coalesced(kind: type[Receipt] | type[Deliver], rows: list[Any], minor: int) -> bytes:
    """The frames of a run of receipt or delivery rows, in order: one Receipts or Delivers
    frame, or several where one would outgrow its u16 header or ``COALESCED_BODIES`` of
    bodies; a frame of one message is the plain Receipt or Deliver. The sizes are reckoned
    high (4 bytes a character: UTF-8's most), so no encoding is done twice."""
    if len(rows) == 1:  # the commonest run
        return _frame_of(kind, rows, minor)
    frames: list[bytes] = []
    chunk: list[Any] = []
    header = bodies = 0
    receipts = kind is Receipt
    for row in rows:
        if receipts:
            size, body = RECEIPT_ENTRY.size + 4 + 4 * (len(row[5]) + len(row[6])), 0
        else:
            size = DELIVER_ENTRY.size + 6 + 4 * (len(row[5]) + len(row[6]) + len(row[7]))
            body = len(row[8])
        if chunk and (header + size > MAX_HEADER - 4 or bodies + body > COALESCED_BODIES):
            frames.append(_frame_of(kind, chunk, minor))
            chunk, header, bodies = [], 0, 0
        chunk.append(row)
        header += size
        bodies += body
    frames.append(_frame_of(kind, chunk, minor))
    return frames[0] if len(frames) == 1 else b"".join(frames)


def _frame_of(kind: type[Receipt] | type[Deliver], rows: list[Any], minor: int) -> bytes:
    if len(rows) == 1:  # the plain frame, as any session of this minor would get it
        row = rows[0]
        if kind is Receipt:
            return encode_fields(Receipt, (row[0], *row[2:]), row[1], minor=minor)
        return encode_fields(Deliver, row[:8], 0, row[8], minor)
    return receipts_frame(rows) if kind is Receipt else delivers_frame(rows)


def retry_ms(seconds: float) -> int:
    """A wait in seconds as an Error's ``retry_after_ms``: rounded up (at least 1 ms, so a
    known wait is never read as "not known"), at most the u32's largest."""
    return min(2**32 - 1, max(1, math.ceil(seconds * 1000)))
