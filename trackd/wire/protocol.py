"""The client/daemon protocol as pure functions over bytes (sans-IO).

Owns: frame encoding and incremental decoding with a maximum frame size, the message kinds
and their validation, and the mapping of errors to stable codes. Imports ``trackd.errors``
and msgpack only; never sockets or asyncio, so both the daemon (asyncio) and the SDK (a
blocking socket on a thread) drive the same code.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack map whose
``"k"`` names the kind. Conversation on one connection::

    client                                   daemon
    Hello(proto, client_id, pid, repo)  -->
                                        <--  Welcome(proto, daemon_pid, max_frame, hwm)
    Append([event bytes, ...])          -->  (no reply; each event is encode_event() output)
                                        <--  Ack(seq)        after fdatasync covered seq
    Request(id, op, args)               -->
                                        <--  Reply(id, result) | ErrorReply(id, code, msg)

``hwm`` in Welcome is the highest client_seq of this client id the daemon holds durably, so
a reconnecting client resends only what follows it. Acks are cumulative. Request ids are
positive. Errors come in three scopes:

- ``ErrorReply(id=N)``: request N failed; the connection stays open.
- ``ErrorReply(id=0)``: an Append frame was rejected whole (an event failed validation; the
  message names its client_seq); nothing of that frame was written; the connection stays open.
- ``ErrorReply(id=None)``: the connection itself is broken (bad length, bad msgpack, wrong
  first message, refused peer); the daemon closes that connection only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from trackd.errors import FrameTooLargeError, ProtocolError, TrackdError

__all__ = [
    "APPEND_REJECTED",
    "DEFAULT_MAX_FRAME",
    "LENGTH_PREFIX",
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

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME: Final = 64 << 20
LENGTH_PREFIX: Final = 4
_LEN = struct.Struct(">I")

#: ErrorReply.id for a rejected Append frame.
APPEND_REJECTED: Final = 0

#: Request operations and their documented arguments.
#: flush            {}                          reply {"offset": int} once everything this
#:                                              connection sent before is durable and applied
#: open_container   {"container": str}          takes the write lock of a container; a lock
#:                                              held by another live connection -> "locked"
#: close_container  {"container": str}          releases it
#: status           {}                          daemon status map
#: ping             {}                          {"pong": True}
REQUEST_OPS: Final = frozenset({"flush", "open_container", "close_container", "status", "ping"})


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of a client: who it is and which repository it writes to."""

    client_id: bytes
    pid: int
    repo: str
    proto: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Welcome:
    """The daemon's answer to Hello."""

    daemon_pid: int
    max_frame: int
    hwm: int
    proto: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Append:
    """Encoded events to append, in client_seq order. Never replied to directly."""

    events: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """Every event of this client up to ``seq`` is durable (fdatasync returned)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects exactly one Reply or ErrorReply with the same id."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """Successful answer to a Request."""

    id: int
    result: Any = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal. ``id`` is None for errors about the connection itself (then it closes).

    ``code`` is a stable ``TrackdError.code``; the SDK raises the same class again.
    """

    id: int | None
    code: str
    message: str


Message = Hello | Welcome | Append | Ack | Request | Reply | ErrorReply


def error_reply(request_id: int | None, exc: TrackdError) -> ErrorReply:
    """Build the error reply that carries ``exc`` across the wire."""
    return ErrorReply(id=request_id, code=exc.code, message=str(exc))


