"""Sizes as people type them on a command line (``512``, ``10k``, ``1.5M``, ``2G``), and
sizes shown to people: ``msgsrv --max-file``, ``msg --auto-download``, progress lines."""

from __future__ import annotations

import re
from fractions import Fraction

_SIZE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+) *(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """A size in bytes from ``512``, ``10k``, ``1.5M``, ``2G``, ``64KiB``, ``3 MB``.

    Units are powers of 1024, in either case, with an optional ``B`` or ``iB``; a
    fraction of a byte is dropped. Anything else, or a negative size, is a ValueError.
    """
    text = text.strip()
    if text.startswith("-"):
        raise ValueError(f"a size cannot be negative: {text!r}")
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (bytes, or with k, M or G: 512, 10k, 1.5M, 2G)")
    number, unit = match.groups()
    size = int(Fraction(number) * _UNITS[(unit or "").lower()])
    if size >= 1 << 63:
        raise ValueError(f"size too large: {text!r}")
    return size


def show_size(count: int) -> str:
    """``count`` bytes for people: ``999 B``, ``1.5 MiB``."""
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
