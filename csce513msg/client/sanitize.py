"""Text from the network, made inert before it reaches a terminal.

A terminal obeys what it is sent: ESC ``[1;31m`` colours the screen, ESC ``]0;...`` BEL
renames the window, cursor movements let a sender rewrite lines someone else wrote, and
a right-to-left override makes ``exe.txt`` read as ``txt.exe``. So every text that comes
from the network (message bodies, user names, error texts, later group and file names)
goes through ``inert`` before it is printed, in every mode of the client:

- a line feed starts a new line of the same message, indented under it (``indent``), so
  a message cannot forge a line that looks like it came from someone else; ``\\r\\n``
  counts as one line feed;
- a tab becomes spaces (up to the next multiple of ``TAB``);
- every other control character (C0, DEL, C1; so every escape sequence begins inert),
  every invisible formatting character (bidi overrides and isolates, zero-width spaces,
  the byte-order mark, Unicode tag characters), and the line and paragraph separators
  are shown as a visible escape: ``\\x1b``, ``\\u202e``, ``\\U000e0041``. The zero-width
  joiner stays: emoji sequences need it, and it reorders nothing.

The result is literal text: it must never pass through a markup layer afterwards (rich
markup, where ``[link=...]`` becomes a terminal hyperlink; prompt_toolkit's ``HTML``).
``--json`` output keeps the exact text instead, JSON-escaped.
"""

from __future__ import annotations

import re

TAB = 4

#: Code points shown as escapes: Cc (controls, but \n and \t, handled apart), Cf (format
#: characters, but U+200D ZWJ), Zl and Zp. tests/client/test_sanitize.py checks this
#: class against unicodedata over every code point, so a new Unicode version cannot
#: slip a format character past it unnoticed.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)
#: The same for a name, which is one line: tab and LF too. ``downloads.safe_name`` drops
#: these characters from a received file's name.
UNSAFE_IN_NAME = re.compile("[\t\n" + _UNSAFE.pattern[1:])
#: What is printed escaped: the above, and lone surrogates (Cs), which are no characters at all
#: but which JSON's ``\ud800`` escapes can put in a str; printed raw, they make the terminal's
#: encoder raise. (Not in ``_UNSAFE``, whose test compares it with Unicode's categories.)
_SHOWN = re.compile(_UNSAFE.pattern[:-1] + "\ud800-\udfff]")
_SHOWN_IN_NAME = re.compile(UNSAFE_IN_NAME.pattern[:-1] + "\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def inert(text: str, indent: str = "  ") -> str:
    """``text`` safe to print: controls and invisible formatting shown as escapes, each
    line after the first indented by ``indent``, tabs expanded."""
    lines = text.replace("\r\n", "\n").split("\n")
    return ("\n" + indent).join(_SHOWN.sub(_escape, line.expandtabs(TAB)) for line in lines)


def inert_name(name: str) -> str:
    """A name (user, group, file) on one line: a line feed in it is shown as ``\\x0a``."""
    return _SHOWN_IN_NAME.sub(_escape, name)
