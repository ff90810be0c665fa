"""Whatever a server or a peer sends, what ``msg`` prints holds no control character of
theirs: a fuzz of names, bodies and error texts through both views (no socket needed;
the pty tests in tests/system/test_interactive.py check the same on a rendered screen)."""

from __future__ import annotations

import contextlib
import io
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient
from csce513msg.client.interactive import LiveView
from csce513msg.client.view import PlainView, View
from csce513msg.protocol import (
    ContentType,
    Deliver,
    Error,
    HistoryEnd,
    LoginOk,
    Message,
    Presence,
    Receipt,
    ReceiptState,
    TargetKind,
    Welcome,
    WhoReply,
)

NASTY = st.sampled_from(
    ["\x1b[2J", "\x1b]0;title\x07", "\x1b]8;;https://x\x1b\\", "\x9b31m", "\r", "\x08", "\u202e", "\u2066", "\x00",
     "[link=https://x]a[/link]", "[bold red]", "<b>", "\x7f", "\u200b", "\U000e0041", "\ufeff"]
)  # fmt: skip
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=8)), max_size=8).map("".join)
OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")  # the interactive view's own colours, and nothing else


def messages(name: str, body: str) -> list[Message]:
    stream = f"dm:{name},me"
    return [
        Welcome(1, 3, 65536, 16384, 64, 90_000, (), name),
        Receipt(ReceiptState.DELIVERED, 9, 1_700_000_000_000_000, 2, stream, body),
        HistoryEnd(1, 1, stream),
        LoginOk(1, "me", name, 0),
        Presence(1, 0, name),
        WhoReply((name, "me"), (1, 2), (body, "student")),
        Deliver(
            TargetKind.USER,
            ContentType.TEXT,
            7,
            1_700_000_000_000_000,
            1,
            name,
            "me",
            stream,
            body.encode(errors="surrogatepass"),
        ),
        Error(3, body, 0),
    ]


def feed(view: View, name: str, body: str) -> None:
    chat = ChatClient(ClientSession("me"), view, live=isinstance(view, LiveView), verbose=True)
    for msg in messages(name, body):
        chat.on_message(msg)


def assert_inert(printed: str, ours: re.Pattern[str] | None = None) -> None:
    """No control character (but line feeds, and ``ours``: the view's own colours)."""
    if ours is not None:
        printed = ours.sub("", printed)
    for char in printed:
        assert char in "\n" or not (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F), repr(printed)
        assert char not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\ufeff", repr(printed)


@settings(max_examples=150)
@given(name=TEXT, body=TEXT)
def test_the_plain_view_prints_nothing_a_peer_can_execute(name: str, body: str) -> None:
    out = io.StringIO()
    feed(PlainView(False, out, out), name, body)
    assert_inert(out.getvalue())


@settings(max_examples=150)
@given(name=TEXT, body=TEXT)
def test_the_live_view_adds_only_its_own_colours(name: str, body: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        feed(LiveView(color=True, me="me"), name, body)
    assert_inert(out.getvalue(), OUR_SGR)


@settings(max_examples=100)
@given(name=TEXT, body=TEXT)
def test_json_output_is_ascii_and_keeps_the_exact_text(name: str, body: str) -> None:
    out = io.StringIO()
    feed(PlainView(True, out, out), name, body)
    assert out.getvalue().isascii()  # no C1 control or bidi override raw on a terminal
    delivers = [json.loads(line) for line in out.getvalue().splitlines() if '"deliver"' in line]
    assert delivers[0]["sender"] == name


def test_markup_looking_text_is_printed_as_it_was_written() -> None:
    out = io.StringIO()
    feed(PlainView(False, out, out), "bob", "[link=https://evil.example]click[/link] <b>x</b>")
    assert "bob: [link=https://evil.example]click[/link] <b>x</b>" in out.getvalue()
