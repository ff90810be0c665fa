"""User names on the wire: what the protocol allows, and how a name is compared.

The server folds a name to lower case before it checks or stores it, and the client
checks a name the same way before sending it (docs/protocol.md, "Names").
"""

from __future__ import annotations

import re

from .errors import ErrorCode, RemoteProtocolError

#: User names: 1-32 characters, letters, digits, "_", "." and "-", not starting with
#: "." or "-". Names are case-insensitive: the hub folds them to lower case.
NAME_RULE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,31}")


def direct_stream(a: str, b: str) -> str:
    """The stream of the direct conversation of users ``a`` and ``b``: ``dm:`` and the two names,
    sorted (docs/protocol.md section 7); the server names it so, and an end-to-end client binds
    it into what it encrypts."""
    return "dm:" + ",".join(sorted((a, b)))


def fold_name(name: str) -> str | None:
    """``name`` folded to lower case if it follows ``NAME_RULE``, else None. ASCII only,
    so no other character folds into a letter of the rule (the Kelvin sign would become
    ``k``, and ``msgsrv user add`` and a Login would disagree)."""
    user = name.lower() if name.isascii() else name
    return user if NAME_RULE.fullmatch(user) else None


def checked_name(name: str, request_id: int) -> str:
    """``name`` folded (``fold_name``), or RemoteProtocolError INVALID_NAME naming the request:
    the one check of a user's or a group's name the server makes."""
    folded = fold_name(name)
    if folded is None:
        raise RemoteProtocolError(
            ErrorCode.INVALID_NAME, f"invalid name {name!r}: use 1-32 letters, digits, '_', '.', '-'",
            request_id=request_id,
        )  # fmt: skip
    return folded
