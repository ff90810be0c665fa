"""Error codes and the one exception tree of csce513Msg.

Codes are part of the wire protocol: their numbers never change, new ones are
only added (a client that meets an unknown code shows its message).

::

    Csce513Error
     └── ProtocolError               the byte stream or a message broke a rule
          ├── LocalProtocolError     we misused the API: a bug on our side
          └── RemoteProtocolError    the peer misbehaved; carries the code to reply with
                                     and whether the connection must close (``fatal``)

Anything else that escapes the protocol or the hub is a bug, as in h11.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Stable error codes carried by ``Error`` frames (u16 on the wire)."""

    BAD_FRAME = 1  # the frame or its header could not be decoded; the connection closes
    FRAME_TOO_LARGE = 2  # declared length over the limit; the connection closes
    UNSUPPORTED = 3  # a frame type the server does not know (or not a request)
    BAD_STATE = 4  # a request that is not allowed in this state (e.g. before hello)
    NOT_LOGGED_IN = 5  # the request needs a login first
    NAME_TAKEN = 6  # registration: that user name exists already
    INVALID_NAME = 7  # the name breaks the naming rule
    USER_NOT_FOUND = 8  # no such user
    USER_OFFLINE = 9  # the user exists but is not online
    RATE_LIMITED = 10  # too many requests; slow down
    TEXT_TOO_LONG = 11  # the message body is over the text limit
    VERSION_MISMATCH = 12  # another major protocol version; the connection closes
    BAD_REQUEST = 13  # a field has a value the server cannot accept
    IDLE_TIMEOUT = 14  # silent for the idle timeout, not logged in or a frame unfinished in time; closes
    SHUTTING_DOWN = 15  # the server is stopping; the connection closes
    SERVER_FULL = 16  # the server cannot take another connection; it closes
    ALREADY_LOGGED_IN = 17  # this connection is logged in already
    INTERNAL = 18  # a bug in the server failed this request; the connection stays (1.3)
    STORE_FAILED = 19  # the server could not store the message: it was not accepted; retry
    AUTH_FAILED = 20  # wrong user name or password (the same reply for both)
    AUTH_THROTTLED = 21  # too many failed logins for this account or address; wait
    REGISTRATION_CLOSED = 22  # the server does not take registrations over the wire
    ACCOUNT_CHANGED = 23  # the password changed or the account was removed; the session ends
    RESEND_TOO_OLD = 24  # a resend of a message older than the history the server keeps: not stored again
    # 1.4, groups (assigned; docs/protocol.md section 10 keeps 32-39 for the rest of 1.4)
    GROUP_NOT_FOUND = 25  # no group by that name or stream
    NOT_A_MEMBER = 26  # the request needs you to be a member of the group
    FORBIDDEN = 27  # your role (or not owning the group) does not allow it
    GROUP_FULL = 28  # the group has its largest number of members
    MUTED = 29  # you are muted in this group (retry_after_ms: the time left)
    SLOW_MODE = 30  # the group is in slow mode: wait (retry_after_ms) before posting again
    NO_SUCH_MESSAGE = 31  # no message at that position of the group (an event, or removed already)
    # 1.6, files (docs/protocol.md section 13)
    FILE_NOT_FOUND = 45  # no such upload, or not one you may see (the same answer for both)
    FILE_TOO_LARGE = 46  # the file is over the server's largest (Welcome.max_file)
    QUOTA_EXCEEDED = 47  # your uploads held on the server would pass your quota (Welcome.file_quota)
    NO_SPACE = 48  # the server's disk has no room for it (it keeps Welcome.disk_reserve free)
    TRANSFER_FAILED = 49  # the upload broke a rule or its bytes did not match: it was removed
    # 1.7, end-to-end encryption's key directory (docs/protocol.md section 14)
    DEVICE_REQUIRED = 55  # keys belong to a named device: log in with a device_id to publish them
    KEYS_FULL = 56  # the directory holds as many one-time prekeys for this device as it keeps


class Csce513Error(Exception):
    """Root of every exception this package raises on purpose."""


class ProtocolError(Csce513Error):
    """A rule of the wire protocol was broken."""


class LocalProtocolError(ProtocolError):
    """Our own code asked for something the protocol forbids (a bug here)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule; the reply is an ``Error`` with ``code``.

    Args:
        code: the error code to send back.
        message: a human sentence naming the problem.
        request_id: the request it answers (0: the connection as a whole).
        fatal: True if the connection cannot go on (framing is lost).
        retry_after_ms: the wait, when known, before the same request may succeed (1.4).
    """

    def __init__(
        self, code: ErrorCode, message: str, *, request_id: int = 0, fatal: bool = False, retry_after_ms: int = 0
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal
        self.retry_after_ms = retry_after_ms
