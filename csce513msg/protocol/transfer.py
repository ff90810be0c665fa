"""Protocol 1.6, files (docs/protocol.md section 13): the frames of a file transfer.

A file travels through the server in two halves, each on the same connection as chat:

- **upload**: ``FileUpload`` (size, SHA-256 of the bytes, the conversation it is for)
  makes an upload under a random id the server picks (``FileState`` answers); then
  ``FileChunk`` frames carry the bytes in order, each acknowledged by a ``FileState``
  once it is on the server's disk; the last one's ``FileState`` says ``COMPLETE`` once the
  server checked the size and the hash. The sender then posts an ordinary message of
  content type 1 (``ContentType.FILE_OFFER``) whose body (``offer_body``) names the file.
- **download**: a member of that conversation asks ``FileGet`` for a range and gets
  ``FileData`` frames; the last of a request says so.

The server reads none of a file's name, type or plaintext: it knows an upload by its id,
its size, the hash of the bytes it was sent (the ciphertext, for a file 1.7 encrypts) and
the conversation it is for. An encrypted file's offer (``Offer.cipher``: the file key and
the plaintext's size and hash besides) goes inside an end-to-end envelope, never as content
type 1. ``FileUpload`` with the id of an unfinished upload resumes it
(``FileState.received`` says from where), across a reconnect or a server restart.

This module registers its frames with ``messages._message`` and is imported by
``messages`` itself (so ``decode`` knows them): it imports only what ``messages`` defines
before that line.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field
from typing import TypeGuard

from .errors import ErrorCode, RemoteProtocolError
from .messages import MsgType, _message

FILES_MINOR = 6  #: the minor version that added files
#: the minor version from which a chunk may be larger than ``max_frame`` (up to the Welcome's
#: ``max_chunk``): fewer frames, jobs and acknowledgements a megabyte
BULK_MINOR = 8
#: a FileGet asks for at most this many bytes; a client keeps a few in flight
MAX_GET = 1 << 20
#: a chunk carries at most ``max_frame`` less this much (the frame's prefix and header);
#: from 1.8 at most the larger of that and the Welcome's ``max_chunk`` (``chunk_limit``), a
#: FileChunk's frame then up to ``max_chunk`` plus this much
CHUNK_HEADROOM = 1024
#: every chunk but the one that ends the file carries at least this much (each is a job of the
#: server's file lane: empty or 1-byte chunks would let a window's worth of them flood it)
MIN_CHUNK = 2048
#: chunk bytes a connection may have sent and not yet seen acknowledged by a FileState, over
#: all its uploads; a client that sends more loses the upload (TRANSFER_FAILED): the server's
#: memory per uploading connection stays bounded
UPLOAD_WINDOW = 1 << 20
#: the Welcome's ``max_chunk`` by default (1.8): four chunks fill the window, one FileGet of
#: ``MAX_GET`` is four frames. Measured: 64 KiB chunks move 219/326 MB/s up/down through
#: epoll, 128 KiB 325/349, 256 KiB 414/435, 1 MiB 391/447 (docs/benchmarks.md, "File transfer")
MAX_CHUNK = 256 << 10


def chunk_limit(minor: int, max_frame: int, max_chunk: int) -> int:
    """The most bytes a chunk (FileChunk or FileData body) may carry in a session of protocol
    1.``minor`` with a server that sent ``max_frame`` and ``max_chunk`` in its Welcome: from
    1.8 the larger of ``max_chunk`` and what a frame holds (1.8 never gets less than 1.7)."""
    if minor >= BULK_MINOR and max_chunk:
        return max(max_chunk, max_frame - CHUNK_HEADROOM)
    return max_frame - CHUNK_HEADROOM


#: an upload id: what the server hands out (22 characters of base64url, 128 bits), and what
#: a client may send (a hostile one is refused before it reaches a path)
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FileStatus(enum.IntEnum):
    """An upload's state in ``FileState``."""

    RECEIVING = 1  #: open: the server has ``received`` bytes and waits for the rest
    COMPLETE = 2  #: every byte is there, size and hash checked: members may download it
    CANCELLED = 3  #: gone (cancelled by its sender), or a downloader's requests are dropped


