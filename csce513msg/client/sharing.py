"""Files in ``msg`` (protocol 1.6): ``/sendfile``, ``/get``, ``/files``, ``/cancel``.

Plain functions of the ``ChatClient``, as ``groups.py`` is. A file offered in any
conversation gets a number (``/get 3``); one up to ``--auto-download`` bytes is fetched
as it arrives. Transfers run inside the chat's own loop: an ``Upload`` or ``Download``
(``client/transfer.py``) queues a few requests on the session each time the server
answers, so typing and chatting go on while they move. Each shows one progress line
(bytes, rate, time left), rewritten in place by the interactive view, printed at the
start and the end by the plain one.

A received file is checked (size and SHA-256) before it is shown as received, under a
name made safe (``downloads.safe_name``) in the downloads directory, never over an
existing file. A lost connection pauses every transfer; after the next login each
goes on from where it stopped (an upload by its id, a download from its partial file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..crypto.device import E2EError
from ..protocol import Deliver, Message, Offer, RemoteProtocolError, TargetKind, parse_offer
from ..units import show_size
from .downloads import PartialDownload, TransferError
from .files import TransferList
from .privacy import post_offer, send_private_file
from .sanitize import inert, inert_name
from .sealed import Sealing
from .transfer import Download, Upload
from .view import Style
from .words import split_target

if TYPE_CHECKING:
    from .chat import ChatClient

FILE_COMMANDS = ("/sendfile", "/get", "/files", "/cancel")
HELP_FILES = """  /sendfile USER|#GROUP PATH  send a file (it is kept on the server for the recipients)
  /get [N]           fetch file N (default: the newest not fetched); /files lists them
  /files             files offered, received and on their way
  /cancel N          stop transfer N (an upload of yours is removed from the server)"""
AUTO_DOWNLOAD = 10 << 20  #: ``msg --auto-download``'s default: a file up to this is fetched as it arrives
PROGRESS_EVERY = 0.25  #: seconds between two rewrites of a progress line
#: downloads at once: each keeps ``transfer.GETS_IN_FLIGHT`` (2) FileGets asked, and the server
#: takes at most 8 per connection; the others wait their turn ("queued")
MAX_DOWNLOADS = 3


@dataclass(slots=True)
class Shared:
    """A file in a conversation, as this run of ``msg`` numbers it."""

    number: int
    offer: Offer
    sender: str
    where: str  #: the conversation: a user, or #group
    state: str = "offered"  #: offered, sending, receiving, paused, received, sent, failed, cancelled
    path: Path | None = None  #: sending: the file sent; received: where it is
    transfer: Upload | Download | None = None
    started: float = 0.0
    shown: float = 0.0  #: when its progress line was last written
    key: int = 0  #: its progress line (a live view rewrites it)
    kind: TargetKind = TargetKind.USER
    #: an encrypted upload's key and salt (1.7): a resume on this run re-makes the same ciphertext.
    #: Never written to disk: an encrypted transfer does not outlive the run (``keep``)
    sealing: Sealing | None = None


@dataclass(slots=True)
class Sharing:
    """A run's files: where they land, what is fetched by itself, every file seen."""

    downloads: Path
    auto: int = AUTO_DOWNLOAD
    items: list[Shared] = field(default_factory=list)
    kept: TransferList | None = None  #: where unfinished transfers are kept across runs (None: nowhere)
    restored: bool = False  #: the last run's unfinished transfers were taken back

    def by_upload(self, upload_id: str) -> Shared | None:
        return next((s for s in self.items if s.offer.upload_id == upload_id), None)

    def active(self) -> list[Shared]:
        return [s for s in self.items if s.transfer is not None]


def file_command(chat: ChatClient, cmd: str, rest: str) -> None:
    sharing = chat.sharing
    if cmd == "/files":
        return list_files(chat)
    if cmd == "/sendfile":
        to, _, path = rest.partition(" ")
        if not to or not path.strip():
            return chat.local_error("usage: /sendfile USER|#GROUP PATH")
        return send_file(chat, to, Path(path.strip()).expanduser())
    number = rest.strip()
    if cmd == "/get" and not number:
        waiting = [s for s in sharing.items if s.state in ("offered", "failed") and s.sender != chat.session.user]
        if not waiting:
            return chat.local_error("no file waits to be fetched: /files lists them")
        return fetch(chat, waiting[-1])
    if not number.isdigit() or not 1 <= int(number) <= len(sharing.items):
        return chat.local_error(f"usage: {cmd} N, a file's number from /files")
    item = sharing.items[int(number) - 1]
    if cmd == "/get":
        return fetch(chat, item)
    if item.transfer is None and item.state != "queued":
        return chat.local_error(f"file {item.number} is not on its way")
    transfer = item.transfer
    if transfer is not None:
        transfer.cancel()
        if transfer.done:  # else an upload the server has not named yet: its answer cancels it
            item.transfer = None
    item.state = "cancelled"
    keep(chat)
    chat.view.show(f"file {item.number} ({inert_name(item.offer.name)}): cancelled", event="file", state="cancelled",
                   number=item.number)  # fmt: skip


