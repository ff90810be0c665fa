"""Conformance: end-to-end encrypted files (protocol 1.7, sections 13 and 14), on every backend.

Real clients with real keys in vaults, through a real server: files of 0 bytes, a few bytes and
a few chunks' worth of megabytes arrive byte for byte, while the server is sent and stores only
their STREAM ciphertext and learns neither their name nor their key (the offer goes inside an
envelope); a device without keys sees an envelope it cannot open. Ciphertext damaged, reordered
or cut at a chunk boundary (uploaded so by a sender's raw upload, or changed on the server's
disk) fails the download cleanly, its partial file removed; a cut download resumes at its last
whole chunk, and a cut upload resumes with its sealing, and only for the same file. A group's
file is encrypted when its posts are (every member has keys), its offer under the sender key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from csce513msg.client import Client
from csce513msg.client.downloads import PartialDownload, TransferError, partial_name
from csce513msg.client.sealed import FileChangedError, Sealing
from csce513msg.client.secure import Secure
from csce513msg.client.transfer import Download, Upload
from csce513msg.crypto.stream import CHUNK, Encryptor, chunk_offset, ciphertext_size
from csce513msg.protocol import ContentType, Deliver, Offer, Receipt, RemoteProtocolError, TargetKind, parse_offer
from csce513msg.protocol.transfer import STREAM_V1
from tests.conformance.wire import PASSWORD, connect, next_of
from tests.fixtures import Names, Server
from tests.servers import ServerProcess

SERVER_FLAGS = ("--disk-reserve", "16M")
CANARY = b"CANARY-e2e-files-9c41-the-answer-to-question-7-is-11"
SEVERAL = 3 * CHUNK * 16 + 123  #: about 3 MB: 49 chunks, the last one short


def secure_client(server: Server, user: str, device: str, vault_dir: Path) -> Client:
    secure = Secure.from_vault(vault_dir / f"{user}-{device}.vault", PASSWORD, user, device, cost="test")
    return connect(server, user, device_id=device, secure=secure)


def a_file(tmp_path: Path, size: int, name: str = "hw3 answers.pdf") -> Path:
    """``size`` random bytes with the canary inside (when it fits), at ``out/name``."""
    data = bytearray(os.urandom(size))
    if size >= len(CANARY):
        at = size // 2 - len(CANARY) // 2
        data[at : at + len(CANARY)] = CANARY
    path = tmp_path / "out" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def opened_offer(client: Client) -> Offer:
    """The next file offer delivered to ``client``, opened from its envelope."""
    deliver = next_of(client, Deliver, lambda d: d.content_type == ContentType.FILE_OFFER)
    assert client.session.secure is not None and deliver.message_id in client.session.secure.encrypted
    return parse_offer(deliver.body)


def stored(server: Server, upload_id: str) -> Path | None:
    """The server's copy of an upload (None: a server this test did not start)."""
    return Path(server.data_dir) / "files" / upload_id if isinstance(server, ServerProcess) else None


def pair(server: Server, names: Names, tmp_path: Path) -> tuple[str, str, Client, Client]:
    """alice and bob with keys, both online (a1 knows bob's devices once it sends)."""
    alice, bob = names("alice"), names("bob")
    secure_client(server, bob, "b1", tmp_path).close()
    return alice, bob, secure_client(server, alice, "a1", tmp_path), secure_client(server, bob, "b1", tmp_path)


@pytest.mark.parametrize("size", [0, 5, SEVERAL])
def test_a_file_arrives_byte_identical_and_the_server_holds_only_ciphertext(
    server: Server, names: Names, tmp_path: Path, size: int
) -> None:
    _, bob, a1, b1 = pair(server, names, tmp_path)
    with a1, b1:
        path = a_file(tmp_path, size)
        plain = path.read_bytes()
        upload, receipt = a1.send_file(bob, path)
        assert upload.complete and upload.sealing is not None and receipt.position >= 1
        assert upload.size == ciphertext_size(size)  # what the server was told: the ciphertext's size
        offer = opened_offer(b1)
        assert (offer.upload_id, offer.name, offer.cipher) == (upload.upload_id, "hw3 answers.pdf", STREAM_V1)
        assert (offer.plain_size, offer.plain_sha256) == (size, hashlib.sha256(plain).hexdigest())
        assert (offer.size, offer.sha256) == (upload.size, upload.sha256) and len(offer.key) == 32
        got = b1.download(offer, tmp_path / "bob")
        assert got.read_bytes() == plain
        assert [p.name for p in got.parent.iterdir()] == ["hw3 answers.pdf"]  # no partial file left
    if (copy := stored(server, upload.upload_id)) is not None:
        kept = copy.read_bytes()
        assert len(kept) == ciphertext_size(size) and hashlib.sha256(kept).hexdigest() == offer.sha256
        assert kept != plain and CANARY not in kept
        record = copy.with_name(copy.name + ".json").read_bytes()  # what the server knows of it
        assert offer.sha256.encode() in record
        for secret in (b"hw3", offer.key, offer.plain_sha256.encode()):
            assert secret not in record


