"""``msgsrv group``: look at groups on a data directory, and queue changes for the server.

``list`` and ``members`` only read (usable while the server runs). ``add`` and ``remove``
never write a message themselves: the server's writer keeps the streams' positions in
memory, and a message inserted by another process would break them (docs/groups-plan.md,
item 12). They queue the change (``group_queue``, schema 8); the running server takes the
queue at its accounts poll (every ``--account-poll`` seconds while anyone is connected,
else at the next connection, which is also when a stopped server, started again, takes
it), and applies each change as the request of its actor (``--as``, an instructor: staff
change a group without being a member) would be: one event, "added by <actor>", to every member.
``--wait SECONDS`` waits for that and says how it went.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..hub import fold_name
from ..paths import DATABASE, default_data_dir
from ..store.interface import ADD, ANNOUNCEMENTS, GROUP_PREFIX, REMOVE
from ..store.schema import connect, database_problem, migrate

group_app = typer.Typer(
    help="Groups: list, members; add and remove members through the running server.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

DataDir = Annotated[
    Path | None, typer.Option(help="The server's data directory (default as for the server).", envvar="MSGSRV_DATA_DIR")
]
Actor = Annotated[str, typer.Option("--as", help="The instructor the change is made as.")]
Wait = Annotated[
    float, typer.Option(help="Seconds to wait for the server to apply the change (0: queue it and return).", min=0)
]
_GROUP = "SELECT id, name, owner, invite_only FROM groups WHERE deleted_us = 0"


@group_app.command("list")
def list_groups(data_dir: DataDir = None) -> None:
    """List the groups: name, stream, owner, members, invite-only."""
    with _open(data_dir) as db:
        groups = db.execute(_GROUP + " ORDER BY name").fetchall()
        sizes = dict(db.execute("SELECT stream, count(*) FROM members WHERE left_at IS NULL GROUP BY stream"))
    for gid, name, owner, invite_only in groups:
        stream = f"{GROUP_PREFIX}{gid}"
        note = "  invite-only" if invite_only else ""
        owner = owner or "(the server)"  # the announcements, g:0
        typer.echo(f"{name:<32} {stream:<8} owner {owner:<32} {sizes.get(stream, 0):>5} members{note}")
    typer.echo(f"{len(groups)} groups")


@group_app.command("members")
def members(group: str, data_dir: DataDir = None) -> None:
    """List a group's members, with their roles."""
    with _open(data_dir) as db:
        stream, name, owner = _group(db, group)
        rows = db.execute(
            """SELECT m.user, coalesce(u.role, '') FROM members m LEFT JOIN users u ON u.name = m.user
               WHERE m.stream = ? AND m.left_at IS NULL ORDER BY m.user""",
            (stream,),
        ).fetchall()
    for user, role in rows:
        typer.echo(f"{user:<32} {role:<10}{'  owner' if user == owner else ''}")
    typer.echo(f"{name} ({stream}): {len(rows)} members")


@group_app.command("add")
def add(group: str, users: list[str], actor: Actor, data_dir: DataDir = None, wait: Wait = 0.0) -> None:
    """Add users to a group (one event), as the instructor --as."""
    _queue(ADD, group, users, actor, data_dir, wait)


@group_app.command("remove")
def remove(group: str, users: list[str], actor: Actor, data_dir: DataDir = None, wait: Wait = 0.0) -> None:
    """Remove users from a group (one event), as the instructor --as."""
    _queue(REMOVE, group, users, actor, data_dir, wait)


def _queue(op: int, group: str, users: list[str], actor: str, data_dir: Path | None, wait: float) -> None:
    """Check what can be checked here (the server checks again when it applies it), queue it,
    and, with ``wait``, wait for the server's outcome."""
    who, names = _name(actor), sorted({_name(u) for u in users})
    with _open(data_dir, write=True) as db:
        stream, name, _ = _group(db, group)
        if stream == ANNOUNCEMENTS:
            _fail(f"{name}: every account reads the announcements; nobody is added or removed", 1)
        role = db.execute("SELECT role FROM users WHERE name = ?", (who,)).fetchone()
        if role is None or role[0] != "instructor":
            _fail(f"--as {who}: not an instructor", 1)
        unknown = [u for u in names if db.execute("SELECT 1 FROM users WHERE name = ?", (u,)).fetchone() is None]
        if unknown:
            _fail(f"no user {', '.join(unknown)}", 1)
        with db:  # one short transaction; waits up to 30 s for the server's writer
            queued = db.execute(
                "INSERT INTO group_queue (op, grp, users, actor, queued_us) VALUES (?, ?, ?, ?, ?)",
                (op, stream, " ".join(names), who, time.time_ns() // 1000),
            ).lastrowid
        verb = "add to" if op == ADD else "remove from"
        typer.echo(
            f"queued #{queued}: {verb} {name}: {', '.join(names)} (as {who}). A running server applies it at its "
            "next accounts poll (every --account-poll seconds while anyone is connected, else at the next "
            "connection); a stopped one once started, at its first connection."
        )
        if wait:
            _wait(db, queued, wait)


def _wait(db: sqlite3.Connection, queued: int | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done_us, outcome = db.execute("SELECT done_us, outcome FROM group_queue WHERE id = ?", (queued,)).fetchone()
        if done_us:
            typer.echo(f"#{queued} {outcome}")
            if outcome.startswith("refused"):
                raise typer.Exit(1)
            return
        time.sleep(0.2)
    _fail(f"#{queued} still queued after {seconds:g} s: is the server running, with someone connected?", 3)


def _group(db: sqlite3.Connection, group: str) -> tuple[str, str, str]:
    """(stream, name, owner) of the group ``group`` names (its name, or ``g:<id>``), or exit 1."""
    if group.startswith(GROUP_PREFIX):
        row = db.execute(_GROUP + " AND id = ?", (group.removeprefix(GROUP_PREFIX),)).fetchone()
    else:
        row = db.execute(_GROUP + " AND name = ?", (_name(group),)).fetchone()
    if row is None:
        _fail(f"no group {group!r}", 1)
    gid, name, owner, _ = row
    return f"{GROUP_PREFIX}{gid}", name, owner


class _open:  # noqa: N801 - used as a function: ``with _open(data_dir) as db``
    """The data directory's database: read-only (``list``, ``members``), or migrated to this
    version and writable (``add``, ``remove``: the queue may be new); errors exit 2."""

    def __init__(self, data_dir: Path | None, write: bool = False) -> None:
        path = (data_dir or default_data_dir()) / DATABASE
        if not path.exists():
            _fail(f"no database at {path}: has a server run there?", 2)
        try:
            if problem := database_problem(path):
                _fail(problem, 2)
            if write:
                self.db = connect(str(path))
                migrate(self.db)
            else:
                self.db = connect(f"file:{path}?mode=ro")
        except sqlite3.Error as exc:
            _fail(f"cannot open the database {path}: {exc}", 2)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.close()
        if isinstance(exc, sqlite3.Error):
            _fail(f"database error: {exc}", 1)


def _name(name: str) -> str:
    folded = fold_name(name)
    if folded is None:
        _fail(f"invalid name {name!r}: use 1-32 letters, digits, '_', '.', '-' (ASCII)", 2)
    return folded


def _fail(message: str, status: int) -> NoReturn:
    typer.echo(f"msgsrv group: {message}", err=True)
    raise typer.Exit(status)
