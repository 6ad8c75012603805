"""Frame generators and mutators for protocol fuzzing, and the sans-IO harness they feed.

Used by ``test_reliability_fuzz.py`` (hypothesis and a seeded generator), by the live-daemon
fuzz test, and by the atheris harness ``fuzz_atheris.py``. The harness feeds bytes to
:class:`FrameDecoder` in chunks, decodes every frame with ``decode_message`` and every event
of an Append with ``decode_event``, and lets only ``ProtocolError`` and ``EventError`` out.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import numpy as np

from trackd.errors import EventError, ProtocolError
from trackd.eventlog.events import (
    ContainerCreated,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
    decode_event,
    encode_event,
    event_types,
)
from trackd.wire import (
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
)

MAX_FRAME = 1 << 20
KINDS = ("hello", "welcome", "append", "ack", "req", "reply", "error")
FIELDS = {
    "hello": ("proto", "client_id", "pid", "repo"),
    "welcome": ("proto", "daemon_pid", "max_frame", "hwm"),
    "append": ("events",),
    "ack": ("seq",),
    "req": ("id", "op", "args"),
    "reply": ("id", "result"),
    "error": ("id", "code", "message"),
}
WRONG_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 300,
    "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    b"",
    b"\x00" * 16,
    b"\xc1" * 40,
    [],
    [1, "a", None],
    {},
    {"k": "append"},
    [[[[[[[[[[]]]]]]]]]],
    {"a": {"b": {"c": {"d": [1, 2, {"e": b"x"}]}}}},
]


def harness(data: bytes, chunks: list[int] | None = None) -> int:
    """Feed ``data`` to the sans-IO stack; return the number of frames decoded.

    Raises:
        ProtocolError: the stream broke the protocol (what the daemon replies with).
        EventError: an event of an Append frame is bad (what the daemon rejects it with).
        Anything else: a bug.
    """
    dec = FrameDecoder(MAX_FRAME)
    frames = 0
    pos = 0
    sizes = chunks or [len(data) or 1]
    i = 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)])
        i += 1
        bodies = dec.feed(data[pos : pos + n])
        pos += n
        # A frame announcing more than the maximum is refused before it is buffered.
        assert dec.buffered < MAX_FRAME + 4, dec.buffered
        for body in bodies:
            frames += 1
            msg = decode_message(body)
            if isinstance(msg, Append):
                for payload in msg.events:
                    decode_event(payload)
    return frames


def run_harness(data: bytes, chunks: list[int] | None = None) -> str:
    """:func:`harness`, with the two expected errors turned into a verdict string."""
    try:
        harness(data, chunks)
    except ProtocolError as e:
        return f"protocol: {type(e).__name__}"
    except EventError as e:
        return f"event: {type(e).__name__}"
    return "ok"


# -- generation (seeded) -------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, nested up to a few levels."""
    r = rng.random()
    if depth < 4 and r < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 4 and r < 0.3:
        return {
            rng.choice(["k", "a", "events", "seq", "", "x" * 20]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))
        }
    return rng.choice(WRONG_VALUES) if r < 0.65 else rng.choice([rng.randint(-5, 5), "s"])


def random_event(rng: random.Random, cid: bytes, seq: int) -> bytes:
    """A valid encoded event of any kind, or an envelope around a garbage body."""
    kind = rng.randrange(6)
    env: dict[str, Any] = {"client_id": cid, "client_seq": seq, "client_time": rng.random()}
    if kind == 0:
        return encode_event(ContainerCreated(container=f"c{rng.randrange(3)}", **env))
    if kind == 1:
        n = rng.randint(0, 30)
        steps = np.array(sorted(rng.sample(range(10_000), n)), dtype="<i8")
        values: Any = steps * 0.5
        if rng.random() < 0.3:
            values = np.empty(n, dtype=object)
            values[:] = [random_value(rng) for _ in range(n)]
        return encode_event(
            SequenceAppended.from_arrays(
                container=f"c{rng.randrange(3)}",
                name=rng.choice(["loss", "acc", "ü"]),
                context={"subset": rng.choice(["train", "val"])},
                steps=steps,
                values=values,
                **env,
            )
        )
    if kind == 2:
        return encode_event(
            ParamsSet(container="c0", path=("hp", "lr"), value=random_value(rng), **env)
        )
    if kind == 3:
        return encode_event(PropertiesSet(container="c0", props={"name": "n"}, **env))
    etype = rng.choice([*event_types(), "no.such.type"])
    body = {f: random_value(rng) for f in rng.sample(["container", "name", "steps", "x"], 2)}
    return msgpack.packb([etype, rng.choice([1, 2, 0, "1"]), cid, seq, 0.0, body])  # type: ignore[no-any-return]


