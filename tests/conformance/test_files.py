"""Conformance: files (1.6, docs/protocol.md section 13), on every backend.

Files of 0 bytes, a few bytes and 20 MB go through a real server byte for byte; chat
keeps flowing on the uploading connection and on others while a large one moves; a
file to a group is stored once and fetched by each member; whoever is not in the
conversation gets FILE_NOT_FOUND, as for a guessed id; the limits answer before a chunk
is sent; a broken upload (wrong bytes, a chunk out of place or past the size, too many
bytes unacknowledged) is removed with TRANSFER_FAILED and the connection goes on; both
sides resume after a cut, and either can cancel."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from csce513msg.client import Client, ServerError
from csce513msg.client.downloads import PartialDownload, TransferError
from csce513msg.client.transfer import Download, Upload
from csce513msg.protocol import (
    VERSION_MAJOR,
    VERSION_MINOR,
    ContentType,
    Deliver,
    Error,
    ErrorCode,
    FileCancel,
    FileChunk,
    FileData,
    FileGet,
    FileState,
    FileStatus,
    FileUpload,
    Hello,
    Message,
    Offer,
    Receipt,
    Register,
    TargetKind,
    parse_offer,
)
from csce513msg.protocol.transfer import MIN_CHUNK, chunk_limit
from tests.conformance.wire import PASSWORD, RawConn, connect, next_of
from tests.fixtures import Names, Server

QUOTA = 48 << 20
SERVER_FLAGS = ("--max-file", "32M", "--file-quota", str(QUOTA), "--disk-reserve", "16M")
LARGE = 20 << 20


def a_file(tmp_path: Path, size: int, name: str = "notes.bin") -> Path:
    path = tmp_path / "out" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def offer_of(client: Client) -> Offer:
    """The next file offer delivered to ``client``."""
    deliver = next_of(client, Deliver, lambda d: d.content_type == ContentType.FILE_OFFER)
    return parse_offer(deliver.body)


def raw_uploader(server: Server, user: str) -> RawConn:
    conn = RawConn(server)
    assert "files" in conn.welcome().features
    conn.send(Hello(VERSION_MAJOR, 6, ("files",), request_id=1), Register(user, PASSWORD, user, request_id=2))
    conn.login_ok()
    return conn


@pytest.mark.parametrize("size", [0, 5, LARGE])
def test_a_file_arrives_byte_identical(server: Server, names: Names, tmp_path: Path, size: int) -> None:
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a, connect(server, bob) as b:
        assert a.session.has_files and b.session.has_files
        welcome = a.session.welcome
        assert welcome is not None and welcome.max_file == 32 << 20 and welcome.file_quota == QUOTA
        path = a_file(tmp_path, size)
        upload, receipt = a.send_file(bob, path)
        assert upload.complete and receipt.position >= 1
        offer = offer_of(b)
        assert (offer.name, offer.size, offer.sha256) == (
            "notes.bin",
            size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        got = b.download(offer, tmp_path / "bob")
        assert got.read_bytes() == path.read_bytes()
        assert got.parent == tmp_path / "bob" and got.name == "notes.bin"
        assert [p.name for p in got.parent.iterdir()] == ["notes.bin"]  # no partial file left


@pytest.mark.parametrize("minor", [7, VERSION_MINOR])
def test_chunks_are_as_large_as_the_session_s_minor_allows(
    server: Server, names: Names, tmp_path: Path, minor: int
) -> None:
    """1.8's max_chunk: a client that says 1.8 uploads and downloads in chunks of the Welcome's
    max_chunk (larger than a frame); one that says 1.7, in max_frame less 1024, as before."""
    alice, bob = names("alice"), names("bob")
    with connect(server, alice, minor=minor) as a, connect(server, bob, minor=minor) as b:
        welcome = a.session.welcome
        assert welcome is not None and welcome.max_chunk >= MIN_CHUNK  # sent before the Hello: to all
        chunk = chunk_limit(minor, welcome.max_frame, welcome.max_chunk)
        assert chunk == (max(welcome.max_chunk, welcome.max_frame - 1024) if minor >= 8 else welcome.max_frame - 1024)
        path = a_file(tmp_path, 3 * chunk + 1000)
        upload = Upload(a.session, path, bob)
        assert upload.chunk == chunk
        while not upload.done:
            a.flush()
            a.next_message(upload.handle)
        assert upload.complete and upload.acked == path.stat().st_size
        a.request(a.session.send_offer(bob, upload.offer()), Receipt)
        offer = offer_of(b)
        got: list[int] = []
        download = Download(b.session, offer, PartialDownload.open(tmp_path / "bob", offer.upload_id, offer.name,
                                                                    offer.size, offer.sha256))  # fmt: skip

        def take(m: Message) -> bool:
            if isinstance(m, FileData):
                got.append(len(m.body))
            return download.handle(m)

        while not download.done:
            b.flush()
            b.next_message(take)
        assert download.path is not None and download.path.read_bytes() == path.read_bytes()
        assert max(got) == chunk and sum(got) == offer.size


def test_chat_keeps_flowing_during_a_large_upload(server: Server, names: Names, tmp_path: Path) -> None:
    """alice sends texts on the connection that uploads; carol and dave chat meanwhile."""
    alice, bob, carol, dave = names("alice"), names("bob"), names("carol"), names("dave")
    with (
        connect(server, alice) as a,
        connect(server, bob) as b,
        connect(server, carol) as c,
        connect(server, dave) as d,
    ):
        upload = Upload(a.session, a_file(tmp_path, LARGE), bob)
        texts: list[int] = []
        step = 0
        while not upload.done:
            a.flush()
            a.next_message(upload.handle)
            step += 1
            if step % 4 == 0 and len(texts) < 10:
                texts.append(a.session.send_text(bob, f"while uploading {len(texts)}"))
                c.send_text(dave, f"meanwhile {len(texts)}")
        assert upload.complete
        assert len(texts) == 10, "the upload ended before the chat was sent: the test proves nothing"
        for rid in texts:  # every text got its receipt on the uploading connection
            assert next_of(a, Receipt, _with_id(rid)).message_id
        got = [m.body.decode() for m in b.deliveries(10)]
        assert got == [f"while uploading {i}" for i in range(10)]
        assert [m.body.decode() for m in d.deliveries(10)] == [f"meanwhile {i + 1}" for i in range(10)]


def test_a_file_to_a_group_is_stored_once_and_reaches_every_member(
    server: Server, names: Names, tmp_path: Path
) -> None:
    owner, m1, m2, outsider = names("teacher"), names("ann"), names("ben"), names("eve")
    group = names("lab")
    with connect(server, owner, groups=True) as o, connect(server, outsider) as x:
        clients = [connect(server, user, groups=True) for user in (m1, m2)]
        o.group_create(group)
        o.group_add(group, [m1, m2])
        path = a_file(tmp_path, 300_000, "worksheet.pdf")
        upload, _ = o.send_file(group, path, TargetKind.GROUP)
        for i, client in enumerate(clients):
            offer = offer_of(client)
            assert client.download(offer, tmp_path / f"m{i}").read_bytes() == path.read_bytes()
        if hasattr(server, "data_dir"):  # a server this suite started: look at its disk
            listed = sorted(p.name for p in (Path(server.data_dir) / "files").iterdir())
            mine = [n for n in listed if n.startswith(upload.upload_id)]
            assert mine == [upload.upload_id, upload.upload_id + ".json"]  # its bytes once, and its record
        with pytest.raises(ServerError) as refused:  # not a member: as if there were no such file
            x.call(FileGet(upload.upload_id, 0, 10))
        assert refused.value.code == ErrorCode.FILE_NOT_FOUND
        with pytest.raises(ServerError) as guessed:
            x.call(FileGet("A" * 22, 0, 10))
        assert guessed.value.code == ErrorCode.FILE_NOT_FOUND
        assert guessed.value.error.message == refused.value.error.message
        unfinished = o.call(FileUpload(10, "0" * 64, TargetKind.GROUP, group))  # begun, never sent
        assert isinstance(unfinished, FileState)
        with pytest.raises(ServerError) as early:  # a member, but it is not complete: the same answer
            clients[0].call(FileGet(unfinished.upload_id, 0, 10))
        assert (early.value.code, early.value.error.message) == (ErrorCode.FILE_NOT_FOUND, refused.value.error.message)
        for client in clients:
            client.close()


def test_limits_answer_before_any_chunk(server: Server, names: Names) -> None:
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a:
        connect(server, bob).close()
        sha = "0" * 64
        with pytest.raises(ServerError) as big:
            a.call(FileUpload((32 << 20) + 1, sha, TargetKind.USER, bob))
        assert big.value.code == ErrorCode.FILE_TOO_LARGE
        held = a.call(FileUpload(30 << 20, sha, TargetKind.USER, bob))  # held against the quota
        assert isinstance(held, FileState) and held.state == FileStatus.RECEIVING and held.received == 0
        with pytest.raises(ServerError) as quota:
            a.call(FileUpload(30 << 20, sha, TargetKind.USER, bob))
        assert quota.value.code == ErrorCode.QUOTA_EXCEEDED
        a.call(FileUpload(QUOTA - (30 << 20), sha, TargetKind.USER, bob))  # exactly up to the quota
        with pytest.raises(ServerError) as nobody:
            a.call(FileUpload(10, sha, TargetKind.USER, names("nobody")))
        assert nobody.value.code == ErrorCode.USER_NOT_FOUND
        with pytest.raises(ServerError) as bad:
            a.call(FileUpload(10, "not a hash", TargetKind.USER, bob))
        assert bad.value.code == ErrorCode.BAD_REQUEST
        with pytest.raises(ServerError) as other:  # a resume must name the same size and hash
            a.call(FileUpload(0, sha, TargetKind.USER, bob, held.upload_id))
        assert other.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("fault", ["wrong bytes", "gap", "past the end"])
def test_a_broken_upload_is_removed_and_the_connection_goes_on(server: Server, names: Names, fault: str) -> None:
    alice, bob = names("alice"), names("bob")
    connect(server, bob).close()
    conn = raw_uploader(server, alice)
    data = os.urandom(200_000)
    declared = hashlib.sha256(b"x" + data[1:] if fault == "wrong bytes" else data).hexdigest()
    conn.send(FileUpload(len(data), declared, TargetKind.USER, bob, request_id=3))
    state = conn.expect(FileState)
    uid = state.upload_id
    chunk = 60_000
    if fault == "wrong bytes":
        chunks = [(o, data[o : o + chunk]) for o in range(0, len(data), chunk)]
    elif fault == "gap":
        chunks = [(0, data[:chunk]), (chunk + 1, data[chunk + 1 : 2 * chunk])]
    elif fault == "past the end":
        cut = len(data) - 1000  # the last chunk runs 5 bytes past the size
        chunks = [(o, data[o : min(o + chunk, cut)]) for o in range(0, cut, chunk)] + [(cut, data[cut:] + b"extra")]
    else:  # (the window's rule depends on how fast the disk acknowledges: tests/hub/test_files.py)
        raise AssertionError(fault)
    conn.send(*(FileChunk(uid, offset, body, request_id=10 + i) for i, (offset, body) in enumerate(chunks)))
    failed = None
    while failed is None:
        msg = conn.recv()
        if isinstance(msg, Error):
            failed = msg
    assert failed.code == ErrorCode.TRANSFER_FAILED, failed
    conn.send(FileUpload(len(data), declared, TargetKind.USER, bob, uid, request_id=99))  # resume: gone
    while not (isinstance(msg := conn.recv(), Error) and msg.request_id == 99):
        pass
    assert msg.code == ErrorCode.FILE_NOT_FOUND
    conn.send(Hello(request_id=100))  # the connection is still served (a second Hello: BAD_STATE)
    while not (isinstance(msg := conn.recv(), Error) and msg.request_id == 100):
        pass
    assert msg.code == ErrorCode.BAD_STATE


def test_an_upload_resumes_after_its_connection_is_cut(server: Server, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    path = a_file(tmp_path, 3 << 20)
    with connect(server, bob) as b:
        a = connect(server, alice, device_id="laptop")
        upload = Upload(a.session, path, bob)
        while upload.acked < (1 << 20):
            a.flush()
            a.next_message(upload.handle)
        a.close()  # cut mid-upload
        with connect(server, alice, device_id="laptop") as again:
            resumed = again.upload_file(path, bob, upload_id=upload.upload_id)
            assert resumed.complete and resumed.upload_id == upload.upload_id
            again.request(again.session.send_offer(bob, resumed.offer()), Receipt)
        assert b.download(offer_of(b), tmp_path / "bob").read_bytes() == path.read_bytes()


def test_a_download_resumes_after_its_connection_is_cut(server: Server, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    path = a_file(tmp_path, 3 << 20)
    with connect(server, alice) as a:
        b = connect(server, bob)
        a.send_file(bob, path)
        offer = offer_of(b)
        partial = PartialDownload.open(tmp_path / "bob", offer.upload_id, offer.name, offer.size, offer.sha256)
        download = Download(b.session, offer, partial)
        while download.received < (1 << 20):
            b.flush()
            b.next_message(download.handle)
        partial.close()
        b.close()  # cut mid-download: the partial file stays
        with connect(server, bob) as again:
            reopened = PartialDownload.open(tmp_path / "bob", offer.upload_id, offer.name, offer.size, offer.sha256)
            assert reopened.received >= 1 << 20  # re-hashed, not fetched again
            reopened.close()
            assert again.download(offer, tmp_path / "bob").read_bytes() == path.read_bytes()


def test_the_sender_cancels_and_the_file_is_gone(server: Server, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a, connect(server, bob) as b:
        upload, _ = a.send_file(bob, a_file(tmp_path, 1000))
        offer = offer_of(b)
        state = a.call(FileCancel(upload.upload_id))
        assert isinstance(state, FileState) and state.state == FileStatus.CANCELLED
        with pytest.raises(TransferError, match="server says: no such file"):
            b.download(offer, tmp_path / "bob")
        assert not any((tmp_path / "bob").iterdir())  # the partial file was removed


def test_the_downloader_cancels(server: Server, names: Names, tmp_path: Path) -> None:
    """A download stopped halfway: its partial file is gone, the upload is not (the sender's
    other device cancelling its download must not remove the file for everyone), and it can
    be fetched again from the start."""
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a, connect(server, bob) as b:
        path = a_file(tmp_path, 2 << 20)
        a.send_file(bob, path)
        offer = offer_of(b)
        for who, client in (("alice", a), ("bob", b)):  # the sender's own download too
            partial = PartialDownload.open(tmp_path / who, offer.upload_id, offer.name, offer.size, offer.sha256)
            download = Download(client.session, offer, partial)
            client.flush()
            client.next_message(download.handle)
            download.cancel()
            assert download.done and not download.path and not any((tmp_path / who).iterdir())
            assert client.download(offer, tmp_path / who).read_bytes() == path.read_bytes()


def test_files_need_the_feature(server: Server, names: Names) -> None:
    with connect(server, names("alice"), files=False) as a:
        assert not a.session.has_files
        with pytest.raises(ServerError) as refused:
            a.call(FileUpload(1, "0" * 64, TargetKind.USER, "x"))
        assert refused.value.code == ErrorCode.UNSUPPORTED


def _with_id(rid: int) -> Callable[[Receipt], bool]:
    return lambda r: r.request_id == rid


def test_two_uploads_at_once_share_the_connection_s_window(server: Server, names: Names, tmp_path: Path) -> None:
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a, connect(server, bob) as b:
        paths = [a_file(tmp_path, 3 << 20, f"part{i}.bin") for i in range(2)]
        uploads = [Upload(a.session, path, bob) for path in paths]
        while not all(u.done for u in uploads):
            a.flush()
            a.next_message(lambda m: any(u.handle(m) for u in uploads))
            for u in uploads:  # as msg does: room one frees, the other may use
                u.fill()
        assert all(u.complete for u in uploads), [u.error for u in uploads]
        for upload, path in zip(uploads, paths, strict=True):
            a.request(a.session.send_offer(bob, upload.offer()), Receipt)
            assert b.download(offer_of(b), tmp_path / "bob").read_bytes() == path.read_bytes()


def test_chat_keeps_flowing_during_a_large_download(server: Server, names: Names, tmp_path: Path) -> None:
    """bob downloads 20 MB; meanwhile alice writes to him and he answers on the same connection."""
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a, connect(server, bob) as b:
        path = a_file(tmp_path, LARGE)
        a.send_file(bob, path)
        offer = offer_of(b)
        partial = PartialDownload.open(tmp_path / "bob", offer.upload_id, offer.name, offer.size, offer.sha256)
        download = Download(b.session, offer, partial)
        answers: list[int] = []
        step = 0
        while not download.done:
            b.flush()
            b.next_message(download.handle)
            step += 1
            if step % 4 == 0 and len(answers) < 10:
                a.send_text(bob, f"to bob {len(answers)}")
                answers.append(b.session.send_text(alice, f"to alice {len(answers)}"))
        assert download.path is not None and download.path.read_bytes() == path.read_bytes()
        assert len(answers) == 10, "the download ended before the chat was sent: the test proves nothing"
        for rid in answers:
            assert next_of(b, Receipt, _with_id(rid)).message_id
        assert [m.body.decode() for m in b.deliveries(10)] == [f"to bob {i}" for i in range(10)]
        assert [m.body.decode() for m in a.deliveries(10)] == [f"to alice {i}" for i in range(10)]


def test_an_upload_cancelled_before_the_server_named_it_is_removed_once_named(
    server: Server, names: Names, tmp_path: Path
) -> None:
    alice, bob = names("alice"), names("bob")
    with connect(server, alice) as a:
        connect(server, bob).close()
        path = a_file(tmp_path, 100_000)
        upload = Upload(a.session, path, bob)
        upload.cancel()  # before its FileState: nothing to name yet
        a.flush()
        while not upload.done:
            a.flush()
            a.next_message(upload.handle)
        assert upload.upload_id and upload.error is not None
        a.flush()
        assert next_of(a, FileState, lambda s: s.state == FileStatus.CANCELLED).upload_id == upload.upload_id
        with pytest.raises(ServerError) as gone:
            a.upload_file(path, bob, upload_id=upload.upload_id)
        assert gone.value.code == ErrorCode.FILE_NOT_FOUND
