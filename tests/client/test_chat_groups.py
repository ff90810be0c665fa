"""``msg``'s groups (``client/chat.py``), without a socket: the commands, the lines shown,
and that a group's name and events from the network reach the screen inert."""

from __future__ import annotations

import dataclasses
import io

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from csce513msg.client import ClientSession
from csce513msg.client.chat import ChatClient
from csce513msg.client.interactive import ChatCompleter
from csce513msg.client.session import ClientState
from csce513msg.client.view import PlainView
from csce513msg.protocol import (
    Confirm,
    Confirmations,
    Confirmed,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    GroupDelete,
    GroupEvent,
    GroupEventKind,
    GroupInfo,
    GroupJoin,
    GroupList,
    GroupListReply,
    GroupMembersReply,
    GroupMute,
    GroupRename,
    GroupSlow,
    Hand,
    HandOp,
    HandPlace,
    HandQueue,
    HandQueueReply,
    History,
    LoginOk,
    QueueOp,
    Redact,
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
    assert "] #lab/5 bob: hi all\n" in shown  # its number, for /delete #lab/5
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
    assert "#lab\\x1b]0;pwned\\x07\\x1b[2J\\u202e/5 bob: text\\x1b" in shown
    assert "added eve\\x1b]0;pwned" in shown


def test_moderation_events_tombstones_and_waits_are_readable_lines() -> None:
    chat, out = group_chat()
    for kind, users, value, position, line in [
        (GroupEventKind.MUTED, ("bob",), 600, 6, "* alice muted bob in #lab for 10 min"),
        (GroupEventKind.UNMUTED, ("bob",), 0, 7, "* alice unmuted bob in #lab"),
        (GroupEventKind.SLOW, (), 30, 8, "* alice set slow mode in #lab: one post per 30 s"),
        (GroupEventKind.SLOW, (), 0, 9, "* alice set slow mode in #lab: off"),
        (GroupEventKind.REMOVED_MESSAGE, ("bob",), 5, 10, "* alice removed message 5 (by bob) in #lab"),
        (GroupEventKind.REMOVED_MESSAGE, ("bob",), 5, 5, "* [message 5 by bob removed]"),  # the tombstone
        (GroupEventKind.DELETED, (), 0, 11, "* alice deleted #lab"),
    ]:
        body = GroupEvent(kind, users, "lab", value).encode()
        chat.on_message(Deliver(TargetKind.GROUP, ContentType.GROUP_EVENT, 41, 1764633600000000, position,
                                "alice", "lab", "g:7", body))  # fmt: skip
        assert line in out.getvalue(), line
    hostile = GroupEvent(GroupEventKind.MUTED, (ATTACK,), ATTACK, 60).encode()
    chat.on_message(deliver(ATTACK, "lab", hostile, ContentType.GROUP_EVENT))
    chat.on_message(Error(ErrorCode.SLOW_MODE, ATTACK, 29_500, request_id=0))
    chat.on_message(Error(ErrorCode.MUTED, "muted", 3_600_000, request_id=0))
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "! slow_mode: " in text and "(try again in 30 s)" in text and "(try again in 1 h 0 min)" in text


# ---- the classroom: announcements and office hours ----------------------------------------


def bare(requests: list[object]) -> list[object]:
    """The requests without their request ids."""
    return [dataclasses.replace(r, request_id=0) for r in requests]  # type: ignore[type-var]  # messages: dataclasses


def announcement(body: bytes, position: int, asks: bool = True, sender: str = "prof") -> Deliver:
    kind = ContentType.ASKS_CONFIRMATION if asks else ContentType.TEXT
    return Deliver(TargetKind.GROUP, kind, 50 + position, 1764633600000000, position, sender, "announcements", "g:0",
                   body)  # fmt: skip


def test_announcements_show_distinctly_inert_with_the_hint_and_confirm_defaults_to_the_newest() -> None:
    chat, out = group_chat()
    chat.on_message(LoginOk(1, "me", "student"))
    chat.on_message(announcement(f"exam {ATTACK}".encode(), 3))
    chat.on_message(announcement(b"room change", 4, asks=False))
    shown = out.getvalue()
    assert "ANNOUNCEMENT #3 from prof: exam" in shown and "/confirm 3" in shown
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert chat.partner is None  # an announcement is nobody's conversation
    chat.on_line("/confirm")
    chat.on_line("/confirm 4")
    chat.on_line("/raise how do I close a socket?")
    chat.on_line("/lower")
    chat.on_line("/confirm x")
    assert bare(sent(chat)) == [
        Confirm(3),
        Confirm(4),
        Hand(HandOp.RAISE, "how do I close a socket?"),
        Hand(HandOp.LOWER),
    ]
    assert "usage: /confirm [N]" in out.getvalue()
    chat.on_line("/help")
    assert "/raise QUESTION" in out.getvalue() and "/announce!" not in out.getvalue()


def test_hand_places_one_line_each_and_a_take_switches_the_conversation() -> None:
    chat, out = group_chat()
    chat.on_message(HandPlace(2, 3, "q"))
    chat.on_message(HandPlace(1, 2, "q"))
    chat.on_message(HandPlace(0, 1, "q", "prof" + ATTACK))
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["* your hand is up: place 2 of 3", "* your hand is up: place 1 of 2"]
    assert lines[2].startswith("* prof") and "talking to" in lines[2] and "\x1b" not in lines[2]
    assert chat.partner == "prof" + ATTACK  # the staff member, as the server named them


def test_staff_announce_list_confirmations_and_take_the_next() -> None:
    chat, out = group_chat()
    chat.on_message(LoginOk(1, "me", "assistant"))
    chat.on_line("/announce! read chapter 3")
    chat.on_line("/announce no class monday")
    chat.on_line("/confirmed")
    chat.on_line("/queue")
    chat.on_line("/next")
    asked = sent(chat)
    assert [(m.content_type, m.target, m.body) for m in asked[:2] if isinstance(m, Send)] == [
        (ContentType.ASKS_CONFIRMATION, "g:0", b"read chapter 3"), (ContentType.TEXT, "g:0", b"no class monday"),
    ]  # fmt: skip
    assert bare(asked[2:]) == [Confirmed(0), HandQueue(QueueOp.LIST), HandQueue(QueueOp.TAKE)]
    rids = list(chat.session.pending)
    chat.on_message(Confirmations(7, ("ann",), ("ben", "cy"), rids[2]))
    chat.on_message(HandQueueReply("bob", ("cy",), ("why?",), (12,), rids[4]))
    shown = out.getvalue()
    assert "announcement #7: confirmed by ann (1); not yet: ben, cy (2)" in shown
    assert "you took bob's hand: talking to bob\nqueue: 1 waiting\n  1. cy (12 s): why?\n" in shown
    assert chat.partner == "bob"
    chat.on_line("/help")
    assert "/announce! TEXT" in out.getvalue() and "/next" in out.getvalue()


def test_moderation_commands_send_their_requests_and_refuse_bad_arguments() -> None:
    chat, out = group_chat()
    for line in ["/rename #lab lab2", "/delgroup #old", "/mute #lab Bob", "/mute #lab bob 3", "/unmute #lab bob",
                 "/slow #lab 30", "/slow #lab off", "/delete #lab/5", "/delete #lab 6"]:  # fmt: skip
        chat.on_line(line)
        if line.startswith(("/rename", "/delgroup")):  # a change: what follows waits for its answer
            rid = max(chat.session.pending)
            chat.on_message(GroupInfo("g:7", "lab2" if "rename" in line else "old", "me", 0, 1, 1, 1, request_id=rid))
    assert [dataclasses.replace(m, request_id=0) for m in sent(chat)] == [  # type: ignore[type-var]
        GroupRename("lab", "lab2"), GroupDelete("old"),
        GroupMute("lab", ("bob",), 600), GroupMute("lab", ("bob",), 180),
        GroupMute("lab", ("bob",), 0), GroupSlow("lab", 30),
        GroupSlow("lab", 0), Redact("lab", 5), Redact("lab", 6),
    ]  # fmt: skip
    shown = out.getvalue()
    assert "renamed to #lab2" in shown and "deleted #old" in shown
    chat.on_message(GroupInfo("g:7", "lab", "me", 0, 3, 9, 1, request_id=max(chat.session.pending) - 5))
    assert "muted bob for 3 min in #lab" in out.getvalue()
    failures = chat.failures
    for bad in ["/mute #lab", "/mute #lab bob x", "/mute #lab bob 0", "/slow #lab", "/slow #lab -1", "/delete #lab",
                "/delete #lab/x", "/delete #lab/0", "/delgroup", "/rename #lab", "/unmute #lab bob 3"]:  # fmt: skip
        chat.on_line(bad)
    assert chat.failures == failures + 11
    assert len(sent(chat)) == 9  # nothing more was sent


def test_a_pushed_queue_shows_what_changed_in_one_line() -> None:
    chat, out = group_chat()
    chat.on_message(LoginOk(1, "me", "instructor"))
    chat.on_message(HandQueueReply("", ("ann",), ("select or poll?",), (0,)))  # pushed: request id 0
    chat.on_message(HandQueueReply("", ("ann", "bo" + ATTACK), ("select or poll?", "x" + ATTACK), (3, 0)))
    chat.on_message(HandQueueReply("", ("ann", "bo" + ATTACK), ("select or poll?", "y"), (4, 1)))
    chat.on_message(HandQueueReply("", ("bo" + ATTACK,), ("y",), (2,)))
    lines = out.getvalue().splitlines()[1:]
    assert lines[0] == "* ann raised a hand: select or poll? (1 waiting)"
    assert lines[1].startswith("* bo\\x1b]0;pwned") and lines[1].endswith("(2 waiting)")
    assert lines[2].endswith("asks now: y (2 waiting)") and lines[3] == "* ann left the queue (1 waiting)"
    assert "\x1b" not in out.getvalue()


def test_a_number_past_the_servers_limits_is_a_local_error_not_a_crash() -> None:
    """`/mute #lab bob 99999999` (minutes) once overflowed the u32 seconds field: encode raised
    struct.error, which is no ValueError, and it ended msg. A failed classroom request is
    forgotten (its request id no longer waits)."""
    chat, out = group_chat()
    failures = chat.failures
    chat.on_line("/mute #lab bob 99999999")
    chat.on_line("/mute #lab bob 43201")  # 30 days and a minute
    chat.on_line("/slow #lab 86401")
    assert chat.failures == failures + 3 and sent(chat) == [] and "/mute: at most 43200" in out.getvalue()
    chat.on_line("/mute #lab bob 43200")
    assert [type(m).__name__ for m in sent(chat)] == ["GroupMute"]
    chat.on_line("/queue")
    rid = max(chat.session.pending)
    chat.on_message(Error(ErrorCode.FORBIDDEN, "only staff see the queue", request_id=rid))
    assert rid not in chat.classroom
