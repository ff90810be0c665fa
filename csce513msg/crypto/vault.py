"""A device's private state at rest: one JSON document, encrypted under a key from a passphrase.

The client keeps its keys (``keys.DeviceKeys.to_dict()``) and its sessions in a vault file, so a
copy of the file (a stolen laptop, a backup, a shared home directory) gives nothing to someone
without the passphrase. The file is JSON::

    {"v": 1, "kdf": "scrypt", "log2n": 15, "r": 8, "p": 1, "salt": B64, "nonce": B64, "data": B64}

- **The key** is scrypt (``hashlib.scrypt``, as ``passwords`` uses) of the passphrase with a
  random 16-byte salt, derived once when the vault is opened or created, never per save. The
  ``production`` cost is N = 2**15, r = 8, p = 1 (32 MiB, about 0.1 s): twice the login hash's
  N, since this key guards the keys themselves and is derived once per run, not per login. The
  ``test`` cost protects nothing and is for tests.
- **The data** is the document sealed with ChaCha20-Poly1305 (``primitives.seal``) under a
  fresh random 12-byte nonce at every save (with one key per salt, 2**32 saves keep the chance
  of a repeated nonce below 2**-33; a passphrase change draws a new salt, so a new key).
- **The header** (format version, KDF and its parameters, salt) is the associated data, so no
  field of it can be changed without the file failing to open: an edited cost or salt is
  refused, never used. Parameters are also bounded before any work (at most 1 GiB of scrypt
  memory), so an edited file cannot make the client exhaust memory trying.
- **A wrong passphrase and a damaged or altered file are the same answer**, ``VaultLockedError``
  with a plain message: authenticated encryption cannot tell them apart, and says nothing more.
- **Saving is atomic**: the new file is written beside the old one (mode 0600, created
  exclusively, never through a symbolic link), flushed to disk, renamed over it, and the
  directory flushed; a crash leaves the last good file and, at worst, a stray temporary file.
  A symbolic link at the vault's path is refused, to read or to write.

By default the passphrase is the account password (the client decides): one secret to remember,
at a price the security document states. The server sees that password at every login and
stores a scrypt hash of it (N = 2**14), so the vault is no stronger against the server, or a thief
of its database who cracks that hash, than against someone who has only the file: whoever learns
the password and gets the file reads the keys. A user who distrusts the server chooses a separate
passphrase. Not protected: malware on the running device (the key and the keys are in memory,
and Python cannot wipe them), and rolling the file back to an older copy (it still opens; a
one-time prekey used since would be usable again).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import primitives as p
from .passwords import KdfCost

FORMAT_VERSION = 1
KDF = "scrypt"
VAULT_COSTS = {"production": KdfCost(15, 8, 1), "test": KdfCost(1, 1, 1)}
SALT = 16  #: bytes of a vault's salt
MAX_KDF_MEMORY = 1 << 30  #: bytes of scrypt memory (128 * N * r * p) a vault file may ask for
MAX_FILE = 64 << 20  #: bytes of a vault file read at most
_FIELDS = ("v", "kdf", "log2n", "r", "p", "salt", "nonce", "data")


class VaultError(Exception):
    """The vault cannot be used as asked: its path is a symbolic link, or it exists already."""


class VaultLockedError(VaultError):
    """The vault did not open: a wrong passphrase, or a file damaged or altered since it was saved."""


@dataclass(frozen=True, slots=True)
class _Header:
    """What is stored in the clear and authenticated: the KDF's parameters and salt."""

    cost: KdfCost
    salt: bytes

    def associated_data(self) -> bytes:
        c = self.cost
        return (
            b"csce513msg vault" + struct.pack(">B6sBII", FORMAT_VERSION, KDF.encode(), c.log2_n, c.r, c.p) + self.salt
        )

    def key(self, passphrase: str) -> bytes:
        c = self.cost
        maxmem = _memory(c) + (1 << 20)  # scrypt needs 128·N·r·p bytes, plus slack
        return hashlib.scrypt(
            passphrase.encode(), salt=self.salt, n=1 << c.log2_n, r=c.r, p=c.p, maxmem=maxmem, dklen=p.KEY
        )


