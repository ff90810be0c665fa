"""A device's own copy of its end-to-end messages, encrypted at rest.

A message key is deleted once used (that is what makes a stolen device's keys useless for
the past), so the server's copy of an end-to-end message can be opened once, by each device
it was encrypted for, and never by the device that sent it. ``/history`` and a catch-up of
messages read before therefore come from here: every message this device opened or sent,
by its message id, as (inner type, payload).

The file is a list of records, appended as messages come::

    length u32 | nonce 12 | ChaCha20-Poly1305(key, nonce, {"id", "k": type, "p": payload, "b": binding}, AD)

under a random key kept in the device's vault (so the archive is as safe as the keys), with
``AD`` naming the format; ``b`` binds the message to its sender, conversation and body hash
(a server re-delivering a message id as another sender's gets nothing from here). A record
that does not open (a torn last write, tampering) ends the reading there: what came before is
kept, and the file is cut there so that new records are read again. Each record is on the
disk (fsync) before the message is acknowledged. At most ``KEEP`` messages are held; past twice that,
the file is written anew with the newest ``KEEP`` (atomically).

What a device added later cannot have: what was sent before it existed (no key was wrapped
for it) and is not in this archive: it shows a notice for those (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from io import BufferedWriter
from pathlib import Path

from ..crypto import primitives as p

KEEP = 20_000  #: messages kept (the newest)
AD = b"csce513msg archive v1"
_LEN = struct.Struct(">I")


class Archive:
    """The messages this device opened or sent, by message id (see the module's docstring)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path, self._key = path, key
        self.messages: dict[int, tuple[int, bytes, bytes]] = {}  #: id -> (inner type, payload, binding)
        self._records = 0
        self._load()

    def get(self, message_id: int) -> tuple[int, bytes, bytes] | None:
        """(inner type, payload, binding) of a message kept: the caller checks the binding (who
        sent it where, and its body's hash) against the Deliver it is asked for."""
        return self.messages.get(message_id)

    def add(self, message_id: int, kind: int, payload: bytes, binding: bytes) -> None:
        """Keep a message (once): appended to the file and on the disk before this returns
        (the message's key is gone: this is its only copy)."""
        if message_id in self.messages:
            return
        self.messages[message_id] = (kind, payload, binding)
        with _open_private(self.path, os.O_APPEND) as out:
            out.write(self._record(message_id, kind, payload, binding))
            out.flush()
            os.fsync(out.fileno())
        self._records += 1
        if self._records > 2 * KEEP:
            self._compact()

    def _record(self, message_id: int, kind: int, payload: bytes, binding: bytes) -> bytes:
        doc = json.dumps(
            {"id": message_id, "k": kind, "p": base64.b64encode(payload).decode(), "b": binding.hex()}
        ).encode()
        nonce = p.random_bytes(p.NONCE)
        sealed = nonce + p.seal(self._key, nonce, doc, AD)
        return _LEN.pack(len(sealed)) + sealed

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        at = 0
        while at + _LEN.size <= len(data):
            (length,) = _LEN.unpack_from(data, at)
            sealed = data[at + _LEN.size : at + _LEN.size + length]
            try:
                doc = json.loads(p.open_(self._key, sealed[: p.NONCE], sealed[p.NONCE :], AD))
                kept = (int(doc["k"]), base64.b64decode(doc["p"]), bytes.fromhex(doc["b"]))
            except (p.DecryptError, p.BadKeyError, ValueError, KeyError, TypeError):
                break  # a torn or altered record: the rest is not trusted
            self.messages[int(doc["id"])] = kept
            at += _LEN.size + length
            self._records += 1
        if at < len(data):  # cut there, so what is appended next is read at the next start
            os.truncate(self.path, at)
        while len(self.messages) > KEEP:
            del self.messages[next(iter(self.messages))]

    def _compact(self) -> None:
        """Write the newest ``KEEP`` messages anew (a temporary file, then a rename)."""
        newest = list(self.messages.items())[-KEEP:]
        self.messages = dict(newest)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with _open_private(tmp, os.O_TRUNC) as out:
            for message_id, (kind, payload, binding) in newest:
                out.write(self._record(message_id, kind, payload, binding))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._records = len(newest)


def _open_private(path: Path, flag: int) -> BufferedWriter:
    """``path`` to write (appending, or truncated), 0600, never through a symbolic link."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flag, 0o600), "wb")
