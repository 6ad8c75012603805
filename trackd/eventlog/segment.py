"""Segment files: their names, and reading and checking their records in large chunks.

Owns: the ``{base:020d}.seg`` naming, :class:`RecordWalk` (chunked, checksummed iteration
over a byte range of one segment file), :func:`scan_segment` (what recovery and verify both
need to know about one file) and the search for a valid record after a bad one.
Imports: ``trackd.eventlog.record``, ``trackd.eventlog.fs``, stdlib. Never writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from trackd.eventlog.fs import FileSystem
from trackd.eventlog.record import (
    RECORD_MARKER,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    StopReason,
    check_segment_header,
    find_record,
    record_durable_before,
    scan_records,
)

__all__ = [
    "CHUNK_SIZE",
    "MARK_INTERVAL",
    "SEGMENT_SUFFIX",
    "RecordWalk",
    "SegmentScan",
    "find_durable_after",
    "find_valid_record",
    "parse_segment_name",
    "scan_segment",
    "segment_name",
]

SEGMENT_SUFFIX = ".seg"
_NAME_DIGITS = 20
# Large enough that the per-call cost of pread and the Python loop around it vanish next to
# the copy, small enough not to matter for memory.
CHUNK_SIZE = 4 << 20
# Spacing of the known record boundaries kept per segment, so that checking whether an
# offset is a record boundary walks at most this many bytes of headers.
MARK_INTERVAL = 1 << 20


def segment_name(base_offset: int) -> str:
    """Return the file name of the segment starting at global ``base_offset``."""
    return f"{base_offset:0{_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """Return the base offset a segment file name stands for, or None for other names."""
    digits = name[: -len(SEGMENT_SUFFIX)]
    if (
        len(name) != _NAME_DIGITS + len(SEGMENT_SUFFIX)
        or not name.endswith(SEGMENT_SUFFIX)
        or not digits.isascii()
        or not digits.isdigit()
    ):
        return None
    return int(digits)


class RecordWalk:
    """Iterate over the valid records in ``[start, end)`` of an open segment file.

    Reads the file in chunks of about :data:`CHUNK_SIZE` (more when one record is larger)
    and yields, per chunk, the file position of the chunk, its bytes, and the spans of the
    complete records in it. After the iteration, :attr:`stop` is the file position after the
    last valid record and :attr:`reason` says why the walk ended: ``END`` exactly at ``end``,
    or the problem found at :attr:`stop`.
    """

    def __init__(
        self, fs: FileSystem, fd: int, start: int, end: int, chunk_size: int = CHUNK_SIZE
    ) -> None:
        """Prepare a walk over ``[start, end)`` of the file open as ``fd`` on ``fs``.

        The walk is for one pass: iterate it once.
        """
        self._fs = fs
        self._fd = fd
        self._end = end
        self._chunk = chunk_size
        self.stop = start
        self.reason = StopReason.END

    def __iter__(self) -> Iterator[tuple[int, bytes, list[tuple[int, int]]]]:
        """Yield ``(file_position, chunk, spans)`` for each chunk holding complete records."""
        pos = self.stop
        end = self._end
        want = self._chunk
        while pos < end:
            n = min(want, end - pos)
            chunk_end = pos + n
            buf = self._fs.pread(self._fd, n, pos)
            short_read = len(buf) < n
            scan = scan_records(buf)
            if scan.spans:
                yield pos, buf, scan.spans
            pos += scan.stop
            self.stop = pos
            if scan.reason is StopReason.END:
                if short_read:  # the file ended before the range did
                    self.reason = StopReason.SHORT_HEADER
                    return
                want = self._chunk
                continue
            if scan.needed and not short_read and chunk_end < end:
                # The chunk ended before the range did, so the verdict may only be about the
                # chunk boundary: read again from the record's start with room for all of it
                # (or for the rest of the range). A retry always reaches past chunk_end,
                # because the record needs more bytes than were left in this chunk.
                want = max(self._chunk, scan.needed)
                continue
            self.reason = scan.reason
            return
        self.reason = StopReason.END


def find_valid_record(
    fs: FileSystem, fd: int, start: int, end: int, chunk_size: int = CHUNK_SIZE
) -> int | None:
    """Return the file position of the first valid record in ``[start, end)``, or None.

    Searches chunk by chunk for :data:`RECORD_MARKER` with ``bytes.find`` and checks each
    candidate in full, reading a candidate again when it runs past the chunk.
    """
    overlap = len(RECORD_MARKER) - 1
    pos = start
    while pos < end:
        n = min(chunk_size, end - pos)
        buf = fs.pread(fd, n, pos)
        if not buf:
            return None
        i = 0
        while True:
            found, needed = find_record(buf, i)
            if found == -1:
                break
            if needed == -1:
                return pos + found
            if _valid_at(fs, fd, pos + found, end, needed):
                return pos + found
            i = found + 1
        if pos + len(buf) >= end:
            return None
        # Step back a few bytes so that a marker split across two chunks is still found.
        pos += max(len(buf) - overlap, 1)
    return None


def _valid_at(fs: FileSystem, fd: int, pos: int, end: int, needed: int) -> bool:
    """Check the candidate record at ``pos`` by reading as much of it as it needs."""
    # At most two rounds: the header (which gives the length), then the whole record.
    while pos + needed <= end:
        scan = scan_records(fs.pread(fd, needed, pos), limit=1)
        if scan.spans:
            return True
        if scan.reason is not StopReason.SHORT_PAYLOAD or scan.needed <= needed:
            return False
        needed = scan.needed
    return False


def find_durable_after(
    fs: FileSystem,
    fd: int,
    start: int,
    end: int,
    bad_offset: int,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[int, int] | None:
    """Find a valid record in ``[start, end)`` whose writer knew ``bad_offset`` was durable.

    Walks every valid record after ``start`` (searching past further bad regions) and
    returns the first whose ``durable_before`` field is greater than ``bad_offset``: proof
    that the bytes at ``bad_offset`` had been made durable (and may have been acknowledged)
    before that record was written, so damage there is corruption, not a torn write.

    Args:
        fs: The file system to read through.
        fd: The open segment file.
        start: File position to start searching at.
        end: File position where the data ends.
        bad_offset: Global offset of the bad bytes (``durable_before`` is global too).
        chunk_size: Read size.

    Returns:
        ``(file_position, durable_before)`` of that record, or None when there is none.
    """
    pos = start
    while pos < end:
        found = find_valid_record(fs, fd, pos, end, chunk_size)
        if found is None:
            return None
        walk = RecordWalk(fs, fd, found, end, chunk_size)
        for file_pos, buf, spans in walk:
            for s, _e in spans:
                durable_before = record_durable_before(buf, s)
                if durable_before > bad_offset:
                    return file_pos + s, durable_before
        if walk.reason is StopReason.END:
            return None
        pos = walk.stop + 1
    return None


@dataclass(slots=True)
class SegmentScan:
    """What one pass over a segment file found.

    Attributes:
        size: File size in bytes when scanned.
        header: The header check; when not OK, no record was scanned.
        records: Number of valid records before the first problem.
        good_end: File position just past the last valid record (0 when the header is bad).
        reason: ``StopReason.END`` when every byte up to ``size`` is valid records, else the
            problem found at ``good_end``.
        later_valid: File position of a valid record after the problem, or None when there
            is none (the bad bytes may be a torn tail).
        later_durable: ``(file_position, durable_before)`` of the first valid record after
            the problem that was written when the log was durable past the problem's offset,
            or None. Only such a record proves that the bad bytes had been durable; without
            one, bad bytes in the last segment are a torn tail even when valid (never
            synced) records follow them.
        marks: Global offsets of record starts, at least :data:`MARK_INTERVAL` apart.
    """

    size: int
    header: HeaderStatus
    records: int = 0
    good_end: int = 0
    reason: StopReason = StopReason.END
    later_valid: int | None = None
    later_durable: tuple[int, int] | None = None
    marks: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the header and every record up to ``size`` are valid."""
        return self.header is HeaderStatus.OK and self.reason is StopReason.END


