"""Published test vectors through our own wrappers (``crypto/primitives.py``), not the library's.

The vectors are small JSON files in ``vectors/``, each naming where it was copied from
(repository, commit, path): the RFCs' own examples (RFC 7748, 8032, 5869, 8439) and a subset of
Wycheproof's edge cases, chosen for what our wrappers promise beyond the library: ``dh`` refuses
every low-order public key, ``open_`` gives nothing back for a tag off by one bit, ``verify``
answers False (never raises) for every malformed or malleable signature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from csce513msg.crypto import primitives as p

VECTORS = Path(__file__).parent / "vectors"
ZERO = bytes(p.KEY)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def cases(name: str, key: str = "cases") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = load(name)[key]
    return found


def case_id(case: dict[str, Any]) -> str:
    return str(case.get("name") or f"tcId {case['tcId']}")


def test_every_vector_file_names_its_source() -> None:
    for path in sorted(VECTORS.glob("*.json")):
        data = json.loads(path.read_text())
        sources = data.get("sources") or [data["source"]]
        assert sources and all(s["repository"].startswith("github:") and s["path"] and s["commit"] for s in sources)


# RFC 7748: X25519


@pytest.mark.parametrize("case", cases("rfc7748_x25519.json", "section_5_2"), ids=["5.2 #1", "5.2 #2"])
def test_x25519_rfc7748_section_5_2(case: dict[str, Any]) -> None:
    assert p.dh(h(case["scalar"]), h(case["u"])) == h(case["output"])


def test_x25519_rfc7748_iterated_1_and_1000_rounds() -> None:
    """k, u = X25519(k, u), k: the RFC prints k after one round and after a thousand."""
    it = load("rfc7748_x25519.json")["iterated"]
    k = u = h(it["start"])
    for round_ in range(1, 1001):
        k, u = p.dh(k, u), k
        if round_ == 1:
            assert k == h(it["after_1"])
    assert k == h(it["after_1000"])


def test_x25519_rfc7748_section_6_1_diffie_hellman() -> None:
    v = load("rfc7748_x25519.json")["section_6_1"]
    assert p.dh_public(h(v["alice_private"])) == h(v["alice_public"])
    assert p.dh_public(h(v["bob_private"])) == h(v["bob_public"])
    assert p.dh(h(v["alice_private"]), h(v["bob_public"])) == h(v["shared"])
    assert p.dh(h(v["bob_private"]), h(v["alice_public"])) == h(v["shared"])


@pytest.mark.parametrize("case", cases("wycheproof_x25519.json", "tests"), ids=case_id)
def test_x25519_wycheproof(case: dict[str, Any]) -> None:
    """Every low-order public key gives the all-zero secret, which ``dh`` refuses; the rest
    (twist points and non-canonical encodings included, as RFC 7748 says) must come out right."""
    private, public, shared = h(case["private"]), h(case["public"]), h(case["shared"])
    if shared == ZERO:
        assert "ZeroSharedSecret" in case["flags"]
        with pytest.raises(p.BadKeyError):
            p.dh(private, public)
    else:
        assert case["result"] in ("valid", "acceptable")
        assert p.dh(private, public) == shared


def test_x25519_wycheproof_subset_covers_every_low_order_point() -> None:
    zero = {c["public"] for c in cases("wycheproof_x25519.json", "tests") if h(c["shared"]) == ZERO}
    # the five low-order u-coordinates (0, 1, p - 1 and the two of order 8), p and p + 1 (0 and 1
    # written non-canonically), each also with bit 255 set, which X25519 ignores
    assert len(zero) == 14


# RFC 8032: Ed25519


@pytest.mark.parametrize("case", cases("rfc8032_ed25519.json"), ids=case_id)
def test_ed25519_rfc8032_section_7_1(case: dict[str, Any]) -> None:
    seed, public, message, signature = h(case["seed"]), h(case["public"]), h(case["message"]), h(case["signature"])
    assert p.sign_public(seed) == public
    assert p.sign(seed, message) == signature  # Ed25519 is deterministic: the RFC's exact bytes
    assert p.verify(public, signature, message)
    assert not p.verify(public, signature, message + b"\0")
    assert not p.verify(public, bytes([signature[0] ^ 1]) + signature[1:], message)


def test_ed25519_rfc8032_sha_abc_message_is_sha512_of_abc() -> None:
    (sha_abc,) = [c for c in cases("rfc8032_ed25519.json") if c["name"] == "TEST SHA(abc)"]
    assert h(sha_abc["message"]) == hashlib.sha512(b"abc").digest()


@pytest.mark.parametrize("case", cases("wycheproof_ed25519.json", "tests"), ids=case_id)
def test_ed25519_wycheproof(case: dict[str, Any]) -> None:
    """Invalid signatures (truncated, padded, R not a point, s >= L: malleable) answer False,
    never an exception; valid ones True."""
    answer = p.verify(h(case["public"]), h(case["sig"]), h(case["msg"]))
    assert answer is (case["result"] == "valid")


# RFC 5869: HKDF-SHA256


@pytest.mark.parametrize("case", cases("rfc5869_hkdf.json"), ids=case_id)
def test_hkdf_rfc5869_appendix_a(case: dict[str, Any]) -> None:
    ikm, salt, info = h(case["ikm"]), h(case["salt"]), h(case["info"])
    assert p.hkdf(ikm, salt=salt, info=info, length=case["length"]) == h(case["okm"])
    # the extract step is HMAC-SHA256 keyed by the salt (a string of zeros when there is none)
    assert p.hmac_sha256(salt or bytes(32), ikm) == h(case["prk"])


# RFC 8439: ChaCha20-Poly1305


@pytest.mark.parametrize("case", cases("rfc8439_chacha20poly1305.json"), ids=case_id)
def test_chacha20_poly1305_rfc8439(case: dict[str, Any]) -> None:
    key, nonce, aad = h(case["key"]), h(case["nonce"]), h(case["aad"])
    sealed = h(case["ciphertext"]) + h(case["tag"])
    assert p.seal(key, nonce, h(case["plaintext"]), aad) == sealed
    assert p.open_(key, nonce, sealed, aad) == h(case["plaintext"])


def test_chacha20_poly1305_rfc8439_a5_with_a_flipped_tag_bit() -> None:
    data = load("rfc8439_chacha20poly1305.json")
    bad = data["bad_tag"]
    (case,) = [c for c in data["cases"] if c["name"] == bad["of"]]
    with pytest.raises(p.DecryptError):
        p.open_(h(case["key"]), h(case["nonce"]), h(case["ciphertext"]) + h(bad["tag"]), h(case["aad"]))


@pytest.mark.parametrize("case", cases("wycheproof_chacha20_poly1305.json", "tests"), ids=case_id)
def test_chacha20_poly1305_wycheproof(case: dict[str, Any]) -> None:
    key, nonce, aad, msg = h(case["key"]), h(case["iv"]), h(case["aad"]), h(case["msg"])
    sealed = h(case["ct"]) + h(case["tag"])
    if len(nonce) != p.NONCE:  # a wrong nonce size is refused before anything is decrypted
        with pytest.raises(p.BadKeyError):
            p.open_(key, nonce, sealed, aad)
        with pytest.raises(p.BadKeyError):
            p.seal(key, nonce, msg, aad)
    elif case["result"] == "invalid":
        assert "ModifiedTag" in case["flags"]
        with pytest.raises(p.DecryptError):
            p.open_(key, nonce, sealed, aad)
    else:
        assert p.seal(key, nonce, msg, aad) == sealed
        assert p.open_(key, nonce, sealed, aad) == msg
