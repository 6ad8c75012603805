"""Framing of the event log: the segment file header and length-prefixed, checksummed records.

Owns: the byte layout of segment headers and records, encoding them, and scanning a buffer
for records. Pure functions over bytes; no I/O.
Imports: ``trackd.errors``, crc32c, stdlib.

Segment header (:data:`SEGMENT_HEADER_SIZE` = 24 bytes, little-endian)::

    magic    8s   b"TRKDLOG\\0"
    version  u16  SEGMENT_FORMAT_VERSION (2)
    reserved u16  0
    base     u64  global log offset of the first byte of this file (the file is named by it)
    crc      u32  CRC32C of the 20 bytes before it

Record (:data:`RECORD_HEADER_SIZE` = 20 bytes, then the payload)::

    marker          4s   RECORD_MARKER, so a scan can find candidate records with bytes.find
    crc             u32  CRC32C of the next 12 bytes and the payload
    length          u32  payload length, 1 .. MAX_RECORD_SIZE
    durable_before  u64  the writer's synced offset when it appended the record: every byte
                         of the log before this offset was durable (fdatasync had returned)
    payload

The crc sits before the length so that the checksummed bytes are contiguous and one
``crc32c`` call over a memoryview checks a record without copying it. A zero-filled region
never parses as a record: the marker has no zero byte and a length of 0 is invalid.

Why ``durable_before``: a crash may lose unsynced writes page by page, so a later unsynced
record can survive while an earlier one is lost. Recovery then sees bad bytes at offset ``p``
followed by valid records. Those bad bytes can only have been acknowledged if some later
record was appended after they were durable, that is with ``durable_before > p``; when no
later record says so, the whole region from ``p`` on was never acknowledged and is a torn
tail (see :mod:`trackd.eventlog.log`). Spool files, which have no log offsets, write 0.

Format versions: 1 had a 12-byte record header without ``durable_before``; it was written
only by development builds before the first release and is refused with
:attr:`HeaderStatus.OLD_VERSION` (no upgrade path: a version-1 log is not read at all, so it
cannot be misread).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from crc32c import crc32c

from trackd.errors import LogError

__all__ = [
    "MAX_RECORD_SIZE",
    "RECORD_HEADER_SIZE",
    "RECORD_MARKER",
    "SEGMENT_FORMAT_VERSION",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "HeaderStatus",
    "RecordScan",
    "StopReason",
    "check_payload",
    "check_segment_header",
    "encode_record",
    "encode_records",
    "encode_segment_header",
    "find_record",
    "record_durable_before",
    "record_header",
    "scan_records",
]

SEGMENT_MAGIC = b"TRKDLOG\0"
SEGMENT_FORMAT_VERSION = 2
_SEGMENT_HEADER = struct.Struct("<8sHHQI")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size
_SEGMENT_HEADER_BODY = struct.Struct("<8sHHQ")

# 0xc1 is the one byte msgpack never emits as a type tag, so the marker is rare at the start
# of msgpack structures; the rest is arbitrary and free of zero bytes.
RECORD_MARKER = b"\xc1\x7e\xd3\x9a"
_RECORD_HEADER = struct.Struct("<4sIIQ")
RECORD_HEADER_SIZE = _RECORD_HEADER.size
_LENGTH = struct.Struct("<I")
_CHECKED_FIELDS = struct.Struct("<IQ")  # length, durable_before: the header part under the crc
_DURABLE_BEFORE = struct.Struct("<Q")
_DURABLE_BEFORE_AT = 12  # position of durable_before in a record header
_MAX_U64 = (1 << 64) - 1
MAX_RECORD_SIZE = 256 << 20
_ZERO_HEADER = bytes(RECORD_HEADER_SIZE)


class HeaderStatus(enum.Enum):
    """What :func:`check_segment_header` found; the value is a phrase for messages."""

    OK = "valid segment header"
    SHORT = "segment file is shorter than its header"
    ZEROS = "zero-filled segment header"
    BAD_MAGIC = "segment header does not start with the trackd log magic"
    BAD_CRC = "segment header checksum mismatch"
    NEWER_VERSION = "segment format version is newer than this build reads"
    OLD_VERSION = "segment format version is older than this build reads"
    WRONG_BASE = "segment header names a different base offset than the file name"


class StopReason(enum.Enum):
    """Why :func:`scan_records` stopped; the value is a phrase for messages."""

    END = "end of data"
    LIMIT = "record limit reached"
    SHORT_HEADER = "record header cut short"
    ZEROS = "zero-filled bytes"
    BAD_MARKER = "no record marker"
    BAD_LENGTH = "impossible record length"
    SHORT_PAYLOAD = "record runs past the end of the data"
    BAD_CRC = "record checksum mismatch"


@dataclass(frozen=True, slots=True)
class RecordScan:
    """The result of :func:`scan_records`.

    Attributes:
        spans: ``(start, end)`` buffer positions of each valid record, in order; the payload
            is ``buf[start + RECORD_HEADER_SIZE:end]``.
        stop: Position where scanning stopped: the end of the last valid record (or the
            start position when there was none).
        reason: Why it stopped.
        needed: For ``SHORT_HEADER``, ``SHORT_PAYLOAD`` and a too-short ``ZEROS`` run, how
            many bytes from ``stop`` would have to be present to decide; else 0. A caller
            reading a file in chunks reads again from ``stop`` when more data exists.
    """

    spans: list[tuple[int, int]]
    stop: int
    reason: StopReason
    needed: int

    @property
    def clean(self) -> bool:
        """True when scanning stopped for no fault in the data (end or limit)."""
        return self.reason in (StopReason.END, StopReason.LIMIT)


def encode_segment_header(base_offset: int) -> bytes:
    """Return the header of a segment file whose first byte is at global ``base_offset``."""
    body = _SEGMENT_HEADER_BODY.pack(SEGMENT_MAGIC, SEGMENT_FORMAT_VERSION, 0, base_offset)
    return body + _LENGTH.pack(crc32c(body))


def check_segment_header(data: bytes, base_offset: int) -> HeaderStatus:
    """Check the first bytes of a segment file against the header format.

    Args:
        data: At least the first :data:`SEGMENT_HEADER_SIZE` bytes of the file (fewer when
            the file is shorter).
        base_offset: The base offset the file name claims.

    Returns:
        ``HeaderStatus.OK`` or the first problem found.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        return HeaderStatus.SHORT
    head = data[:SEGMENT_HEADER_SIZE]
    if head == bytes(SEGMENT_HEADER_SIZE):
        return HeaderStatus.ZEROS
    magic, version, _reserved, base, crc = _SEGMENT_HEADER.unpack(head)
    if magic != SEGMENT_MAGIC:
        return HeaderStatus.BAD_MAGIC
    if crc32c(head[: _SEGMENT_HEADER_BODY.size]) != crc:
        return HeaderStatus.BAD_CRC
    if version > SEGMENT_FORMAT_VERSION:
        return HeaderStatus.NEWER_VERSION
    if version < SEGMENT_FORMAT_VERSION:
        return HeaderStatus.OLD_VERSION
    if base != base_offset:
        return HeaderStatus.WRONG_BASE
    return HeaderStatus.OK


