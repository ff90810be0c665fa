"""Files across server restarts and full disks (protocol 1.6): one backend, since none of
it depends on the I/O strategy.

- a file offered to a user who is offline reaches them after the server restarted;
- an upload cut by a SIGKILL of the server resumes after the restart (the server
  re-hashes what it holds), and the file arrives intact;
- an upload over the kept reserve is refused before any chunk, and one that fills the
  disk fails with NO_SPACE (its partial file removed); chat goes on, and the space is
  used again once it is free.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.client.downloads import TransferError
from csce513msg.client.transfer import Upload
from csce513msg.protocol import ContentType, Deliver, ErrorCode, Offer, Receipt, parse_offer
from tests.conformance.wire import connect, next_of
from tests.fixtures import Names, SmallDisk
from tests.servers import start

BACKENDS = ["epoll"]


def offer_of(client: Client) -> Offer:
    return parse_offer(next_of(client, Deliver, lambda d: d.content_type == ContentType.FILE_OFFER).body)


def test_an_offline_recipient_gets_the_file_after_a_restart(backend: str, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    data_dir = tmp_path / "data"
    server = start(backend, "--data-dir", str(data_dir), "--disk-reserve", "0")
    path = tmp_path / "lab1.py"
    path.write_bytes(os.urandom(700_000))
    try:
        connect(server, bob, device_id="bob-1").close()  # bob exists, and is offline
        with connect(server, alice) as a:
            a.send_file(bob, path)
        assert server.terminate() == 0
        server = start(backend, "--data-dir", str(data_dir), "--disk-reserve", "0")
        with connect(server, bob, device_id="bob-1") as b:
            assert b.download(offer_of(b), tmp_path / "bob").read_bytes() == path.read_bytes()
    finally:
        server.stop()


def test_an_upload_cut_by_a_sigkill_resumes_after_the_restart(backend: str, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    data_dir = tmp_path / "data"
    server = start(backend, "--data-dir", str(data_dir), "--disk-reserve", "0")
    path = tmp_path / "video.bin"
    path.write_bytes(os.urandom(4 << 20))
    try:
        connect(server, bob).close()
        a = connect(server, alice, device_id="alice-1")
        upload = Upload(a.session, path, bob)
        while upload.acked < (1 << 20):
            a.flush()
            a.next_message(upload.handle)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        a.close()
        server = start(backend, "--data-dir", str(data_dir), "--disk-reserve", "0")
        with connect(server, alice, device_id="alice-1") as again, connect(server, bob) as b:
            resumed = Upload(again.session, path, bob, upload_id=upload.upload_id)
            again.flush()
            again.next_message(resumed.handle)
            assert resumed.sent >= 1 << 20  # it went on from the server's bytes, not from 0
            while not resumed.done:
                again.flush()
                again.next_message(resumed.handle)
            assert resumed.complete, resumed.error
            again.request(again.session.send_offer(bob, resumed.offer()), Receipt)
            assert b.download(offer_of(b), tmp_path / "bob").read_bytes() == path.read_bytes()
    finally:
        server.stop()


def test_a_full_disk_fails_the_upload_and_chat_goes_on(
    backend: str, names: Names, tmp_path: Path, small_disk: SmallDisk
) -> None:
    disk = small_disk("24m")
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--data-dir", str(disk), "--disk-reserve", "4M", "--durability", "normal")
    try:
        with connect(server, alice) as a, connect(server, bob) as b:
            big = tmp_path / "big.bin"
            big.write_bytes(os.urandom(22 << 20))
            with pytest.raises(ServerError) as reserve:  # refused before any chunk: it would pass the reserve
                a.upload_file(big, bob)
            assert reserve.value.code == ErrorCode.NO_SPACE
            filler = disk / "filler"  # not the server's: space taken behind its back
            room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            middle = tmp_path / "middle.bin"
            middle.write_bytes(os.urandom(room - (4 << 20) - (1 << 20)))  # fits the reserve check
            upload = Upload(a.session, middle, bob)
            a.flush()
            a.next_message(upload.handle)  # the upload exists
            filler.write_bytes(b"\0" * (room - (2 << 20)))  # then the disk fills under it
            with pytest.raises(ServerError):
                while not upload.done:
                    a.flush()
                    a.next_message(upload.handle)
                    if upload.error is not None:
                        raise ServerError(upload.error)
            assert upload.error is not None and upload.error.code == ErrorCode.NO_SPACE
            assert not [p for p in (disk / "files").iterdir() if p.name.startswith(upload.upload_id)]
            a.send_text(bob, "still here")  # chat goes on
            assert next_of(b, Deliver).body == b"still here"
            filler.unlink()
            small = tmp_path / "small.bin"
            small.write_bytes(os.urandom(100_000))
            a.send_file(bob, small)  # the space is used again
            assert b.download(offer_of(b), tmp_path / "bob").read_bytes() == small.read_bytes()
    finally:
        server.stop()


def test_a_full_disk_on_the_receiving_side_removes_the_partial_file(
    backend: str, names: Names, tmp_path: Path, small_disk: SmallDisk
) -> None:
    alice, bob = names("alice"), names("bob")
    server = start(backend, "--data-dir", str(tmp_path / "data"), "--disk-reserve", "0")
    downloads = small_disk("1m")
    try:
        with connect(server, alice) as a, connect(server, bob) as b:
            path = tmp_path / "big.bin"
            path.write_bytes(os.urandom(3 << 20))
            a.send_file(bob, path)
            with pytest.raises(TransferError, match="no space"):
                b.download(offer_of(b), downloads)
            assert not list(downloads.iterdir())  # no partial file left behind
            a.send_text(bob, "chat goes on")
            assert next_of(b, Deliver).body == b"chat goes on"
    finally:
        server.stop()
