"""The chat rules both loops share (``client/chat.py``), without a socket."""

from __future__ import annotations

import io

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient, PlainView
from csce513msg.client.session import ClientState
from csce513msg.protocol import Error, ErrorCode


def ready_chat() -> tuple[ChatClient, io.StringIO]:
    session = ClientSession("me", device_id="device", client_msg_seed=100)
    session.state = ClientState.READY  # as after a LoginOk (the handshake is tested elsewhere)
    out = io.StringIO()
    return ChatClient(session, PlainView(False, out, out)), out


def test_what_waits_counts_each_message_once_across_a_lost_connection() -> None:
    chat, _ = ready_chat()
    chat.send("bob", "one")
    chat.send("bob", "two")
    chat.resend = chat.unacknowledged()  # the connection is lost: the old session still holds them too
    chat.online = False
    chat.send("bob", "three")  # typed while disconnected: queued
    assert [(u.to, u.text) for u in chat.waiting()] == [("bob", "one"), ("bob", "two"), ("bob", "three")]
    assert len({u.client_msg_id for u in chat.waiting()}) == 3


def test_a_failed_send_does_not_move_the_conversation() -> None:
    chat, out = ready_chat()
    chat.on_line("/to bob")
    chat.on_line("/msg ghost boo")
    assert chat.partner == "ghost"  # until the server answers
    ghost_rid = max(chat.sent)
    chat.on_message(Error(ErrorCode.USER_NOT_FOUND, "no user 'ghost'", ghost_rid))
    assert chat.partner == "bob"
    assert "your message to ghost was not sent" in out.getvalue()


def test_commands_typed_while_disconnected_are_answered_at_once() -> None:
    chat, out = ready_chat()
    chat.ever_ready, chat.online = True, False
    for line in ("/who", "/history bob"):
        chat.on_line(line)
    assert out.getvalue().count("not connected; retrying in") == 2
    chat.on_line("/msg bob later")
    assert "queued for bob" in out.getvalue() and [u.text for u in chat.queued] == ["later"]
