"""A received file on disk: ``client/downloads.py``, on real files in ``tmp_path``."""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csce513msg.client.downloads import (
    MAX_NAME_BYTES,
    PartialDownload,
    TransferError,
    _copy_to_new,
    default_downloads_dir,
    partial_name,
    safe_name,
)
from csce513msg.units import parse_size, show_size

ZWJ = "\u200d"  # kept by sanitize (emoji sequences need it), so kept in names too


# ---- safe_name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..", "file"),
        (".", "file"),
        ("dir/", "dir"),
        (".bashrc", "bashrc"),
        ("a\\b\\c.txt", "c.txt"),
        ("C:\\Users\\x\\..\\evil.exe", "evil.exe"),
        ("\x1b[31mred\x1b[0m.txt", "[31mred[0m.txt"),  # the escape goes; its printable tail is harmless
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # no right-to-left override to hide ".exe"
        ("a\x00b\x7f\x85c", "abc"),  # NUL, DEL, a C1 control
        ("zero\u200bwidth\ufeff\U000e0041", "zerowidth"),
        ("line\nfeed\ttab", "linefeedtab"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Com1.tar.gz", "_Com1.tar.gz"),
        ("LPT9.log", "_LPT9.log"),
        ("nul .txt", "_nul .txt"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("COM10", "COM10"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"),
        ("   ", "file"),
        ("", "file"),
        (" . notes. . ", "notes"),
        ("\u202e", "file"),
        ("cafe\u0301.txt", "caf\u00e9.txt"),  # NFC: one code point for é
    ],
)
def test_safe_name(name: str, safe: str) -> None:
    assert safe_name(name) == safe


def test_a_long_name_is_cut_to_the_limit_and_keeps_its_extension() -> None:
    out = safe_name("x" * 1000 + ".pdf")
    assert len(out.encode()) == MAX_NAME_BYTES
    assert out == "x" * (MAX_NAME_BYTES - 4) + ".pdf"


def test_a_long_suffix_is_no_extension_and_is_cut_too() -> None:
    out = safe_name("a." + "b" * 1000)
    assert out == "a." + "b" * (MAX_NAME_BYTES - 2)


def test_a_long_name_of_multibyte_characters_is_cut_between_characters() -> None:
    """2, 4, then 3-byte characters: the limit (196 bytes before ``.txt``) falls one byte
    into a character, which goes whole, with no replacement character in its place."""
    out = safe_name("\u00e9\U0001f600" + "\u732b" * 400 + ".txt")
    raw = out.encode()
    assert raw.decode() == out
    assert out == "\u00e9\U0001f600" + "\u732b" * 63 + ".txt"
    assert len(raw) == MAX_NAME_BYTES - 1


@given(st.text())
def test_any_text_becomes_a_safe_name(text: str) -> None:
    out = safe_name(text)
    assert out
    assert not set(out) & set("/\\\x00")
    assert not out.startswith(".") and not out.startswith(" ")
    assert not out.endswith(".") and not out.endswith(" ")
    assert len(out.encode()) <= MAX_NAME_BYTES
    for char in out:
        category = unicodedata.category(char)
        assert category not in ("Cc", "Zl", "Zp"), repr(char)
        assert category != "Cf" or char == ZWJ, repr(char)
    assert unicodedata.is_normalized("NFC", out)
    assert safe_name(out) == out


@given(st.text(st.sampled_from("aé\u0301./\\ <:\x00\u202eCONUL1x"), max_size=300))
def test_names_made_of_the_tricky_parts_are_safe_too(text: str) -> None:
    """Plain ``st.text()`` rarely builds ``CON``, ``..`` or a combining mark after a dot."""
    out = safe_name(text)
    assert safe_name(out) == out
    assert out not in (".", "..") and "/" not in out
    assert out.split(".")[0].rstrip(" ").upper() not in ("CON", "NUL")


# ---- parse_size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("10k", 10240),
        ("10K", 10240),
        ("10KB", 10240),
        ("64KiB", 65536),
        ("1.5M", 1572864),
        ("1.5m", 1572864),
        ("3 MiB", 3 << 20),
        ("2G", 2 << 30),
        (".5k", 512),
        ("1.0009k", 1024),  # 1024.92: a fraction of a byte is dropped
        (" 7 ", 7),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "ten", "1e3", "1T", "1.5.5", "0x10", "10 k k", "iB", "5iB", "\u0663", "inf"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["-1", "-10k", " -0.5M"])
def test_parse_size_refuses_a_negative_size(text: str) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(text)


def test_show_size() -> None:
    assert [show_size(n) for n in (0, 1023, 1536, 5 << 20, 3 << 30)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]


def test_parse_size_refuses_a_size_past_a_signed_64_bit_integer() -> None:
    assert parse_size("8589934591G") == (1 << 63) - (1 << 30)
    with pytest.raises(ValueError, match="too large"):
        parse_size("8589934592G")


