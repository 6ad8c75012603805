"""The compact column codec and the point events that use it (``sequence.appended`` v2)."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackd.errors import EventError
from trackd.eventlog.columns import (
    ColumnError,
    column_count,
    decode_f64,
    decode_i64,
    encode_f64,
    encode_i64,
)
from trackd.eventlog.events import Event, SequenceAppended, decode_event, encode_event

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
CID = bytes(range(16))


@given(st.lists(I64, max_size=300))
def test_any_int64_column_round_trips(values: list[int]) -> None:
    a = np.array(values, dtype=np.int64)
    enc = encode_i64(a)
    assert column_count(enc) == len(values)
    assert decode_i64(enc).tolist() == values


@given(st.lists(I64, max_size=300))
def test_any_float64_bit_pattern_round_trips(bits: list[int]) -> None:
    """Every float64 comes back bit for bit: NaN payloads, -0.0, infinities, subnormals."""
    a = np.array(bits, dtype=np.int64).view(np.float64)
    back = decode_f64(encode_f64(a))
    assert back.view(np.int64).tolist() == bits


@given(st.lists(st.integers(min_value=-5, max_value=5), min_size=3, max_size=200), I64)
def test_small_differences_with_outliers_round_trip(diffs: list[int], start: int) -> None:
    """Narrow differences with a few that need patches, wrapping past the int64 range."""
    d = np.array(diffs, dtype=np.int64)
    d[:: max(1, len(d) // 3)] *= 1 << 40
    with np.errstate(over="ignore"):
        a = np.cumsum(np.concatenate([[start], d]).astype(np.int64))
    assert np.array_equal(decode_i64(encode_i64(a)), a)


def test_steps_of_a_loop_take_a_few_bytes_per_batch() -> None:
    assert len(encode_i64(np.arange(10_000, 60_000))) <= 21
    assert len(encode_i64(np.arange(0, 500_000, 5))) <= 21


def test_timestamps_of_a_loop_take_one_or_two_bytes_per_point() -> None:
    # A loop calling time.time() every ~0.3 us, with a pause of 50 ms every 1,000 points.
    t = 1.7e9 + np.cumsum(np.full(5000, 3e-7))
    t[1000::1000] += 0.05
    enc = encode_f64(t)
    assert len(enc) <= 2 * len(t)
    assert np.array_equal(decode_f64(enc), t)


def test_incompressible_columns_cost_only_the_header() -> None:
    a = np.random.default_rng(1).integers(-(2**62), 2**62, size=1000)
    assert len(encode_i64(a)) == 5 + 8 * 1000


def test_decoded_count_is_bounded_before_anything_is_allocated() -> None:
    huge = struct.pack("<BIqq", 1, 2**32 - 1, 0, 1)  # 4 billion steps in 21 bytes
    with pytest.raises(ColumnError, match="claims 4294967295 values, more than the 10 allowed"):
        decode_i64(huge, max_n=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "header"),
        (b"\x07\x01\x00\x00\x00", "unknown column kind 7"),
        (struct.pack("<BI", 0, 2) + b"\0" * 15, "raw column of 2 values has 15 bytes"),
        (struct.pack("<BIq", 1, 3, 0), "arithmetic column has 8 bytes"),
        (struct.pack("<BIqB", 2, 3, 0, 3) + b"\0" * 6, "width 3"),
        (struct.pack("<BIqB", 2, 3, 0, 1) + b"\0", "cut short"),
        (struct.pack("<BIqB", 2, 3, 0, 1) + b"\0\0" + struct.pack("<I", 5), "bad patch list"),
        (
            struct.pack("<BIqB", 2, 3, 0, 1) + b"\0\0" + struct.pack("<IIq", 1, 2, 9),
            "patch past its end",
        ),
        (struct.pack("<BI", 2, 0), "cut short"),
    ],
)
def test_malformed_columns_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ColumnError, match=message):
        decode_i64(data)


def _event(n: int = 1000) -> SequenceAppended:
    return SequenceAppended.from_arrays(
        container="c",
        name="loss",
        context={"subset": "train"},
        steps=np.arange(n),
        values=np.linspace(0, 1, n),
        timestamps=1.7e9 + np.arange(n) * 1e-6,
        axis={"epoch": np.zeros(n)},
        client_id=CID,
        client_seq=1,
        client_time=1.0,
    )


def test_point_events_round_trip_and_are_compact() -> None:
    ev = _event()
    payload = encode_event(ev)
    assert decode_event(payload) == ev
    # values stay packed float64 (8 KB); steps, timestamps and the axis are nearly free
    assert len(payload) < 8000 + 2000


def test_version_1_point_events_are_upcast_on_read() -> None:
    """Logs written before compact columns hold packed columns; they still read the same."""
    ev = _event(50)
    # Version 1 bodies were the generic field map, with the columns packed as in memory.
    body = Event.body(ev)
    v1 = msgpack.packb([ev.TYPE, 1, CID, 1, 1.0, body], use_bin_type=True)
    assert decode_event(v1) == ev
    body["steps"] = ev.steps[:-3]
    bad = msgpack.packb([ev.TYPE, 1, CID, 1, 1.0, body], use_bin_type=True)
    with pytest.raises(EventError, match="steps must be packed 8-byte values"):
        decode_event(bad)


def _v2(**fields: object) -> bytes:
    body = {
        "container": "c",
        "name": "loss",
        "context": {},
        "steps": encode_i64(np.arange(4)),
        "values": np.zeros(4).tobytes(),
        "value_dtype": "<f8",
        "timestamps": None,
        "axis": None,
    }
    body.update(fields)
    return msgpack.packb([SequenceAppended.TYPE, 2, CID, 1, 1.0, body], use_bin_type=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"steps": struct.pack("<BIqq", 1, 2**32 - 1, 0, 1)},
            "steps claims 4294967295 points but the batch has only 32 bytes of values",
        ),
        ({"steps": np.arange(4).tobytes()}, "steps: raw column of 0 values has 27 bytes"),
        ({"steps": "0123"}, "steps must be an encoded column"),
        ({"steps": encode_i64(np.arange(3))}, "3 steps but 32 bytes"),
        ({"timestamps": encode_f64(np.zeros(3))}, "timestamps must be 4 packed float64"),
        ({"axis": {"epoch": b"\x02"}}, "axis 'epoch': a column needs a 5-byte header"),
        ({"values": None}, "values must be bytes"),
    ],
)
def test_malformed_point_events_are_refused_with_the_reason(
    fields: dict[str, object], message: str
) -> None:
    assert decode_event(_v2()).count == 4  # the well-formed base case decodes
    with pytest.raises(EventError, match=message):
        decode_event(_v2(**fields))
