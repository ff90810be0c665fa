"""The files part of the engine (1.6, hub/files.py), with a fixed clock and jobs run by hand:
the rules whose outcome depends on timing on a real server (how fast the disk
acknowledges, when a connection's output backs up, when an upload expires)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from csce513msg.hub import Lane
from csce513msg.hub.files import MAX_UNFINISHED
from csce513msg.protocol import (
    Error,
    ErrorCode,
    FileCancel,
    FileChunk,
    FileData,
    FileGet,
    FileState,
    FileStatus,
    FileUpload,
    TargetKind,
    Welcome,
)
from csce513msg.protocol.transfer import CHUNK_HEADROOM, MAX_CHUNK, MIN_CHUNK, UPLOAD_WINDOW
from csce513msg.store.files import FileShelf
from tests.hub.harness import Harness, Peer, codes

CHUNK = 60_000


def harness(tmp_path: Path, **config: Any) -> Harness:
    return Harness(auto_jobs=False, shelf=FileShelf(tmp_path / "files"), disk_reserve=0, **config)


def begin(h: Harness, peer: Peer, data: bytes, to: str = "bob") -> str:
    peer.session.request(FileUpload(len(data), hashlib.sha256(data).hexdigest(), TargetKind.USER, to))
    h.pump()
    assert all(job.lane is Lane.FILE for job in h.jobs)  # never the loop, never the store's lane
    h.settle()
    state = peer.of(FileState)[-1]
    assert state.state == (FileStatus.RECEIVING if data else FileStatus.COMPLETE)
    return state.upload_id


def test_more_than_the_window_unacknowledged_removes_the_upload(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice = h.connect("alice")
    h.settle()
    data = bytes(3 * UPLOAD_WINDOW)
    uid = begin(h, alice, data)
    for offset in range(0, UPLOAD_WINDOW + CHUNK, CHUNK):  # the disk acknowledges nothing meanwhile
        alice.session.request(FileChunk(uid, offset, data[offset : offset + CHUNK]))
    h.pump()
    first, *rest = codes(alice)  # the chunk over the window; those after it find no upload
    assert first == ErrorCode.TRANSFER_FAILED and set(rest) == {ErrorCode.FILE_NOT_FOUND}
    h.settle()
    assert not list((tmp_path / "files").iterdir())  # its bytes and record are gone
    assert uid not in h.engine.files.uploads  # type: ignore[union-attr]


def test_within_the_window_the_disk_paces_the_sender(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice = h.connect("alice")
    h.settle()
    data = bytes(range(256)) * 1000
    uid = begin(h, alice, data)
    for offset in range(0, len(data), CHUNK):
        alice.session.request(FileChunk(uid, offset, data[offset : offset + CHUNK]))
    h.pump()
    assert not codes(alice) and len(h.jobs) == 5  # all taken, none written yet
    h.settle()
    states = alice.of(FileState)[1:]
    assert [s.received for s in states] == [min(o + CHUNK, len(data)) for o in range(0, len(data), CHUNK)]
    assert states[-1].state == FileStatus.COMPLETE
    assert (tmp_path / "files" / uid).read_bytes() == data


def test_a_download_waits_while_the_connection_is_paused(tmp_path: Path) -> None:
    h = harness(tmp_path, max_frame=16_384, max_chunk=16_384)  # 100,000 bytes: seven FileData
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    data = bytes(100_000)
    uid = begin(h, alice, data)
    for offset in range(0, len(data), 10_000):
        alice.session.request(FileChunk(uid, offset, data[offset : offset + 10_000]))
    h.pump()
    h.settle()
    h.apply(h.engine.pause_writing(bob.conn, h.now))  # bob's output backed up
    bob.session.request(FileGet(uid, 0, 100_000))
    h.pump()
    assert not h.jobs and not bob.of(FileData)  # paused: nothing read
    h.apply(h.engine.resume_writing(bob.conn, h.now))
    h.pump()
    h.run_jobs()  # two reads in the lane, then the output backs up again
    h.apply(h.engine.pause_writing(bob.conn, h.now))
    h.pump()
    h.run_jobs()
    h.pump()
    # two reads, then the two their answers asked for before the pause: none after it
    assert not h.jobs and len(bob.of(FileData)) == 4
    h.apply(h.engine.resume_writing(bob.conn, h.now))
    h.settle()
    got = bob.of(FileData)
    assert b"".join(d.body for d in got) == data and got[-1].last == 1
    assert len(got) == 7 and all(len(d.body) <= 16_384 for d in got)  # the max_chunk of a 1.8 session


def test_a_second_connection_resumes_and_the_first_is_refused(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    laptop, phone = h.connect("alice", device="laptop"), h.connect("alice", device="phone")
    h.settle()
    data = bytes(200_000)
    uid = begin(h, laptop, data)
    laptop.session.request(FileChunk(uid, 0, data[:CHUNK]))
    h.pump()
    h.settle()
    phone.session.request(FileUpload(len(data), hashlib.sha256(data).hexdigest(), TargetKind.USER, "bob", uid))
    h.pump()
    h.settle()
    assert phone.of(FileState)[-1].received == CHUNK  # re-hashed from the disk
    laptop.session.request(FileChunk(uid, CHUNK, data[CHUNK : 2 * CHUNK]))
    h.pump()
    assert codes(laptop) == [ErrorCode.BAD_REQUEST]  # not its writer any more; nothing removed
    assert uid in h.engine.files.uploads  # type: ignore[union-attr]


def test_an_upload_expires_with_its_bytes(tmp_path: Path) -> None:
    h = harness(tmp_path, file_days=0.01, idle_timeout=10_000.0)  # 864 s
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    uid = begin(h, alice, b"")  # an empty file: complete at once
    assert alice.of(FileState)[-1].state == FileStatus.COMPLETE
    assert (tmp_path / "files" / uid).exists()
    h.auto_jobs = True
    h.advance(1300)  # past its time, and the next sweep (every 10 minutes) deleted it
    for peer in (alice, bob):
        h.advance(1)
        peer.session.request(FileGet(uid, 0, 0))
        h.pump()
    assert codes(bob)[-1] == ErrorCode.FILE_NOT_FOUND and codes(alice)[-1] == ErrorCode.FILE_NOT_FOUND
    assert not list((tmp_path / "files").iterdir())


def test_chunks_and_ranges_take_no_token_of_the_rate_limit(tmp_path: Path) -> None:
    """A transfer is paced by its window and its 8 FileGets, not the request rate: a token a
    FileGet refused downloads faster than rate x 256 KiB once the burst was spent."""
    h = harness(tmp_path, rate=0.001, burst=4)  # a token every 1,000 s; the login and the upload take some
    alice, bob = h.connect("alice"), h.connect("bob")
    h.settle()
    data = bytes(200_000)
    uid = begin(h, alice, data)
    for offset in range(0, len(data), 10_000):
        alice.session.request(FileChunk(uid, offset, data[offset : offset + 10_000]))
        h.pump()
        h.settle()
    assert alice.of(FileState)[-1].state == FileStatus.COMPLETE and not codes(alice)
    for offset in range(0, len(data), 10_000):
        bob.session.request(FileGet(uid, offset, 10_000))
        h.pump()
        h.settle()
    assert not codes(bob)
    assert b"".join(d.body for d in bob.of(FileData)) == data


def test_uploads_of_one_owner_dropped_in_any_order_keep_the_quota_right(tmp_path: Path) -> None:
    """An empty upload and another, cancelled (or expired) in turn: the owner's count of bytes
    held went to 0 with the second, and the empty one's drop found no entry (a KeyError out of
    the engine, before: on select, poll and epoll, the server's end)."""
    h = harness(tmp_path, idle_timeout=10_000.0, file_days=0.01)
    h.account("bob")
    alice = h.connect("alice")
    h.settle()
    empty, five = begin(h, alice, b""), begin(h, alice, b"12345")
    for uid in (five, empty):
        alice.session.request(FileCancel(uid))
        h.pump()
        h.settle()
    assert [s.state for s in alice.of(FileState)[-2:]] == [FileStatus.CANCELLED] * 2 and not codes(alice)
    assert h.engine.files.held == {}  # type: ignore[union-attr]
    begin(h, alice, b""), begin(h, alice, b"12345")  # and the same by expiry
    h.auto_jobs = True
    h.advance(1300)
    assert h.engine.files.uploads == {} and h.engine.files.held == {}  # type: ignore[union-attr]