def check_payload(payload: bytes) -> None:
    """Raise when ``payload`` cannot be one record.

    Raises:
        LogError: the payload is empty or longer than :data:`MAX_RECORD_SIZE`.
    """
    n = len(payload)
    if n == 0:
        raise LogError("a log record payload must not be empty")
    if n > MAX_RECORD_SIZE:
        raise LogError(
            f"a log record payload of {n} bytes exceeds the maximum of {MAX_RECORD_SIZE} bytes"
        )


def record_header(payload: bytes, durable_before: int = 0) -> bytes:
    """Return the header that frames ``payload`` (already checked by the caller).

    Args:
        payload: The record payload.
        durable_before: The writer's synced offset now (0 when the file has no log offsets).
    """
    n = len(payload)
    checked = _CHECKED_FIELDS.pack(n, durable_before)
    return _RECORD_HEADER.pack(RECORD_MARKER, crc32c(payload, crc32c(checked)), n, durable_before)


def _check_durable_before(durable_before: int) -> None:
    if type(durable_before) is not int or not 0 <= durable_before <= _MAX_U64:
        raise LogError(f"durable_before must be an int in [0, 2**64), got {durable_before!r}")


def encode_record(payload: bytes, durable_before: int = 0) -> bytes:
    """Frame one payload as a record.

    Args:
        payload: The record payload.
        durable_before: The writer's synced offset when it appends the record; 0 (the
            default) for files without log offsets, such as spool files.

    Raises:
        LogError: the payload is empty or longer than :data:`MAX_RECORD_SIZE`, or
            ``durable_before`` is not a u64.
    """
    check_payload(payload)
    _check_durable_before(durable_before)
    return record_header(payload, durable_before) + payload


def encode_records(payloads: Iterable[bytes], durable_before: int = 0) -> bytes:
    """Frame many payloads as consecutive records with a single copy of the data.

    Args:
        payloads: The record payloads.
        durable_before: Written into every record; see :func:`encode_record`.

    Raises:
        LogError: a payload is empty or longer than :data:`MAX_RECORD_SIZE`, or
            ``durable_before`` is not a u64.
    """
    _check_durable_before(durable_before)
    parts: list[bytes] = []
    for p in payloads:
        check_payload(p)
        parts.append(record_header(p, durable_before))
        parts.append(p)
    return b"".join(parts)


