"""Password hashing: salted scrypt, parameters stored with each hash.

A stored hash reads ``scrypt$LOG2N$R$P$SALT$KEY`` (salt and key in unpadded
base64), so a hash made at one cost verifies at that cost even after the server's
default changes. ``hashlib.scrypt`` (OpenSSL) releases the GIL while it works, so a
hash on the ``hash`` lane's threads does not stop the loop; comparison is
constant-time (``hmac.compare_digest``).

Costs (``msgsrv --kdf-cost``):

- ``production``: N = 2**14, r = 8, p = 1: 16 MiB and about 47 ms per hash on
  the reference machine (Percival's parameters for interactive logins);
- ``test``: N = 2, r = 1, p = 1: microseconds, for tests and benchmarks that log
  in many clients. It protects nothing; the server refuses it on a non-loopback
  address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KdfCost:
    """scrypt's parameters: memory and time grow with ``2**log2_n * r``."""

    log2_n: int
    r: int
    p: int


COSTS = {"production": KdfCost(14, 8, 1), "test": KdfCost(1, 1, 1)}
MIN_PASSWORD = 8  #: characters; a longer passphrase is better, and there is no upper rule but the frame
_KEY_BYTES = 32


class Scrypt:
    """``hub.Passwords`` at one cost: what the engine hands to the ``hash`` lane."""

    def __init__(self, cost: KdfCost) -> None:
        self.cost = cost

    def hash(self, password: str) -> str:
        return hash_password(password, self.cost)

    def verify(self, password: str, stored: str) -> bool:
        return verify_password(password, stored)

    def decoy(self) -> str:
        return decoy(self.cost)

    def problem(self, password: str) -> str | None:
        return password_problem(password)


def hash_password(password: str, cost: KdfCost) -> str:
    """Return the stored form of ``password``, with a fresh 16-byte salt."""
    salt = os.urandom(16)
    key = _scrypt(password, salt, cost)
    return f"scrypt${cost.log2_n}${cost.r}${cost.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed or empty ``stored`` never matches
    (but still costs a hash at the production cost, so its answer takes as long)."""
    try:
        scheme, log2_n, r, p, salt, key = stored.split("$")
        cost = KdfCost(int(log2_n), int(r), int(p))
        if scheme != "scrypt":
            raise ValueError(scheme)
        salt_bytes, key_bytes = _unb64(salt), _unb64(key)
    except ValueError:
        _scrypt(password, b"\0" * 16, COSTS["production"])
        return False
    return hmac.compare_digest(_scrypt(password, salt_bytes, cost), key_bytes)


def decoy(cost: KdfCost) -> str:
    """A stored hash that matches no password, at ``cost``: checking an unknown user
    against it takes as long as checking a real one, so timing does not tell them apart."""
    return f"scrypt${cost.log2_n}${cost.r}${cost.p}${_b64(os.urandom(16))}${_b64(os.urandom(_KEY_BYTES))}"


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be used, or None."""
    if len(password) < MIN_PASSWORD:
        return f"a password needs at least {MIN_PASSWORD} characters"
    return None


def _scrypt(password: str, salt: bytes, cost: KdfCost) -> bytes:
    n = 1 << cost.log2_n
    maxmem = 128 * n * cost.r * cost.p + (1 << 20)  # scrypt needs 128·N·r·p bytes, plus slack
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=cost.r, p=cost.p, maxmem=maxmem, dklen=_KEY_BYTES)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
