"""The database's shape: its tables, version by version, and how a file is opened and checked.

- ``MIGRATIONS``: one list of statements per schema version, applied in order on open
  (``migrate``; the version is kept in ``PRAGMA user_version``). A version is never edited
  once released: a change is a new version (docs/storage.md has each one's reasons).
- ``connect``: a connection in WAL mode, waiting up to 30 s for a database another process
  holds (the store's writer, its checkpointer thread, ``msgsrv user`` and ``msgsrv group``).
- ``database_problem``: whether a file may be served at all (empty, damaged, or a WAL that is
  another database's), in words for the person starting the server.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .interface import Account

BUSY_TIMEOUT_MS = 30_000  #: how long a statement waits for a busy database (``connect``'s timeout)


def _without_rowid(table: str, columns: str) -> list[str]:
    """Statements that rebuild ``table`` as a WITHOUT ROWID table, keeping its rows."""
    return [
        f"CREATE TABLE {table}_v4 ({columns}) WITHOUT ROWID",
        f"INSERT INTO {table}_v4 SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE {table}_v4 RENAME TO {table}",
    ]


MIGRATIONS: list[list[str]] = [
    [  # version 1
        "CREATE TABLE users (name TEXT PRIMARY KEY, created_us INTEGER NOT NULL)",
        "CREATE TABLE streams (name TEXT PRIMARY KEY, last_position INTEGER NOT NULL)",
        "CREATE TABLE members (user TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (user, stream))",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY, stream TEXT NOT NULL, position INTEGER NOT NULL,
            sender TEXT NOT NULL, device TEXT NOT NULL, client_msg_id INTEGER NOT NULL,
            target_kind INTEGER NOT NULL, target TEXT NOT NULL, content_type INTEGER NOT NULL,
            time_us INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (stream, position))""",
        """CREATE UNIQUE INDEX messages_client_key ON messages (sender, device, client_msg_id)
            WHERE client_msg_id != 0""",
        """CREATE TABLE cursors (user TEXT NOT NULL, device TEXT NOT NULL, stream TEXT NOT NULL,
            position INTEGER NOT NULL, PRIMARY KEY (user, device, stream))""",
        """CREATE TABLE devices (user TEXT NOT NULL, device TEXT NOT NULL, since INTEGER NOT NULL,
            PRIMARY KEY (user, device))""",
        """CREATE TABLE delivered (stream TEXT NOT NULL, user TEXT NOT NULL, position INTEGER NOT NULL,
            PRIMARY KEY (stream, user))""",
        """CREATE TABLE notified (user TEXT NOT NULL, device TEXT NOT NULL, stream TEXT NOT NULL,
            position INTEGER NOT NULL, PRIMARY KEY (user, device, stream))""",
    ],
    [  # version 2: accounts. Users made by a version-1 login have no password until `msgsrv user passwd`.
        "ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'student'",
        "ALTER TABLE users ADD COLUMN password TEXT NOT NULL DEFAULT ''",
    ],
    [  # version 3: retention. The highest client message id of each device among deleted messages
        "ALTER TABLE devices ADD COLUMN keys_floor INTEGER NOT NULL DEFAULT 0",
    ],
    [  # version 4: fewer rows written per message (docs/storage.md, "Version 4")
        *_without_rowid("streams", "name TEXT PRIMARY KEY, last_position INTEGER NOT NULL"),
        *_without_rowid("members", "user TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (user, stream)"),
        "CREATE INDEX members_by_stream ON members (stream)",
        *_without_rowid(
            "cursors",
            "user TEXT NOT NULL, device TEXT NOT NULL, stream TEXT NOT NULL, position INTEGER NOT NULL, "
            "PRIMARY KEY (user, stream, device)",
        ),
        *_without_rowid(
            "devices",
            "user TEXT NOT NULL, device TEXT NOT NULL, since INTEGER NOT NULL, keys_floor INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (user, device)",
        ),
        *_without_rowid(
            "notified",
            "user TEXT NOT NULL, device TEXT NOT NULL, stream TEXT NOT NULL, position INTEGER NOT NULL, "
            "PRIMARY KEY (user, device, stream)",
        ),
        "DROP TABLE delivered",  # always the highest of the user's cursors on the stream: kept once, there
    ],
    [  # version 5: device tokens (the SHA-256 of each), so a device's logins are throttled apart
        """CREATE TABLE device_tokens (digest TEXT PRIMARY KEY, user TEXT NOT NULL, device TEXT NOT NULL,
            created_us INTEGER NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX device_tokens_by_user ON device_tokens (user, device)",
    ],
    [  # version 6: groups (docs/storage.md, "Version 6"). Membership has intervals of positions,
        # [joined_at, left_at] (NULL: a member now); a direct message's is [1, oo). Not
        # _without_rowid, which copies SELECT *: the new table has two more columns.
        """CREATE TABLE members_v6 (user TEXT NOT NULL, stream TEXT NOT NULL, joined_at INTEGER NOT NULL,
            left_at INTEGER, PRIMARY KEY (user, stream, joined_at)) WITHOUT ROWID""",
        "INSERT INTO members_v6 SELECT user, stream, 1, NULL FROM members",
        "DROP TABLE members",  # and members_by_stream: members_current serves those reads now
        "ALTER TABLE members_v6 RENAME TO members",
        "CREATE UNIQUE INDEX members_current ON members (stream, user) WHERE left_at IS NULL",
        # never deleted (deleted_us: when, 0 if not), so an id, and the stream g:<id>, is never reused
        """CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL,
            invite_only INTEGER NOT NULL DEFAULT 0, created_us INTEGER NOT NULL,
            deleted_us INTEGER NOT NULL DEFAULT 0)""",
        "CREATE UNIQUE INDEX groups_by_name ON groups (name) WHERE deleted_us = 0",
    ],
    [  # version 7: the classroom's moderation and office hours (docs/storage.md, "Version 7")
        # slow mode: seconds between a student's posts
        "ALTER TABLE groups ADD COLUMN slow_s INTEGER NOT NULL DEFAULT 0",
        # muted until (µs of wall time); a row whose time has passed is dead (the engine ignores it),
        # deleted by an unmute or the group's deletion
        """CREATE TABLE group_mutes (stream TEXT NOT NULL, user TEXT NOT NULL, until_us INTEGER NOT NULL,
            PRIMARY KEY (stream, user)) WITHOUT ROWID""",
        # "I have read it": a person's acknowledgment of the announcement at g:0's ``position``
        """CREATE TABLE confirmations (position INTEGER NOT NULL, user TEXT NOT NULL, time_us INTEGER NOT NULL,
            PRIMARY KEY (position, user)) WITHOUT ROWID""",
        # office hours: the raised hands, in the order they were raised (``raised_us``, then ``user``)
        """CREATE TABLE hands (user TEXT PRIMARY KEY, question TEXT NOT NULL, raised_us INTEGER NOT NULL)
            WITHOUT ROWID""",
    ],
    [  # version 8: group changes `msgsrv group add|remove` queues for the running server's writer,
        # which applies each as the event its actor's request would make (never another process's
        # insert into messages: the writer caches positions). users: names, space-separated
        """CREATE TABLE group_queue (id INTEGER PRIMARY KEY, op INTEGER NOT NULL, grp TEXT NOT NULL,
            users TEXT NOT NULL, actor TEXT NOT NULL, queued_us INTEGER NOT NULL,
            done_us INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX group_queue_pending ON group_queue (id) WHERE done_us = 0",
    ],
    [  # version 9: the announcements, g:0 (docs/storage.md, "Version 9"): every account a member from 1
        # a group named so already is renamed (a random tail: `announcements-<id>` could be taken too)
        "UPDATE groups SET name = name || '-' || id || '-' || lower(hex(randomblob(3)))"
        " WHERE name = 'announcements' AND deleted_us = 0",
        "INSERT INTO groups (id, name, owner, invite_only, created_us) VALUES (0, 'announcements', '', 1, 0)",
        "INSERT INTO members (user, stream, joined_at) SELECT name, 'g:0', 1 FROM users",
        # whoever makes an account (Register, `msgsrv user add`, the roster import) makes a reader
        """CREATE TRIGGER users_read_announcements AFTER INSERT ON users BEGIN
            INSERT OR IGNORE INTO members (user, stream, joined_at) VALUES (NEW.name, 'g:0', 1); END""",
        # a removed account reads nothing and waits in no queue (a name made again is a reader again)
        """CREATE TRIGGER users_gone_from_classroom AFTER DELETE ON users BEGIN
            DELETE FROM members WHERE user = OLD.name AND stream = 'g:0';
            DELETE FROM hands WHERE user = OLD.name; END""",
    ],
    [  # version 10: the key directory of end-to-end encryption (protocol 1.7): each device's public
        # keys as it published them (bytes the store never reads but to compare the identity's), its
        # one-time prekeys (each deleted as it is handed out), and when it was last seen (expiry)
        """CREATE TABLE device_keys (user TEXT NOT NULL, device TEXT NOT NULL, published BLOB NOT NULL,
            seen_us INTEGER NOT NULL, PRIMARY KEY (user, device)) WITHOUT ROWID""",
        """CREATE TABLE prekeys (user TEXT NOT NULL, device TEXT NOT NULL, key_id INTEGER NOT NULL,
            public BLOB NOT NULL, PRIMARY KEY (user, device, key_id)) WITHOUT ROWID""",
        """CREATE TRIGGER users_gone_from_directory AFTER DELETE ON users BEGIN
            DELETE FROM device_keys WHERE user = OLD.name; DELETE FROM prekeys WHERE user = OLD.name; END""",
    ],
]


