"""Columnar point batches: dtype promotion, "later value wins" merges, chunk encoding.

Owns: the in-memory form of a run of points (:class:`Cols`), the value-dtype lattice that
decides what a sequence becomes when batches of different dtypes meet, the merge that keeps
the newest value per step, and the byte layout of one stored chunk. Pure functions over
numpy arrays; no SQL, no I/O, so any backend can store chunks the same way.
Imports: numpy, msgpack, crc32c and ``trackd.eventlog.events``.

Chunk layout (one row of ``sequence_chunks``): ``steps`` a compact int64 column
(:mod:`trackd.eventlog.columns`), strictly increasing; ``vals`` packed values of the
sequence's dtype, or a msgpack array when the dtype is ``"msgpack"``; ``timestamps`` a compact
float64 column or NULL; ``axis`` a msgpack map name -> compact float64 column, or NULL.
Steps that go up by one cost a few bytes per chunk and a loop's timestamps one or two bytes
per point, so a float metric takes about 10 bytes per point instead of 24. A missing
timestamp or axis value is NaN; a column whose values are all NaN is stored as NULL, so what
a reader sees never depends on how points were grouped into chunks. ``crc`` is the CRC32C of
the chunk (:func:`chunk_crc`): SQLite checks its pages' structure but never row content, so
a flipped bit in a BLOB would otherwise be served to readers as data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
from crc32c import crc32c

from trackd.eventlog.columns import decode_f64, decode_i64, encode_f64, encode_i64
from trackd.eventlog.events import (
    NUMERIC_VALUE_DTYPES,
    OBJECT_VALUE_DTYPE,
    STEP_DTYPE,
    TIME_DTYPE,
    SequenceAppended,
)

__all__ = [
    "OBJECT_VALUE_DTYPE",
    "ChunkData",
    "Cols",
    "EncodedChunk",
    "chunk_crc",
    "cols_from_event",
    "concat",
    "convert_values",
    "decode_chunks",
    "encode_chunk",
    "join_dtype",
    "last_wins",
    "pack_value",
    "row_crc",
    "split",
    "unpack_value",
    "values_array",
]

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
AnyArray = npt.NDArray[Any]


def join_dtype(current: str | None, incoming: str) -> str:
    """The dtype a sequence of ``current`` dtype has after a batch of ``incoming`` dtype.

    The order is a lattice (``|b1 < <i8 < <f8 < msgpack`` and ``|b1 < <f4 < <f8``), so the
    result of many batches does not depend on how they are grouped: building views live in
    small applies and rebuilding them in one pass give the same dtype.

    Args:
        current: The sequence's dtype, or None for a sequence with no batch yet.
        incoming: The new batch's ``value_dtype``.

    Returns:
        The least dtype that holds both.
    """
    if current is None or current == incoming:
        return incoming
    if OBJECT_VALUE_DTYPE in (current, incoming):
        return OBJECT_VALUE_DTYPE
    pair = {current, incoming}
    if pair == {"|b1", "<i8"}:
        return "<i8"
    if pair == {"|b1", "<f4"}:
        return "<f4"
    return "<f8"


def _objects(items: Sequence[Any]) -> AnyArray:
    # fromiter keeps each item (a list, a dict) as one element; np.array would broadcast.
    return np.fromiter(items, dtype=object, count=len(items))


def values_array(items: Sequence[Any], dtype: str) -> AnyArray:
    """Python values as an array of value dtype ``dtype``."""
    if dtype == OBJECT_VALUE_DTYPE:
        return _objects(items)
    return np.array(items, dtype=np.dtype(dtype))


def convert_values(values: AnyArray, src: str, dst: str, via: str | None = None) -> AnyArray:
    """Convert values of dtype ``src`` to ``dst`` (which is ``join_dtype(src, dst)``).

    Numbers become objects as the Python numbers of dtype ``via`` (default ``src``): the
    numeric dtype the sequence had just before it turned into objects. Going through it makes
    the result the same whether the sequence was promoted step by step or at once.

    Args:
        values: The values; object dtype when ``src`` is ``"msgpack"``.
        src: Their value dtype.
        dst: The target value dtype.
        via: Numeric dtype to cast numbers to before they become objects.

    Returns:
        The converted values (``values`` itself when nothing changes).
    """
    if src == dst:
        return values
    if dst != OBJECT_VALUE_DTYPE:
        return values.astype(np.dtype(dst))
    if src == OBJECT_VALUE_DTYPE:
        return values
    mid = via if via is not None else src
    arr = values.astype(np.dtype(mid)) if mid != src else values
    return _objects(arr.tolist())


@dataclass(slots=True)
class Cols:
    """A run of points in columns; all arrays have the same length.

    Attributes:
        steps: int64 steps.
        values: Values (object dtype for msgpack sequences).
        timestamps: float64 wall-clock times, NaN where unknown; None when all unknown.
        axis: Extra float64 columns by name, NaN where unknown.
    """

    steps: Int64Array
    values: AnyArray
    timestamps: Float64Array | None = None
    axis: dict[str, Float64Array] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def take(self, idx: npt.NDArray[np.intp]) -> Cols:
        """The points at positions ``idx``."""
        return Cols(
            self.steps[idx],
            self.values[idx],
            None if self.timestamps is None else self.timestamps[idx],
            {k: v[idx] for k, v in self.axis.items()},
        )

    def slice(self, start: int, stop: int) -> Cols:
        """The points in ``[start, stop)`` (views, no copy)."""
        return Cols(
            self.steps[start:stop],
            self.values[start:stop],
            None if self.timestamps is None else self.timestamps[start:stop],
            {k: v[start:stop] for k, v in self.axis.items()},
        )

    def with_values(self, values: AnyArray) -> Cols:
        """The same points with other values."""
        return Cols(self.steps, values, self.timestamps, self.axis)


def cols_from_event(ev: SequenceAppended) -> Cols | None:
    """The points of one batch, or None when its fields are inconsistent.

    The codec already validated decoded events; this re-checks the lengths cheaply so that an
    event built in-process with bad fields is ignored instead of breaking a projection.
    """
    try:
        if ev.value_dtype != OBJECT_VALUE_DTYPE and ev.value_dtype not in NUMERIC_VALUE_DTYPES:
            return None
        if len(ev.steps) % STEP_DTYPE.itemsize:
            return None
        steps = np.frombuffer(ev.steps, dtype=STEP_DTYPE)
        n = steps.shape[0]
        if ev.value_dtype == OBJECT_VALUE_DTYPE:
            items = msgpack.unpackb(ev.values, raw=False, strict_map_key=False)
            if not isinstance(items, list) or len(items) != n:
                return None
            values = _objects(items)
        else:
            values = np.frombuffer(ev.values, dtype=np.dtype(ev.value_dtype))
            if values.shape[0] != n or len(ev.values) % values.itemsize:
                return None
        ts = None
        if ev.timestamps is not None:
            ts = np.frombuffer(ev.timestamps, dtype=TIME_DTYPE)
            if ts.shape[0] != n or len(ev.timestamps) % TIME_DTYPE.itemsize:
                return None
        axis: dict[str, Float64Array] = {}
        for name, raw in (ev.axis or {}).items():
            col = np.frombuffer(raw, dtype=TIME_DTYPE)
            if not isinstance(name, str) or col.shape[0] != n or len(raw) % TIME_DTYPE.itemsize:
                return None
            axis[name] = col
    except (TypeError, ValueError, msgpack.UnpackException):
        return None
    return Cols(steps, values, ts, axis)


def _nan(n: int) -> Float64Array:
    return np.full(n, np.nan, dtype=TIME_DTYPE)


def concat(parts: Sequence[Cols]) -> Cols:
    """Concatenate runs of points whose values already share one dtype.

    A timestamp or axis column missing from some parts is filled with NaN there.
    """
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Cols(np.empty(0, STEP_DTYPE), np.empty(0, TIME_DTYPE))
    steps = np.concatenate([p.steps for p in parts])
    values = np.concatenate([p.values for p in parts])
    ts = None
    if any(p.timestamps is not None for p in parts):
        ts = np.concatenate(
            [p.timestamps if p.timestamps is not None else _nan(len(p)) for p in parts]
        )
    names = sorted({k for p in parts for k in p.axis})
    axis = {k: np.concatenate([p.axis.get(k, _nan(len(p))) for p in parts]) for k in names}
    return Cols(steps, values, ts, axis)


def strictly_increasing(steps: Int64Array) -> bool:
    """True when every step is larger than the one before it."""
    return bool(steps.shape[0] < 2 or np.all(steps[1:] > steps[:-1]))


def last_wins(points: Cols) -> Cols:
    """Sort by step and keep, for each step, the point that came last.

    Returns ``points`` itself when its steps are already strictly increasing.
    """
    if strictly_increasing(points.steps):
        return points
    order = np.argsort(points.steps, kind="stable")
    s = points.steps[order]
    keep = np.empty(s.shape[0], dtype=bool)
    keep[:-1] = s[1:] != s[:-1]
    keep[-1] = True
    return points.take(order[keep])


def split(points: Cols, max_points: int) -> list[Cols]:
    """Cut sorted points into runs of at most ``max_points``."""
    n = len(points)
    return [points.slice(i, min(i + max_points, n)) for i in range(0, n, max_points)]


def pack_value(value: Any) -> bytes:
    """Encode one object value (a msgpack sequence's ``last_value``)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_value(raw: bytes) -> Any:
    """Decode what :func:`pack_value` wrote."""
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One chunk as the column values of a ``sequence_chunks`` row."""

    first_step: int
    last_step: int
    n: int
    steps: bytes
    vals: bytes | memoryview
    timestamps: bytes | None
    axis: bytes | None
    crc: int


Blob = bytes | memoryview
# One stored chunk as (n, steps, vals, timestamps, axis), the input of decode_chunks.
ChunkData = tuple[int, bytes, bytes, bytes | None, bytes | None]

# first_step, last_step, n and the four column lengths (-1 for NULL): with the lengths in
# front, no two different rows hash the same bytes however their columns split.
_CRC_HEAD = struct.Struct("<qqqqqqq")


def chunk_crc(
    first_step: int,
    last_step: int,
    n: int,
    steps: Blob,
    vals: Blob,
    timestamps: Blob | None,
    axis: Blob | None,
) -> int:
    """The CRC32C of one chunk row: its step range, count and all four columns."""
    blobs = (steps, vals, timestamps, axis)
    lengths = [-1 if b is None else len(b) for b in blobs]
    crc = crc32c(_CRC_HEAD.pack(first_step, last_step, n, *lengths))
    for b in blobs:
        if b:
            crc = crc32c(b, crc)
    return int(crc)


def row_crc(values: Sequence[Any]) -> int:
    """The CRC32C of a row's column values as SQLite returns them (str, int, float, bytes
    or None), for the rows of ``containers`` and ``sequences``."""
    return int(crc32c(msgpack.packb(list(values), use_bin_type=True)))


def _packed(a: npt.NDArray[Any]) -> memoryview:
    return np.ascontiguousarray(a).data.cast("B")


def encode_values(values: AnyArray, dtype: str) -> bytes | memoryview:
    """The bytes of a chunk's ``vals`` column."""
    if dtype == OBJECT_VALUE_DTYPE:
        return pack_value(values.tolist())
    return _packed(values)


