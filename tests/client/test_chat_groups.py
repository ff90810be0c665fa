"""``msg``'s groups (``client/chat.py``), without a socket: the commands, the lines shown,
and that a group's name and events from the network reach the screen inert."""

from __future__ import annotations

import io

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient
from csce513msg.client.interactive import ChatCompleter
from csce513msg.client.session import ClientState
from csce513msg.client.view import PlainView
from csce513msg.protocol import (
    ContentType,
    Deliver,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupJoin,
    GroupList,
    GroupListReply,
    GroupMembersReply,
    History,
    Send,
    TargetKind,
    Welcome,
)

ATTACK = "\x1b]0;pwned\x07\x1b[2J\u202e"


def group_chat() -> tuple[ChatClient, io.StringIO]:
    session = ClientSession("me", groups=True, device_id="device", client_msg_seed=100)
    session.welcome = Welcome(1, 4, 65536, 4096, 64, 30000, ("presence", "groups"), "test")
    session.state = ClientState.READY  # as after a LoginOk (the handshake is tested elsewhere)
    out = io.StringIO()
    chat = ChatClient(session, PlainView(False, out, out))
    chat.ever_ready = True
    return chat, out


def deliver(sender: str, group: str, body: bytes, content: ContentType = ContentType.TEXT) -> Deliver:
    return Deliver(TargetKind.GROUP, content, 41, 1764633600000000, 5, sender, group, "g:7", body)


def sent(chat: ChatClient) -> list[object]:
    return list(chat.session.pending.values())


def test_group_commands_send_the_group_requests() -> None:
    chat, out = group_chat()
    chat.on_line("/join #Lab")
    chat.on_line("/groups all")
    chat.on_line("#lab hello all")
    chat.on_line("/to #lab")
    chat.on_line("and again")
    chat.on_line("/history #lab 5")
    assert len(sent(chat)) == 1  # the lines after a change wait for its answer
    chat.on_message(GroupInfo("g:7", "lab", "bob", 0, 2, 3, 1, request_id=max(chat.session.pending)))
    assert "joined #lab (2 members)" in out.getvalue()
    requests = sent(chat)
    assert isinstance(requests[0], GroupJoin) and requests[0].group == "lab"
    assert isinstance(requests[1], GroupList) and requests[1].mine == 0
    sends = [r for r in requests if isinstance(r, Send)]
    assert [(s.target_kind, s.target, s.body) for s in sends] == [
        (TargetKind.GROUP, "lab", b"hello all"),
        (TargetKind.GROUP, "lab", b"and again"),
    ]
    history = requests[-1]
    assert isinstance(history, History) and (history.target_kind, history.target, history.limit) == (2, "lab", 5)
    assert chat.partner == "#lab" and "talking to #lab" in out.getvalue()


def test_group_lines_show_the_group_the_sender_and_the_events() -> None:
    chat, out = group_chat()
    chat.on_line("/create lab")
    chat.on_message(GroupInfo("g:7", "lab", "me", 0, 1, 1, 1, request_id=max(chat.session.pending)))
    chat.on_message(deliver("bob", "lab", GroupEvent(GroupEventKind.JOINED, ("bob",), "lab").encode(), ContentType(3)))
    chat.on_message(deliver("me", "lab", GroupEvent(GroupEventKind.ADDED, ("carol", "dave"), "lab").encode(),
                            ContentType(3)))  # fmt: skip
    chat.on_message(deliver("bob", "lab", b"hi all"))
    chat.on_message(deliver("bob", "lab", GroupEvent(GroupEventKind.RENAMED, (), "lab2").encode(), ContentType(3)))
    chat.on_message(GroupListReply(("g:7",), ("lab2",), ("me",), (3,), (2,)))
    chat.on_message(GroupMembersReply("g:7", ("bob", "me"), ("student", "instructor"), (0, 2)))
    shown = out.getvalue()
    assert "created #lab (g:7)\n" in shown
    assert "* bob joined #lab\n" in shown
    assert "* you added carol, dave to #lab\n" in shown
    assert "] #lab bob: hi all\n" in shown
    assert "* bob renamed #lab to #lab2\n" in shown
    assert "groups: #lab2 (3 members, owner me)" in shown
    assert "members of #lab2: bob (student), me (instructor, 2 sessions)" in shown
    assert chat.partner == "#lab"  # the first to write becomes the conversation
    completions = [c.text for c in ChatCompleter(chat).get_completions(Document("/to #la"), CompleteEvent())]
    assert completions == ["#lab2 "]


def test_a_group_name_and_event_text_from_the_network_are_shown_inert() -> None:
    chat, out = group_chat()
    chat.on_message(deliver("bob", "lab" + ATTACK, b"text" + ATTACK.encode()))
    event = GroupEvent(GroupEventKind.ADDED, ("eve" + ATTACK,), "lab" + ATTACK).encode()
    chat.on_message(deliver("bob" + ATTACK, "lab" + ATTACK, event, ContentType(3)))
    chat.on_message(GroupListReply(("g:7",), ("x" + ATTACK,), ("o" + ATTACK,), (1,), (0,)))
    chat.on_message(GroupMembersReply("g:7", ("m" + ATTACK,), ("r" + ATTACK,), (1,)))
    chat.on_message(GroupInfo("g:7" + ATTACK, "n" + ATTACK, "me", 0, 1, 1, 1))
    shown = out.getvalue()
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in shown
    assert "#lab\\x1b]0;pwned\\x07\\x1b[2J\\u202e bob: text\\x1b" in shown
    assert "added eve\\x1b]0;pwned" in shown
