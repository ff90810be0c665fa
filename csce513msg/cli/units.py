"""Sizes as people type them on a command line: ``512``, ``64k``, ``1.5M``, ``2G``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``text``: a number with an optional k, M, G or T (powers of 1024, any case,
    an optional ``B`` or ``iB`` after it).

    Raises:
        ValueError: not such a size (the message says what is expected).
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: a number of bytes, optionally with k, M or G (e.g. 10M)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def show_size(count: int) -> str:
    """``count`` bytes for people: ``999 B``, ``1.5 MiB``."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
