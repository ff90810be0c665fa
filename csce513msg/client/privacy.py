"""End-to-end encryption in ``msg``: sending through the key directory, the commands, the warnings.

The session (``client/secure.py``) encrypts and decrypts; what ``msg`` adds is the waiting.
A message to someone whose devices this connection has not read yet cannot be encrypted at
once: it waits here while ``KeyFetch`` asks the directory (for a group: ``GroupMembers``
first, then the keys of each member), and goes when the answers are in. The same for what
was typed while offline. Nothing leaves in clear for a conversation that has keys.

What it shows: the conversations that are end-to-end encrypted (``/to``, and a lock on each
message line), a contact's key change or new device (then sending to it waits for ``/trust``),
and a message that could not be opened (a notice without content). ``/fingerprint USER``
prints the safety number to compare in person, as digits and as words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..crypto.device import E2EError, NewMembersError, NoKeysError, UntrustedError
from ..protocol import ANNOUNCEMENTS, Error, GroupMembersReply, KeyBundles, Message, Offer, TargetKind
from ..protocol.names import fold_name
from .files import Unsent
from .sanitize import inert, inert_name
from .sealed import Sealing
from .view import Style
from .words import plural, split_target

if TYPE_CHECKING:
    from .chat import ChatClient
    from .secure import Secure

LOCK = "🔒"  #: marks an end-to-end message's line
FINGERPRINT = "/fingerprint "  #: what a KeyFetch asked for /fingerprint waits for (in ``Privacy.asked``)
E2E_COMMANDS = ("/fingerprint", "/trust")
HELP_E2E = """  /fingerprint USER  the safety number you and USER compare, to know no one is in between
  /trust USER        send to USER again after their keys changed (compare /fingerprint first)
  /trust #GROUP      post to GROUP again after members joined (check who they are first)"""


@dataclass(slots=True)
class Privacy:
    """What waits for the key directory, per conversation (``bob``, ``#lab``)."""

    waiting: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  #: to -> [(text, client msg id)]
    #: KeyFetch / GroupMembers request id -> the conversation it is for (or ``FINGERPRINT`` USER)
    asked: dict[int, str] = field(default_factory=dict)
    members: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  #: "#g" -> (stream, users)
    told: set[int] = field(default_factory=set)  #: message ids whose notice was shown
    repairing: set[str] = field(default_factory=set)  #: users a session repair waits for their keys
    untrusted: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  #: to -> messages held for /trust
    files: dict[str, list[Path]] = field(default_factory=dict)  #: to -> files to send once its keys are read


def secure_of(chat: ChatClient) -> Secure | None:
    return chat.session.secure


def send_private(chat: ChatClient, to: str, text: str, client_msg_id: int = 0) -> bool:
    """Send ``text`` to ``to`` end to end if its conversation needs the directory first; True if
    taken (sent now, or waiting for keys), False for the plain path (no end-to-end here)."""
    if not _private(chat, to):
        return False
    chat.privacy.waiting.setdefault(to, []).append((text, client_msg_id or chat.session.new_client_msg_id()))
    _ask(chat, to)
    return True


def send_private_file(chat: ChatClient, to: str, path: Path) -> bool:
    """As ``send_private``, for a file: it is uploaded encrypted once the keys are read (in
    clear, for a conversation that has none)."""
    if not _private(chat, to):
        return False
    chat.privacy.files.setdefault(to, []).append(path)
    _ask(chat, to)
    return True


def post_offer(chat: ChatClient, to: str, offer: Offer, kind: TargetKind) -> int:
    """The message that offers an uploaded file: end to end for an encrypted one (to a group:
    under our sender key, to the members read before the upload)."""
    target = split_target(to)[1]
    if offer.encrypted and kind == TargetKind.GROUP:
        stream, users = chat.privacy.members[to]
        return chat.session.send_group_offer_e2e(stream, list(users), offer)
    return chat.session.send_offer(target, offer, kind)


def _private(chat: ChatClient, to: str) -> bool:
    """Whether what goes to ``to`` passes through here (end-to-end on, and not the announcements)."""
    kind, target = split_target(to)
    announcements = kind == TargetKind.GROUP and target in (ANNOUNCEMENTS, "announcements")
    return secure_of(chat) is not None and chat.session.has_e2e and not announcements


def _ask(chat: ChatClient, to: str) -> None:
    """Read what ``to``'s conversation needs from the directory (a group: its members first), or,
    if that is known on this connection, send what waits for it now."""
    secure, p = secure_of(chat), chat.privacy
    assert secure is not None
    if any(c == to for c in p.asked.values()):
        return  # its answers are on their way
    kind, target = split_target(to)
    if kind == TargetKind.GROUP:
        p.asked[chat.session.group_members(target)] = to
        return
    for user in {target, secure.device.user} - secure.fetched:
        p.asked[chat.session.fetch_keys(user)] = to
    if not any(c == to for c in p.asked.values()):
        _flush(chat, to)