def test_a_short_chunk_that_does_not_end_the_file_removes_the_upload(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice = h.connect("alice")
    h.settle()
    data = bytes(10_000)
    uid = begin(h, alice, data)
    alice.session.request(FileChunk(uid, 0, data[: MIN_CHUNK - 1]))  # a lane job for a byte: a flood
    h.pump()
    assert codes(alice) == [ErrorCode.TRANSFER_FAILED]
    uid = begin(h, alice, data)
    alice.session.request(FileChunk(uid, 0, data[:8000]))
    alice.session.request(FileChunk(uid, 8000, data[8000:]))  # the last may be short
    h.pump()
    h.settle()
    assert alice.of(FileState)[-1].state == FileStatus.COMPLETE and codes(alice) == [ErrorCode.TRANSFER_FAILED]


def test_a_user_holds_at_most_so_many_unfinished_uploads_and_a_closed_one_holds_no_file(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice = h.connect("alice")
    h.settle()
    for _ in range(MAX_UNFINISHED):
        begin(h, alice, b"x" * 10)
    alice.session.request(FileUpload(10, "0" * 64, TargetKind.USER, "bob"))
    h.pump()
    assert codes(alice) == [ErrorCode.QUOTA_EXCEEDED]
    shelf = h.engine.files.shelf  # type: ignore[union-attr]
    assert len(shelf._writing) == MAX_UNFINISHED  # each open while its writer is here
    h.drop(alice)
    h.settle()
    assert not shelf._writing  # released: an unfinished upload holds no descriptor for days


def test_a_resume_that_waited_behind_the_last_write_says_complete(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice = h.connect("alice", device="laptop")
    h.settle()
    data = bytes(5000)
    uid = begin(h, alice, data)
    alice.session.request(FileChunk(uid, 0, data))
    h.pump()  # the last write is in the lane; a reconnected device resumes meanwhile
    again = h.connect("alice", device="laptop")
    again.session.request(FileUpload(len(data), hashlib.sha256(data).hexdigest(), TargetKind.USER, "bob", uid))
    h.pump()
    h.settle()
    assert again.of(FileState)[-1].state == FileStatus.COMPLETE and not codes(again)
    assert uid in h.engine.files.uploads  # type: ignore[union-attr]


def test_chunks_in_the_lane_of_an_upload_cancelled_elsewhere_are_answered(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    laptop, phone = h.connect("alice", device="laptop"), h.connect("alice", device="phone")
    h.settle()
    data = bytes(4 * CHUNK)
    uid = begin(h, laptop, data)
    rids = [laptop.session.request(FileChunk(uid, o, data[o : o + CHUNK])) for o in range(0, len(data), CHUNK)]
    h.pump()
    phone.session.request(FileCancel(uid))
    h.pump()
    h.settle()
    answered = [e.request_id for e in laptop.events if e.request_id in rids]
    assert sorted(answered) == sorted(rids) and set(codes(laptop)) == {ErrorCode.FILE_NOT_FOUND}
    assert h.engine.files.unwritten.get(laptop.conn, 0) == 0  # type: ignore[union-attr]


def test_from_1_8_a_chunk_may_be_larger_than_a_frame(tmp_path: Path) -> None:
    """The Welcome's max_chunk (1.8): a session that says 1.8 sends and gets chunks of up to it;
    one that says 1.7 keeps max_frame less 1024, and a larger frame is still too large."""
    h = harness(tmp_path)
    h.account("bob")
    alice, bob, old_bob = h.connect("alice"), h.connect("bob"), h.connect("bob", minor=7)
    h.settle()
    assert alice.of(Welcome)[0].max_chunk == MAX_CHUNK > h.engine.config.max_frame
    data = bytes(range(256)) * (3 * MAX_CHUNK // 256 + 100)  # three full chunks and a short one
    uid = begin(h, alice, data)
    for offset in range(0, len(data), MAX_CHUNK):
        alice.session.request(FileChunk(uid, offset, data[offset : offset + MAX_CHUNK]))
    h.pump()
    h.settle()
    assert not codes(alice) and alice.of(FileState)[-1].state == FileStatus.COMPLETE
    for peer in (bob, old_bob):
        peer.session.request(FileGet(uid, 0, len(data)))
    h.pump()
    h.settle()
    assert [len(d.body) for d in bob.of(FileData)] == [MAX_CHUNK] * 3 + [25_600]
    old = h.engine.config.max_frame - CHUNK_HEADROOM
    assert {len(d.body) for d in old_bob.of(FileData)[:-1]} == {old}
    assert b"".join(d.body for d in old_bob.of(FileData)) == data


def test_a_chunk_over_the_limit_fails_the_upload_or_the_frame(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.account("bob")
    alice, old = h.connect("alice"), h.connect("alice", minor=7)
    h.settle()
    data = bytes(2 * MAX_CHUNK)
    uid = begin(h, alice, data)
    alice.session.request(FileChunk(uid, 0, data[: MAX_CHUNK + 1]))  # in the frame, over max_chunk
    h.pump()
    assert codes(alice) == [ErrorCode.TRANSFER_FAILED] and alice.closed is None
    assert "at most 262144" in alice.of(Error)[0].message
    uid = begin(h, old, data)
    old.session.request(FileChunk(uid, 0, data[:100_000]))  # a 1.7 session: over max_frame
    h.pump()
    assert codes(old) == [ErrorCode.FRAME_TOO_LARGE] and old.closed is not None


def test_1_8_never_gets_less_than_1_7_nor_more_than_the_outbound_room(tmp_path: Path) -> None:
    """The chunk limit of a 1.8 session is the larger of max_chunk and what a frame holds; its
    FileData fall back to 1.7's size where two reads of max_chunk would not fit the room the
    outbound hard limit leaves (``read_room``, which msgsrv computes)."""
    data = bytes(3 * MAX_CHUNK)
    for config, size in (({"max_chunk": 4096}, 64_512), ({"read_room": 500_000}, 64_512), ({}, MAX_CHUNK)):
        h = harness(tmp_path / str(len(config)) / str(size), **config)
        alice, bob = h.connect("alice"), h.connect("bob")
        h.settle()
        uid = begin(h, alice, data)
        for offset in range(0, len(data), 64_512):
            alice.session.request(FileChunk(uid, offset, data[offset : offset + 64_512]))
        h.pump()
        h.settle()
        assert not codes(alice), config  # 1.7-sized chunks are always within a 1.8 session's limit
        bob.session.request(FileGet(uid, 0, 3 * size))  # three whole chunks
        h.pump()
        h.settle()
        assert {len(d.body) for d in bob.of(FileData)} == {size}, config


def test_what_1_7_sent_before_is_still_taken(tmp_path: Path) -> None:
    """Before 1.8 a chunk is bounded by its frame alone (a body of max_frame less its header
    passes), as it was: 1.8's body check is for 1.8 sessions."""
    h = harness(tmp_path)
    h.account("bob")
    old = h.connect("alice", minor=7)
    h.settle()
    data = bytes(2 * 65_000)
    uid = begin(h, old, data)
    old.session.request(FileChunk(uid, 0, data[:65_000]))  # over max_frame - 1024, within the frame
    h.pump()
    h.settle()
    assert not codes(old) and old.of(FileState)[-1].received == 65_000


def test_no_bulk_frames_without_files_or_from_a_1_7_hub(tmp_path: Path) -> None:
    """A 1.8 session that did not ask for files, or whose hub serves 1.7, keeps max_frame for
    every frame: a large FileChunk is FRAME_TOO_LARGE, and a 1.7 hub's Welcome says no max_chunk."""
    h = harness(tmp_path / "a")
    nofiles = h.connect("alice", files=False)
    h.settle()
    nofiles.session.request(FileChunk("x" * 22, 0, bytes(100_000)))
    h.pump()
    assert codes(nofiles) == [ErrorCode.FRAME_TOO_LARGE] and nofiles.closed is not None
    old_hub = harness(tmp_path / "b", max_minor=7)
    peer = old_hub.connect("alice")
    old_hub.settle()
    assert peer.of(Welcome)[0].max_chunk == 0 and peer.session.minor == 7
    peer.session.request(FileChunk("x" * 22, 0, bytes(100_000)))
    old_hub.pump()
    assert codes(peer) == [ErrorCode.FRAME_TOO_LARGE]


def test_msgsrv_leaves_room_for_two_reads_of_max_chunk_or_keeps_1_7_s_size() -> None:
    """``read_room``: what the hard limit leaves above the high-water mark, a full window and a
    History page. By default two reads of max_chunk fit; with a hard limit of 5.5 MiB they do
    not, and the hub keeps 1.7's FileData size rather than let a reader pass the hard limit."""
    from csce513msg.backends.common import BackendConfig, check_limits, read_room
    from csce513msg.hub import HubConfig

    hub = HubConfig()
    assert read_room(BackendConfig(), hub) >= 2 * (MAX_CHUNK + CHUNK_HEADROOM)
    tight = BackendConfig(hard_limit=5_767_168)
    assert check_limits(tight, hub) is None and read_room(tight, hub) < 2 * (MAX_CHUNK + CHUNK_HEADROOM)
