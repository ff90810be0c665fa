"""Where csce513Msg keeps files: the server's data directory, the client's config.

- Server data (``msgsrv --data-dir``): ``$MSGSRV_DATA_DIR``, else
  ``$XDG_DATA_HOME/csce513msg``, else ``~/.local/share/csce513msg``. Holds the
  database (``csce513msg.db``, with its ``-wal`` and ``-shm`` files) and ``tls/`` (the
  self-made certificate and key): messages and password hashes, so it is the owner's
  only (0700, files 0600; ``private_data_dir``).
- Client config: ``$MSG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/csce513msg``, else
  ``~/.config/csce513msg``. Holds ``known_servers.json`` (pinned TLS fingerprints).
- Client data: ``$MSG_DATA_DIR``, else ``$XDG_DATA_HOME/csce513msg/client``, else
  ``~/.local/share/csce513msg/client``. Holds ``downloads/`` (files received,
  ``client/downloads.py``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DATABASE = "csce513msg.db"  #: the database's file name in the data directory
#: What the server keeps in its data directory: only these are ever tightened, since
#: ``--data-dir`` may name a directory that holds other things too.
OWN_FILES = (
    DATABASE,
    f"{DATABASE}-wal",
    f"{DATABASE}-shm",
    f"{DATABASE}-journal",
    "tls",
    "tls/key.pem",
    "tls/cert.pem",
    "files",  # uploads (1.6); each file in it is made 0600
)


def default_data_dir() -> Path:
    """The server's data directory when ``--data-dir`` is not given."""
    if env := os.environ.get("MSGSRV_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "csce513msg"


def client_config_dir() -> Path:
    """The client's per-user configuration directory."""
    if env := os.environ.get("MSG_CONFIG_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "csce513msg"


def client_data_dir() -> Path:
    """The client's per-user data directory: what it keeps that is not configuration.

    XDG separates the two: config is what a user writes or could copy to another
    machine, data is what the program accumulates (received files). It is a ``client``
    directory inside the server's default one, not that directory itself, so a student
    who runs both ``msgsrv`` and ``msg`` never finds downloads next to the database.
    """
    if env := os.environ.get("MSG_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "csce513msg" / "client"


def private_data_dir(data_dir: Path) -> list[str]:
    """Make ``data_dir`` its owner's only, as every file this process will create in it.

    The umask becomes 077, so whatever the process creates from now on is 0600 (0700 for
    a directory): the database, the TLS files; SQLite gives the ``-wal`` and ``-shm``
    files the database file's mode. A missing directory is created 0700. An existing
    install (0755 and 0644 before) is tightened: the directory and ``OWN_FILES``, never
    anything else in it. A directory shared on purpose (sticky, like /tmp) keeps its
    mode, with a note: other users' files live there too, and 0700 would lock them out.

    Returns:
        one line per change (or per change that could not be made), for the log.
    """
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    notes = []
    for path in (data_dir, *(data_dir / name for name in OWN_FILES)):
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        if path == data_dir and mode & stat.S_ISVTX:
            notes.append(f"{path} is a shared directory (mode {stat.S_IMODE(mode):o}): use one of the server's own")
            continue
        new = stat.S_IMODE(mode) & 0o700
        try:
            path.chmod(new)
        except OSError as exc:
            notes.append(f"cannot make {path} private: {exc.strerror or exc}")
            continue
        notes.append(f"{path}: mode {stat.S_IMODE(mode):o} -> {new:o} (readable by its owner only)")
    return notes
