"""``msg``'s history paging: ``/history [USER|#GROUP] [N]`` asks for the last N messages of
a conversation, ``/more`` for the page before, and the server's HistoryEnd closes a page
(its messages arrive before it as Delivers, shown by ``chat.py``). Plain functions of the
``ChatClient`` whose state they keep (``history_for``, ``history_more``, ``deferred_more``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import HistoryEnd
from .sanitize import inert_name
from .words import plural, split_target

if TYPE_CHECKING:
    from .chat import ChatClient

HISTORY_PAGE = 20  #: messages per /history and /more
HISTORY_MAX = 1000  #: the most /history N asks for (the server sends a page of what fits)


def history_command(chat: ChatClient, rest: str) -> None:
    """``/history [USER|#GROUP] [N]``: a page of the conversation named, else the current one."""
    who, _, count = rest.partition(" ")
    if who.isdecimal() and not count:  # /history N: your conversation
        who, count = "", who
    who = who or (chat.partner or "")
    if not who or (count and not (count.isascii() and count.isdecimal() and 0 < int(count) <= HISTORY_MAX)):
        return chat.local_error(f"usage: /history [USER|#GROUP] [N], N from 1 to {HISTORY_MAX}")
    if (target := chat.as_conversation(who)) is not None and chat.connected("/history"):
        chat.history_for[_page(chat, target, int(count) if count else HISTORY_PAGE)] = target
    return None


def more_command(chat: ChatClient) -> None:
    """``/more``: the page before the last one shown."""
    if chat.history_for:  # a page is on its way: /more follows it (a script types ahead)
        chat.deferred_more += 1
        return None
    if chat.history_more is None:
        return chat.local_error("nothing more: /history USER first")
    who, first = chat.history_more
    if chat.connected("/more"):
        chat.history_for[_page(chat, who, HISTORY_PAGE, before=first)] = who
    return None


def show_history_end(chat: ChatClient, msg: HistoryEnd) -> None:
    who = chat.history_for.pop(msg.request_id, chat.conversation_of(msg.stream))
    if msg.count:
        chat.history_more = (who, msg.first)
        note = f"({plural(msg.count, 'earlier message')} with {inert_name(who)}: /more for more)"
    else:
        chat.history_more = None
        note = f"(no earlier messages with {inert_name(who)})"
    chat.view.show(note, event="history_end", stream=msg.stream, count=msg.count, first=msg.first)
    if chat.deferred_more and not chat.history_for:
        chat.deferred_more -= 1
        more_command(chat)


def _page(chat: ChatClient, who: str, limit: int, before: int = 0) -> int:
    """Ask for a page of ``who``'s conversation (a user, or ``#group``): its request id."""
    kind, target = split_target(who)
    return chat.session.history(target, limit, before=before, kind=kind)
