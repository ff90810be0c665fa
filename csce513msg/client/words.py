"""How ``msg`` words what it shows: times, counts, durations, error codes, and who a
stream or a typed target names. Plain functions of their arguments, shared by the chat's
core (``client/chat.py``), its groups (``client/groups.py``) and its classroom
(``client/classroom.py``)."""

from __future__ import annotations

from datetime import datetime

from ..protocol import WAITING_CAP, ErrorCode, TargetKind


def clock(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6).strftime("%H:%M")


def day_of(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6).strftime("%A %d %B %Y")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def count_waiting(waiting: int) -> str:
    """LoginOk.waiting in words: the server counts no further than WAITING_CAP, so that
    value means "that many or more" (docs/protocol.md, LoginOk)."""
    if waiting >= WAITING_CAP:
        return f"{WAITING_CAP}+ messages"
    return plural(waiting, "message")


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error {code}"


def duration(seconds: int) -> str:
    """Seconds in words: ``45 s``, ``10 min``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def split_target(to: str) -> tuple[TargetKind, str]:
    """A conversation as the protocol names it: ``#lab`` is the group lab, else a user."""
    if to.startswith("#"):
        return TargetKind.GROUP, to[1:]
    return TargetKind.USER, to


def partner_of(stream: str, me: str | None) -> str:
    """The other user of a direct stream ``dm:a,b`` (the stream itself if not one)."""
    if stream.startswith("dm:"):
        users = stream[3:].split(",")
        others = [u for u in users if u != me]
        return others[0] if others else (me or stream)
    return stream