def privacy_message(chat: ChatClient, msg: Message) -> bool:
    """A message for the waiting: True if it was one of our questions' answers (not shown)."""
    p = chat.privacy
    to = p.asked.pop(msg.request_id, None) if msg.request_id else None
    if to is None:
        _show_news(chat)
        return False
    secure = secure_of(chat)
    assert secure is not None
    if isinstance(msg, Error):  # no such user or group: shown as the server said it, nothing sent
        dropped = p.waiting.pop(to, [])
        chat.show_error(msg)
        if dropped:
            chat.view.show(f"  ({plural(len(dropped), 'message')} to {inert_name(to)} not sent)", style=Style.ERROR,
                           event="not_sent", to=to, count=len(dropped))  # fmt: skip
        chat.run_held()
        return True
    if isinstance(msg, GroupMembersReply):
        p.members[to] = (msg.stream, msg.users)
        secure.group_named(to.removeprefix("#"), msg.stream)
        for user in {*msg.users, secure.device.user} - secure.fetched:
            p.asked[chat.session.fetch_keys(user)] = to
    elif not isinstance(msg, KeyBundles):
        return False
    _show_news(chat)
    if not any(c == to for c in p.asked.values()):
        if to.startswith(FINGERPRINT):
            e2e_command(chat, "/fingerprint", to.removeprefix(FINGERPRINT))
        else:
            _flush(chat, to)
    chat.run_held()  # what was typed after it, in order, once nothing waits for the directory
    return True


def lost(chat: ChatClient) -> None:
    """The connection is gone with messages still waiting for the directory: they join the
    queue (sent, sealed anew, after the next login); its answers will never come."""
    p = chat.privacy
    for to, items in p.waiting.items():
        chat.queued += [Unsent(to, text, cmid) for text, cmid in items]
    p.waiting.clear()
    p.asked.clear()
    p.repairing.clear()


def _flush(chat: ChatClient, to: str) -> None:
    """Send what waits for ``to``: encrypted (or, for a conversation that never had keys, in clear)."""
    secure = secure_of(chat)
    assert secure is not None
    kind, target = split_target(to)
    if to in chat.privacy.repairing:
        chat.privacy.repairing.discard(to)
        try:
            chat.session.send_repair(to)
        except E2EError:
            pass  # nothing to repair with (no keys now): their next message says more
    for path in chat.privacy.files.pop(to, []):
        _send_file(chat, secure, to, path)
    for text, cmid in chat.privacy.waiting.pop(to, []):
        try:
            if kind == TargetKind.GROUP:
                stream, users = chat.privacy.members[to]
                if secure.wants_e2e_group(stream, users):
                    rid = chat.session.send_group_e2e(stream, list(users), text, cmid)
                else:
                    rid = chat.session.send_text(target, text, kind, cmid)
            else:
                rid = chat.session.send_text(target, text, kind, cmid)
        except NewMembersError as exc:  # held: /trust #group sends it, once the newcomers were checked
            chat.privacy.untrusted.setdefault(to, []).append((text, cmid))
            chat.view.show(f"! held, not sent: {inert_name(to)} has new members since your last post: "
                           f"{inert_name(', '.join(exc.users))} (/trust {inert_name(to)} sends it)",
                           style=Style.ERROR, event="held", to=to, users=exc.users)  # fmt: skip
            continue
        except UntrustedError as exc:  # held: /trust sends it, after the safety numbers were compared
            chat.privacy.untrusted.setdefault(to, []).append((text, cmid))
            chat.view.show(f"! held, not sent: {inert(str(exc))} (/fingerprint {inert_name(exc.user)}, then "
                           f"/trust {inert_name(exc.user)} sends it)", style=Style.ERROR, event="held", to=to,
                           user=exc.user)  # fmt: skip
            continue
        except E2EError as exc:
            chat.local_error(f"not sent to {inert_name(to)}: {inert(str(exc))}")
            continue
        chat.sent_now(rid, to, text)


def _send_file(chat: ChatClient, secure: Secure, to: str, path: Path) -> None:
    """Upload a file that waited for the keys: encrypted if the conversation is end to end."""
    from .sharing import start_upload  # (sharing calls in here too)

    kind, target = split_target(to)
    try:
        if kind == TargetKind.GROUP:
            stream, users = chat.privacy.members[to]
            private = secure.wants_e2e_group(stream, users)
            if private:  # refused now, before any byte: changed keys, new members
                secure.device.check_group(stream, list(users))
        else:
            private = secure.wants_e2e(target)
            if private:
                secure.device.check_trusted([target])
    except E2EError as exc:
        return chat.local_error(f"/sendfile {inert(path.name)}: not sent: {inert(str(exc))} (then /sendfile again)")
    start_upload(chat, to, path, Sealing.fresh() if private else None)
    return None


