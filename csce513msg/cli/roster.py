"""``msgsrv user import ROSTER.csv``: a class's accounts from one file, all or nothing.

The roster is CSV, one account per line: ``name,role[,password]`` (a first line
``name,role,password`` is a header and skipped; blank lines and lines starting with ``#``
too). ``role`` is ``student``, ``instructor`` or ``assistant``. A line without a password gets a
generated one (12 random characters), printed once, or written with ``--passwords FILE``
(a CSV, mode 0600) for the instructor to hand out.

Every line is checked before anything is written, and a file with any bad line imports
nothing: the error names every bad line. Importing again changes nothing: an existing
account keeps its password (and takes the roster's role, if it changed).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..crypto.passwords import KdfCost, hash_password, password_problem
from ..protocol.names import fold_name
from ..store.interface import ROLES, Account

GENERATED_LENGTH = 12  #: characters of a generated password (about 72 bits)
_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/l/I


@dataclass(frozen=True, slots=True)
class Entry:
    line: int
    name: str
    role: str
    password: str  #: "" until one is generated
    generated: bool


def parse(text: str) -> tuple[list[Entry], list[str]]:
    """The roster's entries, and a description of every bad line (none: all good)."""
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["name", "role"]:
            continue  # the header
        if len(cells) not in (2, 3):
            problems.append(f"line {number}: expected name,role[,password], got {len(cells)} fields")
            continue
        name, role = fold_name(cells[0]), cells[1].lower()
        password = cells[2] if len(cells) == 3 else ""
        if name is None:
            problems.append(f"line {number}: invalid name {cells[0]!r} (1-32 letters, digits, '_', '.', '-')")
        elif name in seen:
            problems.append(f"line {number}: {name} is on line {seen[name]} already")
        if role not in ROLES:
            problems.append(f"line {number}: unknown role {cells[1]!r} (use {', '.join(ROLES)})")
        if password and (problem := password_problem(password)):
            problems.append(f"line {number}: {problem}")
        if name is not None and name not in seen:
            seen[name] = number
            entries.append(Entry(number, name, role, password, not password))
    return entries, problems


def accounts(entries: list[Entry], cost: KdfCost) -> tuple[list[Account], dict[str, str]]:
    """The accounts to import, and the passwords generated for them (name -> password)."""
    now_us = time.time_ns() // 1000
    generated = {e.name: "".join(secrets.choice(_ALPHABET) for _ in range(GENERATED_LENGTH)) for e in entries
                 if e.generated}  # fmt: skip
    made = [Account(e.name, e.role, hash_password(e.password or generated[e.name], cost), now_us) for e in entries]
    return made, generated


def write_passwords(path: Path, passwords: dict[str, str]) -> None:
    """``name,password`` lines in a file only its owner may read (0600, even if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["name", "password"])
        writer.writerows(sorted(passwords.items()))