def send_file(chat: ChatClient, to: str, path: Path) -> None:
    if (where := chat.as_conversation(to)) is None or not files_served(chat):
        return
    if not path.is_file():
        return chat.local_error(f"/sendfile: {inert(str(path))} is not a file")
    welcome = chat.session.welcome
    size = path.stat().st_size
    if welcome is not None and size > welcome.max_file:
        return chat.local_error(
            f"/sendfile: {show_size(size)}, over the server's largest ({show_size(welcome.max_file)})"
        )
    if not chat.connected("/sendfile"):
        return
    if send_private_file(chat, where, path):  # end to end: encrypted, once the key directory answered
        return
    start_upload(chat, where, path, None)


def start_upload(chat: ChatClient, where: str, path: Path, sealing: Sealing | None) -> None:
    """Upload ``path`` for ``where`` (encrypted, with ``sealing``: only its ciphertext leaves)."""
    kind, target = split_target(where)
    try:
        upload = Upload(chat.session, path, target, kind, sealing=sealing)
    except OSError as exc:
        return chat.local_error(f"/sendfile: cannot read {inert(str(path))}: {exc.strerror or exc}")
    item = _add(chat, upload.offer(), chat.session.user or "", where, "sending")
    item.path, item.transfer, item.kind, item.sealing = path, upload, kind, upload.sealing
    _progress(chat, item, force=True)
    keep(chat)
    return None


def fetch(chat: ChatClient, item: Shared) -> None:
    if item.state in ("receiving", "received", "sending") or item.transfer is not None:
        return chat.local_error(f"file {item.number} is {item.state} already")
    if not chat.connected("/get") or not files_served(chat):
        return
    if sum(isinstance(s.transfer, Download) for s in chat.sharing.items) >= MAX_DOWNLOADS:
        if item.state != "queued":
            item.state = "queued"
            chat.view.show(f"file {item.number} waits its turn ({MAX_DOWNLOADS} downloads at once)", event="file",
                           state="queued", number=item.number)  # fmt: skip
        return
    offer = item.offer
    try:
        size, sha256 = offer.file_size, offer.file_sha256  # an encrypted file's: the plaintext's
        partial = PartialDownload.open(chat.sharing.downloads, offer.upload_id, offer.name, size, sha256)
    except (OSError, TransferError, ValueError) as exc:
        return chat.local_error(f"/get {item.number}: {inert(str(exc))}")
    item.transfer = Download(chat.session, offer, partial)
    item.state = "receiving"
    _progress(chat, item, force=True)
    keep(chat)


def files_served(chat: ChatClient) -> bool:
    if chat.session.has_files or not chat.online:
        return True
    chat.local_error("this server keeps no files (it needs protocol 1.6 and files on)")
    return False


def offer_delivered(chat: ChatClient, msg: Deliver, who: str, prefix: str) -> None:
    """A file offer in a conversation: its line, its number, and (small enough) its download."""
    try:
        offer = parse_offer(msg.body)
    except RemoteProtocolError as exc:
        chat.view.show(f"{prefix}! a malformed file offer ({inert(exc.message)})", style=Style.ERROR, event="error",
                       code="offer", message=exc.message, request=0)  # fmt: skip
        return
    item = chat.sharing.by_upload(offer.upload_id)
    if item is None:
        where = chat.conversation_of(msg.stream)
        mine = msg.sender == chat.session.user
        item = _add(chat, offer, msg.sender, where, "sent" if mine else "offered")
    auto = not msg.request_id and item.state == "offered" and offer.size <= chat.sharing.auto  # not a History page
    hint = f"  /get {item.number}" if item.state == "offered" and not auto else ""
    chat.view.show(f"{prefix}[file {item.number}] {_short(offer.name, 60)} ({show_size(offer.size)}){hint}",
                   style=Style.OTHER if msg.sender != chat.session.user else Style.SELF, event="offer",
                   number=item.number, sender=msg.sender, name=offer.name, size=offer.size, upload=offer.upload_id,
                   stream=msg.stream, history=bool(msg.request_id))  # fmt: skip
    if auto and chat.session.has_files:
        fetch(chat, item)


