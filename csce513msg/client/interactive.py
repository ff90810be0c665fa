"""The interactive mode: prompt_toolkit's line editor, and the socket on the same loop.

On a terminal, ``msg`` gives the keyboard to prompt_toolkit: line editing, an input
history kept per user (``files.history_file``), Tab completion of commands and user
names, a prompt that names the current conversation, a status bar (connection, unread
counts), and output printed *above* the input line instead of through it.

How the socket joins prompt_toolkit's loop. prompt_toolkit runs on asyncio; asyncio's
loop is a selector loop (epoll on Linux) like the teaching loop, only someone else's.
``loop.add_reader(sock, callback)`` adds our socket to the descriptors it waits on, so
one thread, one ``epoll_wait``, serves both the keyboard and the server: when the
socket is readable, ``LoopWatcher.on_readable`` runs the same ``steps.receive`` as the
teaching loop (``client/terminal.py``), between two keystrokes. A timer task does what
the teaching loop's timeout does (keep-alive, reconnect). Sending never waits: what
the kernel does not take goes when the socket is writable (``loop.add_writer``). The
one blocking call, a reconnect's ``connect()`` (up to 10 s to an unreachable host),
runs in the loop's executor so the keyboard stays live.

Pasting a block (bracketed paste) or Alt/Esc+Enter puts a line feed in the input:
Enter then sends the whole block as ONE message, indentation kept.

Lines are written with ``patch_stdout(raw=True)``: prompt_toolkit erases the prompt,
our line goes out, the prompt is drawn again below it. Raw, because our own colours
and the cursor moves that update a sent message's mark must pass; everything from
the network in those lines went through ``sanitize.inert`` first, so no escape
sequence of a peer's ever reaches the terminal.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.utils import get_cwidth

from .chat import COMMANDS, GROUP_COMMANDS, ChatClient, plural
from .files import history_file
from .sanitize import inert_name
from .steps import Connector, Outcome, due_to_reconnect, keepalive, lost, receive, reconnected, transmit
from .view import Style

TICK = 0.25  #: seconds between the timer task's rounds (keep-alive, reconnect, status bar)
QUIT_WAIT = 3.0  #: seconds /quit waits for the server to confirm what was sent
SGR = {  # Select Graphic Rendition: our own colours, never the network's
    Style.SYSTEM: "\x1b[36m",  # cyan
    Style.ERROR: "\x1b[31m",  # red
    Style.SELF: "\x1b[32m",  # green
    Style.OTHER: "",
    Style.ANNOUNCEMENT: "\x1b[1;33m",  # bold yellow
    Style.DATE: "\x1b[2m",  # dim
}
HIGHLIGHT, RESET = "\x1b[1;33m", "\x1b[0m"  # your name in others' messages: bold yellow


class LiveView:
    """Lines above the prompt; a sent message's mark (· ✓ ✓✓) rewritten in place.

    It counts the terminal rows it has printed, so it knows how far up a line is: the
    mark of a line still on the screen (and printed at the current width) is rewritten
    with a cursor move; one that has scrolled away stays as it was."""

    def __init__(self, color: bool, me: str) -> None:
        self.color = color
        self.me = re.compile(rf"\b{re.escape(me)}\b") if me else None
        self.rows = 0
        self.lines: dict[int, tuple[int, int]] = {}  # key -> (its first row, columns when printed)
        self.later: set[int] = set()  # keys of sent messages of several rows, not shown until stored

    def show(self, human: str, /, *, style: Style = Style.SYSTEM, key: int | None = None, **event: object) -> None:
        if not human:
            return
        columns, height = shutil.get_terminal_size()
        rows = sum(max(1, math.ceil(get_cwidth(line) / columns)) for line in human.split("\n"))
        if key is not None and key in self.lines:
            first, at_columns = self.lines[key]
            up = self.rows - first
            if at_columns == columns and 0 < up < height - 3:
                # a line of one row stays one row: rewritten whole (a stored group message gains
                # its number, #lab/5); else only the mark, two columns in every state
                line = self._paint(human, style) + "\x1b[K" if rows == 1 else self._paint(human[:2], style)
                self._write(f"\x1b[{up}A\r{line}\x1b[{up}B\r")
            return
        if key is not None and key in self.later:  # a message of several rows: shown once stored
            self.later.discard(key)
        elif key is not None and rows > 1:
            # Not rewritten in place: just after the input area of a multi-line message is
            # erased, the cursor is not always where the count says (a pty test caught
            # the mark landing two rows low), so it is shown once, when stored, with ✓.
            self.later.add(key)
            return
        elif key is not None:
            self.lines[key] = (self.rows, columns)
        self.rows += rows
        self._write(self._paint(human, style) + "\n")

    def _paint(self, text: str, style: Style) -> str:
        if not self.color:
            return text
        if style is Style.OTHER and self.me is not None:
            text = self.me.sub(lambda m: HIGHLIGHT + m.group() + RESET, text)
        start = SGR[style]
        return start + text + RESET if start else text

    @staticmethod
    def _write(data: str) -> None:
        sys.stdout.write(data)  # under patch_stdout: printed above the prompt
        sys.stdout.flush()


class ChatCompleter(Completer):
    """Tab: commands, then user names after /msg, /to and /history, and ``#group`` names after
    the group commands, /to and /history, and at the start of a line."""

    def __init__(self, chat: ChatClient) -> None:
        self.chat = chat

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if text.startswith("#") and " " not in text:  # #GROUP TEXT
            yield from self._groups(text)
            return
        if " " not in text:
            for command in COMMANDS:
                if command.startswith(text):
                    yield Completion(command + " ", start_position=-len(text), display=command)
            return
        command, _, arg = text.partition(" ")
        if command in GROUP_COMMANDS and " " not in arg and arg.startswith("#"):
            yield from self._groups(arg)
        elif command in ("/msg", "/to", "/history") and " " not in arg:
            for name in sorted(self.chat.known):
                if name.startswith(arg.lower()) and name != self.chat.session.user:
                    yield Completion(name + " ", start_position=-len(arg), display=inert_name(name))

    def _groups(self, arg: str) -> Iterable[Completion]:
        """``#group`` names the client has seen (GroupInfo, GroupListReply, deliveries)."""
        for name in sorted(set(self.chat.groups.values())):
            if ("#" + name).startswith(arg.lower()):
                yield Completion("#" + name + " ", start_position=-len(arg), display=inert_name("#" + name))


