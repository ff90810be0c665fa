"""The hub's limits. Every one is a server flag (see ``msgsrv --help``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..protocol import VERSION_MINOR
from ..protocol.transfer import MAX_CHUNK, MIN_CHUNK, UPLOAD_WINDOW
from ..store.interface import MAX_GROUP_MEMBERS


class Visibility(enum.Enum):
    """Who sees whom online (``Who`` and presence events): a server's choice."""

    CLASS = "class"  #: everyone sees everyone online (a class room)
    INSTRUCTORS = "instructors"  #: students see only the staff (instructors, assistants) online; staff see all


#: what ``max_chunk`` may be: at least a short chunk, at most what an upload's window holds
CHUNK_RANGE = (MIN_CHUNK, UPLOAD_WINDOW)


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Limits and time constants of the chat core, with their defaults."""

    server_name: str = "csce513msg"
    max_frame: int = 65536  #: largest header + body accepted from a client, bytes
    max_text: int = 16384  #: largest message body, bytes
    window: int = 64  #: deliveries a client may leave unacknowledged (advertised)
    idle_timeout: float = 90.0  #: seconds of silence before a connection is closed
    rate: float = 500.0  #: requests per second per connection, sustained
    burst: int = 1000  #: requests a connection may send at once before the rate applies
    new_device_history: int = 100  #: a device's first catch-up starts this many messages back per stream
    self_register: bool = False  #: accept Register over the wire (else accounts come from `msgsrv user add`)
    login_failures_per_account: int = 5  #: failed logins per window before an account is throttled
    login_failures_per_address: int = 50  #: ... before an address is (a class behind NAT shares one)
    login_failure_window: float = 60.0  #: seconds a failed login counts
    registrations_per_address: int = 200  #: accounts one address may register an hour (a class behind NAT)
    #: logins waiting for their password hash, server-wide (hub/admission.py); when full, the
    #: address with the most waiting gives one up (RATE_LIMITED: its client tries again later)
    max_pending_logins: int = 1024
    account_poll: float = 2.0  #: seconds between checks for accounts changed by `msgsrv user`
    retention_days: float = 365.0  #: messages older than this are deleted (0: kept forever)
    ack_delay: float = 0.05  #: seconds acknowledgements may wait to be stored with other work
    login_timeout: float = 60.0  #: seconds from connect to a successful login (Hello included)
    frame_timeout: float = 30.0  #: seconds a frame may take from its first byte to its last
    visibility: Visibility = Visibility.CLASS  #: who sees whom online
    #: logins whose password is checked at once: the hash lane's two threads and one waiting
    #: behind each (backends/jobs.py), so the lane is never idle while logins wait
    hash_slots: int = 4
    #: the most bytes of message bodies one History page carries (at least one message):
    #: msgsrv sets it to the room its outbound hard limit leaves above the high-water mark
    #: and a full window, so a page never takes a reader past the hard limit
    page_bytes: int = 1 << 20
    #: outbound bytes the file lane's reads may add above the high-water mark: msgsrv sets it to
    #: what the hard limit leaves beside a full window and a History page; a 1.8 session's
    #: FileData carry ``max_chunk`` only if two reads of it fit (else ``max_frame`` less 1024)
    read_room: int = 2 << 20
    #: the newest protocol minor this hub serves (Welcome, Hello, the frames it decodes): the
    #: protocol's ``VERSION_MINOR``. Groups are served from 4; a test sets 3 to play a 1.3 server
    max_minor: int = VERSION_MINOR
    max_group_members: int = MAX_GROUP_MEMBERS  #: members a group may have at once
    # files (1.6), sent in the Welcome; a server without a file shelf offers none
    max_file: int = 256 << 20  #: the largest file an upload may declare, bytes
    file_quota: int = 1 << 30  #: bytes of uploads one user may hold on the server at once
    disk_reserve: int = 512 << 20  #: bytes kept free on the files' disk: an upload past it is refused
    file_days: float = 7.0  #: days an upload is kept from its start, then deleted with its bytes
    #: (1.8) the largest chunk of a file in one frame (FileChunk, FileData) for a session that says
    #: 1.8 or later, bytes of body (never less than ``max_frame`` less 1024, what an older one keeps)
    max_chunk: int = MAX_CHUNK
    #: days a device's end-to-end keys stay in the key directory after its last login (1.7)
    key_days: float = 90.0
