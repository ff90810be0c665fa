"""crypto/vault.py: the private state at rest, on real files in a temporary directory."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csce513msg.crypto.keys import DeviceKeys
from csce513msg.crypto.passwords import KdfCost
from csce513msg.crypto.vault import VAULT_COSTS, Vault, VaultError, VaultLockedError

TEST = VAULT_COSTS["test"]
PASS = "correct horse battery staple"
DOC: dict[str, Any] = {"keys": {"a": [1, 2, 3]}, "name": "alice", "text": "héllo ✓", "n": 2**62}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault.json"


@pytest.fixture
def saved(path: Path) -> Path:
    """A vault at ``path`` holding ``DOC``."""
    Vault.create(path, PASS, TEST).save(DOC)
    return path


def record(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def rewrite(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    data = record(path)
    change(data)
    path.write_text(json.dumps(data))


def test_a_document_round_trips(path: Path) -> None:
    vault = Vault.create(path, PASS, TEST)
    assert vault.load() == {}
    vault.save(DOC)
    assert vault.load() == DOC
    assert Vault.open(path, PASS).load() == DOC
    assert set(record(path)) == {"v", "kdf", "log2n", "r", "p", "salt", "nonce", "data"}
    assert record(path)["kdf"] == "scrypt" and record(path)["v"] == 1


def test_device_keys_round_trip_through_a_vault(path: Path) -> None:
    keys = DeviceKeys.create(1_700_000_000_000_000)
    keys.new_one_time(20)
    Vault.create(path, PASS, TEST).save({"keys": keys.to_dict()})
    assert DeviceKeys.from_dict(Vault.open(path, PASS).load()["keys"]) == keys


def test_the_production_cost_is_stored_and_used(path: Path) -> None:
    assert VAULT_COSTS["production"] == KdfCost(15, 8, 1)
    Vault.create(path, PASS).save(DOC)
    assert (record(path)["log2n"], record(path)["r"], record(path)["p"]) == (15, 8, 1)
    assert Vault.open(path, PASS).load() == DOC


def test_each_save_draws_a_new_nonce(saved: Path) -> None:
    vault = Vault.open(saved, PASS)
    nonces = set()
    for _ in range(5):
        vault.save(DOC)
        nonces.add(record(saved)["nonce"])
    assert len(nonces) == 5


def test_a_wrong_passphrase_is_a_plain_refusal(saved: Path) -> None:
    with pytest.raises(VaultLockedError, match="wrong passphrase, or the file was altered") as caught:
        Vault.open(saved, PASS + "!")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no InvalidTag traceback


@pytest.mark.parametrize("name", ["salt", "nonce", "data"])
def test_every_byte_of_salt_nonce_and_data_is_authenticated(saved: Path, name: str) -> None:
    good = saved.read_bytes()
    raw = base64.b64decode(record(saved)[name])
    for i in range(len(raw)):
        altered = raw[:i] + bytes([raw[i] ^ 0x80]) + raw[i + 1 :]
        rewrite(saved, lambda r: r.update({name: base64.b64encode(altered).decode()}))  # noqa: B023 (called at once)
        with pytest.raises(VaultLockedError, match="wrong passphrase, or the file was altered"):
            Vault.open(saved, PASS)
        saved.write_bytes(good)
    assert Vault.open(saved, PASS).load() == DOC


def test_an_altered_file_is_refused_by_an_open_vault_too(saved: Path) -> None:
    vault = Vault.open(saved, PASS)
    data = bytearray(base64.b64decode(record(saved)["data"]))
    data[0] ^= 1
    rewrite(saved, lambda r: r.update(data=base64.b64encode(data).decode()))
    with pytest.raises(VaultLockedError, match="altered"):
        vault.load()


@pytest.mark.parametrize(("field", "value"), [("log2n", 2), ("r", 2), ("p", 2)])
def test_the_kdf_parameters_cannot_be_edited(path: Path, field: str, value: int) -> None:
    """Made at log2n 4, r 1, p 1: a file edited to other parameters does not open (they are
    authenticated and feed the key), and an open vault refuses the file as re-keyed."""
    vault = Vault.create(path, PASS, KdfCost(4, 1, 1))
    vault.save(DOC)
    rewrite(path, lambda r: r.update({field: value}))
    with pytest.raises(VaultLockedError, match="wrong passphrase, or the file was altered"):
        Vault.open(path, PASS)
    with pytest.raises(VaultLockedError, match="open it again"):
        vault.load()


def test_a_downgrade_to_the_cheapest_cost_is_refused(path: Path) -> None:
    Vault.create(path, PASS).save(DOC)
    rewrite(path, lambda r: r.update(log2n=1, r=1, p=1))
    with pytest.raises(VaultLockedError):
        Vault.open(path, PASS)


@pytest.mark.parametrize(("field", "value"), [("log2n", 40), ("r", 0), ("p", 2**20), ("log2n", 24)])
def test_parameters_out_of_range_are_refused_before_any_work(saved: Path, field: str, value: int) -> None:
    rewrite(saved, lambda r: r.update({field: value}))
    started = time.monotonic()
    with pytest.raises(VaultLockedError, match="scrypt parameters out of range"):
        Vault.open(saved, PASS)
    assert time.monotonic() - started < 5  # generous: what matters is that no 2 GiB scrypt ran


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty": (lambda f: f.write_bytes(b""), "not a vault file"),
    "not JSON": (lambda f: f.write_bytes(b"\x00garbage"), "not a vault file"),
    "a list": (lambda f: f.write_text("[]"), "not a vault file"),
    "a field missing": (lambda f: rewrite(f, lambda r: r.pop("nonce")), "not a vault file"),
    "a field more": (lambda f: rewrite(f, lambda r: r.update(hint="pet's name")), "not a vault file"),
    "a bool for r": (lambda f: rewrite(f, lambda r: r.update(r=True)), "not a vault file"),
    "another kdf": (lambda f: rewrite(f, lambda r: r.update(kdf="pbkdf2")), "not a vault file"),
    "not base64": (lambda f: rewrite(f, lambda r: r.update(salt="***")), "not a vault file"),
    "a short salt": (lambda f: rewrite(f, lambda r: r.update(salt=base64.b64encode(b"s").decode())), "wrong size"),
    "a short nonce": (lambda f: rewrite(f, lambda r: r.update(nonce=r["nonce"][:8])), "wrong size"),
    "a newer format": (lambda f: rewrite(f, lambda r: r.update(v=2)), "vault format 2, this program reads 1"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_file_is_a_clear_refusal(saved: Path, damage: str) -> None:
    change, message = DAMAGE[damage]
    change(saved)
    with pytest.raises(VaultLockedError, match=message):
        Vault.open(saved, PASS)


def test_the_file_is_private_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        vault = Vault.create(path, PASS, TEST)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        vault.save(DOC)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_stray_temporary_file_from_an_interrupted_save_harms_nothing(saved: Path) -> None:
    stray = saved.with_name(f".{saved.name}.0123456789abcdef.tmp")
    stray.write_bytes(saved.read_bytes()[:40])  # a save cut off mid-write
    vault = Vault.open(saved, PASS)
    assert vault.load() == DOC
    vault.save({"after": True})
    assert Vault.open(saved, PASS).load() == {"after": True}


def test_a_save_that_fails_leaves_the_last_good_file_and_no_debris(saved: Path) -> None:
    vault = Vault.open(saved, PASS)
    before = saved.read_bytes()
    with pytest.raises(TypeError):
        vault.save({"bytes are not JSON": b"\x00"})
    with pytest.raises(ValueError):
        vault.save({"nan": float("nan")})
    assert saved.read_bytes() == before and sorted(saved.parent.iterdir()) == [saved]


SAVER = """
import sys
from csce513msg.crypto.vault import Vault
vault = Vault.open(sys.argv[1], sys.argv[2])
for n in range(1, 100000):
    vault.save({"n": n, "padding": "x" * 200000})
    print(n, flush=True)
