"""A lossless compact encoding of one int64 or float64 column: steps, timestamps, axes.

Owns: :func:`encode_i64` / :func:`decode_i64` and their float64 twins, used for the columns
of point batches in the log (``sequence.appended`` version 2) and of chunks in the views.
Imports: numpy. Pure functions over bytes; no I/O.

Steps usually go up by one and a training loop's timestamps differ by microseconds, so the
differences between neighbours fit in one or two bytes where the values need eight. A float64
column is encoded through its IEEE bit pattern seen as an int64: neighbouring times share
their high bits, and the round trip is exact for every pattern (NaN payloads, -0.0, inf),
because differences and their running sum wrap modulo 2**64 in numpy's int64 arithmetic.

Layout, little-endian, starting with a kind byte and the count ``n`` (u32)::

    RAW    0, n, then n x i64
    ARITH  1, n, first i64, stride i64          value i = first + i * stride
    DELTA  2, n, first i64, width u8 (1, 2, 4), n-1 differences of that width, k u32,
           then k positions u32 and k differences i64 that did not fit the width
           (patches, overriding the narrow difference at their position)

The encoder picks the smallest of the three. The decoder checks every length against ``n``
before it allocates anything, and callers bound ``n`` (``max_n``), so hostile bytes cost no
more memory than the input's size allows.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ColumnError",
    "column_count",
    "decode_f64",
    "decode_i64",
    "encode_f64",
    "encode_i64",
    "frame_raw",
]

I64 = np.dtype("<i8")
F64 = np.dtype("<f8")
_RAW, _ARITH, _DELTA = 0, 1, 2
_HEAD = struct.Struct("<BI")  # kind, n
_ARITH_BODY = struct.Struct("<qq")  # first, stride
_DELTA_HEAD = struct.Struct("<qB")  # first, width
_U32 = struct.Struct("<I")
_WIDTHS: dict[int, np.dtype[Any]] = {1: np.dtype("<i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}
_LIMITS = {w: (-(1 << (8 * w - 1)), (1 << (8 * w - 1)) - 1) for w in _WIDTHS}
_PATCH_COST = 4 + 8  # position u32 + difference i64
MAX_COUNT = (1 << 32) - 1
# Shorter columns stay raw: what encoding them saves is less than an event's envelope, and
# the numpy calls would cost more than the bytes (tens of microseconds per column).
_MIN_COMPACT = 16
_NO_PATCHES = np.empty(0, dtype="<u4")

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class ColumnError(ValueError):
    """Bytes that are not a well-formed column of the expected length."""


def encode_i64(values: npt.ArrayLike) -> bytes:
    """Encode an int64 column (any 1-d array convertible to int64) losslessly and compactly."""
    a = np.ascontiguousarray(values, dtype=I64)
    n = a.shape[0]
    if n > MAX_COUNT:
        raise ColumnError(f"a column holds at most {MAX_COUNT} values, got {n}")
    if n < _MIN_COMPACT:
        return _HEAD.pack(_RAW, n) + a.tobytes()
    d = a[1:] - a[:-1]  # wraps modulo 2**64 (numpy array arithmetic never raises)
    lo, hi = int(d.min()), int(d.max())
    if lo == hi:
        return _HEAD.pack(_ARITH, n) + _ARITH_BODY.pack(int(a[0]), lo)
    # The narrowest width that holds every difference needs no patches; a narrower one
    # may still win when only a few differences (pauses, gaps) are out of its range.
    fit = next((w for w, (wlo, whi) in _LIMITS.items() if wlo <= lo and hi <= whi), 8)
    best_width, best_size = (0, 8 * n) if fit == 8 else (fit, fit * (n - 1) + 4)
    best_out: npt.NDArray[np.bool_] | None = None
    for width, (wlo, whi) in _LIMITS.items():
        if width >= fit:
            break
        out = (d < wlo) | (d > whi)
        size = width * (n - 1) + _PATCH_COST * int(np.count_nonzero(out)) + 4
        if size < best_size:
            best_width, best_size, best_out = width, size, out
    if best_width == 0:
        return _HEAD.pack(_RAW, n) + a.tobytes()
    narrow = d.astype(_WIDTHS[best_width])  # values out of range wrap; patched below
    pos = _NO_PATCHES if best_out is None else np.flatnonzero(best_out).astype("<u4")
    return b"".join(
        (
            _HEAD.pack(_DELTA, n),
            _DELTA_HEAD.pack(int(a[0]), best_width),
            narrow.tobytes(),
            _U32.pack(pos.shape[0]),
            pos.tobytes(),
            d[pos].astype(I64).tobytes(),
        )
    )


def frame_raw(packed: bytes) -> bytes:
    """Frame packed little-endian 8-byte values as a raw column, without compacting them.

    Raises:
        ColumnError: ``packed`` is not a whole number of 8-byte values.
    """
    if len(packed) % 8:
        raise ColumnError(f"packed 8-byte values expected, got {len(packed)} bytes")
    return _HEAD.pack(_RAW, len(packed) // 8) + packed


def column_count(data: bytes | memoryview) -> int:
    """The number of values an encoded column holds (from its header alone).

    Raises:
        ColumnError: ``data`` is shorter than a header or of an unknown kind.
    """
    if len(data) < _HEAD.size:
        raise ColumnError(f"a column needs a {_HEAD.size}-byte header, got {len(data)} bytes")
    kind, n = _HEAD.unpack_from(data)
    if kind not in (_RAW, _ARITH, _DELTA):
        raise ColumnError(f"unknown column kind {kind}")
    return int(n)


def decode_i64(data: bytes | memoryview, max_n: int = MAX_COUNT) -> Int64Array:
    """Decode a column made by :func:`encode_i64`.

    Args:
        data: The encoded column.
        max_n: The most values the caller accepts; a larger count is an error, raised before
            anything is allocated.

    Raises:
        ColumnError: the bytes are not a well-formed column, or hold more than ``max_n``.
    """
    n = column_count(data)
    if n > max_n:
        raise ColumnError(f"column claims {n} values, more than the {max_n} allowed here")
    kind = data[0]
    body = memoryview(data)[_HEAD.size :]
    if kind == _RAW:
        if len(body) != 8 * n:
            raise ColumnError(f"raw column of {n} values has {len(body)} bytes, not {8 * n}")
        return np.frombuffer(body, dtype=I64)
    if kind == _ARITH:
        if len(body) != _ARITH_BODY.size:
            raise ColumnError(f"arithmetic column has {len(body)} bytes, not {_ARITH_BODY.size}")
        first, stride = _ARITH_BODY.unpack_from(body)
        return np.arange(n, dtype=I64) * np.int64(stride) + np.int64(first)
    if n == 0 or len(body) < _DELTA_HEAD.size:
        raise ColumnError("delta column is cut short")
    first, width = _DELTA_HEAD.unpack_from(body)
    dt = _WIDTHS.get(width)
    if dt is None:
        raise ColumnError(f"delta column has width {width}, not 1, 2 or 4")
    at = _DELTA_HEAD.size
    end = at + width * (n - 1)
    if len(body) < end + 4:
        raise ColumnError("delta column is cut short")
    (k,) = _U32.unpack_from(body, end)
    if k > n - 1 or len(body) != end + 4 + _PATCH_COST * k:
        raise ColumnError(f"delta column of {n} values has a bad patch list ({k} patches)")
    d = np.empty(n, dtype=I64)
    d[0] = first
    d[1:] = np.frombuffer(body[at:end], dtype=dt)
    if k:
        p0 = end + 4
        pos = np.frombuffer(body[p0 : p0 + 4 * k], dtype="<u4").astype(np.int64)
        if int(pos.max()) >= n - 1:
            raise ColumnError("delta column has a patch past its end")
        d[pos + 1] = np.frombuffer(body[p0 + 4 * k :], dtype=I64)
    return np.cumsum(d, dtype=I64)


def encode_f64(values: npt.ArrayLike) -> bytes:
    """Encode a float64 column losslessly, through its bit patterns."""
    return encode_i64(np.ascontiguousarray(values, dtype=F64).view(I64))


def decode_f64(data: bytes | memoryview, max_n: int = MAX_COUNT) -> Float64Array:
    """Decode a column made by :func:`encode_f64` (see :func:`decode_i64`)."""
    return decode_i64(data, max_n).view(F64)