def encode_chunk(points: Cols, dtype: str) -> EncodedChunk:
    """Encode sorted points (at least one) as one chunk of a sequence of ``dtype``."""
    ts = points.timestamps
    ts_blob = None if ts is None or bool(np.isnan(ts).all()) else encode_f64(ts)
    axis = {k: encode_f64(v) for k, v in sorted(points.axis.items()) if not np.isnan(v).all()}
    first, last, n = int(points.steps[0]), int(points.steps[-1]), len(points)
    steps = encode_i64(points.steps)
    vals = encode_values(points.values, dtype)
    axis_blob = pack_value(axis) if axis else None
    return EncodedChunk(
        first_step=first,
        last_step=last,
        n=n,
        steps=steps,
        vals=vals,
        timestamps=ts_blob,
        axis=axis_blob,
        crc=chunk_crc(first, last, n, steps, vals, ts_blob, axis_blob),
    )


def decode_values(blobs: Sequence[bytes], dtype: str) -> AnyArray:
    """The values of consecutive chunks' ``vals`` columns as one array."""
    if dtype == OBJECT_VALUE_DTYPE:
        items: list[Any] = []
        for b in blobs:
            items.extend(unpack_value(b))
        return _objects(items)
    return np.frombuffer(b"".join(blobs), dtype=np.dtype(dtype))