def test_a_keyless_device_sees_an_envelope_and_the_sender_s_other_device_the_file(
    server: Server, names: Names, tmp_path: Path
) -> None:
    alice, bob = names("alice"), names("bob")
    secure_client(server, bob, "b1", tmp_path).close()
    with (
        secure_client(server, alice, "a1", tmp_path) as a1,
        secure_client(server, alice, "a2", tmp_path) as a2,
        connect(server, bob, device_id="plain") as plain,
    ):
        path = a_file(tmp_path, 2 * CHUNK + 7)
        upload, receipt = a1.send_file(bob, path)
        raw = next_of(plain, Deliver, lambda d: d.message_id == receipt.message_id)
        assert raw.content_type == ContentType.ENVELOPE
        with pytest.raises(RemoteProtocolError):
            parse_offer(raw.body)
        assert upload.sealing is not None
        for secret in (b"hw3 answers", upload.sealing.key, upload.upload_id.encode()):
            assert secret not in raw.body
        offer = opened_offer(a2)  # alice's other device reads the offer, and the file
        assert a2.download(offer, tmp_path / "a2").read_bytes() == path.read_bytes()


def sealed_pieces(data: bytes, key: bytes) -> tuple[bytes, list[bytes]]:
    """The salt and the sealed chunks of ``data``."""
    encryptor = Encryptor(key)
    parts = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    return encryptor.header(), [encryptor.seal_chunk(c, i == len(parts) - 1) for i, c in enumerate(parts)]


def forged(data: bytes, key: bytes, fault: str) -> tuple[bytes, bytes]:
    """(the bytes a sender's raw upload sends, the plaintext its offer vouches for)."""
    salt, chunks = sealed_pieces(data, key)
    if fault == "flip":  # one bit of chunk 1
        damaged = bytearray(chunks[1])
        damaged[100] ^= 0x04
        chunks[1] = bytes(damaged)
    elif fault == "swap":  # chunks 0 and 1 change places
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif fault == "cut":  # the last chunk dropped: what is left is whole chunks, sizes agree
        return salt + b"".join(chunks[:-1]), data[: CHUNK * (len(chunks) - 1)]
    elif fault == "salt":  # another salt: every chunk's key changes
        salt = bytes(b ^ 0xFF for b in salt)
    return salt + b"".join(chunks), data


@pytest.mark.parametrize("fault", ["flip", "swap", "cut", "salt"])
def test_a_damaged_ciphertext_fails_the_download_cleanly(
    server: Server, names: Names, tmp_path: Path, fault: str
) -> None:
    """alice's device uploads bytes that are not the sealing of the file its (honest-looking,
    end-to-end) offer describes: bob's download refuses them and leaves nothing."""
    alice, bob, a1, b1 = pair(server, names, tmp_path)
    with a1, b1:
        key, data = os.urandom(32), os.urandom(3 * CHUNK)
        sent, vouched = forged(data, key, fault)
        raw = tmp_path / "raw.bin"
        raw.write_bytes(sent)
        a1.fetch_keys(bob)
        a1.fetch_keys(alice)
        upload = Upload(a1.session, raw, bob)  # the bytes as they are: no sealing of ours
        while not upload.done:
            a1.flush()
            a1.next_message(upload.handle)
        assert upload.complete
        offer = Offer(
            upload.upload_id, "notes.txt", upload.size, upload.sha256,
            STREAM_V1, key, len(vouched), hashlib.sha256(vouched).hexdigest(),
        )  # fmt: skip
        a1.request(a1.session.send_offer(bob, offer), Receipt)
        got = opened_offer(b1)
        assert got == offer
        with pytest.raises(TransferError, match=r"chunk \d+ (did not authenticate|is not its last)"):
            b1.download(got, tmp_path / "bob")
        assert list((tmp_path / "bob").iterdir()) == []


def test_a_byte_changed_on_the_server_s_disk_fails_the_download_cleanly(
    server: Server, names: Names, tmp_path: Path
) -> None:
    if not isinstance(server, ServerProcess):
        pytest.skip("needs the disk of a server this test started")
    _, bob, a1, b1 = pair(server, names, tmp_path)
    with a1, b1:
        upload, _ = a1.send_file(bob, a_file(tmp_path, 5 * CHUNK))
        offer = opened_offer(b1)
        copy = stored(server, upload.upload_id)
        assert copy is not None
        with copy.open("r+b") as f:  # one bit in chunk 3, between upload and download
            f.seek(chunk_offset(3) + 1000)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x20]))
        with pytest.raises(TransferError, match="chunk 3 did not authenticate"):
            b1.download(offer, tmp_path / "bob")
        assert list((tmp_path / "bob").iterdir()) == []


