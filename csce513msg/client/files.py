"""What the client keeps on disk, in its config directory (``paths.client_config_dir``).

Every file here is its owner's only: the directory 0700, each file 0600, written whole
to a temporary file and renamed, so a crash never leaves half a file:

- ``devices.json``: this machine's device id per user (the server keeps a cursor per device);
- ``tokens.json``: the device token each server gave each user here (logins from this device
  are then throttled apart from anyone guessing the password);
- ``known_servers.json``: pinned TLS fingerprints (``client/tls.py``);
- ``history/USER@SERVER``: the interactive mode's input history;
- ``outbox/USER@SERVER.json``: messages typed but not yet stored by the server, sent with
  the next connection (the server recognises a resend by its client message id);
- ``transfers/USER@SERVER.json``: file transfers under way (1.6), resumed by the next run;
- ``msg.toml``: the config file (``client/config.py``), written by the user.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..paths import client_config_dir


def private_dir(path: Path) -> Path:
    """``path`` made (if missing) and kept 0700; returns it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file in a 0700 directory, atomically."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def touch_private(path: Path) -> Path:
    """``path`` exists as a 0600 file (for a library that appends to it); returns it."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    return path


def _read_json(name: str) -> dict[str, Any]:
    try:
        data = json.loads((client_config_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(name: str, data: dict[str, Any]) -> None:
    try:
        write_private(client_config_dir() / name, json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home: this run works, the next starts afresh


def device_id(user: str) -> str:
    """This machine's device id for ``user``: made once, kept in ``devices.json``."""
    devices = _read_json("devices.json")
    if not isinstance(devices.get(user), str):
        devices[user] = uuid.uuid4().hex
        _write_json("devices.json", devices)
    return str(devices[user])


def load_token(server: str, user: str) -> str:
    """The device token kept for ``user`` on ``server`` ("" if none yet)."""
    per_server = _read_json("tokens.json").get(server)
    return str(per_server.get(user, "")) if isinstance(per_server, dict) else ""


def save_token(server: str, user: str, token: str) -> None:
    """Keep the device token a LoginOk brought (0600: it logs this device in)."""
    tokens = _read_json("tokens.json")
    if not isinstance(tokens.get(server), dict):
        tokens[server] = {}
    if tokens[server].get(user) != token:
        tokens[server][user] = token
        _write_json("tokens.json", tokens)


def _slug(server: str, user: str) -> str:
    return f"{user}@{server}".replace("/", "_")


def history_file(server: str, user: str) -> Path:
    """The interactive input history of ``user`` on ``server`` (made 0600)."""
    return touch_private(client_config_dir() / "history" / _slug(server, user))


@dataclass(frozen=True, slots=True)
class Unsent:
    """A message the server has not confirmed storing: sent again with the same id."""

    to: str
    text: str
    client_msg_id: int
    #: an end-to-end message: its envelope as first sent (base64), sent again as it was (the
    #: server knows a resend by its client id and bytes; a new encryption would be another message)
    envelope: str = ""


class Outbox:
    """The unsent messages of ``user`` on ``server``, kept across runs of ``msg``."""

    def __init__(self, server: str, user: str) -> None:
        self.path = client_config_dir() / "outbox" / f"{_slug(server, user)}.json"

    def load(self) -> list[Unsent]:
        try:
            rows = json.loads(self.path.read_text())
            return [
                Unsent(str(r["to"]), str(r["text"]), int(r["client_msg_id"]), str(r.get("envelope", ""))) for r in rows
            ]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def save(self, messages: list[Unsent]) -> None:
        """Keep ``messages`` (none: the file goes)."""
        try:
            if messages:
                write_private(self.path, json.dumps([asdict(m) for m in messages], indent=1) + "\n")
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass


class TransferList:
    """The transfers of ``user`` on ``server`` not yet done (``transfers/USER@SERVER.json``), kept
    across runs of ``msg``: after a restart each goes on where it stopped (an upload by its id,
    a download from its partial file). Each entry is a plain dict (``client/sharing.py``)."""

    def __init__(self, server: str, user: str) -> None:
        self.path = client_config_dir() / "transfers" / f"{_slug(server, user)}.json"

    def load(self) -> list[dict[str, Any]]:
        try:
            rows = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def save(self, rows: list[dict[str, Any]]) -> None:
        """Keep ``rows`` (none: the file goes)."""
        try:
            if rows:
                write_private(self.path, json.dumps(rows, indent=1) + "\n")
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