class Ending:
    """How the run ends: ``stop(fatal)`` from a socket callback, the timer task or a signal."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.fatal = False  #: a refused login, a broken stream, an untrusted certificate: status 1

    def stop(self, fatal: bool) -> None:
        self.fatal = self.fatal or fatal
        self.event.set()


class LoopWatcher:
    """``Watcher`` for the asyncio loop: a socket read by ``on_readable`` when ready."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chat: ChatClient, ending: Ending) -> None:
        self.loop, self.chat, self.ending = loop, chat, ending

    def register(self, fd: int) -> None:
        self.loop.add_reader(fd, self.on_readable)

    def unregister(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)

    def send(self) -> None:
        """Send what the session queued, never waiting: what the kernel does not take now
        goes when the socket is writable (``add_writer``), so typing never stalls."""
        chat = self.chat
        if not chat.online or chat.sock is None:
            return
        if not transmit(chat, blocking=False):
            lost(chat, self)
        elif chat.backlog:
            self.loop.add_writer(chat.sock.fileno(), self.send)
        else:
            self.loop.remove_writer(chat.sock.fileno())

    def on_readable(self) -> None:
        """Between two keystrokes: the teaching loop's receive step, then send what it queued."""
        outcome = receive(self.chat)
        if outcome is Outcome.FATAL:
            assert self.chat.sock is not None
            self.unregister(self.chat.sock.fileno())
            self.chat.sock.close()
            self.chat.online = False
            self.ending.stop(fatal=True)
        elif outcome is Outcome.LOST:
            lost(self.chat, self)
        else:
            self.send()


def run(chat: ChatClient, connector: Connector) -> int:
    """Run until /quit, Ctrl-D, or a fatal error; return the exit status."""
    return asyncio.run(_main(chat, connector))