def test_a_cut_download_resumes_at_its_last_whole_chunk(server: Server, names: Names, tmp_path: Path) -> None:
    _, bob, a1, b = pair(server, names, tmp_path)
    path = a_file(tmp_path, SEVERAL)
    with a1:
        a1.send_file(bob, path)
        offer = opened_offer(b)
        partial = PartialDownload.open(
            tmp_path / "bob", offer.upload_id, offer.name, offer.file_size, offer.file_sha256
        )
        download = Download(b.session, offer, partial)
        while download.received < (1 << 20):
            b.flush()
            b.next_message(download.handle)
        partial.close()
        b.close()  # cut mid-download: the partial file stays, plaintext of whole chunks
        kept = tmp_path / "bob" / partial_name(offer.upload_id)
        assert kept.stat().st_size % CHUNK == 0 and kept.read_bytes() == path.read_bytes()[: kept.stat().st_size]
        with kept.open("ab") as f:  # a chunk half written when the process died: dropped on resume
            f.write(b"half a chunk")
        with secure_client(server, bob, "b1", tmp_path) as again:
            assert again.download(offer, tmp_path / "bob").read_bytes() == path.read_bytes()
        assert sorted(p.name for p in (tmp_path / "bob").iterdir()) == ["hw3 answers.pdf"]


def test_a_cut_upload_resumes_with_its_sealing_for_the_same_file_only(
    server: Server, names: Names, tmp_path: Path
) -> None:
    alice, bob, a1, b1 = pair(server, names, tmp_path)
    path = a_file(tmp_path, SEVERAL)
    with b1:
        a1.fetch_keys(bob)
        a1.fetch_keys(alice)
        upload = Upload(a1.session, path, bob, sealing=Sealing.fresh())
        while upload.acked < (1 << 20):
            a1.flush()
            a1.next_message(upload.handle)
        a1.close()  # cut mid-upload
        sealing = upload.sealing
        assert sealing is not None
        with secure_client(server, alice, "a1", tmp_path) as again:
            with pytest.raises(ValueError, match="sealing"):
                again.upload_file(path, bob, upload_id=upload.upload_id)
            other = a_file(tmp_path, SEVERAL, "other.pdf")  # same size, other bytes: never sealed under that key
            with pytest.raises(FileChangedError):
                again.upload_file(other, bob, upload_id=upload.upload_id, sealing=sealing)
            resumed = again.upload_file(path, bob, upload_id=upload.upload_id, sealing=sealing)
            assert resumed.complete and resumed.upload_id == upload.upload_id and resumed.sha256 == upload.sha256
            again.request(again.session.send_offer(bob, resumed.offer()), Receipt)
        assert b1.download(opened_offer(b1), tmp_path / "bob").read_bytes() == path.read_bytes()


def test_a_group_s_file_is_end_to_end_when_its_posts_are(server: Server, names: Names, tmp_path: Path) -> None:
    """Every member with keys: the file goes encrypted, its offer under alice's sender key, and
    each member (not bob's keyless device) opens it. A member without keys: in clear, as 1.6."""
    alice, bob, carol, dave = names("alice"), names("bob"), names("carol"), names("dave")
    lab, mixed = names("lab"), names("mixed")

    def member(user: str, device: str) -> Client:
        secure = Secure.from_vault(tmp_path / f"{user}-{device}.vault", PASSWORD, user, device, cost="test")
        return connect(server, user, device_id=device, secure=secure, groups=True)

    with (
        member(alice, "a1") as a,
        member(bob, "b1") as b,
        member(carol, "c1") as c,
        connect(server, bob, device_id="plain", groups=True) as plain,
        connect(server, dave, groups=True) as d,
    ):
        info = a.group_create(lab)
        a.group_add(lab, [bob, carol])
        path = a_file(tmp_path, 2 * CHUNK + 99)
        upload, receipt = a.send_file(lab, path, TargetKind.GROUP)
        assert upload.sealing is not None and upload.size == ciphertext_size(2 * CHUNK + 99)
        for reader, where in ((b, "bob"), (c, "carol")):
            offer = opened_offer(reader)
            assert offer.encrypted and offer.upload_id == upload.upload_id
            assert reader.download(offer, tmp_path / where).read_bytes() == path.read_bytes()
        raw = next_of(plain, Deliver, lambda d: d.message_id == receipt.message_id)
        assert raw.content_type == ContentType.ENVELOPE and raw.stream == info.stream
        assert b"hw3 answers" not in raw.body and upload.sealing.key not in raw.body
        if (copy := stored(server, upload.upload_id)) is not None:
            assert CANARY not in copy.read_bytes()

        a.group_create(mixed)
        a.group_add(mixed, [bob, dave])  # dave's client has no keys: the group's posts go in clear
        clear, _ = a.send_file(mixed, path, TargetKind.GROUP)
        assert clear.sealing is None and clear.size == path.stat().st_size
        offer = parse_offer(next_of(d, Deliver, lambda m: m.content_type == ContentType.FILE_OFFER).body)
        assert not offer.encrypted and d.download(offer, tmp_path / "dave").read_bytes() == path.read_bytes()
