"""Just enough of Redis's RESP3 for the Redis baseline (``loadgen.py --redis``).

Requests are arrays of bulk strings (``command``); replies are parsed incrementally
(``RespDecoder``): integers, strings, errors, arrays, maps and pushes (``>``, how RESP3
delivers a pub/sub message, so one connection both publishes and receives).
"""

from __future__ import annotations

from typing import Any


class RespError(Exception):
    """A ``-ERR ...`` reply."""


def command(*parts: bytes) -> bytes:
    """One request: ``*N`` then each part as a bulk string."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class RespDecoder:
    """Feed bytes, get the whole replies they complete (a partial one waits for more)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[Any]:
        self.buf += data
        values, pos = [], 0
        while (parsed := _parse(self.buf, pos)) is not None:
            value, pos = parsed
            values.append(value)
        self.buf = self.buf[pos:]
        return values


def _parse(buf: bytes, pos: int) -> tuple[Any, int] | None:
    """One value at ``pos``: (value, the position after it), or None if it is not all here."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line, pos = buf[pos : pos + 1], buf[pos + 1 : end], end + 2
    if kind in (b"$", b"=", b"!"):  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        value = buf[pos : pos + size]
        return (RespError(value) if kind == b"!" else value), pos + size + 2
    if kind in (b"*", b">", b"~", b"%", b"|"):  # array, push, set, map, attributes: N values (maps 2N)
        items = []
        for _ in range(int(line) * (2 if kind in (b"%", b"|") else 1)):
            parsed = _parse(buf, pos)
            if parsed is None:
                return None
            value, pos = parsed
            items.append(value)
        return items, pos
    if kind == b":":
        return int(line), pos
    if kind == b"-":
        return RespError(line), pos
    return line, pos  # simple string, null, boolean, double, big number