def scan_segment(
    fs: FileSystem, path: str, base_offset: int, limit: int | None = None
) -> SegmentScan:
    """Check a segment file's header and every record, and look past the first problem.

    Args:
        fs: The file system to read through.
        path: The segment file.
        base_offset: The base offset its name claims.
        limit: Scan only the first ``limit`` bytes of the file (the synced part of a live
            segment); default all of it.

    Raises:
        OSError: the file cannot be opened or read.
    """
    fd = fs.open_read(path)
    try:
        size = fs.size(fd)
        if limit is not None:
            size = min(size, limit)
        header = check_segment_header(fs.pread(fd, SEGMENT_HEADER_SIZE, 0), base_offset)
        if size < SEGMENT_HEADER_SIZE:
            header = HeaderStatus.SHORT
        if header is not HeaderStatus.OK:
            later = find_valid_record(fs, fd, min(SEGMENT_HEADER_SIZE, size), size)
            return SegmentScan(size=size, header=header, later_valid=later)
        walk = RecordWalk(fs, fd, SEGMENT_HEADER_SIZE, size)
        records = 0
        marks = [base_offset + SEGMENT_HEADER_SIZE]
        next_mark = marks[0] + MARK_INTERVAL
        for file_pos, _buf, spans in walk:
            records += len(spans)
            at = base_offset + file_pos
            if at + spans[-1][0] >= next_mark:
                for s, _e in spans:
                    if at + s >= next_mark:
                        marks.append(at + s)
                        next_mark = at + s + MARK_INTERVAL
        later = None
        durable = None
        if walk.reason is not StopReason.END:
            later = find_valid_record(fs, fd, walk.stop + 1, size)
            if later is not None:
                durable = find_durable_after(fs, fd, later, size, base_offset + walk.stop)
        return SegmentScan(
            size=size,
            header=header,
            records=records,
            good_end=walk.stop,
            reason=walk.reason,
            later_valid=later,
            later_durable=durable,
            marks=marks,
        )
    finally:
        fs.close(fd)