def transfer_message(chat: ChatClient, msg: Message) -> bool:
    """A reply of a transfer's (FileState, FileData, or its Error): moved on; True if it was one."""
    for item in chat.sharing.active():
        transfer = item.transfer
        assert transfer is not None
        named = isinstance(transfer, Upload) and bool(transfer.upload_id)
        if not transfer.handle(msg):
            continue
        newly_named = isinstance(transfer, Upload) and bool(transfer.upload_id) and not named
        if transfer.done:
            _finished(chat, item, transfer)
            for waiting in [s for s in chat.sharing.items if s.state == "queued"]:
                fetch(chat, waiting)  # its turn, if a place is free
        else:
            _progress(chat, item)
        if transfer.done or newly_named:
            keep(chat)  # what a later run would resume changed
        for other in chat.sharing.active():  # room in the connection's window: every upload may go on
            if isinstance(other.transfer, Upload):
                other.transfer.fill()
        return True
    return False


def paused(chat: ChatClient) -> None:
    """The connection is lost: every transfer waits for the next login."""
    for item in chat.sharing.active():
        transfer = item.transfer
        if isinstance(transfer, Download):
            transfer.partial.close()
        elif isinstance(transfer, Upload):
            transfer.close()
            item.offer = transfer.offer()  # its id, if the server gave one: the resume asks for it
        item.transfer = None
        item.state = "paused"
    keep(chat)


def resume_all(chat: ChatClient) -> None:
    """Logged in again: every paused transfer goes on from where it stopped (after the first
    login of a run, those the last run left unfinished too)."""
    if not chat.sharing.restored:
        chat.sharing.restored = True
        _restore(chat)
    for item in chat.sharing.items:
        if item.state != "paused":
            continue
        if item.path is not None and item.sender == chat.session.user:  # ours: an upload (by id, if it had one)
            try:
                upload = Upload(
                    chat.session, item.path, *_target(item), upload_id=item.offer.upload_id, sealing=item.sealing
                )
            except OSError as exc:
                item.state = "failed"
                chat.local_error(f"file {item.number}: cannot read it again: {exc.strerror or exc}")
                continue
            item.transfer, item.state = upload, "sending"
        else:
            item.state = "offered"
            fetch(chat, item)


def keep(chat: ChatClient) -> None:
    """Write the unfinished transfers down, so the next run of ``msg`` can resume them."""
    sharing = chat.sharing
    if sharing.kept is None:
        return
    rows: list[dict[str, Any]] = []
    for s in sharing.items:
        if s.state not in ("sending", "receiving", "paused", "queued") or s.sealing or s.offer.encrypted:
            continue  # done; or encrypted: its key stays in memory, so it resumes on this run only
        upload_id = s.transfer.upload_id if isinstance(s.transfer, Upload) else s.offer.upload_id
        row = {"upload": upload_id, "name": s.offer.name, "size": s.offer.size, "sha256": s.offer.sha256,
               "sender": s.sender, "where": s.where, "group": s.kind == TargetKind.GROUP}  # fmt: skip
        if s.path is not None and s.sender == chat.session.user and s.state != "receiving":
            row["path"] = str(s.path)  # an upload
        rows.append(row)
    sharing.kept.save(rows)


def _restore(chat: ChatClient) -> None:
    """The last run's unfinished transfers, as paused items (``resume_all`` resumes them)."""
    if chat.sharing.kept is None:
        return
    for row in chat.sharing.kept.load():
        try:
            offer = Offer(str(row["upload"]), str(row["name"]), int(row["size"]), str(row["sha256"]))
            sender, where, path = str(row["sender"]), str(row["where"]), row.get("path")
        except (KeyError, TypeError, ValueError):
            continue  # a file edited by hand: that entry is dropped
        if offer.upload_id and chat.sharing.by_upload(offer.upload_id) is not None:
            continue
        item = _add(chat, offer, sender, where, "paused")
        item.kind = TargetKind.GROUP if row.get("group") else TargetKind.USER
        item.path = Path(path) if isinstance(path, str) and path else None
        chat.view.show(f"file {item.number} {_short(offer.name, 32)}: unfinished last time, going on", event="file",
                       state="paused", number=item.number)  # fmt: skip


