"""What the command-line client prints for a server's message (no socket needed)."""

from __future__ import annotations

import io
import json

import pytest

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient
from csce513msg.client.view import PlainView
from csce513msg.protocol import WAITING_CAP, LoginOk


@pytest.mark.parametrize(
    ("waiting", "shown"),
    [
        (0, "logged in as bob (student); /help"),
        (1, "; 1 message arrived while you were away;"),
        (999, "; 999 messages arrived"),
        (WAITING_CAP, f"; {WAITING_CAP}+ messages arrived"),  # the server counts no further
    ],
)
def test_login_shows_what_waited_and_a_capped_count_as_that_many_or_more(waiting: int, shown: str) -> None:
    for as_json in (False, True):
        out = io.StringIO()
        chat = ChatClient(ClientSession("bob"), PlainView(as_json, out, out))
        chat.on_message(LoginOk(1, "bob", "student", waiting))
        if as_json:
            event = json.loads(out.getvalue())
            assert (event["waiting"], event["waiting_or_more"]) == (waiting, waiting == WAITING_CAP)
        else:
            assert shown in out.getvalue()