# ---- PartialDownload -------------------------------------------------------------------

DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
SHA = hashlib.sha256(DATA).hexdigest()


def receive(directory: Path, name: str, data: bytes = DATA, upload_id: str = "up1", chunk: int = 1000) -> Path:
    """The whole file received in chunks; returns where it landed."""
    part = PartialDownload.open(directory, upload_id, name, len(data), hashlib.sha256(data).hexdigest())
    for offset in range(0, len(data), chunk):
        part.write(offset, data[offset : offset + chunk])
    return part.finish()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_chunks_then_finish_give_the_same_bytes_under_the_safe_name(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    final = receive(downloads, "../report.pdf")
    assert final == downloads / "report.pdf"
    assert final.read_bytes() == DATA
    assert listing(downloads) == ["report.pdf"]  # the partial file is gone


def test_the_directory_is_made_0700_and_files_are_0600(tmp_path: Path) -> None:
    downloads = tmp_path / "new" / "downloads"
    part = PartialDownload.open(downloads, "up1", "a.txt", len(DATA), SHA)
    assert stat.S_IMODE(downloads.stat().st_mode) == 0o700
    assert stat.S_IMODE(part.path.stat().st_mode) == 0o600
    part.write(0, DATA)
    assert stat.S_IMODE(part.finish().stat().st_mode) == 0o600


def test_the_partial_file_is_hidden_and_named_from_the_upload_id_only(tmp_path: Path) -> None:
    with PartialDownload.open(tmp_path, "Ab-9_z", "../../x.sh", 1, "00" * 32) as part:
        assert part.path == tmp_path / ".csce513msg-Ab-9_z.part" == tmp_path / partial_name("Ab-9_z")
        assert (part.name, part.upload_id, part.size, part.received) == ("x.sh", "Ab-9_z", 1, 0)
    assert part.path.exists()  # leaving the block closes, and keeps the partial file


@pytest.mark.parametrize("upload_id", ["", "a" * 65, "../x", "a/b", "a.b", "a b", "\u00e9", "x\x00"])
def test_an_invalid_upload_id_is_refused(tmp_path: Path, upload_id: str) -> None:
    with pytest.raises(ValueError, match="upload id"):
        PartialDownload.open(tmp_path, upload_id, "a.txt", 1, SHA)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(("size", "sha"), [(-1, SHA), (1, "ab"), (1, "g" * 64), (1, SHA + "0")])
def test_an_invalid_size_or_hash_is_refused(tmp_path: Path, size: int, sha: str) -> None:
    with pytest.raises(ValueError):
        PartialDownload.open(tmp_path, "up1", "a.txt", size, sha)


def test_the_announced_hash_is_compared_in_either_case(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA.upper())
    part.write(0, DATA)
    assert part.finish().read_bytes() == DATA


def test_a_wrong_hash_leaves_no_file(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), hashlib.sha256(b"other").hexdigest())
    part.write(0, DATA)
    with pytest.raises(TransferError, match="hash mismatch"):
        part.finish()
    assert listing(tmp_path) == []


def test_a_short_file_is_a_size_mismatch_and_leaves_no_file(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:-1])
    with pytest.raises(TransferError, match="size mismatch"):
        part.finish()
    assert listing(tmp_path) == []


def test_a_chunk_past_the_size_or_out_of_place_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:100])
    with pytest.raises(TransferError, match="past its size"):
        part.write(100, DATA[100:] + b"extra")
    with pytest.raises(TransferError, match="expected one at byte 100"):
        part.write(200, DATA[200:])  # a gap
    with pytest.raises(TransferError, match="expected one at byte 100"):
        part.write(0, DATA[:100])  # a repeat
    assert part.received == 100 and part.path.read_bytes() == DATA[:100]
    part.write(100, DATA[100:])
    assert part.finish().read_bytes() == DATA


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"mine")
    first = receive(tmp_path, "report.pdf", b"first", upload_id="u1")
    second = receive(tmp_path, "report.pdf", b"second", upload_id="u2")
    assert (first.name, second.name) == ("report (1).pdf", "report (2).pdf")
    assert [p.read_bytes() for p in (tmp_path / "report.pdf", first, second)] == [b"mine", b"first", b"second"]
    assert receive(tmp_path, "README", b"r1", upload_id="u3").name == "README"
    assert receive(tmp_path, "README", b"r2", upload_id="u4").name == "README (1)"


def test_a_symlink_at_the_final_name_is_neither_followed_nor_replaced(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "notes.txt").symlink_to(target)  # dangling: a plain open would create target
    final = receive(downloads, "notes.txt", b"data")
    assert final.name == "notes (1).txt" and final.read_bytes() == b"data"
    assert not target.exists() and (downloads / "notes.txt").is_symlink()


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/etc/cron.d/x", "..\\..\\x", "..", ".", "sub/../../y", "\x00", "~/.ssh/authorized_keys"]
)
def test_a_hostile_name_lands_inside_the_directory(tmp_path: Path, name: str) -> None:
    downloads = tmp_path / "downloads"
    final = receive(downloads, name, b"x")
    assert final.parent == downloads
    assert listing(tmp_path) == ["downloads"] and listing(downloads) == [final.name]
    assert not final.name.startswith(".")


