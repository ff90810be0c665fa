"""``msgsrv user``: manage accounts on a data directory, while the server runs or not.

Each command is one short SQLite transaction that waits for the server's writer
(up to 30 s) instead of failing. A running server notices within ``--account-poll``
seconds (2 by default): a new account can log in, a removed one, or one whose
password changed, has its sessions ended.

Passwords are read from the terminal (twice, not echoed) or, when standard input
is not a terminal, from its first line: ``echo "$PW" | msgsrv user add alice``.
"""

from __future__ import annotations

import datetime
import getpass
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..crypto.passwords import COSTS, hash_password, password_problem
from ..hub import fold_name
from ..paths import DATABASE, default_data_dir, private_data_dir
from ..store.accounts import AccountBook, AccountError
from ..store.schema import database_problem
from .options import KdfChoice, RoleChoice
from .roster import accounts, parse, write_passwords

user_app = typer.Typer(
    help="Manage accounts: add, import, list, passwd, role, remove.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

DataDir = Annotated[
    Path | None, typer.Option(help="The server's data directory (default as for the server).", envvar="MSGSRV_DATA_DIR")
]
CostOption = Annotated[KdfChoice, typer.Option(help="production, or test (for test servers only).")]


@user_app.command("add")
def add(
    name: str,
    instructor: Annotated[bool, typer.Option(help="An instructor (the same as --role instructor).")] = False,
    role: Annotated[
        RoleChoice | None,
        typer.Option(case_sensitive=False, help="student (default), instructor or assistant (a teaching assistant)."),
    ] = None,
    data_dir: DataDir = None,
    kdf_cost: CostOption = KdfChoice.production,
) -> None:
    """Create an account; asks for its password."""
    user = _name(name)
    if instructor and role not in (None, RoleChoice.instructor):
        _fail(f"--instructor and --role {role.value} disagree", 2)
    chosen = "instructor" if instructor else role.value if role is not None else "student"
    with _Book(data_dir) as book:  # the name first: no password typed for nothing
        if book.exists(user):
            _fail(f"user {user!r} exists already", 1)
    stored = hash_password(_read_password(f"password for {user}: "), COSTS[kdf_cost.value])
    with _Book(data_dir) as book:
        book.add(user, stored, chosen)
    typer.echo(f"added {user} ({chosen})")


@user_app.command("passwd")
def passwd(name: str, data_dir: DataDir = None, kdf_cost: CostOption = KdfChoice.production) -> None:
    """Set a new password; the user's sessions end."""
    user = _name(name)
    with _Book(data_dir) as book:
        if not book.exists(user):
            _fail(f"no user {user!r}", 1)
    stored = hash_password(_read_password(f"new password for {user}: "), COSTS[kdf_cost.value])
    with _Book(data_dir) as book:
        book.set_password(user, stored)
    typer.echo(f"password of {user} changed")


@user_app.command("role")
def role(
    name: str, role: Annotated[RoleChoice, typer.Argument(case_sensitive=False)], data_dir: DataDir = None
) -> None:
    """Make a user a student, an instructor or an assistant."""
    user = _name(name)
    with _Book(data_dir) as book:
        book.set_role(user, role.value)
    typer.echo(f"{user} is now {role}")


@user_app.command("remove")
def remove(name: str, data_dir: DataDir = None) -> None:
    """Remove an account (their messages stay in the others' history); their sessions end."""
    user = _name(name)
    with _Book(data_dir) as book:
        book.remove(user)
    typer.echo(f"removed {user}")


@user_app.command("import")
def import_roster(
    roster: Annotated[Path, typer.Argument(help="CSV: name,role[,password] per line.")],
    passwords: Annotated[
        Path | None, typer.Option(help="Write generated passwords here (0600) instead of printing them.")
    ] = None,
    data_dir: DataDir = None,
    kdf_cost: CostOption = KdfChoice.production,
) -> None:
    """Create a class's accounts from a roster, all or nothing; importing again changes nothing."""
    try:
        text = roster.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {roster}: {exc}", 2)
    entries, problems = parse(text)
    if problems:
        _fail(f"{roster}: nothing imported; fix these lines:\n  " + "\n  ".join(problems), 1)
    if not entries:
        _fail(f"{roster}: no accounts in it", 1)
    made, generated = accounts(entries, COSTS[kdf_cost.value])
    with _Book(data_dir) as book:
        done = dict(book.import_roster(made))
    counts = {what: sum(1 for w in done.values() if w == what) for what in ("added", "role changed", "exists")}
    typer.echo(f"{roster}: {counts['added']} added, {counts['role changed']} role changed, {counts['exists']} existed")
    given = {name: pw for name, pw in generated.items() if done.get(name) == "added"}  # a kept account keeps its own
    if given and passwords is not None:
        write_passwords(passwords, given)
        typer.echo(
            f"{len(given)} generated passwords written to {passwords} (mode 0600): hand them out, then delete it"
        )
    elif given:
        typer.echo("generated passwords (shown once):")
        for name, password in sorted(given.items()):
            typer.echo(f"  {name:<32} {password}")


@user_app.command("list")
def list_users(data_dir: DataDir = None) -> None:
    """List the accounts."""
    with _Book(data_dir) as book:
        accounts = book.accounts()
    for a in accounts:
        created = datetime.datetime.fromtimestamp(a.created_us / 1e6).strftime("%Y-%m-%d %H:%M")
        note = "" if a.password_hash else "  (no password: msgsrv user passwd)"
        typer.echo(f"{a.name:<32} {a.role:<10} {created}{note}")
    typer.echo(f"{len(accounts)} accounts")


class _Book:
    """An AccountBook for the data directory, turning its errors into messages and status 1."""

    def __init__(self, data_dir: Path | None) -> None:
        path = (data_dir or default_data_dir()) / DATABASE
        try:
            for note in private_data_dir(path.parent):  # as the server does: this may create the database
                typer.echo(f"msgsrv user: {note}", err=True)
            if problem := database_problem(path):
                _fail(problem, 2)
            self.book = AccountBook(path)
        except (OSError, sqlite3.Error) as exc:
            _fail(f"cannot open the database {path}: {exc}", 2)

    def __enter__(self) -> AccountBook:
        return self.book

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.book.close()
        if isinstance(exc, AccountError):
            _fail(str(exc), 1)
        if isinstance(exc, sqlite3.Error):
            _fail(f"database error: {exc}", 1)


def _name(name: str) -> str:
    """The name as the server folds it (``hub.fold_name``), or exit 2."""
    user = fold_name(name)
    if user is None:
        _fail(f"invalid name {name!r}: use 1-32 letters, digits, '_', '.', '-' (ASCII)", 2)
    return user


def _read_password(prompt: str) -> str:
    """From the terminal (checked, then typed again) or standard input's first line."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(prompt)
        if problem := password_problem(password):
            _fail(problem, 1)  # before asking for it again
        if getpass.getpass("again: ") != password:
            _fail("the passwords differ", 1)
    if problem := password_problem(password):
        _fail(problem, 1)
    return password


def _fail(message: str, status: int) -> NoReturn:
    typer.echo(f"msgsrv user: {message}", err=True)
    raise typer.Exit(status)
