"""Starting ``msg``: connect first, then ask for the password, then build the session.

Connecting first means a stopped server or a wrong address costs no typed password.
A password never goes to a remote server in clear without the user's say-so: before
connecting to a non-loopback address without TLS, ``msg`` asks for confirmation on a
terminal and refuses otherwise, unless the config file says ``allow_plaintext = true``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..crypto.vault import VaultError
from ..paths import client_data_dir
from .chat import ChatClient
from .downloads import default_downloads_dir
from .files import Outbox, TransferList, device_id, load_token, private_dir
from .sanitize import inert
from .secure import Secure
from .session import ClientSession
from .sharing import AUTO_DOWNLOAD, Sharing
from .steps import Connector, TlsOptions
from .tls import TrustError
from .view import Style, View


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``msg`` was asked to do (from the command line and the config file)."""

    host: str
    port: int
    user: str
    tls: TlsOptions | None
    register: bool = False
    allow_plaintext: bool = False
    verbose: bool = False
    downloads: Path | None = None  #: where received files go (None: ``downloads.default_downloads_dir()``)
    auto_download: int = AUTO_DOWNLOAD  #: a file offered up to this many bytes is fetched as it arrives
    e2e: bool = True  #: end-to-end encryption with those whose clients do it (``--no-e2e``: off)
    reset_keys: bool = False  #: set the old keys aside and make new ones (``--reset-keys``)


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def start(
    plan: Plan,
    view: View,
    password: Callable[[], str | None],
    confirm: Callable[[str], bool] | None,
    *,
    live: bool = False,
) -> tuple[ChatClient, Connector] | int:
    """Connect, get the password, and return the client ready to run; or an exit status."""
    connector = Connector(plan.host, plan.port, plan.tls, view)
    where = f"{plan.host}:{plan.port}"
    if plan.tls is None and not plan.allow_plaintext and not is_loopback(plan.host):  # asked before connecting
        question = f"{where} is not this machine and the connection has no TLS: send your password in clear?"
        if confirm is None or not confirm(question):
            _fail(view, f"refusing to send a password in clear to {where}: use --tls (or allow_plaintext = true "
                        "in the config file)", "plaintext")  # fmt: skip
            return 2
    try:
        sock = connector.open()  # create a socket, connect (and the TLS handshake)
    except TrustError as exc:
        _fail(view, f"REFUSED: {exc.args[0]}", "untrusted")
        return 1
    except ssl.SSLError as exc:
        _fail(
            view, f"TLS handshake with {where} failed: {exc.reason or exc} (is the server started with --tls?)", "tls"
        )
        return 1
    except OSError as exc:
        _fail(view, f"cannot connect to {where}: {exc.strerror or exc}", "connect")
        return 1
    connector.show_note()
    secret = password()
    if secret is None:
        sock.close()
        return 2
    user = plan.user.lower()
    server_key = where
    device = device_id(user)

    def keys() -> Secure:  # at the LoginOk: the server checked the password first
        try:
            return open_keys(server_key, user, device, key_passphrase() or secret, reset=plan.reset_keys)
        except VaultError as exc:
            raise VaultError(
                f"{exc}: if your password changed since, msg --reset-keys makes new keys (your "
                "contacts will see that your keys changed); msg --no-e2e runs without them"
            ) from None

    session = ClientSession(
        user, password=secret, register=plan.register, presence=True, groups=True, client="msg",
        device_id=device, device_token=load_token(server_key, user), client_msg_seed=time.time_ns() // 1000,
        keys=keys if plan.e2e else None,
    )  # fmt: skip
    chat = ChatClient(session, view, live=live, verbose=plan.verbose)
    chat.sharing = Sharing(plan.downloads or default_downloads_dir(), plan.auto_download)
    chat.sharing.kept = TransferList(server_key, user)
    chat.sock = sock
    chat.server_key = server_key
    chat.outbox = Outbox(server_key, user)
    chat.queued = chat.outbox.load()
    if chat.queued:
        count = len(chat.queued)
        view.show(f"{count} unsent message{'' if count == 1 else 's'} from last time: sending after the login",
                  event="queued_from_before", count=count)  # fmt: skip
    return chat, connector


def keys_path(server: str, user: str) -> Path:
    """Where this device keeps its end-to-end keys for ``user`` on ``server`` (a vault, 0600)."""
    return client_data_dir() / "keys" / f"{user}@{server}.vault".replace("/", "_")


def key_passphrase() -> str | None:
    """A passphrase for the keys apart from the account password (``MSG_KEY_PASSPHRASE``), or None:
    the password then guards them (docs/security.md says what that trades away)."""
    return os.environ.get("MSG_KEY_PASSPHRASE") or None


def open_keys(server: str, user: str, device: str, passphrase: str, *, reset: bool = False) -> Secure:
    """This device's end-to-end state (made on first use; with ``reset``, the old vault is kept
    aside as ``*.old-TIME`` and new keys are made)."""
    path = keys_path(server, user)
    private_dir(path.parent)
    if reset and path.exists():
        path.rename(path.with_name(f"{path.name}.old-{int(time.time())}"))
    return Secure.from_vault(path, passphrase, user, device)


def _fail(view: View, text: str, code: str) -> None:
    view.show(f"! {inert(text)}", style=Style.ERROR, event="error", code=code, message=text, request=0)