@_message(MsgType.FILE_UPLOAD, "QsBss", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileUpload:
    """Begin an upload of ``size`` bytes whose SHA-256 is ``sha256`` (64 lower-case hex
    digits) for the conversation with ``target`` (a user, or a group by name); or, with
    ``upload_id``, resume one of yours. Answered by ``FileState`` or an Error (a limit:
    before any chunk is sent)."""

    size: int  #: u64
    sha256: str
    target_kind: int  #: TargetKind
    target: str
    upload_id: str = ""  #: "": a new upload; else the id of an unfinished upload to resume
    request_id: int = 0


@_message(MsgType.FILE_CHUNK, "sQ", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileChunk:
    """The bytes at ``offset`` of an upload: exactly where the last one ended. Answered by a
    ``FileState`` once written (not a rate-limited request: ``UPLOAD_WINDOW`` paces it)."""

    upload_id: str
    offset: int  #: u64
    body: bytes = b""
    request_id: int = 0


@_message(MsgType.FILE_GET, "sQI", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileGet:
    """Ask for ``length`` bytes (at most ``MAX_GET``) of an upload from ``offset``: answered
    by ``FileData`` frames with this request's id, the last one marked ``last``."""

    upload_id: str
    offset: int  #: u64
    length: int  #: u32
    request_id: int = 0


@_message(MsgType.FILE_CANCEL, "s", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileCancel:
    """Its sender: remove the upload (unfinished or not). A downloader: drop this
    connection's FileGets of it. Answered by ``FileState`` with ``CANCELLED``."""

    upload_id: str
    request_id: int = 0


@_message(MsgType.FILE_STATE, "sBQQQ", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileState:
    """Where an upload stands: the answer to FileUpload, to each FileChunk (once written)
    and to FileCancel."""

    upload_id: str
    state: int  #: FileStatus
    size: int  #: u64, as the upload declared
    received: int  #: u64: bytes the server holds; a resume sends from here
    expires_us: int  #: u64: when the server deletes it (µs of wall time)
    request_id: int = 0


@_message(MsgType.FILE_DATA, "sQQB", added=FILES_MINOR)
@dataclass(frozen=True, slots=True)
class FileData:
    """Bytes of an upload at ``offset``, for the FileGet whose id it carries."""

    upload_id: str
    offset: int  #: u64
    size: int  #: u64: the whole file's size (as uploaded)
    last: int  #: u8: 1 on the last frame of the FileGet (an empty range: one empty frame)
    body: bytes = b""
    request_id: int = 0


# ---- the offer: a message of content type 1 (the server never reads it) -------------

MAX_OFFER_NAME = 1024  #: characters of a file name an offer may carry (the receiver sanitizes it)
MAX_OFFER_BODY = 8192  #: bytes of an offer's body (1,024 characters of up to 4 bytes, escaped, fit)
_SURROGATE = re.compile("[\ud800-\udfff]")  #: JSON's "\ud800" makes a str that is no text


#: (1.7) the ``cipher`` of an end-to-end encrypted file: age's STREAM as ``crypto/stream.py`` makes it
STREAM_V1 = "stream-v1"
FILE_KEY = 32  #: bytes of an encrypted file's key
_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=")  #: 32 bytes in standard base64, padded: the only form taken


@dataclass(frozen=True, slots=True)
class Offer:
    """What a file offer's body says: the upload to fetch, and what the file should be.

    ``size`` and ``sha256`` are of the bytes uploaded: the file's own, or (1.7, ``cipher``
    ``STREAM_V1``) its ciphertext, whose ``key`` then opens it into ``plain_size`` bytes of
    SHA-256 ``plain_sha256``. Such an offer travels only inside an end-to-end envelope.
    """

    upload_id: str
    name: str  #: untrusted: a receiver sanitizes it before it names anything on its disk
    size: int
    sha256: str  #: of the bytes, hex
    cipher: str = ""  #: "" (the bytes are the file) or ``STREAM_V1``
    key: bytes = field(default=b"", repr=False)  #: the file key (``FILE_KEY`` bytes): never in a log
    plain_size: int = 0
    plain_sha256: str = ""

    @property
    def encrypted(self) -> bool:
        return bool(self.cipher)

    @property
    def file_size(self) -> int:
        """The received file's size: the plaintext's."""
        return self.plain_size if self.cipher else self.size

    @property
    def file_sha256(self) -> str:
        """The received file's SHA-256: the plaintext's."""
        return self.plain_sha256 if self.cipher else self.sha256


def offer_body(offer: Offer) -> bytes:
    """The body of a file offer: a JSON object, UTF-8 (section 13)."""
    doc: dict[str, object] = {"upload": offer.upload_id, "name": offer.name, "size": offer.size, "sha256": offer.sha256}
    if offer.cipher:
        doc |= {
            "cipher": offer.cipher,
            "key": base64.b64encode(offer.key).decode(),
            "plain_size": offer.plain_size,
            "plain_sha256": offer.plain_sha256,
        }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def parse_offer(body: bytes) -> Offer:
    """The offer in ``body``; every field checked (it came from another client).

    Raises:
        RemoteProtocolError: BAD_REQUEST naming what is wrong.
    """
    if len(body) > MAX_OFFER_BODY:
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"a file offer of {len(body)} bytes: at most {MAX_OFFER_BODY}")
    try:
        doc = json.loads(body.decode())
        offer = Offer(doc["upload"], doc["name"], doc["size"], doc["sha256"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: "[[[[..." 16,000 deep
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"not a file offer: {type(exc).__name__}") from None
    if not (isinstance(offer.upload_id, str) and UPLOAD_ID.fullmatch(offer.upload_id)):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's upload id is malformed")
    if not isinstance(offer.name, str) or len(offer.name) > MAX_OFFER_NAME or _SURROGATE.search(offer.name):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's name is not text of a sane length")
    if not _byte_count(offer.size):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's size is not a byte count")
    if not (isinstance(offer.sha256, str) and SHA256_HEX.fullmatch(offer.sha256)):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's sha256 is not 64 hex digits")
    return _sealed(offer, doc) if any(k in doc for k in _SEALED_KEYS) else offer


_SEALED_KEYS = ("cipher", "key", "plain_size", "plain_sha256")


def _sealed(offer: Offer, doc: dict[str, object]) -> Offer:
    """``offer`` with the fields of an encrypted file (1.7): all four, each checked."""
    cipher, key, plain_size, plain_sha256 = (doc.get(k) for k in _SEALED_KEYS)
    if cipher != STREAM_V1:
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"a file offer's cipher is not {STREAM_V1!r}")
    if not (isinstance(key, str) and _BASE64.fullmatch(key)):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"a file offer's key is not {FILE_KEY} bytes of base64")
    raw = base64.b64decode(key, validate=True)
    if base64.b64encode(raw).decode() != key:  # the last character's unused bits must be 0
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's key is not canonical base64")
    if not _byte_count(plain_size):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's plain_size is not a byte count")
    if not (isinstance(plain_sha256, str) and SHA256_HEX.fullmatch(plain_sha256)):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a file offer's plain_sha256 is not 64 hex digits")
    return dataclasses.replace(offer, cipher=STREAM_V1, key=raw, plain_size=plain_size, plain_sha256=plain_sha256)


def _byte_count(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < 2**63