def random_message(rng: random.Random, cid: bytes, repo: str) -> Message:
    """A well-formed message of any kind (hello always names ``repo``)."""
    k = rng.randrange(7)
    if k == 0:
        return Hello(client_id=cid, pid=rng.randint(0, 99999), repo=repo)
    if k == 1:
        return Welcome(daemon_pid=1, max_frame=MAX_FRAME, hwm=rng.randint(0, 9))
    if k == 2:
        first = rng.randint(1, 50)
        count = rng.randint(0, 5)
        return Append(events=tuple(random_event(rng, cid, first + i) for i in range(count)))
    if k == 3:
        return Ack(seq=rng.randint(0, 2**40))
    if k == 4:
        op = rng.choice(sorted(REQUEST_OPS))
        args = {"container": "c0"} if "container" in op else {}
        return Request(id=rng.randint(1, 9), op=op, args=args)
    if k == 5:
        return Reply(id=rng.randint(0, 9), result=random_value(rng))
    return ErrorReply(id=rng.choice([None, 0, 3]), code="x", message="m")


def frame(obj: Any) -> bytes:
    """One frame holding ``obj`` packed with msgpack (any object, even a bad message)."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def wrong_type_frames() -> list[bytes]:
    """Every message kind with every field replaced by every wrong value, one at a time."""
    base = {
        "hello": {"k": "hello", "proto": 1, "client_id": b"\x01" * 16, "pid": 1, "repo": ""},
        "welcome": {"k": "welcome", "proto": 1, "daemon_pid": 1, "max_frame": 10, "hwm": 0},
        "append": {"k": "append", "events": []},
        "ack": {"k": "ack", "seq": 1},
        "req": {"k": "req", "id": 1, "op": "ping", "args": {}},
        "reply": {"k": "reply", "id": 1, "result": None},
        "error": {"k": "error", "id": None, "code": "c", "message": "m"},
    }
    out = []
    for kind, fields in FIELDS.items():
        for f in (*fields, "k"):
            for v in WRONG_VALUES:
                obj = dict(base[kind])
                obj[f] = v
                out.append(frame(obj))
            obj = dict(base[kind])
            obj.pop(f)
            out.append(frame(obj))
    return out


def wrong_type_events() -> list[bytes]:
    """Encoded events with each envelope position and body field set to wrong values."""
    cid = b"\x05" * 16
    points = SequenceAppended.from_arrays(
        container="c",
        name="n",
        context={},
        steps=[1, 2],
        values=[0.5, 1.5],
        timestamps=[1.0, 2.0],
        axis={"epoch": [0.0, 0.0]},
        client_id=cid,
        client_seq=2,
    )
    valid = [
        encode_event(ContainerCreated(container="c", client_id=cid, client_seq=1)),
        encode_event(points),
        encode_event(ParamsSet(container="c", path=("a",), value=1, client_id=cid, client_seq=3)),
        encode_event(PropertiesSet(container="c", props={"n": "x"}, client_id=cid, client_seq=4)),
    ]
    out = []
    for p in valid:
        arr = list(msgpack.unpackb(p, raw=False))
        for i in range(6):
            for v in WRONG_VALUES:
                bad = list(arr)
                bad[i] = v
                out.append(msgpack.packb(bad, use_bin_type=True))
        for key in arr[5]:
            for v in WRONG_VALUES:
                body = dict(arr[5])
                body[key] = v
                out.append(msgpack.packb([*arr[:5], body], use_bin_type=True))
        out.append(msgpack.packb(arr[:5], use_bin_type=True))
        out.append(msgpack.packb([*arr, 1], use_bin_type=True))
    return out


# -- mutation ------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """Apply one random mutation: bit flips, truncation, splice, insertion, length surgery."""
    b = bytearray(data)
    op = rng.randrange(8)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 2 and pool:
        other = rng.choice(pool)
        cut_a = rng.randint(0, len(b))
        cut_b = rng.randint(0, len(other))
        b = b[:cut_a] + bytearray(other[cut_b:])
    elif op == 3:
        at = rng.randint(0, len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    elif op == 4 and len(b) >= 4:
        length = rng.choice([0, 1, 2**31, 2**32 - 1, MAX_FRAME + 1, MAX_FRAME, len(b) + 100])
        b[0:4] = struct.pack(">I", length)
    elif op == 5 and b:
        i = rng.randrange(len(b))
        b[i] = rng.choice([0x00, 0xC1, 0xFF, 0xDC, 0xDE, 0xC4, 0xD9, 0x90, 0x80])
    elif op == 6 and len(b) > 8:
        i = rng.randrange(len(b) - 4)
        b[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xdd\xff\xff\xff", b"\xdf\x7f\xff\xff"])
    else:
        j = rng.randint(0, len(b))
        b = b[:j] + b[j:] + b[j:]
    return bytes(b)


def random_stream(rng: random.Random, cid: bytes, repo: str, with_hello: bool) -> bytes:
    """A few frames (the first a valid hello when asked), then mutated."""
    frames = [encode_message(random_message(rng, cid, repo)) for _ in range(rng.randint(1, 4))]
    frames += rng.sample(WRONG_FRAMES, 1)
    rng.shuffle(frames)
    data = b"".join(frames)
    for _ in range(rng.randint(0, 3)):
        data = mutate(data, rng, frames)
    if with_hello:
        data = encode_message(Hello(client_id=cid, pid=1, repo=repo)) + data
    return data


WRONG_FRAMES = wrong_type_frames()