def encode_message(msg: Message, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one message as one frame (length prefix included).

    Raises:
        FrameTooLargeError: the encoded message is longer than ``max_frame``.
    """
    if isinstance(msg, Append):
        obj: dict[str, Any] = {"k": "append", "events": list(msg.events)}
    elif isinstance(msg, Ack):
        obj = {"k": "ack", "seq": msg.seq}
    elif isinstance(msg, Request):
        obj = {"k": "req", "id": msg.id, "op": msg.op, "args": msg.args}
    elif isinstance(msg, Reply):
        obj = {"k": "reply", "id": msg.id, "result": msg.result}
    elif isinstance(msg, ErrorReply):
        obj = {"k": "error", "id": msg.id, "code": msg.code, "message": msg.message}
    elif isinstance(msg, Hello):
        obj = {"k": "hello", "proto": msg.proto, "client_id": msg.client_id, "pid": msg.pid,
               "repo": msg.repo}  # fmt: skip
    else:
        obj = {"k": "welcome", "proto": msg.proto, "daemon_pid": msg.daemon_pid,
               "max_frame": msg.max_frame, "hwm": msg.hwm}  # fmt: skip
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameTooLargeError(f"message of {len(body)} bytes exceeds max frame {max_frame}")
    return _LEN.pack(len(body)) + body


def _field(obj: dict[Any, Any], key: str, types: type | tuple[type, ...], kind: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{kind} message lacks field {key!r}")
    value = obj[key]
    # bool is an int subclass; a True where an int is expected is a protocol error.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise ProtocolError(f"{kind}.{key} must be {_names(types)}, got {type(value).__name__}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


def decode_message(payload: bytes | memoryview) -> Message:
    """Decode and validate the body of one frame.

    Raises:
        ProtocolError: bad msgpack, not a map, unknown kind, missing or mistyped field.
    """
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated classes for bad bytes
        raise ProtocolError(f"frame is not valid msgpack: {e}") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame must hold a map, got {type(obj).__name__}")
    kind = obj.get("k")
    if kind == "append":
        events = _field(obj, "events", list, kind)
        if not all(isinstance(e, bytes) for e in events):
            raise ProtocolError("append.events must be a list of binary event payloads")
        return Append(events=tuple(events))
    if kind == "ack":
        return Ack(seq=_field(obj, "seq", int, kind))
    if kind == "req":
        op = _field(obj, "op", str, kind)
        if op not in REQUEST_OPS:
            raise ProtocolError(f"unknown request op {op!r}; known: {sorted(REQUEST_OPS)}")
        return Request(id=_field(obj, "id", int, kind), op=op, args=_field(obj, "args", dict, kind))
    if kind == "reply":
        return Reply(id=_field(obj, "id", int, kind), result=obj.get("result"))
    if kind == "error":
        rid = obj.get("id")
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
            raise ProtocolError("error.id must be an int or nil")
        return ErrorReply(
            id=rid, code=_field(obj, "code", str, kind), message=_field(obj, "message", str, kind)
        )
    if kind == "hello":
        cid = _field(obj, "client_id", bytes, kind)
        if len(cid) != 16:
            raise ProtocolError(f"hello.client_id must be 16 bytes, got {len(cid)}")
        return Hello(
            client_id=cid,
            pid=_field(obj, "pid", int, kind),
            repo=_field(obj, "repo", str, kind),
            proto=_field(obj, "proto", int, kind),
        )
    if kind == "welcome":
        return Welcome(
            daemon_pid=_field(obj, "daemon_pid", int, kind),
            max_frame=_field(obj, "max_frame", int, kind),
            hwm=_field(obj, "hwm", int, kind),
            proto=_field(obj, "proto", int, kind),
        )
    raise ProtocolError(f"unknown message kind {kind!r}")


class FrameDecoder:
    """Splits a byte stream into frame bodies, refusing oversize frames up front.

    Feed it whatever the socket returned; it returns every complete frame body. A length
    above ``max_frame`` raises :class:`FrameTooLargeError` as soon as the 4-byte prefix is
    seen, before any of the body is buffered. After an error the stream is unusable.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; return the bodies of all frames completed by them, in order.

        Raises:
            FrameTooLargeError: a frame announces more than ``max_frame`` bytes.
            ProtocolError: a frame announces zero bytes.
        """
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= LENGTH_PREFIX:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > self.max_frame:
                raise FrameTooLargeError(
                    f"frame announces {length} bytes; the maximum is {self.max_frame}"
                )
            if length == 0:
                raise ProtocolError("frame announces 0 bytes; every frame holds a message")
            end = pos + LENGTH_PREFIX + length
            if end > n:
                break
            out.append(bytes(buf[pos + LENGTH_PREFIX : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out