def test_a_transfer_resumes_from_the_bytes_on_disk(tmp_path: Path) -> None:
    half = len(DATA) // 2
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:half])
    part.close()
    again = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    assert again.received == half
    again.write(half, DATA[half:])
    assert again.finish().read_bytes() == DATA


def test_a_resumed_transfer_hashes_what_is_on_disk_not_what_was_sent(tmp_path: Path) -> None:
    """Bytes changed on disk between two runs are caught at the end: the hash was redone."""
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:100])
    part.close()
    part.path.write_bytes(b"X" * 100)
    again = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    again.write(100, DATA[100:])
    with pytest.raises(TransferError, match="hash mismatch"):
        again.finish()


def test_a_partial_file_longer_than_the_size_starts_over(tmp_path: Path) -> None:
    (tmp_path / partial_name("up1")).write_bytes(b"junk" * 10000)
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    assert part.received == 0 and part.path.stat().st_size == 0
    part.write(0, DATA)
    assert part.finish().read_bytes() == DATA


def test_a_symlink_planted_at_the_partial_name_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / partial_name("up1")).symlink_to(victim)
    with pytest.raises(TransferError, match="symbolic link"):
        PartialDownload.open(downloads, "up1", "a.bin", len(DATA), SHA)
    assert victim.read_bytes() == b"precious"


def test_a_directory_or_a_fifo_at_the_partial_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / partial_name("up1")).mkdir()
    (tmp_path / "f").mkdir()
    os.mkfifo(tmp_path / "f" / partial_name("up1"))
    for directory in (tmp_path / "d", tmp_path / "f"):
        with pytest.raises(TransferError, match="not a regular file"):
            PartialDownload.open(directory, "up1", "a.bin", 1, SHA)


def test_one_upload_is_received_by_one_process_at_a_time(tmp_path: Path) -> None:
    """Two ``msg`` of the same user sharing a directory: the second is refused (flock),
    and may try again once the first has closed."""
    first = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    with pytest.raises(TransferError, match="another process"):
        PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    first.close()
    PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA).close()


def test_abort_removes_the_partial_file_and_a_closed_download_refuses_chunks(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:10])
    part.abort()
    assert listing(tmp_path) == []
    with pytest.raises(TransferError, match="closed"):
        part.write(10, DATA[10:20])
    with pytest.raises(TransferError, match="closed"):
        part.finish()


def test_an_empty_file_is_received(tmp_path: Path) -> None:
    part = PartialDownload.open(tmp_path, "up1", "empty", 0, hashlib.sha256(b"").hexdigest())
    assert part.finish().read_bytes() == b""


def test_the_copy_used_without_hard_links_never_replaces_a_file(tmp_path: Path) -> None:
    """Where the file system has no hard links, ``finish`` copies into a file made with
    O_EXCL (this machine's file system has them, so the copy is tested on its own)."""
    source = tmp_path / "source"
    source.write_bytes(DATA)
    fd = os.open(source, os.O_RDONLY)
    try:
        _copy_to_new(fd, tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == DATA
        (tmp_path / "taken").write_bytes(b"mine")
        with pytest.raises(FileExistsError):
            _copy_to_new(fd, tmp_path / "taken")
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
        with pytest.raises(FileExistsError):
            _copy_to_new(fd, tmp_path / "link")
    finally:
        os.close(fd)
    assert (tmp_path / "taken").read_bytes() == b"mine" and not (tmp_path / "nowhere").exists()
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600


# ---- where downloads go ----------------------------------------------------------------


def test_downloads_go_under_the_clients_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_downloads_dir() == tmp_path / "xdg" / "csce513msg" / "client" / "downloads"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_downloads_dir() == tmp_path / "home" / ".local" / "share" / "csce513msg" / "client" / "downloads"
    monkeypatch.setenv("MSG_DATA_DIR", str(tmp_path / "mine"))
    assert default_downloads_dir() == tmp_path / "mine" / "downloads"


def test_rewind_keeps_the_first_bytes_and_hashes_them_again(tmp_path: Path) -> None:
    """An encrypted download resumes at a chunk's start: what a stopped run half wrote goes."""
    part = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    part.write(0, DATA[:100])
    part.close()
    with (tmp_path / partial_name("up1")).open("ab") as f:
        f.write(b"half written")
    again = PartialDownload.open(tmp_path, "up1", "a.bin", len(DATA), SHA)
    assert again.received == 112
    again.rewind(100)
    assert again.received == 100 and again.path.stat().st_size == 100
    with pytest.raises(ValueError):
        again.rewind(101)
    again.write(100, DATA[100:])
    assert again.finish().read_bytes() == DATA
