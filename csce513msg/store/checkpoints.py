"""Where the WAL goes back into the database: the SQLite store's checkpoints, off the commit path.

A commit appends pages to the write-ahead log; a checkpoint copies them into the database
file and syncs it, and only once every frame is copied can SQLite start the WAL over. The
writer's automatic checkpoint is off: measured in the accounts issue, one inside a commit
pushed p99 delivery latency from 0.14 ms to 2.5-3 ms at 20k messages/s. Instead:

- **On a timer, beside the writer**: a second connection, on the checkpointer thread,
  checkpoints (PASSIVE) every ``checkpoint_interval`` seconds.
- **The tail, every ``TAIL_EVERY`` batches.** A checkpoint beside a busy writer never
  catches up (new frames keep coming), so under sustained load the WAL grew without bound
  (900 MB in 8 s at 5,000 messages/s), every write landing in new file space. With
  ``normal`` durability the checkpointer thread is woken for the tail (no commit waits for
  its syncs, which on a disk busy with an upload's writes can take a fifth of a second);
  once the WAL runs past ``WAL_FRAMES_ALONE`` frames anyway, the writer checkpoints it
  itself, between two transactions, and the next commit starts the WAL over. With ``full``
  the tail is always the writer's own: its commits sync already, and a checkpoint's syncs
  beside them only lengthen each (paced 5,000/s: p99 28 → 49 ms); so it is with no
  checkpointer thread, which has nobody to give it to.
- **After a redaction**, the whole WAL is moved and cut to 0 bytes (``truncate``), so the
  removed text is in neither file.

The writer's own checkpoints are the store's ``maintenance``: a job the hub runs on the
storage thread while no batch runs. One checkpoint at a time: SQLite refuses a second at
once (busy, -1, -1) and does nothing. docs/storage.md, "Durability", has the figures.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from .schema import connect

CHECKPOINT_INTERVAL = 5.0  #: seconds between PASSIVE WAL checkpoints (msgsrv --checkpoint-interval)
TAIL_EVERY = 64  #: batches between checkpoints of the WAL's tail (beside the writer, or its own)
#: frames in the WAL past which the writer checkpoints it itself, between two transactions: the
#: checkpoints beside it fell behind (32 MiB of 4 KiB pages, below ``journal_size_limit``)
WAL_FRAMES_ALONE = 8192
TRUNCATE_WAIT_MS = 200  #: how long the truncating checkpoint after a redaction waits for readers
log = logging.getLogger("csce513msg.store")


class Checkpoints:
    """The checkpoints of one SQLite store: its checkpointer thread, and the writer's own.

    Args:
        writer: the store's writer connection (its own checkpoints run between two transactions).
        path: the database, for the checkpointer thread's own connection.
        busy_ms: the writer's busy timeout between batches (``truncate`` restores it).
        beside: the tail goes to the checkpointer thread (``normal`` durability).
        interval: seconds between the thread's timed checkpoints; 0: no thread (the tail is the writer's).
    """

    def __init__(self, writer: sqlite3.Connection, path: str, busy_ms: int, beside: bool, interval: float) -> None:
        self.writer = writer
        self.path = path
        self.busy_ms = busy_ms
        self.scrub = False  #: a redaction was committed and the WAL not yet truncated after it
        self.batches = 0  #: batches committed (``apply`` counts them)
        self.tail_due = TAIL_EVERY  #: the batch count at which the WAL's tail is checkpointed next
        #: frames in the WAL at the last checkpoint beside the writer (0 again once the writer's own
        #: moved them all); written by the checkpointer thread and the storage thread, read by the writer
        self.wal_frames = 0
        self.tail = threading.Event()  #: set: the checkpointer thread checkpoints the tail now
        self.lock = threading.Lock()  #: held by whichever checkpoint runs
        self.failing = False  #: the last checkpoint beside the writer failed (logged once a stretch)
        self.beside = beside and interval > 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, args=(interval,), name="checkpointer", daemon=True)

    def start(self) -> None:
        """Start the checkpointer thread (if any): the store's last step, once it is open."""
        if self._thread is not None:
            self._thread.start()

    def committed(self) -> None:
        """A batch was committed (one more towards the next tail)."""
        self.batches += 1

    def redacted(self) -> None:
        """A batch being written overwrites a text: the WAL is truncated after it (``due``)."""
        self.scrub = True

    def close(self) -> None:
        """Stop the checkpointer thread: a checkpoint under way ends first (a store reopened at
        once truncates the WAL)."""
        self._stop.set()
        self.tail.set()  # (wakes the thread, which sees the stop)
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(30)

    def due(self) -> Callable[[], None] | None:
        """The checkpoint due after this batch that the writer must run itself (the store's
        ``maintenance``); None if it has none (the checkpointer thread may have been woken
        for the tail)."""
        if self.scrub:
            return self.truncate  # no SELECT is open between batches: the snapshot is free
        if self.batches >= self.tail_due:
            self.tail_due = self.batches + TAIL_EVERY
            if self.beside and self.wal_frames < WAL_FRAMES_ALONE:
                self.tail.set()
                return None
            return self.tail_by_writer
        return None

    def tail_by_writer(self) -> None:
        """The writer's own checkpoint of the WAL's tail, between two transactions. The
        batches before it are committed: a failure here (a full disk) is logged, never
        reported as a batch's, and the next checkpoint tries again. It waits for a checkpoint
        beside it to end (the commits wait with it: only when the WAL ran long, or with
        ``full``); once every frame is moved, the next commit starts the WAL over."""
        try:
            with self.lock:
                busy, frames, moved = self.writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and frames == moved:
                    self.wal_frames = 0  # all moved: the checkpoints beside the writer may take the tail again
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed (the commits before it stand): %s", exc)

    def truncate(self) -> None:
        """After a batch with a redaction (and at every start): move the whole WAL into the
        database and cut it to 0 bytes, so the removed text is in neither file
        (``secure_delete`` zeroed it in the database's pages). A reader in another process
        holding an old snapshot blocks it: it is waited on briefly (not the 30 s of a busy
        database), and a checkpoint that could not finish is logged and tried again after the
        next batch; the batch stands."""
        db = self.writer
        try:
            db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            with self.lock:  # (not beside our own checkpointer's: SQLite would refuse it)
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self.scrub = bool(busy)
            if busy:
                log.warning(
                    "the WAL could not be truncated after a redaction (another process reads it); tried again next"
                )
        except sqlite3.Error as exc:
            log.warning("the WAL could not be truncated after a redaction (tried again next batch): %s", exc)
        finally:
            try:
                db.execute(f"PRAGMA busy_timeout={self.busy_ms}")
            except sqlite3.Error:
                log.exception("busy_timeout could not be restored")

    def _run(self, interval: float) -> None:
        """The checkpointer thread: its own connection moves the WAL into the database, off the
        commit path, every ``interval`` seconds and when the writer asks for the tail (``due``)."""
        try:
            db = connect(self.path)
        except sqlite3.Error as exc:  # (out of descriptors, say): the tail is the writer's from now on
            log.warning("the checkpointer thread could not open the database; the writer checkpoints: %s", exc)
            self.wal_frames = WAL_FRAMES_ALONE
            return
        while True:
            # a set() between wait and clear is served by the checkpoint below; one during that
            # checkpoint leaves the event set, and the next wait returns at once
            self.tail.wait(interval)
            self.tail.clear()
            if self._stop.is_set():
                break
            self._beside(db)
        db.close()

    def _beside(self, db: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint on ``db`` (not the writer's connection), noting the WAL's
        frames. A failure (a full disk) is logged once a stretch, and the next tail is the
        writer's own (which logs each failure), as it would be if these had fallen behind."""
        try:
            with self.lock:
                busy, frames, _moved = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy:  # (busy: another process checkpoints; its -1 is no count)
                    self.wal_frames = frames  # (one int, replaced whole: safe to read from the writer's thread)
        except sqlite3.Error as exc:
            if not self.failing:
                log.warning("WAL checkpoint beside the writer failed (the commits stand): %s", exc)
            self.failing = True
            self.wal_frames = WAL_FRAMES_ALONE
            return
        self.failing = False