async def _main(chat: ChatClient, connector: Connector) -> int:
    assert chat.sock is not None
    loop = asyncio.get_running_loop()
    ending = Ending()
    watcher = LoopWatcher(loop, chat, ending)
    watcher.register(chat.sock.fileno())
    for signum in (signal.SIGTERM, signal.SIGHUP):  # a closed window or a kill: leave as /quit does
        loop.add_signal_handler(signum, ending.stop, False)
    prompt: PromptSession[str] = PromptSession(
        message=lambda: FormattedText([("bold", f"{inert_name(chat.partner)}> " if chat.partner else "> ")]),
        history=FileHistory(str(history_file(chat.server_key, chat.session.user or ""))),
        completer=ChatCompleter(chat),
        complete_while_typing=False,
        key_bindings=_keys(),
        bottom_toolbar=lambda: _status(chat),
        refresh_interval=1.0,
        erase_when_done=True,  # the sent line replaces what was typed
    )
    with patch_stdout(raw=True):
        ticker = asyncio.create_task(_tick(chat, connector, watcher, ending, prompt))
        typing = asyncio.create_task(_type(chat, prompt, watcher))
        await asyncio.wait([asyncio.create_task(ending.event.wait()), typing], return_when=asyncio.FIRST_COMPLETED)
        if prompt.app.is_running:
            prompt.app.exit(result="")
        typing.cancel()  # and wait for it: lines still on their way to the screen (the error
        await asyncio.gather(typing, return_exceptions=True)  # that ended the run) must get there
        if not ending.fatal:
            await _settle(chat)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        await asyncio.sleep(0.3)  # patch_stdout writes every 0.2 s: the last lines go out first
    waiting = chat.waiting()
    chat.keep_waiting()
    if waiting:
        print(f"{plural(len(waiting), 'message')} not yet stored by the server: kept, and sent with your "
              "next connection (msg)", file=sys.stderr)  # fmt: skip
    if chat.online and chat.sock is not None:
        chat.sock.close()
    return 1 if ending.fatal else 0


async def _type(chat: ChatClient, prompt: PromptSession[str], watcher: LoopWatcher) -> None:
    """Read what the user types until /quit or Ctrl-D."""
    while not chat.input_done:
        try:
            text = await prompt.prompt_async()
        except KeyboardInterrupt:
            continue  # Ctrl-C: the line is dropped, as in a shell
        except EOFError:
            break  # Ctrl-D
        chat.on_line(text)
        watcher.send()


async def _tick(
    chat: ChatClient, connector: Connector, watcher: LoopWatcher, ending: Ending, prompt: PromptSession[str]
) -> None:
    """What the teaching loop's timeout does: keep-alive, and reconnecting when due."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(TICK)
        if not chat.online:
            due = due_to_reconnect(chat)
            if due:
                try:  # the one blocking call, in the executor: the keyboard stays live
                    sock: socket.socket | OSError = await loop.run_in_executor(None, connector.open)
                except OSError as exc:
                    sock = exc
                connector.show_note()  # here, on the loop's thread: the view is not thread-safe
                if not reconnected(chat, sock, watcher):
                    ending.stop(fatal=True)
        keepalive(chat)
        watcher.send()
        prompt.app.invalidate()  # the status bar's countdown


async def _settle(chat: ChatClient) -> None:
    """After /quit: a moment for the receipts of what was just sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUIT_WAIT
    while chat.online and chat.unacknowledged() and loop.time() < deadline:
        await asyncio.sleep(0.05)


def _keys() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("escape", "enter")  # Alt+Enter or Esc then Enter: a new line in the same message
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return keys


def _status(chat: ChatClient) -> FormattedText:
    """The bottom bar: who you are, the connection, the conversation, unread counts."""
    parts = [("bold", f" {inert_name(chat.session.user or '?')}@{chat.server_key} ")]
    if chat.online and chat.ever_ready:
        parts.append(("", " connected "))
    else:
        wait = max(0.0, chat.retry_at - time.monotonic())
        waiting = len(chat.waiting())
        queued = f", {plural(waiting, 'message')} to send" if waiting else ""
        parts.append(("bg:ansired fg:ansiwhite", f" not connected: retrying in {wait:.0f} s{queued} "))
    if chat.unread:
        unread = ", ".join(f"{inert_name(user)} {count}" for user, count in sorted(chat.unread.items()))
        parts.append(("bold", f" unread: {unread} "))
    parts.append(("", " Tab completes, Alt+Enter: new line, /help "))
    return FormattedText(parts)


def color_wanted(config_color: bool) -> bool:
    """Colours unless NO_COLOR is set (https://no-color.org) or the config says no."""
    return config_color and not os.environ.get("NO_COLOR")
