"""Unit and property tests of the sans-IO wire protocol."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackd.errors import (
    ERROR_CODES,
    FrameTooLargeError,
    LockedError,
    ProtocolError,
    error_from_code,
)
from trackd.wire import (
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

CID = bytes(range(16))

MESSAGES: list[Message] = [
    Hello(client_id=CID, pid=42, repo="/tmp/x"),
    Welcome(daemon_pid=7, max_frame=1 << 20, hwm=99),
    Append(events=(b"a", b"bc", b"")),
    Ack(seq=12),
    Request(id=3, op="flush", args={}),
    Request(id=4, op="open_container", args={"container": "abc"}),
    Reply(id=3, result={"offset": 120}),
    ErrorReply(id=None, code="protocol", message="bad"),
    ErrorReply(id=5, code="locked", message="held by pid 9"),
]


def _body(frame: bytes) -> bytes:
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_kind_round_trips(msg: Message) -> None:
    """Each message kind decodes to an equal message after encoding."""
    assert decode_message(_body(encode_message(msg))) == msg


@given(
    st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=20),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=50),
)
def test_decoder_reassembles_frames_split_anywhere(msgs: list[Message], cuts: list[int]) -> None:
    """Frames fed in arbitrary pieces come out whole, in order, and nothing stays buffered."""
    stream = b"".join(encode_message(m) for m in msgs)
    dec = FrameDecoder()
    bodies: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        bodies += dec.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert [decode_message(b) for b in bodies] == msgs
    assert dec.buffered == 0


def test_oversize_frame_refused_from_its_prefix_alone() -> None:
    """A length prefix above the maximum raises before any body byte arrives."""
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLargeError, match="1025"):
        dec.feed(struct.pack(">I", 1025))


def test_encoding_refuses_oversize_message() -> None:
    """The sender checks the same maximum as the receiver."""
    with pytest.raises(FrameTooLargeError):
        encode_message(Append(events=(b"x" * 2048,)), max_frame=1024)


def test_zero_length_frame_is_a_protocol_error() -> None:
    """An empty frame cannot hold a message and is refused."""
    with pytest.raises(ProtocolError, match="0 bytes"):
        FrameDecoder().feed(b"\0\0\0\0")


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ([1, 2], "map"),
        ({"k": "nope"}, "unknown message kind"),
        ({"k": "ack"}, "lacks field 'seq'"),
        ({"k": "ack", "seq": "1"}, "ack.seq must be int"),
        ({"k": "ack", "seq": True}, "ack.seq must be int"),
        ({"k": "append", "events": [1]}, "binary event payloads"),
        ({"k": "req", "id": 1, "op": "drop_tables", "args": {}}, "unknown request op"),
        ({"k": "hello", "client_id": b"x", "pid": 1, "repo": "/r", "proto": 1}, "16 bytes"),
    ],
)
def test_malformed_messages_name_the_problem(obj: object, needle: str) -> None:
    """Wrong shapes and types raise ProtocolError saying what is wrong."""
    with pytest.raises(ProtocolError, match=needle):
        decode_message(msgpack.packb(obj))


def test_garbage_bytes_are_a_protocol_error() -> None:
    """Bytes that are not msgpack raise ProtocolError, not a msgpack exception."""
    with pytest.raises(ProtocolError, match="msgpack"):
        decode_message(b"\xc1\xc1\xc1")


@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_protocol_errors(data: bytes) -> None:
    """Arbitrary bytes either decode or raise ProtocolError; nothing else escapes."""
    dec = FrameDecoder(max_frame=4096)
    try:
        for body in dec.feed(data):
            decode_message(body)
    except ProtocolError:
        pass


def test_error_codes_map_back_to_the_same_class() -> None:
    """An error sent as a code is raised again as the same class with the same message."""
    reply = error_reply(5, LockedError("run abc is held by pid 9"))
    again = decode_message(_body(encode_message(reply)))
    assert isinstance(again, ErrorReply)
    exc = error_from_code(again.code, again.message)
    assert type(exc) is LockedError
    assert str(exc) == "run abc is held by pid 9"
    assert all(ERROR_CODES[c].code == c for c in ERROR_CODES)