def decode_chunks(rows: Sequence[ChunkData], dtype: str) -> Cols:
    """Decode consecutive chunks, given as ``(n, steps, vals, timestamps, axis)`` rows.

    The arrays may be read-only (views of the fetched bytes).

    Raises:
        ValueError: a column does not hold its row's ``n`` values (a damaged chunk).
    """
    steps: Int64Array = _concat([_column(decode_i64, r[1], r[0]) for r in rows], STEP_DTYPE)
    values = decode_values([r[2] for r in rows], dtype)
    ts = None
    if any(r[3] is not None for r in rows):
        ts = _concat(
            [_column(decode_f64, r[3], r[0]) if r[3] is not None else _nan(r[0]) for r in rows],
            TIME_DTYPE,
        )
    maps = [unpack_value(r[4]) if r[4] is not None else {} for r in rows]
    names = sorted({k for m in maps for k in m})
    axis = {
        k: _concat(
            [
                _column(decode_f64, m[k], r[0]) if k in m else _nan(r[0])
                for r, m in zip(rows, maps, strict=True)
            ],
            TIME_DTYPE,
        )
        for k in names
    }
    return Cols(steps, values, ts, axis)


def _column(decode: Any, blob: bytes, n: int) -> AnyArray:
    a: AnyArray = decode(blob, n)
    if a.shape[0] != n:
        raise ValueError(f"a chunk column holds {a.shape[0]} values, its row says {n}")
    return a


def _concat(parts: list[AnyArray], dtype: np.dtype[Any]) -> AnyArray:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.empty(0, dtype)
    return np.concatenate(parts)
