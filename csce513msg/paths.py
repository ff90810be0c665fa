"""Where csce513Msg keeps files: the server's data directory, the client's config.

- Server data (``msgsrv --data-dir``): ``$MSGSRV_DATA_DIR``, else
  ``$XDG_DATA_HOME/csce513msg``, else ``~/.local/share/csce513msg``. Holds ``tls/``
  (the self-made certificate and key) now, the database later.
- Client config: ``$MSG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/csce513msg``, else
  ``~/.config/csce513msg``. Holds ``known_servers.json`` (pinned TLS fingerprints).
"""

from __future__ import annotations

import os
from pathlib import Path


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
