"""The client/daemon protocol, sans-IO. See :mod:`trackd.wire.protocol`.

Imports ``trackd.errors`` and ``trackd.eventlog`` codecs only.
"""

from trackd.wire.protocol import (
    APPEND_REJECTED,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    REQUEST_OPS,
    Ack,
    Append,
    ErrorReply,
    FrameDecoder,
    Hello,
    Message,
    Reply,
    Request,
    Welcome,
    decode_message,
    encode_message,
    error_reply,
)

__all__ = [
    "APPEND_REJECTED",
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "REQUEST_OPS",
    "Ack",
    "Append",
    "ErrorReply",
    "FrameDecoder",
    "Hello",
    "Message",
    "Reply",
    "Request",
    "Welcome",
    "decode_message",
    "encode_message",
    "error_reply",
]
