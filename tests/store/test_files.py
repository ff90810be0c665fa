"""The file lane's disk side (store/files.py) on a real directory: the reserve counts every
upload under way, a record whose bytes were renamed before it was updated is complete after
a restart, and strays are removed (a subdirectory left alone)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from csce513msg.store.files import FileShelf, TransferError, UploadRecord


def record(uid: str, size: int, data: bytes = b"") -> UploadRecord:
    return UploadRecord(uid, "alice", "dm:alice,bob", size, hashlib.sha256(data).hexdigest(), 1, 2)


def test_the_reserve_counts_the_bytes_promised_to_uploads_under_way(tmp_path: Path) -> None:
    shelf = FileShelf(tmp_path / "files")
    shelf.load()
    shelf.reserve = shelf.free() - (300 << 20)  # room for 300 MiB above the reserve
    shelf.create(record("a", 200 << 20))
    with pytest.raises(TransferError) as full:  # alone it would fit; with the first, not
        shelf.create(record("b", 200 << 20))
    assert full.value.no_space
    shelf.delete("a")
    shelf.create(record("c", 200 << 20))  # the promise went with the upload


def test_load_finds_a_complete_upload_whose_record_was_not_yet_updated(tmp_path: Path) -> None:
    shelf = FileShelf(tmp_path / "files")
    shelf.load()
    shelf.create(record("a", 3, b"abc"))
    shelf.write(record("a", 3, b"abc"), 0, b"abc")  # complete: renamed, record rewritten
    files = tmp_path / "files"
    (files / "a.json").write_text((files / "a.json").read_text().replace('"complete": true', '"complete": false'))
    (files / "stray.part").write_bytes(b"x")
    (files / "a.json.tmp").write_bytes(b"{")
    (files / "somedir").mkdir()
    found = FileShelf(files).load()
    assert found["a"][0].complete and found["a"][1] == 3
    assert sorted(p.name for p in files.iterdir()) == ["a", "a.json", "somedir"]
