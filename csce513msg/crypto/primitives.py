"""The end-to-end layer's primitives: thin wrappers over ``cryptography``, nothing home-made.

Every key here is raw bytes (32 for X25519 and Ed25519 keys, 64 for an Ed25519 signature),
so the layers above keep and serialise plain bytes and never a library object. Each wrapper
is a line or two over the library, named for what the scheme uses it for:

- **X25519** (RFC 7748) for key agreement: ``dh`` refuses an all-zero result (a peer's
  low-order point, RFC 7748 section 6.1's check), so a hostile public key cannot force a
  known shared secret;
- **Ed25519** (RFC 8032) for signatures: ``verify`` answers True or False, never raises;
- **HKDF-SHA256** (RFC 5869) for every derivation;
- **ChaCha20-Poly1305** (RFC 8439) for every encryption, with associated data; a failed
  check raises ``DecryptError`` and gives nothing back;
- **HMAC-SHA256** for the ratchet's chain keys; ``same`` compares secrets in constant time.

The one source of randomness is ``os.urandom`` (through ``secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY = 32  #: bytes of every key: X25519 and Ed25519, private and public, and every symmetric key
SIGNATURE = 64  #: bytes of an Ed25519 signature
NONCE = 12  #: bytes of a ChaCha20-Poly1305 nonce
TAG = 16  #: bytes a ChaCha20-Poly1305 ciphertext is longer than its plaintext


class DecryptError(Exception):
    """A ciphertext, a tag or its associated data did not check: nothing is given back."""


class BadKeyError(ValueError):
    """A key that is not one: the wrong length, or an X25519 agreement that came out all
    zero (a low-order public key)."""


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's generator."""
    return secrets.token_bytes(n)


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise BadKeyError(f"{what}: {len(value)} bytes, expected {size}")
    return value


# X25519 (RFC 7748)


def dh_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair: (private, public), 32 bytes each."""
    key = X25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def dh_public(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    key = X25519PrivateKey.from_private_bytes(_exact(private, KEY, "X25519 private key"))
    return key.public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    """The X25519 shared secret of our ``private`` key and a peer's ``public`` one. An
    all-zero result (a low-order point) raises ``BadKeyError``."""
    ours = X25519PrivateKey.from_private_bytes(_exact(private, KEY, "X25519 private key"))
    try:
        return ours.exchange(X25519PublicKey.from_public_bytes(_exact(public, KEY, "X25519 public key")))
    except ValueError as e:  # cryptography refuses the all-zero output itself
        raise BadKeyError(f"X25519: {e}") from None


# Ed25519 (RFC 8032)


def sign_keypair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair: (private seed, public), 32 bytes each."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def sign_public(private: bytes) -> bytes:
    """The Ed25519 public key of the 32-byte seed ``private``."""
    key = Ed25519PrivateKey.from_private_bytes(_exact(private, KEY, "Ed25519 private key"))
    return key.public_key().public_bytes_raw()


def sign(private: bytes, data: bytes) -> bytes:
    """The Ed25519 signature (64 bytes) of ``data`` by the seed ``private``."""
    return Ed25519PrivateKey.from_private_bytes(_exact(private, KEY, "Ed25519 private key")).sign(data)


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``data``. A malformed key or
    signature is False, like a wrong one."""
    if len(public) != KEY or len(signature) != SIGNATURE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# HKDF-SHA256 (RFC 5869), HMAC-SHA256, SHA-256


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 of ``ikm``: extract with ``salt`` (b"": a string of zeros, as the RFC
    says), expand with ``info`` to ``length`` bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def same(a: bytes, b: bytes) -> bool:
    """Whether two secrets (or a secret and a guess) are equal, in time that does not depend
    on where they differ."""
    return hmac.compare_digest(a, b)


# ChaCha20-Poly1305 (RFC 8439)


def _aead(key: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_exact(key, KEY, "ChaCha20-Poly1305 key"))


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305: ``plaintext`` encrypted under ``key`` and ``nonce`` with the tag
    (16 bytes) appended, ``ad`` authenticated. A (key, nonce) pair must never be used twice:
    callers derive a fresh key per message or count nonces (see ``ratchet``, ``stream``)."""
    return _aead(key).encrypt(_exact(nonce, NONCE, "nonce"), plaintext, ad)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """The plaintext of what ``seal`` made, or ``DecryptError`` if the ciphertext, the tag
    or ``ad`` differ in any bit."""
    try:
        return _aead(key).decrypt(_exact(nonce, NONCE, "nonce"), ciphertext, ad)
    except InvalidTag:
        raise DecryptError("the ciphertext did not authenticate") from None
