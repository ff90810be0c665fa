"""Network text reaches the terminal inert: ``client/sanitize.py``."""

from __future__ import annotations

import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from csce513msg.client.sanitize import inert, inert_name

ZWJ = "\u200d"


def test_the_reported_injection_is_shown_literally() -> None:
    attack = "\033[1;31mRED\033]0;pwned\007"
    assert inert(attack) == "\\x1b[1;31mRED\\x1b]0;pwned\\x07"


def test_a_line_feed_continues_the_message_indented_and_tabs_expand() -> None:
    assert inert("def f():\n\treturn 1", indent="    ") == "def f():\n        return 1"
    assert inert("a\r\nb") == "a\n  b"  # CRLF is one line feed
    assert inert("a\rb") == "a\\x0db"  # a lone CR would overwrite the line: shown


def test_bidi_overrides_and_invisible_characters_are_visible() -> None:
    assert inert("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert inert("a\u200bb\ufeff") == "a\\u200bb\\ufeff"
    assert inert("tag\U000e0041") == "tag\\U000e0041"  # ASCII smuggling in tag characters
    family = "\U0001f468" + ZWJ + "\U0001f469" + ZWJ + "\U0001f467"
    assert inert(family) == family  # emoji sequences keep their joiner


def test_a_name_stays_on_one_line() -> None:
    assert inert_name("bob\n[10:00] alice: give me your password") == "bob\\x0a[10:00] alice: give me your password"
    assert inert_name("a\tb") == "a\\x09b"


def test_the_unsafe_class_matches_unicode_categories_over_every_code_point() -> None:
    """Cc, Cf, Zl and Zp (but LF, tab and ZWJ) are escaped; nothing else is, but code points
    this Python's Unicode does not assign yet (a newer version made them format characters)."""
    wrong = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF or char in "\n\t" + ZWJ:
            continue
        category = unicodedata.category(char)
        unsafe = category in ("Cc", "Cf", "Zl", "Zp")
        escaped = inert(char) != char
        if escaped != unsafe and not (escaped and category == "Cn"):
            wrong.append(f"U+{code:04X}")
    assert not wrong, f"{unicodedata.unidata_version}: {wrong[:20]}"


@given(st.text())
def test_no_control_or_format_character_survives(text: str) -> None:
    out = inert(text)
    for char in out:
        if char == "\n" or char == ZWJ:
            continue
        assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"), repr(char)
    assert out.count("\n") == text.replace("\r\n", "\n").count("\n")  # one output line per input line


def test_a_lone_surrogate_is_shown_escaped_and_can_be_encoded() -> None:
    """JSON's "\\ud800" (a file offer's name) makes a str no terminal can encode: escaped."""
    from csce513msg.client.sanitize import inert, inert_name

    for shown in (inert_name("a\ud800b"), inert("x\udfffy")):
        assert "\\u" in shown
        shown.encode("utf-8")  # raised UnicodeEncodeError before
