"""``msg``'s config file: what a student would otherwise type at every start.

TOML, read with the standard library's ``tomllib``, from ``msg --config FILE`` or else
``msg.toml`` in the client config directory (``paths.client_config_dir``). Every key is
optional; a flag on the command line wins over the file::

    server = "192.168.1.20:5130"      # HOST[:PORT]; the port defaults to 5130
    user = "alice"                    # defaults to your login name
    fingerprint = "AB:CD:..."         # the server's TLS certificate (implies TLS)
    ca = "/path/to/ca.pem"            # or a CA to verify it with (implies TLS)
    tls = true                        # TLS, pinning the certificate on first use
    downloads = "~/Downloads/class"   # where received files go (file transfer)
    color = true                      # false: no colours (NO_COLOR in the environment too)
    allow_plaintext = false           # true: send the password to a remote server without TLS

``msgsrv invite`` writes such a file for a class.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from ..paths import client_config_dir

CONFIG_NAME = "msg.toml"


class ConfigError(Exception):
    """The config file cannot be used; the message says why and where."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server: str | None = None
    user: str | None = None
    fingerprint: str | None = None
    ca: str | None = None
    tls: bool = False
    downloads: str | None = None
    color: bool = True
    allow_plaintext: bool = False


_TYPES = {"server": str, "user": str, "fingerprint": str, "ca": str, "downloads": str, "tls": bool, "color": bool,
          "allow_plaintext": bool}  # fmt: skip


def default_path() -> Path:
    return client_config_dir() / CONFIG_NAME


def load(path: Path | None) -> ClientConfig:
    """The config in ``path`` (given: it must exist), else the default file if there is one."""
    if path is None:
        path = default_path()
        if not path.exists():
            return ClientConfig()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    known = {f.name for f in fields(ClientConfig)}
    if unknown := sorted(set(data) - known):
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    for key, value in data.items():
        if not isinstance(value, _TYPES[key]):
            raise ConfigError(f"{path}: {key} must be a {_TYPES[key].__name__}, not {value!r}")
    return ClientConfig(**data)


def render(config: ClientConfig) -> str:
    """``config`` as the TOML text of a config file (the keys that differ from the defaults)."""
    lines = []
    for f in fields(ClientConfig):
        value = getattr(config, f.name)
        if value != f.default:
            text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)  # a TOML string
            lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"