def list_files(chat: ChatClient) -> None:
    items = chat.sharing.items
    if not items:
        chat.view.show("no files yet", event="files", files=[])
        return
    lines = []
    for s in items:
        t = s.transfer
        done = f" {show_size(_done(t))}/{show_size(s.offer.size)}" if t is not None else f" {show_size(s.offer.size)}"
        where = f" -> {s.path}" if s.state == "received" and s.path else ""
        group = f" in {inert_name(s.where)}" if s.where.startswith("#") else ""
        who = "you" if s.sender == chat.session.user else inert_name(s.sender)
        lines.append(f"  {s.number}. {_short(s.offer.name, 60)} {s.state}{done} (from {who}{group}){inert(where)}")
    chat.view.show("files:\n" + "\n".join(lines), event="files",
                   files=[{"number": s.number, "name": s.offer.name, "state": s.state} for s in items])  # fmt: skip


def _add(chat: ChatClient, offer: Offer, sender: str, where: str, state: str) -> Shared:
    items = chat.sharing.items
    item = Shared(len(items) + 1, offer, sender, where, state, started=time.monotonic(), key=chat.new_key())
    items.append(item)
    return item


def _finished(chat: ChatClient, item: Shared, transfer: Upload | Download) -> None:
    item.transfer = None
    if isinstance(transfer, Upload):
        if transfer.error is not None and item.state == "cancelled":
            return  # said when /cancel was typed
        if transfer.error is not None:
            item.state = "failed"
            chat.view.show(f"! file {item.number} ({inert_name(item.offer.name)}) not sent: "
                           f"{inert(transfer.error.message)}", style=Style.ERROR, event="file", state="failed",
                           number=item.number, message=transfer.error.message)  # fmt: skip
            return
        item.offer = transfer.offer()
        item.state = "sent"
        _progress(chat, item, force=True)
        try:
            rid = post_offer(chat, item.where, item.offer, transfer.kind)
        except E2EError as exc:
            return chat.local_error(f"file {item.number}: its offer was not sent: {inert(str(exc))}")
        chat.sending(rid, item.where, f"[file {item.number}] {item.offer.name} ({show_size(item.offer.file_size)})")
        return
    if transfer.path is None:
        item.state = "failed"
        chat.view.show(f"! file {item.number} ({inert_name(item.offer.name)}) not received: {inert(transfer.error)}",
                       style=Style.ERROR, event="file", state="failed", number=item.number,
                       message=transfer.error)  # fmt: skip
        return
    item.state, item.path = "received", transfer.path
    _progress(chat, item, force=True)
    chat.view.show(f"file {item.number} is in {inert(str(transfer.path))}", event="saved", number=item.number,
                   path=str(transfer.path))  # fmt: skip


def _progress(chat: ChatClient, item: Shared, force: bool = False) -> None:
    """The transfer's line: in place (a live view), or at its start and end only. It stays short
    (a live view rewrites a line in place only while it fits one row of the terminal)."""
    now = time.monotonic()
    if not force and (not chat.live or now - item.shown < PROGRESS_EVERY):
        return
    item.shown = now
    size = item.offer.file_size  # the file's own bytes (an encrypted one's ciphertext is a little longer)
    moved = _done(item.transfer)
    if item.offer.encrypted and item.offer.size:
        moved = moved * size // item.offer.size
    done = size if item.state in ("received", "sent") else moved
    rate = done / max(now - item.started, 1e-3)
    left = f", {max(0.0, (size - done) / rate):.0f} s left" if rate > 0 and done < size else ""
    bar = _bar(done, size)
    human = f"file {item.number} {_short(item.offer.name, 32)}: {item.state} {bar} {show_size(done)}/{show_size(size)}"
    human += f", {show_size(int(rate))}/s{left}" if item.state in ("sending", "receiving") else ""
    chat.view.show(human, style=Style.SYSTEM, key=item.key if chat.live else None, event="file", state=item.state,
                   number=item.number, done=done, size=size, path=str(item.path or ""))  # fmt: skip


def _short(name: str, most: int) -> str:
    """A file name from the network, inert and at most ``most`` characters (an offer may carry 1,024)."""
    return inert_name(name if len(name) <= most else name[: most - 1] + "…")


def _bar(done: int, size: int, width: int = 20) -> str:
    filled = width if not size else done * width // size
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _done(transfer: Upload | Download | None) -> int:
    if isinstance(transfer, Upload):
        return transfer.acked
    if isinstance(transfer, Download):
        return transfer.received
    return 0


def _target(item: Shared) -> tuple[str, TargetKind]:
    return item.where.removeprefix("#"), item.kind
