"""Accounts on a data directory's database, for ``msgsrv user`` (the admin commands).

They run in their own process, beside a running server if there is one: each
change is one short transaction, which waits (up to 30 s) for the server's writer
instead of failing. The server notices (``Batch.poll_accounts``, every couple of
seconds) and ends the sessions of an account whose password changed or that was
removed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from .interface import ROLES, Account
from .schema import connect, migrate, read_accounts


class AccountError(Exception):
    """The change cannot be made (the user exists, or does not)."""


class AccountBook:
    """The accounts of one database file."""

    def __init__(self, path: Path | str) -> None:
        self.db = connect(str(path))
        migrate(self.db)

    def close(self) -> None:
        self.db.close()

    def accounts(self) -> list[Account]:
        return sorted(read_accounts(self.db).values(), key=lambda a: a.name)

    def exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None

    def add(self, name: str, password_hash: str, role: str = "student") -> Account:
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        account = Account(name, role, password_hash, time.time_ns() // 1000)
        with self._transaction():
            if self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"user {name!r} exists already")
            self.db.execute(
                "INSERT INTO users (name, created_us, role, password) VALUES (?, ?, ?, ?)",
                (name, account.created_us, role, password_hash),
            )
        return account

    def add_many(self, accounts: list[Account]) -> None:
        """Create many accounts in one transaction (a class roster, a benchmark's users)."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO users (name, created_us, role, password) VALUES (?, ?, ?, ?)",
                [(a.name, a.created_us, a.role, a.password_hash) for a in accounts],
            )

    def set_password(self, name: str, password_hash: str) -> None:
        with self._transaction():
            if not self.db.execute("UPDATE users SET password = ? WHERE name = ?", (password_hash, name)).rowcount:
                raise AccountError(f"no user {name!r}")
            self.db.execute("DELETE FROM device_tokens WHERE user = ?", (name,))  # a new password: new devices

    def set_role(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        with self._transaction():
            if not self.db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name)).rowcount:
                raise AccountError(f"no user {name!r}")

    def import_roster(self, accounts: list[Account]) -> list[tuple[str, str]]:
        """Make the accounts of a class roster, all in one transaction: a new name is
        created; an existing one keeps its password, and takes the roster's role if it
        differs. Importing the same roster again changes nothing. Returns, per account,
        (name, what happened): "added", "role changed" or "exists"."""
        for account in accounts:
            if account.role not in ROLES:
                raise AccountError(f"unknown role {account.role!r}: use one of {', '.join(ROLES)}")
        done = []
        with self._transaction():
            for account in accounts:
                row = self.db.execute("SELECT role FROM users WHERE name = ?", (account.name,)).fetchone()
                if row is None:
                    self.db.execute(
                        "INSERT INTO users (name, created_us, role, password) VALUES (?, ?, ?, ?)",
                        (account.name, account.created_us, account.role, account.password_hash),
                    )
                    done.append((account.name, "added"))
                elif row[0] != account.role:
                    self.db.execute("UPDATE users SET role = ? WHERE name = ?", (account.role, account.name))
                    done.append((account.name, "role changed"))
                else:
                    done.append((account.name, "exists"))
        return done

    def remove(self, name: str) -> None:
        """Remove the account; its messages stay in the others' history."""
        with self._transaction():
            if not self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise AccountError(f"no user {name!r}")
            self.db.execute("DELETE FROM device_tokens WHERE user = ?", (name,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE (waiting for the server's writer), then COMMIT, or ROLLBACK on an error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