class Vault:
    """One vault file, opened: ``save`` and ``load`` a JSON document (a dict) under its key."""

    def __init__(self, path: Path, key: bytes, header: _Header) -> None:
        """Use ``create`` or ``open``."""
        self.path = path
        self._key = key
        self._header = header

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r})"

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str, cost: KdfCost = VAULT_COSTS["production"]) -> Vault:
        """A new vault at ``path`` holding an empty document; ``VaultError`` if something is there."""
        path = Path(path)
        if os.path.lexists(path):
            raise VaultError(f"{path} exists already: open it, or remove it first")
        header = _Header(_checked(cost), secrets.token_bytes(SALT))
        vault = cls(path, header.key(_nonempty(passphrase)), header)
        vault.save({})
        return vault

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str) -> Vault:
        """The vault at ``path``, its key derived from ``passphrase``; ``VaultLockedError`` if the
        passphrase is wrong or the file was altered."""
        path = Path(path)
        header, nonce, data = _read(path)
        vault = cls(path, header.key(passphrase), header)
        vault._open(nonce, data)
        return vault

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the vault's document with ``doc`` (anything ``json`` writes), atomically."""
        plaintext = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        nonce = p.random_bytes(p.NONCE)
        sealed = p.seal(self._key, nonce, plaintext, self._header.associated_data())
        c = self._header.cost
        record = {"v": FORMAT_VERSION, "kdf": KDF, "log2n": c.log2_n, "r": c.r, "p": c.p}
        record |= {"salt": _b64(self._header.salt), "nonce": _b64(nonce), "data": _b64(sealed)}
        _write_atomic(self.path, json.dumps(record).encode() + b"\n")

    def load(self) -> dict[str, Any]:
        """The document last saved."""
        header, nonce, data = _read(self.path)
        if header != self._header:
            raise VaultLockedError(
                f"{self.path}: its key changed since it was opened (a new passphrase?): open it again"
            )
        return self._open(nonce, data)

    def change_passphrase(self, new: str, cost: KdfCost | None = None) -> None:
        """Re-key the vault for ``new`` (a password change): a fresh salt, the document sealed again."""
        doc = self.load()
        header = _Header(_checked(cost or self._header.cost), secrets.token_bytes(SALT))
        old = (self._key, self._header)
        self._key, self._header = header.key(_nonempty(new)), header
        try:
            self.save(doc)
        except BaseException:
            self._key, self._header = old  # the file was not replaced: keep using the old key
            raise

    def _open(self, nonce: bytes, data: bytes) -> dict[str, Any]:
        try:
            plaintext = p.open_(self._key, nonce, data, self._header.associated_data())
        except p.DecryptError:
            raise VaultLockedError(f"{self.path}: wrong passphrase, or the file was altered") from None
        doc = json.loads(plaintext)
        if not isinstance(doc, dict):
            raise VaultError(f"{self.path}: holds a {type(doc).__name__}, not a document")
        return doc


def _nonempty(passphrase: str) -> str:
    if not passphrase:
        raise ValueError("a vault needs a passphrase")
    return passphrase


def _memory(cost: KdfCost) -> int:
    return 128 * (1 << cost.log2_n) * cost.r * cost.p


def _cost_problem(cost: KdfCost) -> str | None:
    """Why scrypt must not be run at ``cost``, or None."""
    if 1 <= cost.log2_n <= 32 and 1 <= cost.r <= 2**16 and 1 <= cost.p <= 2**16 and _memory(cost) <= MAX_KDF_MEMORY:
        return None
    return f"scrypt parameters out of range: log2n={cost.log2_n} r={cost.r} p={cost.p}"


def _checked(cost: KdfCost) -> KdfCost:
    problem = _cost_problem(cost)
    if problem:
        raise ValueError(problem)
    return cost


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _read(path: Path) -> tuple[_Header, bytes, bytes]:
    """A vault file's header, nonce and sealed data, checked for shape (not yet authenticated)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        if os.path.islink(path):
            raise VaultError(f"{path} is a symbolic link: a vault is never read through one") from None
        raise  # no such file, no permission: as the system says
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise VaultLockedError(f"{path}: larger than a vault file can be")
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or set(record) != set(_FIELDS):
            raise ValueError("not the fields of a vault")
        ints = [record[name] for name in ("v", "log2n", "r", "p")]
        if not all(type(i) is int for i in ints) or record["kdf"] != KDF:
            raise ValueError("not the fields of a vault")
        salt, nonce, data = (base64.b64decode(record[name], validate=True) for name in ("salt", "nonce", "data"))
    except (ValueError, TypeError, binascii.Error):  # json's errors are ValueErrors
        raise VaultLockedError(f"{path}: not a vault file, or a damaged one") from None
    if record["v"] != FORMAT_VERSION:
        raise VaultLockedError(f"{path}: vault format {record['v']}, this program reads {FORMAT_VERSION}")
    if len(salt) != SALT or len(nonce) != p.NONCE or len(data) < p.TAG:
        raise VaultLockedError(f"{path}: a damaged vault file (a field of the wrong size)")
    cost = KdfCost(record["log2n"], record["r"], record["p"])
    problem = _cost_problem(cost)
    if problem:
        raise VaultLockedError(f"{path}: {problem}")
    return _Header(cost, salt), nonce, data


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path`` (0600), flush it, rename it over ``path``,
    flush the directory. ``path`` itself, if a symbolic link, is refused."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise VaultError(f"{path} is a symbolic link: a vault is never written through one")
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