def _show_news(chat: ChatClient) -> None:
    """The session's warnings (a key change, a new device, a refused bundle), once each."""
    secure = secure_of(chat)
    if secure is None:
        return
    warnings, secure.warnings = secure.warnings, []
    for text in warnings:
        chat.view.show(f"! {inert(text)}: compare /fingerprint before you /trust", style=Style.ERROR,
                       event="key_warning", message=text)  # fmt: skip


def notice(chat: ChatClient, message_id: int, sender: str) -> bool:
    """A message that arrived encrypted and could not be opened: True (and a notice, once) if so."""
    secure = secure_of(chat)
    if secure is None or message_id not in secure.notices:
        return False
    if message_id not in chat.privacy.told:
        chat.privacy.told.add(message_id)
        why = secure.notices[message_id]
        chat.view.show(f"! a message from {inert_name(sender)} could not be decrypted ({inert(why)})",
                       style=Style.ERROR, event="undecryptable", sender=sender, id=message_id, reason=why)  # fmt: skip
    for user in secure.repairs:  # a new session with them: their client learns our keys changed
        repair(chat, user)
    secure.repairs.clear()
    return True


def repair(chat: ChatClient, user: str) -> None:
    """Start a new session with ``user`` (an empty message, once their keys are read)."""
    secure = secure_of(chat)
    if secure is None or user in chat.privacy.repairing:
        return
    chat.privacy.repairing.add(user)
    asked = False
    for who in {user, secure.device.user} - secure.fetched:
        chat.privacy.asked[chat.session.fetch_keys(who)] = user
        asked = True
    if not asked:
        _flush(chat, user)


def is_private(chat: ChatClient, message_id: int) -> bool:
    secure = secure_of(chat)
    return secure is not None and message_id in secure.encrypted


def conversation_note(chat: ChatClient, to: str) -> str:
    """ " (end-to-end encrypted)" if a conversation with ``to`` goes so, else ""."""
    secure = secure_of(chat)
    if secure is None or to.startswith("#"):
        return ""
    contact = secure.device.contacts.get(to)
    return " (end-to-end encrypted)" if contact is not None and (contact.devices or contact.encrypted) else ""


def e2e_command(chat: ChatClient, cmd: str, rest: str) -> None:
    secure = secure_of(chat)
    group = cmd == "/trust" and rest.startswith("#") and " " not in rest
    user = rest if group else fold_name(rest) if rest and " " not in rest else None
    if user is None:
        return chat.local_error(f"usage: {cmd} USER" + (", or /trust #GROUP" if cmd == "/trust" else ""))
    if secure is None:
        return chat.local_error("end-to-end encryption is off (msg --no-e2e, or the server does not offer it)")
    if cmd == "/trust":
        return _trust(chat, secure, user, group)
    if not secure.ready(user):  # read the devices first (theirs and ours); the number follows when they come
        for who in {user, secure.device.user} - secure.fetched:
            chat.privacy.asked[chat.session.fetch_keys(who)] = FINGERPRINT + user
        return None
    try:
        number = secure.device.safety_number(user)
    except NoKeysError:
        return chat.local_error(f"{user} has no end-to-end keys")
    words = " ".join(secure.device.safety_words(user))
    chat.view.show(f"safety number with {inert_name(user)}: {number}\n  as words: {words}\n"
                   f"  compare it with {inert_name(user)} in person; if it matches: /trust {inert_name(user)}",
                   event="fingerprint", user=user, number=number, words=words)  # fmt: skip
    return None


def _trust(chat: ChatClient, secure: Secure, name: str, group: bool) -> None:
    """``/trust bob`` (his devices as they are) or ``/trust #lab`` (its members as they are); then
    what was held for them goes."""
    if group:
        if name not in chat.privacy.members:
            return chat.local_error(f"post to {inert_name(name)} first: /trust then accepts its members")
        stream, users = chat.privacy.members[name]
        secure.trust_members(stream, users)
        chat.view.show(f"trusting {inert_name(name)}'s members as they are now: {inert_name(', '.join(users))}",
                       event="trusted", group=name)  # fmt: skip
    else:
        secure.trust(name)
        chat.view.show(f"trusting {inert_name(name)}'s devices as they are now", event="trusted", user=name)
    for to, held in list(chat.privacy.untrusted.items()):  # what waited goes (held again if still untrusted)
        del chat.privacy.untrusted[to]
        for text, cmid in held:
            send_private(chat, to, text, cmid)
    return None