def connect(path: str) -> sqlite3.Connection:
    """Open the database (in WAL mode unless read-only); a busy database is waited on for 30 s."""
    uri = path.startswith("file:")
    db = sqlite3.connect(path, uri=uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    if not uri or "mode=ro" not in path:
        db.execute("PRAGMA journal_mode=WAL")
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, one transaction per version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA user_version={number}")
        db.execute("COMMIT")


def database_problem(path: Path) -> str | None:
    """Why the database file at ``path`` must not be served, in words; None if it may (or
    if there is none yet: a first start creates it).

    ``PRAGMA quick_check`` reads every page, through a read-only connection: it replays
    the WAL an ordinary crash leaves, as the server will, but never checkpoints it into
    the database on close, so a WAL that is not this database's does no harm. Measured:
    0.2 s for a 93 MB database (500,000 messages) in the page cache (docs/storage.md).

    Raises:
        sqlite3.Error: the file could not be read at all (locked past 30 s, no permission).
    """
    if not path.exists():
        return None
    if path.stat().st_size == 0:  # SQLite would take it for a new database: every account gone
        return (
            f"{path} is an empty file, not a database. To start a new server with no accounts and no "
            f"messages, remove it (and any {path.name}-wal and -shm beside it)"
        )
    problem = _check(path)
    if problem is None:
        return None
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size and _check(path, without_wal=True) is None:
        return (
            f"{wal.name} does not belong to {path} (another database's write-ahead log, or a damaged one): "
            f"{problem}. Move {wal.name} and {path.name}-shm away to start from the database as last "
            "checkpointed (what was committed only in the log is lost), or restore a backup"
        )
    return f"{path} is damaged: {problem}. Restore a backup (docs/storage.md, Backups), or try sqlite3's .recover"


def _check(path: Path, without_wal: bool = False) -> str | None:
    """What ``quick_check`` finds wrong with the database (alone, or as its WAL makes it)."""
    # immutable: read the database file as it is, ignoring the WAL (and taking no lock)
    uri = path.resolve().as_uri() + ("?mode=ro&immutable=1" if without_wal else "?mode=ro")
    db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            lines = [line for (text,) in rows for line in text.splitlines() if not line.startswith("***")]
            return "quick_check: " + "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if version == 0 and tables:  # migrate() gives every csce513msg database a version with its tables
            return f"not a csce513msg database (tables {', '.join(tables[:5])}, no schema version)"
        return None
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorname not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise  # not damage: e.g. locked, or unreadable
        return str(exc)
    finally:
        db.close()


def read_accounts(db: sqlite3.Connection) -> dict[str, Account]:
    rows = db.execute("SELECT name, role, password, created_us FROM users")
    return {name: Account(name, role, password, created) for name, role, password, created in rows}
