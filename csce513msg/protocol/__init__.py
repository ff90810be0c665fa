"""The csce513Msg wire protocol, sans-I/O: frames, typed messages, error codes.

See ``frames`` for the byte layout, ``messages`` for the message types and
``errors`` for the codes and the exception tree; ``docs/protocol.md`` is the spec.
"""

from .errors import (
    Csce513Error,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from .frames import PREFIX_SIZE, Frame, FrameDecoder, HeaderCodec, encode_frame
from .messages import (
    REQUEST_TYPES,
    VERSION_MAJOR,
    VERSION_MINOR,
    Ack,
    ContentType,
    Deliver,
    Error,
    Feature,
    Hello,
    Login,
    LoginOk,
    Message,
    MsgType,
    Ping,
    Pong,
    Presence,
    Receipt,
    ReceiptState,
    Send,
    TargetKind,
    Welcome,
    Who,
    WhoReply,
    decode,
    encode,
)

__all__ = [
    "PREFIX_SIZE", "REQUEST_TYPES", "VERSION_MAJOR", "VERSION_MINOR", "Ack", "ContentType",
    "Csce513Error", "Deliver", "Error", "ErrorCode", "Feature", "Frame", "FrameDecoder",
    "HeaderCodec", "Hello", "LocalProtocolError", "Login", "LoginOk", "Message", "MsgType",
    "Ping", "Pong", "Presence", "ProtocolError", "Receipt", "ReceiptState", "RemoteProtocolError",
    "Send", "TargetKind", "Welcome", "Who", "WhoReply", "decode", "encode", "encode_frame",
]
