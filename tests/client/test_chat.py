"""The chat rules both loops share (``client/chat.py``), without a socket."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient
from csce513msg.client.files import Outbox
from csce513msg.client.session import ClientState
from csce513msg.client.steps import lost, reconnected
from csce513msg.client.view import PlainView
from csce513msg.protocol import Error, ErrorCode, Receipt, ReceiptState


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
    chat.on_message(Error(ErrorCode.USER_NOT_FOUND, "no user 'ghost'", request_id=ghost_rid))
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


class Watch:
    """A Watcher that only remembers what it watches."""

    def __init__(self) -> None:
        self.fds: set[int] = set()

    def register(self, fd: int) -> None:
        self.fds.add(fd)

    def unregister(self, fd: int) -> None:
        self.fds.discard(fd)


def online_chat(watch: Watch) -> ChatClient:
    chat, _ = ready_chat()
    chat.sock, peer = socket.socketpair()
    peer.close()
    chat.ever_ready = True
    watch.register(chat.sock.fileno())
    return chat


def test_a_second_loss_before_the_login_keeps_what_waits() -> None:
    watch = Watch()
    chat = online_chat(watch)
    chat.send("bob", "important")
    lost(chat, watch)
    assert [s.body for s in chat.resend] == [b"important"]
    sock, peer = socket.socketpair()
    assert reconnected(chat, sock, watch)  # a new session: nothing pending until its login
    lost(chat, watch)  # refused as busy, or reset, before the LoginOk
    peer.close()
    assert [u.text for u in chat.waiting()] == ["important"]


def test_a_sent_message_keeps_its_own_line_across_connections() -> None:
    watch = Watch()
    chat = online_chat(watch)
    chat.send("bob", "first")
    (first,) = chat.sent.values()
    lost(chat, watch)
    sock, peer = socket.socketpair()
    reconnected(chat, sock, watch)
    chat.session.state = ClientState.READY
    chat.resend_unacknowledged()
    chat.send("bob", "second")  # request ids start again at 1 on the new session
    keys = sorted(out.key for out in chat.sent.values())
    assert len(set(keys)) == 2 and first.key in keys
    peer.close()


def test_nothing_typed_can_stop_the_client() -> None:
    chat, out = ready_chat()
    for line in ("/history bob 99999999999", "/history bob ²", "/to " + "x" * 70_000, "/msg " + "y" * 70_000 + " hi"):
        chat.on_line(line)
    assert out.getvalue().count("! ") == 4
    assert not chat.session.pending  # nothing half-queued
    chat.on_line("/history 5")  # N alone: your conversation (none yet: a usage error, not a crash)
    assert "usage: /history" in out.getvalue()


def test_a_lost_connection_interrupts_history_paging() -> None:
    watch = Watch()
    chat = online_chat(watch)
    chat.on_line("/history bob")
    chat.on_line("/more")  # typed ahead: waits for the page
    assert chat.history_for and chat.deferred_more == 1
    lost(chat, watch)
    assert not chat.history_for and chat.deferred_more == 0
    chat.input_done = True
    chat.session.pending.clear()  # (the old session's requests are the resend list's now)
    assert chat.ready_to_exit()  # nothing left waiting for a page that will never come


def test_the_outbox_on_disk_forgets_a_message_once_the_server_stored_it(tmp_path: Path) -> None:
    chat, out = ready_chat()
    chat.outbox = Outbox("srv:1", "me")
    chat.outbox.path = tmp_path / "outbox.json"
    chat.send("bob", "kept")
    chat.keep_waiting()  # (a loss, or a restart, would do this)
    assert chat.outbox.path.exists()
    (rid,) = chat.sent
    chat.session.pending.pop(rid)  # the session does this when the Receipt arrives
    chat.on_message(Receipt(ReceiptState.STORED, 5, 1_700_000_000_000_000, 1, "dm:bob,me", request_id=rid))
    assert not chat.outbox.path.exists()
    chat.on_message(Receipt(ReceiptState.DELIVERED, 5, 1_700_000_000_000_000, 1, "dm:bob,me"))
    assert "\n\n" not in out.getvalue() and not out.getvalue().endswith("\n\n")  # no blank line for it