def record_durable_before(buf: bytes | memoryview, start: int) -> int:
    """Return the ``durable_before`` field of the (valid) record starting at ``buf[start]``."""
    (value,) = _DURABLE_BEFORE.unpack_from(buf, start + _DURABLE_BEFORE_AT)
    return int(value)


def scan_records(
    buf: bytes, start: int = 0, end: int | None = None, *, limit: int | None = None
) -> RecordScan:
    """Walk consecutive records in ``buf[start:end]`` until the data ends or stops making sense.

    Every record is checked in full (marker, length, checksum); nothing after the first
    bad byte is looked at.

    Args:
        buf: The bytes to scan.
        start: Position of the first record.
        end: Position where the data ends (default ``len(buf)``).
        limit: Stop after this many records (reason ``LIMIT``).

    Returns:
        The valid records' spans, where scanning stopped, and why.
    """
    stop = len(buf) if end is None else end
    view = memoryview(buf)
    spans: list[tuple[int, int]] = []
    # The hot loop: every test folded into one condition, names bound locally. A record that
    # fails it is diagnosed by _stop_reason, off the fast path.
    unpack = _RECORD_HEADER.unpack_from
    add = spans.append
    marker_ok = RECORD_MARKER
    hsize = RECORD_HEADER_SIZE
    max_len = MAX_RECORD_SIZE
    checksum = crc32c
    pos = start
    last = stop - hsize
    left = -1 if limit is None else limit
    while pos <= last and left != 0:
        marker, crc, length, _durable_before = unpack(buf, pos)
        rec_end = pos + hsize + length
        if (
            marker != marker_ok
            or not 0 < length <= max_len
            or rec_end > stop
            or checksum(view[pos + 8 : rec_end]) != crc
        ):
            reason, needed = _stop_reason(view, pos, stop)
            return RecordScan(spans, pos, reason, needed)
        add((pos, rec_end))
        pos = rec_end
        left -= 1
    if pos == stop:
        return RecordScan(spans, pos, StopReason.END, 0)
    if left == 0:
        return RecordScan(spans, pos, StopReason.LIMIT, 0)
    reason, needed = _stop_reason(view, pos, stop)
    return RecordScan(spans, pos, reason, needed)


def _stop_reason(view: memoryview, pos: int, stop: int) -> tuple[StopReason, int]:
    """Say why no valid record starts at ``pos`` (and how many bytes would decide it)."""
    if stop - pos < RECORD_HEADER_SIZE:
        if not any(view[pos:stop]):
            return StopReason.ZEROS, RECORD_HEADER_SIZE
        return StopReason.SHORT_HEADER, RECORD_HEADER_SIZE
    marker, _crc, length, _durable_before = _RECORD_HEADER.unpack_from(view, pos)
    if marker != RECORD_MARKER:
        if view[pos : pos + RECORD_HEADER_SIZE] == _ZERO_HEADER:
            return StopReason.ZEROS, 0
        return StopReason.BAD_MARKER, 0
    if not 0 < length <= MAX_RECORD_SIZE:
        return StopReason.BAD_LENGTH, 0
    rec_end = pos + RECORD_HEADER_SIZE + length
    if rec_end > stop:
        return StopReason.SHORT_PAYLOAD, rec_end - pos
    return StopReason.BAD_CRC, 0


def find_record(buf: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """Find the first position at or after ``start`` where a valid record begins.

    Candidates are found with ``bytes.find`` on :data:`RECORD_MARKER` and then checked in
    full, so the cost is a C-speed search plus one checksum per candidate.

    Args:
        buf: The bytes to search.
        start: First position to consider.
        end: Where the data ends (default ``len(buf)``).

    Returns:
        ``(position, -1)`` for a valid record; ``(-1, -1)`` when there is none; or
        ``(position, needed)`` for the first candidate that cannot be decided because its
        header or payload runs past ``end`` (a caller reading a file in chunks checks it by
        reading ``needed`` bytes at that position, then searches on from ``position + 1``).
    """
    stop = len(buf) if end is None else end
    i = buf.find(RECORD_MARKER, start, stop)
    while i != -1:
        scan = scan_records(buf, i, stop, limit=1)
        if scan.spans:
            return i, -1
        if scan.reason in (StopReason.SHORT_HEADER, StopReason.SHORT_PAYLOAD):
            return i, scan.needed
        i = buf.find(RECORD_MARKER, i + 1, stop)
    return -1, -1