"""


@pytest.fixture
def saver(saved: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(saved), PASS], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_process_killed_while_saving_leaves_a_vault_that_opens(saved: Path, saver: subprocess.Popen[str]) -> None:
    """A real crash: a process saving 200 KB documents in a loop, killed (SIGKILL) mid-stream.
    The vault opens and holds one whole document, the last completed or the one after it."""
    assert saver.stdout is not None
    done = 0
    deadline = time.monotonic() + 30
    while done < 5 and time.monotonic() < deadline:
        done = int(saver.stdout.readline() or done)
    assert done >= 5, "the saving process made no progress"
    saver.send_signal(signal.SIGKILL)
    saver.wait(timeout=30)
    doc = Vault.open(saved, PASS).load()
    assert doc["n"] >= done and doc["padding"] == "x" * 200000


def test_change_passphrase(saved: Path) -> None:
    vault = Vault.open(saved, PASS)
    other = Vault.open(saved, PASS)
    salt = record(saved)["salt"]
    vault.change_passphrase("a new password")
    assert record(saved)["salt"] != salt
    with pytest.raises(VaultLockedError, match="wrong passphrase"):
        Vault.open(saved, PASS)
    assert Vault.open(saved, "a new password").load() == DOC
    vault.save({"still": "works"})
    assert vault.load() == {"still": "works"}
    with pytest.raises(VaultLockedError, match="open it again"):  # a second process holding the old key
        other.load()


def test_change_passphrase_can_raise_the_cost(saved: Path) -> None:
    Vault.open(saved, PASS).change_passphrase(PASS, KdfCost(4, 2, 1))
    assert (record(saved)["log2n"], record(saved)["r"]) == (4, 2)
    assert Vault.open(saved, PASS).load() == DOC


def test_a_symbolic_link_is_never_followed(saved: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(saved)
    before = saved.read_bytes()
    with pytest.raises(VaultError, match="symbolic link"):
        Vault.open(link, PASS)
    vault = Vault.open(saved, PASS)
    vault.path = link  # as if the path had been swapped for a link after opening
    with pytest.raises(VaultError, match="symbolic link"):
        vault.save({"through": "the link"})
    assert saved.read_bytes() == before and link.is_symlink()
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(VaultError, match="exists already"):
        Vault.create(dangling, PASS, TEST)
    assert not (tmp_path / "nowhere").exists()


def test_create_never_replaces_a_file(saved: Path) -> None:
    before = saved.read_bytes()
    with pytest.raises(VaultError, match="exists already"):
        Vault.create(saved, "another", TEST)
    assert saved.read_bytes() == before


def test_what_a_caller_gets_wrong_is_a_value_error(path: Path) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        Vault.create(path, "", TEST)
    with pytest.raises(ValueError, match="out of range"):
        Vault.create(path, PASS, KdfCost(30, 8, 1))
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        Vault.open(path, PASS)
