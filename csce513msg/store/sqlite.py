"""The embedded default store: SQLite in WAL mode, one writer connection.

One ``apply`` is one transaction (group commit: a loop pass's messages, cursors and
users together), so durability costs one commit per pass, not one per message.

Where it runs (``on_loop``): with ``--durability normal`` a commit appends to the WAL
in the page cache and syncs nothing, so the loop applies each batch itself, with no
thread hand-off (docs/design.md, "The store on the loop"). It never waits there: the
writer's busy timeout is 0 on the loop, so a database another process is writing
(``msgsrv user add``) is found busy at ``BEGIN`` (``BatchResult.busy``) and the hub gives
that batch to the storage thread, which waits. Whatever may wait on the disk (the checkpoints below)
runs off the loop: on the store's checkpointer thread, beside the writer, or as
``maintenance``, on the storage thread while no batch runs. With ``full`` every commit
syncs the WAL: every batch goes to the storage thread.

Durability (``--durability``): ``full`` syncs the WAL on every commit (survives
power loss); ``normal`` (default) syncs at checkpoints only (survives a crash of the
server process; the last commits may be lost if the machine loses power or crashes);
``memory`` does not use SQLite at all (``MemoryStore``).

Checkpoints, which copy the WAL into the database and sync it, stay off the commit
path: ``checkpoints.py``. The tables, version by version, and how a database file is
opened and checked: ``schema.py``.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from .checkpoints import CHECKPOINT_INTERVAL, Checkpoints
from .groupmark import GroupMark, Span, closed, group_id, opened, redaction_refusal, refusal, tombstone, wanted
from .interface import (
    ANNOUNCEMENTS,
    ASKS_CONFIRMATION,
    CONFIRM,
    CREATE,
    DELETE,
    FORGET,
    GROUP_EVENT,
    GROUP_PREFIX,
    IDENTITY,
    LOWER,
    MUTE,
    PUBLISH,
    RAISE,
    REDACT,
    RENAME,
    SEEN,
    SLOW,
    TAKE,
    TAKE_PREKEY,
    TOKENS_PER_USER,
    UNMUTE,
    Account,
    Batch,
    BatchResult,
    ClassroomRecord,
    DeliveredNote,
    DeviceToken,
    Fetch,
    GroupRecord,
    Hand,
    KeyNote,
    KeyRecord,
    LoginInfo,
    LoginRead,
    NewMessage,
    Note,
    QueuedChange,
    Refused,
    StoredMessage,
    is_group,
    page_within,
    resent,
)
from .schema import BUSY_TIMEOUT_MS, connect, migrate, read_accounts

RECENT = 32  #: per stream, the newest messages the writer keeps in memory for delivered receipts
CACHED_STREAMS = 50_000  #: streams those caches hold at most (then they start over)
_COLUMNS = "id, stream, position, sender, device, target_kind, target, content_type, time_us, body"
SYNC = {"full": "FULL", "normal": "NORMAL"}
log = logging.getLogger("csce513msg.store")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class SqliteStore:
    """Messages, cursors and users in one SQLite file.

    Args:
        path: the database file (created if missing), or a ``file:`` URI.
        durability: "full" or "normal".
        checkpoint_interval: seconds between PASSIVE checkpoints on the checkpointer thread; 0: no
            such thread, and the writer checkpoints the tail itself (``maintenance``).
    """

    def __init__(
        self, path: Path | str, durability: str = "normal", checkpoint_interval: float = CHECKPOINT_INTERVAL
    ) -> None:
        self.path = str(path)
        self.db = connect(self.path)  # the writer: used by one lane at a time (the hub's one slot)
        self.db.execute(f"PRAGMA synchronous={SYNC[durability]}")
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints happen elsewhere (checkpoints.py)
        self.db.execute("PRAGMA journal_size_limit=67108864")  # a WAL started over is cut back to 64 MiB
        self.db.execute("PRAGMA secure_delete=ON")  # what is deleted or overwritten is zeroed, not left in free space
        self._before = 0  # the last message id before the batch being written
        migrate(self.db)
        #: commits sync nothing: the loop may apply batches itself (then never waiting: busy timeout 0)
        self.on_loop = durability != "full"
        self._busy_ms = 0 if self.on_loop else BUSY_TIMEOUT_MS  # the writer's busy timeout between batches
        self.db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        self.checkpoints = Checkpoints(self.db, self.path, self._busy_ms, self.on_loop, checkpoint_interval)
        # A redaction's WAL is truncated after its batch is answered (``maintenance``): a crash in
        # between would leave the text in the WAL, so every start truncates it (cheap: the WAL is
        # checkpointed already, or small)
        self.checkpoints.truncate()
        self._inserter = self.db.cursor()  # the messages' INSERT (``_insert``)
        self._accounts: dict[str, Account] = {}  # as of the last poll, plus our own registrations
        self._data_version = -1
        self.last_id = self.db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        self.positions: dict[str, int] = {}  # stream -> last position: a cache the writer owns
        self.floors: dict[tuple[str, str], int] = {}  # (sender, device) -> client ids at or below: expired
        # Delivered receipts from memory (an ack would otherwise cost two SELECTs): caches the writer owns
        self._acked: dict[tuple[str, str], int] = {}  # (stream, user) -> acknowledged position
        self._recent: dict[str, _Recent] = {}  # stream -> its newest messages, as the receipts they become
        self._marks: dict[str, GroupMark] = {}  # group stream -> its members and delivered marks (groupmark.py)
        self._newly: list[DeliveredNote] = []  # delivered by the batch's group events and posts
        self.checkpoints.start()  # last: a failure above leaves no thread behind

    def close(self) -> None:
        self.checkpoints.close()
        self.db.close()

    # ---- the storage interface ------------------------------------------------------

    def load_accounts(self) -> dict[str, Account]:
        self._data_version = self.db.execute("PRAGMA data_version").fetchone()[0]
        self._accounts = read_accounts(self.db)
        return dict(self._accounts)

    def load_device_tokens(self) -> dict[str, DeviceToken]:
        rows = self.db.execute("SELECT digest, user, device, created_us FROM device_tokens")
        return {digest: DeviceToken(digest, user, device, created) for digest, user, device, created in rows}

    def load_groups(self) -> dict[str, GroupRecord]:
        groups = self.db.execute(
            "SELECT id, name, owner, invite_only, created_us, slow_s FROM groups WHERE deleted_us = 0"
        ).fetchall()
        mutes: dict[str, list[tuple[str, int]]] = {}
        for stream, user, until in self.db.execute("SELECT stream, user, until_us FROM group_mutes ORDER BY 1, 2"):
            mutes.setdefault(stream, []).append((user, until))
        now: dict[str, list[str]] = {}
        former: dict[str, list[str]] = {}
        rows = self.db.execute(
            f"""SELECT stream, user, max(left_at IS NULL) FROM members WHERE substr(stream, 1, 2) = '{GROUP_PREFIX}'
                GROUP BY stream, user ORDER BY stream, user"""
        )
        for stream, user, member in rows:
            (now if member else former).setdefault(stream, []).append(user)
        return {
            (stream := f"{GROUP_PREFIX}{gid}"): GroupRecord(
                stream,
                name,
                owner,
                bool(invite),
                created,
                tuple(now.get(stream, ())),
                tuple(former.get(stream, ())),
                slow,
                tuple(mutes.get(stream, ())),
            )
            for gid, name, owner, invite, created, slow in groups
        }

    def load_classroom(self) -> ClassroomRecord:
        confirmations: dict[int, list[str]] = {}
        for position, user in self.db.execute("SELECT position, user FROM confirmations ORDER BY position, user"):
            confirmations.setdefault(position, []).append(user)
        hands = tuple(
            Hand(*row)
            for row in self.db.execute("SELECT user, question, raised_us FROM hands ORDER BY raised_us, user")
        )
        asks = self.db.execute(
            "SELECT position FROM messages WHERE stream = ? AND content_type = ? ORDER BY position",
            (ANNOUNCEMENTS, ASKS_CONFIRMATION),
        )
        return ClassroomRecord({p: tuple(u) for p, u in confirmations.items()}, hands, tuple(p for (p,) in asks))

    def _poll_accounts(self) -> dict[str, Account | None]:
        """Accounts that another process (``msgsrv user``) changed since the last poll.
        ``data_version`` moves only when another connection commits, so a quiet poll is cheap."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return {}
        old, self._accounts = self._accounts, read_accounts(self.db)
        self._data_version = version  # only now: a failed read is tried again at the next poll
        changed: dict[str, Account | None] = {n: a for n, a in self._accounts.items() if old.get(n) != a}
        changed.update((name, None) for name in old.keys() - self._accounts.keys())
        return changed

    def apply(self, batch: Batch, wait: bool = True) -> BatchResult:
        """One transaction for the batch's writes, then its reads (see the module docstring).

        ``wait`` False (the loop, ``on_loop``): a database locked by another process's
        writer returns ``BatchResult(busy=True)`` at once, with nothing done; True waits for
        it (up to ``BUSY_TIMEOUT_MS``). Any other exception inside the transaction, of any type, rolls
        the whole batch back and leaves the store as it was before it, ready for the next
        batch: a value SQLite cannot take (an ``OverflowError``) must not leave a transaction
        open behind it. Once COMMIT has returned, the writes are reported as done whatever
        follows: a failed read costs only itself."""
        try:
            stored, newly, logins = self._write(batch, wait)
        except _BusyError:
            return BatchResult(busy=True)
        except Exception as exc:  # noqa: BLE001 - any failure, of any type (OverflowError too): roll back, and say so
            self._rolled_back()
            return BatchResult(error=f"storage error: {exc!r}")
        self._accounts.update((a.name, a) for a in batch.accounts)
        self.checkpoints.committed()
        fetched = {f.key: found for f in batch.fetches if (found := self._read(self._fetch, f)) is not None}
        history = {
            key: page
            for key, args in batch.history.items()
            if (page := self._read(self._page, *args, batch.readers.get(key, ""))) is not None
        }
        accounts = (self._read(self._poll_accounts) or {}) if batch.poll_accounts else {}
        queued = (self._read(self._queued_changes) or []) if batch.poll_accounts else []
        return BatchResult(stored, fetched, None, newly, logins, history, accounts, queued)

    def maintenance(self) -> Callable[[], None] | None:
        """The checkpoint due after this batch that the writer must run itself, between two
        transactions, for the storage thread (it syncs the disk); None if the writer has none
        (the checkpointer thread may have been woken for the tail): ``Checkpoints.due``."""
        return self.checkpoints.due()

    def _begin(self, wait: bool) -> None:
        """BEGIN IMMEDIATE: the write lock, now. On the loop the busy timeout is 0, so a lock
        another process holds fails at once: ``_BusyError``, or with ``wait`` (the storage
        thread, after the loop's try) a second try under the 30 s timeout."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # (the extended codes too)
            if not busy or not self.on_loop:
                raise  # not a lock, or waited for already
            if not wait:
                raise _BusyError from exc
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            try:
                self.db.execute("BEGIN IMMEDIATE")
            finally:
                self.db.execute(f"PRAGMA busy_timeout={self._busy_ms}")

    def _write(
        self, batch: Batch, wait: bool = True
    ) -> tuple[list[StoredMessage | Refused], list[DeliveredNote], dict[int, LoginInfo]]:
        """The batch's writes, in one transaction; raises if any of them fails."""
        db = self.db
        self._before = self.last_id
        self._begin(wait)
        if batch.accounts:  # (an executemany of nothing still costs a call: skipped when empty)
            db.executemany(
                "INSERT INTO users (name, created_us, role, password) VALUES (?, ?, ?, ?)",
                [(a.name, a.created_us, a.role, a.password_hash) for a in batch.accounts],
            )  # a name taken meanwhile by `msgsrv user add` fails the batch: the hub checked its own list
        for token in batch.device_tokens:
            self._keep_token(token)
        if batch.revoked_tokens:
            db.executemany("DELETE FROM device_tokens WHERE digest = ?", [(d,) for d in batch.revoked_tokens])
        logins = {login.key: self._login(login) for login in batch.logins}
        if batch.expire_before_us:
            self._expire(batch.expire_before_us)
        if batch.expire_tokens_before_us:
            db.execute("DELETE FROM device_tokens WHERE created_us < ?", (batch.expire_tokens_before_us,))
        self._newly = []
        stored = [self._append(m, batch.max_group_members) for m in batch.messages]
        if batch.queued or batch.queue_outcomes:
            self._queue_done(batch, stored)
        self._notes_of_classroom(batch.notes)
        self._notes_of_keys(batch.keys, batch.expire_keys_before_us)
        newly = self._newly + [note for key, pos in batch.delivered.items() for note in self._delivered(*key, pos)]
        if batch.cursors:
            db.executemany(  # after _delivered, which may read the cursors as they were
                """INSERT INTO cursors (user, device, stream, position) VALUES (?, ?, ?, ?)
                   ON CONFLICT DO UPDATE SET position = max(position, excluded.position)""",
                [(*key, pos) for key, pos in batch.cursors.items()],
            )
        if batch.notified:
            db.executemany(
                """INSERT INTO notified (user, device, stream, position) VALUES (?, ?, ?, ?)
                   ON CONFLICT DO UPDATE SET position = max(position, excluded.position)""",
                [(*key, pos) for key, pos in batch.notified.items()],
            )
        db.execute("COMMIT")
        return stored, newly, logins

    def _queue_done(self, batch: Batch, stored: list[StoredMessage | Refused]) -> None:
        """Close the queued group changes (``msgsrv group``) this batch answers, in its
        transaction: an event stored with it is never applied twice."""
        outcomes = dict(batch.queue_outcomes)
        for index, queue_id in batch.queued.items():
            m = stored[index]
            outcomes[queue_id] = (
                f"refused: {m.why or m.reason}" if isinstance(m, Refused) else f"done: {m.stream} position {m.position}"
            )  # fmt: skip
        now_us = time.time_ns() // 1000
        self.db.executemany(
            "UPDATE group_queue SET done_us = ?, outcome = ? WHERE id = ? AND done_us = 0",
            [(now_us, text, queue_id) for queue_id, text in outcomes.items()],
        )

    def _queued_changes(self) -> list[QueuedChange]:
        """The group changes ``msgsrv group`` queued that no batch has answered, oldest first."""
        rows = self.db.execute("SELECT id, op, grp, users, actor FROM group_queue WHERE done_us = 0 ORDER BY id")
        return [QueuedChange(i, op, grp, tuple(users.split()), actor) for i, op, grp, users, actor in rows]

    def _notes_of_classroom(self, notes: list[Note]) -> None:
        """The classroom's records, in order, inside the batch's transaction."""
        db = self.db
        for note in notes:
            if note.op == CONFIRM:
                db.execute(
                    "INSERT OR IGNORE INTO confirmations (position, user, time_us) VALUES (?, ?, ?)",
                    (note.position, note.user, note.time_us),
                )
            elif note.op == RAISE:  # raised already: a new question, the same place
                db.execute(
                    """INSERT INTO hands (user, question, raised_us) VALUES (?, ?, ?)
                       ON CONFLICT (user) DO UPDATE SET question = excluded.question""",
                    (note.user, note.question, note.time_us),
                )
            elif note.op == LOWER:
                db.execute("DELETE FROM hands WHERE user = ?", (note.user,))
            elif note.op == TAKE:
                db.execute("DELETE FROM hands WHERE user = ?", (note.student,))
            else:
                raise ValueError(f"unknown classroom note {note.op!r}")

    def _notes_of_keys(self, notes: list[KeyNote], expire_before_us: int) -> None:
        """The key directory's records, in order, inside the batch's transaction."""
        db = self.db
        for note in notes:
            where = (note.user, note.device)
            if note.op == PUBLISH:
                old = db.execute("SELECT published FROM device_keys WHERE user = ? AND device = ?", where).fetchone()
                if old is not None and old[0][:IDENTITY] != note.published[:IDENTITY]:  # a new identity
                    db.execute("DELETE FROM prekeys WHERE user = ? AND device = ?", where)
                db.execute(
                    """INSERT INTO device_keys (user, device, published, seen_us) VALUES (?, ?, ?, ?)
                       ON CONFLICT DO UPDATE SET published = excluded.published, seen_us = excluded.seen_us""",
                    (*where, note.published, note.time_us),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO prekeys (user, device, key_id, public) VALUES (?, ?, ?, ?)",
                    [(*where, key_id, key) for key_id, key in note.prekeys],
                )
            elif note.op == TAKE_PREKEY:
                db.execute("DELETE FROM prekeys WHERE user = ? AND device = ? AND key_id = ?", (*where, note.key_id))
            elif note.op == SEEN:
                db.execute("UPDATE device_keys SET seen_us = ? WHERE user = ? AND device = ?", (note.time_us, *where))
            elif note.op == FORGET:
                db.execute("DELETE FROM device_keys WHERE user = ? AND device = ?", where)
                db.execute("DELETE FROM prekeys WHERE user = ? AND device = ?", where)
            else:
                raise ValueError(f"unknown key directory note {note.op!r}")
        if expire_before_us:
            db.execute(
                """DELETE FROM prekeys WHERE (user, device) IN
                   (SELECT user, device FROM device_keys WHERE seen_us < ?)""",
                (expire_before_us,),
            )
            db.execute("DELETE FROM device_keys WHERE seen_us < ?", (expire_before_us,))

    def load_keys(self) -> dict[tuple[str, str], KeyRecord]:
        prekeys: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
        for user, device, key_id, key in self.db.execute(
            "SELECT user, device, key_id, public FROM prekeys ORDER BY user, device, key_id"
        ):
            prekeys.setdefault((user, device), []).append((key_id, key))
        rows = self.db.execute("SELECT user, device, published, seen_us FROM device_keys")
        return {
            (user, device): KeyRecord(published, tuple(prekeys.get((user, device), ())), seen)
            for user, device, published, seen in rows
        }

    def _rolled_back(self) -> None:
        """Undo a failed batch: the transaction, and every cache that may hold its writes
        (they are read again from the database when next needed)."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("ROLLBACK failed")  # SQLite rolls back by itself after such errors
        self.last_id = self._before
        self.positions.clear()
        self.floors.clear()
        self._acked.clear()
        self._recent.clear()
        self._marks.clear()

    def _read(self, read: Callable[[*Ts], T], *args: *Ts) -> T | None:
        """One read after the commit; None if it failed (its requester hears STORE_FAILED)."""
        try:
            return read(*args)
        except Exception as exc:  # noqa: BLE001 - one failed read, of any type, costs only its requester
            log.warning("storage read failed: %r", exc)
            return None

    def _keep_token(self, t: DeviceToken) -> None:
        """Keep a device token, in place of its device's older one, if the account's password
        is still the one the login was checked against (a ``msgsrv user passwd`` that ran
        while it was checked deleted the account's tokens: this one must not come back);
        then only the account's newest ``TOKENS_PER_USER``."""
        db = self.db
        if not db.execute(
            "SELECT 1 FROM users WHERE name = ? AND password = ?", (t.user, t.password_hash)
        ).fetchone():  # fmt: skip
            return
        db.execute("DELETE FROM device_tokens WHERE user = ? AND device = ?", (t.user, t.device))
        db.execute("INSERT INTO device_tokens VALUES (?, ?, ?, ?)", (t.digest, t.user, t.device, t.created_us))
        db.execute(
            """DELETE FROM device_tokens WHERE user = ?1 AND digest NOT IN
               (SELECT digest FROM device_tokens WHERE user = ?1 ORDER BY created_us DESC LIMIT ?2)""",
            (t.user, TOKENS_PER_USER),
        )

    def _login(self, login: LoginRead) -> LoginInfo:
        """Record the device (its first login marks where it starts) and count what waits for
        it, up to ``login.count_up_to``: a login costs that much, not the length of a backlog."""
        self.db.execute(
            "INSERT OR IGNORE INTO devices (user, device, since) VALUES (?, ?, ?)",
            (login.user, login.device, self.last_id),
        )
        waiting = 0
        for stream, low in self._starts(login.user, login.device, login.new_device_history, login.groups):
            if waiting >= login.count_up_to:
                break
            (found,) = self.db.execute(
                """SELECT count(*) FROM (SELECT 1 FROM messages WHERE stream = ? AND position > ?
                   AND NOT (sender = ? AND device = ?) LIMIT ?)""",
                (stream, low, login.user, login.device, login.count_up_to - waiting),
            ).fetchone()
            waiting += found
        return LoginInfo(waiting, self._receipts(login.user, login.device, login.groups))

    def _page(self, stream: str, before: int, limit: int, max_bytes: int, reader: str) -> list[StoredMessage]:
        """A History page: of a group, only inside the reader's membership intervals, newest
        first (a page may span a gap; the next one starts below its oldest message)."""
        end = (before or 2**62) - 1
        if not is_group(stream):
            spans: list[tuple[int, int | None]] = [(1, None)]
        else:
            spans = self.db.execute(
                "SELECT joined_at, left_at FROM members WHERE user = ? AND stream = ? ORDER BY joined_at DESC",
                (reader, stream),
            ).fetchall()

        def newest_first() -> Iterator[StoredMessage]:
            for joined, left in spans:
                high = end if left is None else min(left, end)
                if high >= joined:
                    yield from (StoredMessage(*row) for row in self.db.execute(
                        f"""SELECT {_COLUMNS} FROM messages WHERE stream = ? AND position BETWEEN ? AND ?
                            ORDER BY position DESC LIMIT ?""",
                        (stream, joined, high, limit),
                    ))  # fmt: skip

        return page_within(itertools.islice(newest_first(), limit), max_bytes)[::-1]

    def _delivered(self, stream: str, user: str, position: int) -> list[DeliveredNote]:
        """``user`` acknowledged ``stream`` up to ``position``: the others' messages newly delivered.
        What was delivered before is the highest of the user's cursors on the stream (any
        device). From memory when the stream's recent messages cover the range (the common
        case: an ack of what was just delivered), else a SELECT."""
        if stream == ANNOUNCEMENTS:
            return []  # no "delivered" receipts there: the confirmations are the acknowledgment
        if is_group(stream):
            mark = self._mark(stream)
            return self._notes(stream, mark.ack(user, position)) if mark is not None else []
        key = (stream, user)
        if key not in self._acked:
            row = self.db.execute(
                "SELECT coalesce(max(position), 0) FROM cursors WHERE user = ? AND stream = ?", (user, stream)
            ).fetchone()
            if len(self._acked) >= 2 * CACHED_STREAMS:
                self._acked.clear()  # as for _recent: read again when needed
            self._acked[key] = row[0]
        old = self._acked[key]
        if position <= old:
            return []
        self._acked[key] = position
        recent = self._recent.get(stream)
        if recent is not None and recent.since <= old + 1:
            notes = [n for n in recent.notes if old < n.position <= position and n.sender != user]
            recent.prune(self._acked)
            return notes
        found = self.db.execute(
            "SELECT sender, id, stream, position, time_us FROM messages "
            "WHERE stream = ? AND position > ? AND position <= ? AND sender != ? ORDER BY position",
            (stream, old, position, user),
        )
        return [DeliveredNote(*r) for r in found]

    def _receipts(self, user: str, device: str, groups: bool) -> list[DeliveredNote]:
        """Delivered receipts this device of ``user`` has not had yet; marks them sent.

        Per stream, the range between what the device was told (``notified``) and what the
        other members acknowledged; the device is then told up to there, receipts or not, so
        the next login starts from it instead of reading the same range again. With ``groups``,
        the groups ``user`` is a member of too (``GroupMark.delivered_to``; events get none)."""
        (since,) = self.db.execute("SELECT since FROM devices WHERE user = ? AND device = ?", (user, device)).fetchone()
        ranges = self.db.execute(
            f"""SELECT s.stream, coalesce(n.position, 0),
                      (SELECT coalesce(max(c.position), 0) FROM members AS o
                       JOIN cursors AS c ON c.user = o.user AND c.stream = o.stream
                       WHERE o.stream = s.stream AND o.user != s.user AND o.left_at IS NULL)
               FROM members AS s
               LEFT JOIN notified AS n ON n.user = s.user AND n.device = ? AND n.stream = s.stream
               WHERE s.user = ? AND s.left_at IS NULL AND substr(s.stream, 1, 2) != '{GROUP_PREFIX}'""",
            (device, user),
        ).fetchall()
        if groups:
            for stream, sent in self.db.execute(
                f"""SELECT s.stream, coalesce(n.position, 0) FROM members AS s
                    LEFT JOIN notified AS n ON n.user = s.user AND n.device = ? AND n.stream = s.stream
                    WHERE s.user = ? AND s.left_at IS NULL AND substr(s.stream, 1, 2) = '{GROUP_PREFIX}'
                    AND s.stream != '{ANNOUNCEMENTS}'""",
                (device, user),
            ).fetchall():
                mark = self._mark(stream)
                ranges.append((stream, sent, mark.delivered_to(user) if mark is not None else 0))
        notes: list[DeliveredNote] = []
        told = []
        for stream, sent, delivered in ranges:
            if delivered > sent:
                found = self.db.execute(
                    """SELECT sender, id, stream, position, time_us FROM messages
                       WHERE stream = ? AND position > ? AND position <= ? AND sender = ? AND id > ?
                       AND content_type != ?""",
                    (stream, sent, delivered, user, since, GROUP_EVENT if is_group(stream) else -1),
                )
                notes += [DeliveredNote(*r) for r in found]
                told.append((user, device, stream, delivered))
        self.db.executemany(
            """INSERT INTO notified (user, device, stream, position) VALUES (?, ?, ?, ?)
               ON CONFLICT DO UPDATE SET position = max(position, excluded.position)""",
            told,
        )
        return sorted(notes, key=lambda n: n.message_id)

    def _expire(self, before_us: int) -> None:
        """Retention: delete messages older than ``before_us`` (ids are µs of wall time, so a
        range of the primary key), keeping each device's highest client id among them, and
        each stream's highest position (so positions are never reused). The announcements
        (``g:0``) are kept: every account reads all of them, whenever it was made."""
        self.db.execute(
            """INSERT INTO streams (name, last_position)
               SELECT stream, max(position) FROM messages WHERE id < ?1 AND stream != ?2 GROUP BY stream
               ON CONFLICT DO UPDATE SET last_position = max(last_position, excluded.last_position)""",
            (before_us, ANNOUNCEMENTS),
        )
        self.db.execute(
            """INSERT INTO devices (user, device, since, keys_floor)
               SELECT sender, device, 0, max(client_msg_id) FROM messages
               WHERE id < ?1 AND stream != ?2 AND client_msg_id != 0 GROUP BY sender, device
               ON CONFLICT DO UPDATE SET keys_floor = max(keys_floor, excluded.keys_floor)""",
            (before_us, ANNOUNCEMENTS),
        )
        self.db.execute("DELETE FROM messages WHERE id < ? AND stream != ?", (before_us, ANNOUNCEMENTS))
        self.floors.clear()
        self._recent.clear()

    def _floor(self, sender: str, device: str) -> int:
        key = (sender, device)
        if key not in self.floors:
            row = self.db.execute("SELECT keys_floor FROM devices WHERE user = ? AND device = ?", key).fetchone()
            self.floors[key] = row[0] if row else 0
        return self.floors[key]

    def _position(self, stream: str) -> int:
        """The stream's last position (0: none yet), from the writer's cache."""
        if stream not in self.positions:
            row = self.db.execute(  # the newest message's, or where expired messages left it
                """SELECT max(coalesce((SELECT last_position FROM streams WHERE name = ?1), 0),
                              coalesce((SELECT max(position) FROM messages WHERE stream = ?1), 0))""",
                (stream,),
            ).fetchone()
            self.positions[stream] = row[0]
        return self.positions[stream]

    def _append(self, m: NewMessage, max_members: int) -> StoredMessage | Refused:
        """Insert one message: one statement, unless it is a resend (then a lookup)."""
        if m.client_msg_id and m.client_msg_id <= self._floor(m.sender, m.device):
            return Refused("a resend of a message older than the history this server keeps")
        if is_group(m.stream):
            return self._append_group(m, max_members)
        stored = self._insert(m, m.stream)
        if isinstance(stored, Refused) or stored.duplicate:
            return stored
        if (recent := self._recent.get(m.stream)) is None:
            if len(self._recent) >= CACHED_STREAMS:
                self._recent.clear()  # memory stays bounded; acks of the forgotten streams read the database
            recent = self._recent[m.stream] = _Recent(stored.position, m.members)
        recent.add(DeliveredNote(m.sender, stored.message_id, m.stream, stored.position, m.time_us))
        if stored.position == 1:
            self.db.executemany(
                "INSERT OR IGNORE INTO members (user, stream, joined_at) VALUES (?, ?, 1)",
                [(u, m.stream) for u in m.members],
            )
        return stored

    def _insert(self, m: NewMessage, stream: str) -> StoredMessage | Refused:
        """The message's row, at the stream's next position; a resend gets the stored copy."""
        position = self._position(stream) + 1
        message_id = max(self.last_id + 1, m.time_us)
        try:
            self._inserter.execute(  # one cursor for every insert: a new one per execute costs
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, stream, position, m.sender, m.device, m.client_msg_id, m.target_kind, m.target,
                 m.content_type, m.time_us, m.body),
            )  # fmt: skip
        except sqlite3.IntegrityError:  # (sender, device, client_msg_id) exists: a resend
            if (old := self._stored_key(m)) is None:
                raise
            return resent(m, old)
        self.positions[stream] = position
        self.last_id = message_id
        return StoredMessage(
            message_id, stream, position, m.sender, m.device, m.target_kind, m.target, m.content_type,
            m.time_us, m.body,
        )  # fmt: skip

    def _stored_key(self, m: NewMessage) -> StoredMessage | None:
        """The message stored under ``m``'s (sender, device, client message id), if any."""
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE sender = ? AND device = ? AND client_msg_id = ?",
            (m.sender, m.device, m.client_msg_id),
        ).fetchone()
        return StoredMessage(*row) if row is not None else None

    def _append_group(self, m: NewMessage, max_members: int) -> StoredMessage | Refused:
        """A group message, if the rules hold at its turn (``groupmark.refusal``); its event's
        change is applied at its position: intervals opened or closed, the name changed."""
        db, change = self.db, m.change
        if m.stream == ANNOUNCEMENTS:
            return self._announce(m)
        if change is not None:
            m = dataclasses.replace(m, client_msg_id=0)  # an event is the server's: no resend key
        if change is not None and change.op == CREATE:
            if self._name_taken(change.name):
                return Refused(f"a group is named {change.name} already", why="name_taken")
            cursor = db.execute(
                "INSERT INTO groups (name, owner, invite_only, created_us) VALUES (?, ?, ?, ?)",
                (change.name, m.sender, int(change.invite_only), m.time_us),
            )
            stream = f"{GROUP_PREFIX}{cursor.lastrowid}"
            self.positions[stream] = 0
            mark: GroupMark | None = self._cache_mark(stream, GroupMark(0, {}))
        else:
            stream = m.stream
            mark = self._mark(stream)
            why = "no_group" if mark is None else refusal(mark.joined, m.sender, change, max_members)
            if not why and change is not None and change.op == RENAME and self._name_taken(change.name):
                why = "name_taken"
            if not why and change is not None and change.op == REDACT:
                found = db.execute(
                    "SELECT sender, content_type FROM messages WHERE stream = ? AND position = ?",
                    (stream, change.position),
                ).fetchone()
                why = redaction_refusal(found, m.sender, change, GROUP_EVENT)
                if not why:  # the event's body names the author, which only the store knows
                    (name,) = db.execute("SELECT name FROM groups WHERE id = ?", (group_id(stream),)).fetchone()
                    m = dataclasses.replace(m, body=tombstone(found[0], name, change.position))
            if why:
                old = self._stored_key(m) if m.client_msg_id else None  # a resend after leaving: its receipt
                return resent(m, old) if old is not None else Refused(f"refused: {why} ({stream})", why=why)
        assert mark is not None
        stored = self._insert(m, stream)
        if isinstance(stored, Refused) or stored.duplicate:
            return stored
        position = stored.position
        if change is None:
            self._newly += self._notes(stream, mark.posted(position))
            return stored
        stored.change = change
        joins, leaves = opened(change, m.sender, mark.joined), closed(change, m.sender, mark.joined)
        db.executemany(
            "INSERT INTO members (user, stream, joined_at) VALUES (?, ?, ?)", [(u, stream, position) for u in joins]
        )
        db.executemany(
            "UPDATE members SET left_at = ? WHERE stream = ? AND user = ? AND left_at IS NULL",
            [(position, stream, u) for u in leaves],
        )
        gid = group_id(stream)
        if change.op == RENAME:
            db.execute("UPDATE groups SET name = ? WHERE id = ?", (change.name, gid))
        elif change.op == MUTE:
            until = m.time_us + change.seconds * 1_000_000
            db.executemany(
                "INSERT OR REPLACE INTO group_mutes (stream, user, until_us) VALUES (?, ?, ?)",
                [(stream, u, until) for u in change.users],
            )
        elif change.op == UNMUTE:
            db.executemany("DELETE FROM group_mutes WHERE stream = ? AND user = ?", [(stream, u) for u in change.users])
        elif change.op == SLOW:
            db.execute("UPDATE groups SET slow_s = ? WHERE id = ?", (change.seconds, gid))
        elif change.op == REDACT:  # in place: sender, time and position stay; the text is overwritten
            db.execute(
                "UPDATE messages SET content_type = ?, body = ? WHERE stream = ? AND position = ?",
                (GROUP_EVENT, m.body, stream, change.position),
            )
            self.checkpoints.redacted()
        self._newly += self._notes(stream, mark.change(position, joins, leaves))
        if change.op == DELETE:
            db.execute("UPDATE groups SET deleted_us = ? WHERE id = ?", (max(1, m.time_us), gid))
            db.execute("DELETE FROM group_mutes WHERE stream = ?", (stream,))
            self._marks.pop(stream, None)  # not found from now on (``_mark`` skips a deleted group)
        return stored

    def _announce(self, m: NewMessage) -> StoredMessage | Refused:
        """A post to the announcements, from a reader of them (every account; who may post is the
        engine's rule): no event is stored there, no member limit, no receipts."""
        if m.change is not None:
            return Refused(f"refused: bad_change ({ANNOUNCEMENTS})", why="bad_change")
        reader = "SELECT 1 FROM members WHERE stream = ? AND user = ? AND left_at IS NULL"
        if self.db.execute(reader, (ANNOUNCEMENTS, m.sender)).fetchone() is None:
            return Refused(f"refused: not_member ({ANNOUNCEMENTS})", why="not_member")
        return self._insert(m, ANNOUNCEMENTS)

    def _name_taken(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM groups WHERE name = ? AND deleted_us = 0", (name,)).fetchone() is not None

    def _mark(self, stream: str) -> GroupMark | None:
        """The group's ``GroupMark`` (None: no such group), built from the committed state with
        two queries the first time (before this batch's cursors are written: what was delivered
        until now was reported by the batches that delivered it)."""
        if (mark := self._marks.get(stream)) is not None:
            return mark
        gid = group_id(stream)
        live = "SELECT 1 FROM groups WHERE id = ? AND deleted_us = 0"
        if gid is None or self.db.execute(live, (gid,)).fetchone() is None:
            return None
        members = {
            user: (joined, acked)
            for user, joined, acked in self.db.execute(
                """SELECT m.user, m.joined_at, (SELECT coalesce(max(c.position), 0) FROM cursors AS c
                                                WHERE c.user = m.user AND c.stream = m.stream)
                   FROM members AS m WHERE m.stream = ? AND m.left_at IS NULL""",
                (stream,),
            )
        }
        return self._cache_mark(stream, GroupMark(self._position(stream), members))

    def _cache_mark(self, stream: str, mark: GroupMark) -> GroupMark:
        if len(self._marks) >= CACHED_STREAMS:
            self._marks.clear()  # memory stays bounded; built again from the database when needed
        self._marks[stream] = mark
        return mark

    def _notes(self, stream: str, spans: list[Span]) -> list[DeliveredNote]:
        """The receipts the spans a ``GroupMark`` gave stand for: one SELECT per span (events get none)."""
        notes = []
        for span in spans:
            after, up_to, only, _ = span
            rows = self.db.execute(
                """SELECT sender, id, stream, position, time_us FROM messages
                   WHERE stream = ?1 AND position > ?2 AND position <= ?3 AND content_type != ?4
                   AND (?5 IS NULL OR sender = ?5) ORDER BY position""",
                (stream, after, up_to, GROUP_EVENT, only),
            )
            notes += [DeliveredNote(*row) for row in rows if wanted(span, row[0], row[3])]
        return notes

    def _fetch(self, f: Fetch) -> list[StoredMessage]:
        """The next ``f.limit`` messages the device has not acknowledged, oldest first.

        Each stream's range is read from the (stream, position) index, lazily, and the
        streams are merged by id (in a stream, ids grow with positions): a fetch reads what
        it returns and one row per stream, however long the backlog behind it."""
        cursors = [
            self.db.execute(
                f"""SELECT {_COLUMNS} FROM messages WHERE stream = ? AND position > ?
                    AND NOT (sender = ? AND device = ?) ORDER BY position LIMIT ?""",
                (stream, low, f.user, f.device, f.limit),
            )
            for stream, low in self._starts(f.user, f.device, f.new_device_history, f.groups)
        ]
        try:
            rows = heapq.merge(*cursors, key=lambda row: row[0])
            return [StoredMessage(*row) for row in itertools.islice(rows, f.limit)]
        finally:
            for cursor in cursors:
                cursor.close()  # an unfinished SELECT would hold a read snapshot open

    def _starts(self, user: str, device: str, history: int, groups: bool) -> list[tuple[str, int]]:
        """(stream, position after which the device has not seen it), for each of ``user``'s
        streams with something after it: after the device's cursor; without one (a stream new
        to this device), after the device's first login, and at least ``history`` back.
        A few index lookups per stream, whatever the backlog. Of a group (with ``groups``),
        the current membership interval only: never before its join (a late joiner, a
        rejoin, a device away across a leave and a rejoin all start at the join)."""
        row = self.db.execute("SELECT since FROM devices WHERE user = ? AND device = ?", (user, device)).fetchone()
        since = row[0] if row else self.last_id
        streams = self.db.execute(
            f"""SELECT s.stream, s.joined_at, c.position,
                      (SELECT position FROM messages WHERE stream = s.stream ORDER BY position LIMIT 1),
                      (SELECT position FROM messages WHERE stream = s.stream ORDER BY position DESC LIMIT 1)
               FROM members AS s
               LEFT JOIN cursors AS c ON c.user = s.user AND c.stream = s.stream AND c.device = ?
               WHERE s.user = ? AND s.left_at IS NULL AND (? OR substr(s.stream, 1, 2) != '{GROUP_PREFIX}')""",
            (device, user, groups),
        ).fetchall()
        starts = []
        for stream, joined, cursor, first, last in streams:
            if last is None:
                continue  # every message expired
            if cursor is not None:
                low = cursor
            elif stream == ANNOUNCEMENTS:
                low = 0  # every announcement, whenever the account or the device was made
            else:
                low = min(last - history, self._last_before(stream, first, last, since))
            low = max(low, joined - 1)  # 0 for a direct stream: [1, oo)
            if low < last:
                starts.append((stream, low))
        return starts

    def _last_before(self, stream: str, first: int, last: int, message_id: int) -> int:
        """The position of ``stream``'s last message with an id up to ``message_id`` (``first - 1``
        if none): a binary search over positions, ids growing with them (log2 of the stream's
        length in index lookups, where the SQL ``max(position) ... WHERE id <= ?`` walked
        back over every newer message)."""

        def id_at(position: int) -> int:
            return int(self.db.execute(
                "SELECT id FROM messages WHERE stream = ? AND position >= ? ORDER BY position LIMIT 1",
                (stream, position),
            ).fetchone()[0])  # fmt: skip

        return first - 1 + bisect.bisect_right(range(first, last + 1), message_id, key=id_at)


class _BusyError(Exception):
    """``BEGIN`` found the database locked, and the batch may not wait (``apply``'s ``wait``)."""


class _Recent:
    """A stream's newest messages, as the delivered receipts they will become.

    Complete from position ``since`` on, except for notes nobody needs any more: a note is
    dropped once every member but its sender has acknowledged it. At most ``RECENT`` are
    kept (e.g. for a member who is offline); then ``since`` moves up. A list, not a deque:
    there is one per stream, and an empty deque takes 760 bytes, an empty list 56.
    """

    __slots__ = ("members", "notes", "since")

    def __init__(self, since: int, members: tuple[str, ...]) -> None:
        self.since = since
        self.members = members
        self.notes: list[DeliveredNote] = []

    def add(self, note: DeliveredNote) -> None:
        if len(self.notes) >= RECENT:
            self.since = self.notes.pop(0).position + 1
        self.notes.append(note)

    def prune(self, acked: dict[tuple[str, str], int]) -> None:
        """Drop the oldest notes that every member but their sender has acknowledged."""
        done = 0
        for note in self.notes:
            if any(acked.get((note.stream, u), 0) < note.position for u in self.members if u != note.sender):
                break
            done += 1
        del self.notes[:done]
