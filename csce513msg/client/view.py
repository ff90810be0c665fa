"""Where the client's lines go: a ``View``, and the plain one (stdout, stderr, or JSON).

The interactive mode's ``LiveView`` is in ``client/interactive.py``. Every View gets
literal, inert text (``client/sanitize.py``) and never runs it through markup.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import Protocol, TextIO


class Style(enum.Enum):
    """What kind of line: a View may colour them."""

    SYSTEM = "system"
    ERROR = "error"
    SELF = "self"  #: what you sent
    OTHER = "other"  #: what others sent
    DATE = "date"
    ANNOUNCEMENT = "announcement"  #: from the course's staff, to everyone (g:0)


class View(Protocol):
    """Where the client's lines go. ``human`` is literal, inert text (never markup).

    ``key`` names a line that a later ``show`` with the same key replaces (a sent
    message whose state changes): a View that can rewrite lines does; one that cannot
    prints the new line only if ``final``."""

    def show(self, human: str, /, *, style: Style = Style.SYSTEM, key: int | None = None, **event: object) -> None: ...


class PlainView:
    """Plain lines: the conversation on stdout, errors on stderr (or one JSON object per
    event, all on stdout, with ``--json``)."""

    def __init__(self, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def show(self, human: str, /, *, style: Style = Style.SYSTEM, key: int | None = None, **event: object) -> None:
        if self.as_json:
            if event:
                self.out.write(json.dumps(event) + "\n")  # ASCII: no C1 control or bidi character raw
                self.out.flush()
            return
        if not human:
            return  # an event for --json only (a receipt the plain view does not show)
        stream = self.err if style is Style.ERROR else self.out
        stream.write(human + "\n")
        stream.flush()
