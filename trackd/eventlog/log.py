"""The crash-safe append-only event log: segments, group commit, reads, recovery, quarantine.

Owns: :class:`EventLog` (open with an exclusive lock and recovery, buffered append, group
commit with ``fdatasync``, reads of the synced log, verification), :func:`verify_log`, and
the report types they return.
Imports: ``trackd.errors``, ``trackd.eventlog.fs``, ``trackd.eventlog.record``,
``trackd.eventlog.segment``, stdlib. Synchronous; all file I/O goes through a
:class:`~trackd.eventlog.fs.FileSystem`.

Offsets are global byte positions. A log directory holds segment files named by the offset
of their first byte (``{base:020d}.seg``); each starts with a header, then records. The next
segment's base is the previous base plus the previous file's size, so offsets only grow and a
checkpoint ("next offset to apply") is one int.

Crash safety rests on three orderings:

* a segment is ``fdatasync``-ed before the next one is created, so only the last segment can
  hold a torn tail;
* a new segment's header is synced and its directory entry fsynced before records go in;
* ``synced_offset`` moves only after ``fdatasync`` returned, and after a failed write or
  ``fdatasync`` the instance refuses all further writes (the kernel may have dropped the
  dirty pages and cleared the error, so a retry would prove nothing).

Each record carries the ``synced_offset`` of the moment it was appended (its
``durable_before`` field, see :mod:`trackd.eventlog.record`). A crash may lose unsynced pages
in any pattern, so recovery can find bad bytes at offset ``p`` of the last segment followed
by valid records. It treats them as corruption only when a later valid record has
``durable_before > p`` (the bad bytes had been durable, so they may have been acknowledged);
otherwise everything from ``p`` on was never synced and is cut as a torn tail.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

from trackd.errors import LogCorruptedError, LogError, LogIOError, LogLockedError
from trackd.eventlog.fs import FileSystem, OSFileSystem
from trackd.eventlog.record import (
    MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    StopReason,
    check_payload,
    encode_segment_header,
    record_header,
)
from trackd.eventlog.segment import (
    CHUNK_SIZE,
    MARK_INTERVAL,
    RecordWalk,
    SegmentScan,
    parse_segment_name,
    scan_segment,
    segment_name,
)

__all__ = [
    "LOCK_NAME",
    "MIN_SEGMENT_SIZE",
    "WRITE_BUFFER_SIZE",
    "Corruption",
    "EventLog",
    "Record",
    "RecoveryReport",
    "SegmentReport",
    "TornTail",
    "VerifyReport",
    "verify_log",
]

LOCK_NAME = "LOCK"
MIN_SEGMENT_SIZE = SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + 1
# Appends are written out (without fdatasync) once this much is buffered, so a writer that
# syncs rarely does not hold an unbounded amount of memory.
WRITE_BUFFER_SIZE = 4 << 20
_QUARANTINE_NOTE = "QUARANTINE.txt"


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back from the log.

    Attributes:
        offset: Global log offset of the record start.
        end: Offset just past the record; the checkpoint after applying it.
        payload: The bytes that were appended.
    """

    offset: int
    end: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn tail that recovery cut from the last segment.

    Attributes:
        segment: Path of the segment file that was cut.
        offset: Global offset where the cut bytes began; the log ends there now.
        bytes_cut: Number of bytes removed (or, for a damaged header, replaced).
        reason: What was found at ``offset``.
    """

    segment: str
    offset: int
    bytes_cut: int
    reason: str


@dataclass(frozen=True, slots=True)
class Corruption:
    """A bad record (or segment) before the tail, and where recovery moved what followed it.

    Attributes:
        segment: Path of the damaged segment file.
        offset: Global offset of the damage; the log ends there now.
        reason: What was found at ``offset``.
        quarantine_dir: Folder holding everything that was moved out of the log.
        moved: Paths (inside ``quarantine_dir``) of the moved files: the rest of the damaged
            segment, copied from ``offset`` on, and every later segment file.
        message: The full explanation, as raised in :class:`~trackd.errors.LogCorruptedError`.
    """

    segment: str
    offset: int
    reason: str
    quarantine_dir: str
    moved: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery found and did when the log was opened.

    Attributes:
        segments: Segment files in the log after recovery.
        records: Valid records found.
        end_offset: Where the log ended after recovery.
        torn_tail: The torn tail that was cut, if any.
        corruption: The damage that stopped recovery, if any (only seen with
            ``strict=False``; with ``strict=True`` it is raised instead).
        actions: Every change made to the files, in words, in order.
    """

    segments: int
    records: int
    end_offset: int
    torn_tail: TornTail | None = None
    corruption: Corruption | None = None
    actions: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when recovery changed nothing."""
        return not self.actions


@dataclass(frozen=True, slots=True)
class SegmentReport:
    """Verification of one segment file.

    Attributes:
        path: The segment file.
        base_offset: Global offset of its first byte (from its name).
        records: Valid records before the first problem.
        bytes: Bytes checked (the file size, or the synced part of a live segment).
        ok: True when the header and every record are valid and the segment starts where
            the previous one ends.
        error_offset: Global offset of the first problem, or None.
        error: What the first problem is, or None.
        torn_tail: True when the problem is in the last segment with no valid record after
            it: a torn write that the next open cuts, not corruption.
    """

    path: str
    base_offset: int
    records: int
    bytes: int
    ok: bool
    error_offset: int | None = None
    error: str | None = None
    torn_tail: bool = False


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Verification of every segment of a log.

    Attributes:
        directory: The log directory.
        segments: One report per segment file, in offset order.
    """

    directory: str
    segments: tuple[SegmentReport, ...]

    @property
    def ok(self) -> bool:
        """True when every segment is fully valid."""
        return all(s.ok for s in self.segments)

    @property
    def corrupt(self) -> bool:
        """True when some problem is more than a torn tail (opening would quarantine)."""
        return any(not s.ok and not s.torn_tail for s in self.segments)

    @property
    def records(self) -> int:
        """Valid records in all segments."""
        return sum(s.records for s in self.segments)

    @property
    def errors(self) -> tuple[SegmentReport, ...]:
        """The reports of segments that are not ok."""
        return tuple(s for s in self.segments if not s.ok)


@dataclass(slots=True, eq=False)
class _Segment:
    """A segment as the open log tracks it. ``size`` counts bytes written to the file."""

    base: int
    path: str
    size: int
    created: bool
    marks: list[int] = field(default_factory=list)
    next_mark: int = 0

    def __post_init__(self) -> None:
        if not self.marks:
            self.marks.append(self.base + SEGMENT_HEADER_SIZE)
        self.next_mark = self.marks[-1] + MARK_INTERVAL


@dataclass(slots=True, eq=False)
class _Batch:
    """Encoded records waiting to be written contiguously at ``pos`` of ``segment``."""

    segment: _Segment
    pos: int
    parts: list[bytes] = field(default_factory=list)


class EventLog:
    """The append-only event log of one repository.

    Open it with :meth:`open`. :meth:`append` buffers records in memory and returns their
    offsets; :meth:`sync` writes everything buffered and makes it durable with one
    ``fdatasync`` (group commit); :meth:`read` returns records of the synced log and may be
    used while the same instance keeps appending, also from another thread.

    Attributes:
        recovery: What recovery found and did at open.
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        lock_fd: int,
        segments: list[_Segment],
        fd: int,
        segment_size: int,
        recovery: RecoveryReport,
    ) -> None:
        """Wrap an opened, recovered log. Use :meth:`open` instead."""
        self._fs = fs
        self._dir = directory
        self._lock_fd = lock_fd
        self._segments = segments
        self._active = segments[-1]
        self._fd: int | None = fd
        self._segment_size = segment_size
        self.recovery = recovery
        end = self._active.base + self._active.size
        self._end = end
        self._written = end
        self._synced = end
        self._pending: list[_Batch] = []
        self._pending_bytes = 0
        self._dirty = False
        self._failed: str | None = None
        self._closed = False
        # _state guards offsets, the segment list and the pending buffer and is held only
        # briefly; _io serialises writers, so appends may go on while a sync waits on disk.
        self._state = threading.Lock()
        self._io = threading.Lock()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_size: int = 64 << 20,
        fs: FileSystem | None = None,
        strict: bool = True,
        quarantine_dir: str | os.PathLike[str] | None = None,
    ) -> EventLog:
        """Open (creating if missing) the log in ``directory``, lock it and recover it.

        Recovery cuts a torn tail of the last segment. A bad record before the tail, a bad
        record in an earlier segment, or a damaged segment header stops recovery there: the
        rest of that segment and all later segments are moved into a new timestamped folder
        under ``quarantine_dir`` and the log is cut at the bad offset.

        Args:
            directory: The log directory.
            segment_size: Roll over to a new segment file when the next record would make
                the current one larger than this (a larger record gets a segment of its own).
            fs: The file system to do all I/O through; the real one by default.
            strict: Raise after quarantining; when false, only report it in
                ``recovery.corruption``.
            quarantine_dir: Parent of the timestamped quarantine folders; by default the
                ``quarantine`` folder next to ``directory``.

        Returns:
            The open log, positioned at its end.

        Raises:
            LogLockedError: another process holds the log's lock.
            LogCorruptedError: with ``strict``, recovery found damage before the tail (after
                moving the rest aside; reopening continues from the bad offset).
            LogIOError: a file operation failed.
            LogError: ``segment_size`` is too small, or a segment has a newer format.
        """
        if segment_size < MIN_SEGMENT_SIZE:
            raise LogError(
                f"segment_size must be at least {MIN_SEGMENT_SIZE} bytes, got {segment_size}"
            )
        fs = OSFileSystem() if fs is None else fs
        path = os.path.abspath(os.fspath(directory))
        qroot = (
            os.path.join(os.path.dirname(path), "quarantine")
            if quarantine_dir is None
            else os.path.abspath(os.fspath(quarantine_dir))
        )
        with _translated("create directory", path):
            _ensure_dir(fs, path)
        lock_path = os.path.join(path, LOCK_NAME)
        with _translated("lock", lock_path):
            lock_fd = fs.try_lock(lock_path)
        if lock_fd is None:
            raise LogLockedError(
                f"event log {path} is in use by another process (pid {_lock_holder(fs, lock_path)}"
                f", from {lock_path}); stop that process or use its log"
            )
        fd: int | None = None
        try:
            with _translated("write", lock_path):
                fs.truncate(lock_fd, 0)
                fs.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            segments, report = _recover(fs, path, qroot)
            with _translated("open", segments[-1].path):
                fd = fs.open_write(segments[-1].path)
            if report.corruption is not None and strict:
                raise LogCorruptedError(report.corruption.message)
        except BaseException:
            if fd is not None:
                _close_quietly(fs, fd)
            _close_quietly(fs, lock_fd)
            raise
        return cls(fs, path, lock_fd, segments, fd, segment_size, report)

    @property
    def directory(self) -> str:
        """The absolute path of the log directory."""
        return self._dir

    @property
    def start_offset(self) -> int:
        """Offset of the first record position: the first segment's base plus its header."""
        return self._segments[0].base + SEGMENT_HEADER_SIZE

    @property
    def end_offset(self) -> int:
        """Logical end of the log, including buffered appends not yet synced."""
        return self._end

    @property
    def synced_offset(self) -> int:
        """End of what ``fdatasync`` has made durable; reads stop here by default."""
        return self._synced

    def append(self, payloads: Sequence[bytes]) -> list[int]:
        """Buffer records in memory; they are written by :meth:`sync`.

        All payloads are checked before any is appended, so a bad one appends nothing. When
        more than :data:`WRITE_BUFFER_SIZE` bytes are buffered they are written out (not
        synced) before this returns.

        Args:
            payloads: The record payloads, each 1 to ``MAX_RECORD_SIZE`` bytes.

        Returns:
            The log offset of each record, in order.

        Raises:
            LogError: a payload is empty, too large or not bytes, or the log is closed.
            LogIOError: an earlier write or sync failed (reopen the log), or writing out the
                buffer failed now.
        """
        if isinstance(payloads, bytes | bytearray | memoryview):
            raise LogError("append() takes a sequence of payloads, not a single bytes object")
        items: list[bytes] = []
        for i, p in enumerate(payloads):
            if type(p) is not bytes:
                if not isinstance(p, bytearray | memoryview):
                    raise LogError(f"payload {i} is a {type(p).__name__}, expected bytes")
                # A copy, so that a caller reusing its buffer cannot change what gets written.
                p = bytes(p)
            if not 0 < len(p) <= MAX_RECORD_SIZE:
                try:
                    check_payload(p)
                except LogError as e:
                    raise LogError(f"payload {i}: {e}") from None
            items.append(p)
        with self._state:
            self._check_writable()
            seg = self._segments[-1]
            end = self._end
            durable_before = self._synced
            batch = self._pending[-1] if self._pending else None
            offsets: list[int] = []
            for p in items:
                size = RECORD_HEADER_SIZE + len(p)
                pos = end - seg.base
                if pos > SEGMENT_HEADER_SIZE and pos + size > self._segment_size:
                    seg = _Segment(end, os.path.join(self._dir, segment_name(end)), 0, False)
                    self._segments.append(seg)
                    end += SEGMENT_HEADER_SIZE
                    pos = SEGMENT_HEADER_SIZE
                    batch = None
                if batch is None:
                    batch = _Batch(seg, pos)
                    self._pending.append(batch)
                batch.parts.append(record_header(p, durable_before))
                batch.parts.append(p)
                if end >= seg.next_mark:
                    seg.marks.append(end)
                    seg.next_mark = end + MARK_INTERVAL
                offsets.append(end)
                end += size
            self._pending_bytes += end - self._end
            self._end = end
            spill = self._pending_bytes >= WRITE_BUFFER_SIZE
        if spill:
            self._write_out(durable=False)
        return offsets

    def sync(self) -> int:
        """Write everything appended so far and make it durable with ``fdatasync``.

        One call covers every record appended before it (group commit); it does no disk
        work when everything is already synced.

        Returns:
            The new ``synced_offset``.

        Raises:
            LogIOError: a write or ``fdatasync`` failed; the log refuses all further appends
                and syncs until it is reopened. Records synced before are intact.
            LogError: the log is closed.
        """
        return self._write_out(durable=True)

    def read(
        self, from_offset: int | None = None, to_offset: int | None = None
    ) -> Iterator[Record]:
        """Return the records in ``[from_offset, to_offset)`` of the synced log, in order.

        Offsets are checked now; the records are read lazily, in large chunks, with every
        checksum verified. Records appended after this call are not included.

        Args:
            from_offset: A record offset, a record end (checkpoint), a segment base, or the
                synced end; default :attr:`start_offset`.
            to_offset: Where to stop, a record boundary no later than
                :attr:`synced_offset`; default :attr:`synced_offset`.

        Returns:
            An iterator of :class:`Record`.

        Raises:
            LogError: an offset is outside the synced log or not a record boundary, or the
                log is closed.
            LogCorruptedError: (while iterating) synced data no longer checks out.
            LogIOError: (while iterating) a read failed.
        """
        with self._state:
            if self._closed:
                raise LogError(f"event log {self._dir} is closed")
            synced = self._synced
            segs = [s for s in self._segments if s.created and s.base < synced]
            sizes = [min(s.size, synced - s.base) for s in segs]
        start = segs[0].base + SEGMENT_HEADER_SIZE if segs else synced
        lo = start if from_offset is None else from_offset
        hi = synced if to_offset is None else to_offset
        if not start - SEGMENT_HEADER_SIZE <= hi <= synced:
            raise LogError(
                f"to_offset {hi} is outside the synced log [{start}, {synced}] of {self._dir}"
            )
        if not start - SEGMENT_HEADER_SIZE <= lo <= hi:
            raise LogError(
                f"from_offset {lo} is outside [{start}, {hi}] of the synced log of {self._dir}"
            )
        self._check_boundary("from_offset", lo, segs, sizes, synced)
        self._check_boundary("to_offset", hi, segs, sizes, synced)
        return _read_records(self._fs, segs, sizes, lo, hi)

    def verify(self) -> VerifyReport:
        """Check every segment's header and every synced record's checksum.

        Only reads; the log keeps working meanwhile.

        Raises:
            LogError: the log is closed.
            LogIOError: a segment cannot be read.
        """
        with self._state:
            if self._closed:
                raise LogError(f"event log {self._dir} is closed")
            synced = self._synced
            segs = [
                (s.base, s.path, max(0, min(s.size, synced - s.base)))
                for s in self._segments
                if s.created
            ]
        return _verify(self._fs, self._dir, segs)

    def close(self) -> None:
        """Sync what is buffered (unless the log failed), then release files and the lock.

        Safe to call more than once. The lock and files are released even when the final
        sync raises.

        Raises:
            LogIOError: the final sync failed.
        """
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            with self._io, self._state:
                if not self._closed:
                    self._closed = True
                    if self._fd is not None:
                        _close_quietly(self._fs, self._fd)
                        self._fd = None
                    _close_quietly(self._fs, self._lock_fd)

    def __enter__(self) -> EventLog:
        """Return the log itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the log."""
        self.close()

    def __repr__(self) -> str:
        """Show the directory and the offsets."""
        return (
            f"<EventLog {self._dir} start={self.start_offset} synced={self._synced} "
            f"end={self._end}{' FAILED' if self._failed else ''}>"
        )

    # -- writing ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise LogError(f"event log {self._dir} is closed")
        if self._failed is not None:
            raise LogIOError(
                f"event log {self._dir} refuses writes until it is reopened, because an "
                f"earlier write failed: {self._failed}"
            )

    @contextmanager
    def _failing(self, op: str, path: str) -> Iterator[None]:
        """Turn an OSError into LogIOError and mark the log failed."""
        try:
            yield
        except OSError as e:
            msg = f"{op} of {path} failed: {_describe(e)}"
            with self._state:
                self._failed = msg
            raise LogIOError(
                f"event log {self._dir}: {msg}; the log refuses writes until it is reopened "
                f"(records up to offset {self._synced} are durable)"
            ) from e

    def _write_out(self, durable: bool) -> int:
        """Write the pending batches; with ``durable``, fdatasync and advance synced_offset."""
        with self._io:
            with self._state:
                self._check_writable()
                batches, self._pending = self._pending, []
                self._pending_bytes = 0
            fs = self._fs
            for b in batches:
                seg = b.segment
                if not seg.created:
                    self._roll_to(seg)
                data = b"".join(b.parts)
                with self._failing("write", seg.path):
                    fs.pwrite(self._require_fd(), data, b.pos)
                self._dirty = True
                with self._state:
                    seg.size = b.pos + len(data)
                    self._written = seg.base + seg.size
            if durable:
                if self._dirty:
                    with self._failing("fdatasync", self._active.path):
                        fs.datasync(self._require_fd())
                    self._dirty = False
                with self._state:
                    self._synced = self._written
            return self._synced

    def _roll_to(self, seg: _Segment) -> None:
        """Seal the active segment and create ``seg`` with a durable header and name."""
        fs = self._fs
        if self._fd is not None:
            if self._dirty:
                # The sealed segment must be durable before a later one can exist, or a crash
                # could leave a torn tail in a segment that is no longer the last.
                with self._failing("fdatasync", self._active.path):
                    fs.datasync(self._fd)
                self._dirty = False
            _close_quietly(fs, self._fd)
            self._fd = None
        with self._failing("create", seg.path):
            self._fd = fs.create(seg.path)
        self._active = seg
        with self._failing("write", seg.path):
            fs.pwrite(self._fd, encode_segment_header(seg.base), 0)
        with self._failing("fdatasync", seg.path):
            fs.datasync(self._fd)
        with self._failing("fsync of directory", self._dir):
            fs.fsync_dir(self._dir)
        with self._state:
            seg.created = True
            seg.size = SEGMENT_HEADER_SIZE
            self._written = seg.base + SEGMENT_HEADER_SIZE
            # Every earlier segment is sealed and synced and this header is synced, so all
            # that is written is now durable.
            self._synced = self._written

    def _require_fd(self) -> int:
        if self._fd is None:  # only after a failed roll-over, which marks the log failed
            raise LogIOError(f"event log {self._dir} has no open segment")
        return self._fd

    # -- reading ---------------------------------------------------------------------------

    def _check_boundary(
        self, what: str, off: int, segs: list[_Segment], sizes: list[int], synced: int
    ) -> None:
        """Raise unless ``off`` is a record boundary of the synced log."""
        if off == synced or not segs:
            return
        i = bisect.bisect_right([s.base for s in segs], off) - 1
        seg, size = segs[i], sizes[i]
        first = seg.base + SEGMENT_HEADER_SIZE
        if off in (seg.base, first, seg.base + size):
            return
        if off < first:
            raise LogError(
                f"{what} {off} is inside the header of segment {seg.path}, not a record boundary"
            )
        marks = seg.marks
        mark = marks[bisect.bisect_right(marks, off) - 1]
        if mark == off:
            return
        with _translated("read", seg.path):
            fd = self._fs.open_read(seg.path)
            try:
                walk = RecordWalk(self._fs, fd, mark - seg.base, off - seg.base)
                for _ in walk:
                    pass
            finally:
                self._fs.close(fd)
        if walk.reason is StopReason.END:
            return
        at = seg.base + walk.stop
        if walk.reason in (StopReason.SHORT_HEADER, StopReason.SHORT_PAYLOAD):
            raise LogError(
                f"{what} {off} is not a record boundary of {self._dir}: it falls inside the "
                f"record at offset {at}"
            )
        raise LogCorruptedError(
            f"segment {seg.path}: {walk.reason.value} at offset {at}, in data that was valid "
            f"when the log was opened; `trackd log verify {self._dir}` shows details"
        )


def _read_records(
    fs: FileSystem, segs: list[_Segment], sizes: list[int], lo: int, hi: int
) -> Iterator[Record]:
    """Yield the records in ``[lo, hi)`` of the given segments (snapshotted sizes)."""
    for seg, size in zip(segs, sizes, strict=True):
        base = seg.base
        start = max(lo, base + SEGMENT_HEADER_SIZE) - base
        stop = min(hi, base + size) - base
        if start >= stop:
            if base >= hi:
                return
            continue
        with _translated("read", seg.path):
            fd = fs.open_read(seg.path)
        try:
            walk = RecordWalk(fs, fd, start, stop, CHUNK_SIZE)
            with _translated("read", seg.path):
                for file_pos, buf, spans in walk:
                    at = base + file_pos
                    for s, e in spans:
                        yield Record(at + s, at + e, buf[s + RECORD_HEADER_SIZE : e])
        finally:
            _close_quietly(fs, fd)
        if walk.reason is not StopReason.END:
            raise LogCorruptedError(
                f"segment {seg.path}: {walk.reason.value} at offset {base + walk.stop}, in "
                "synced data that was valid when the log was opened; `trackd log verify` "
                "shows details"
            )


# -- recovery ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Damage:
    index: int  # of the damaged segment in the sorted directory listing
    path: str
    offset: int
    reason: str
    cut: int | None  # file position to cut the segment at; None moves the whole file


def _recover(fs: FileSystem, directory: str, qroot: str) -> tuple[list[_Segment], RecoveryReport]:
    """Scan the segments, cut a torn tail or quarantine damage, and return the live segments."""
    with _translated("list", directory):
        names = fs.listdir(directory)
    entries = sorted((b, n) for n in names if (b := parse_segment_name(n)) is not None)
    segments: list[_Segment] = []
    actions: list[str] = []
    records = 0
    torn: TornTail | None = None
    damage: _Damage | None = None
    expected: int | None = None
    for i, (base, name) in enumerate(entries):
        path = os.path.join(directory, name)
        last = i == len(entries) - 1
        if expected is not None and base != expected:
            damage = _Damage(
                i,
                path,
                expected,
                f"segment {name} starts at offset {base} but the segment before it ends at "
                f"offset {expected}, so log data is missing or overlaps there",
                None,
            )
            break
        with _translated("read", path):
            scan = scan_segment(fs, path, base)
        if scan.header is HeaderStatus.NEWER_VERSION:
            raise LogError(
                f"segment {path} has a newer format than format version "
                f"{SEGMENT_FORMAT_VERSION}, the newest this build reads; upgrade trackd"
            )
        if scan.header is HeaderStatus.OLD_VERSION:
            raise LogError(_old_version_message(path))
        if scan.header is not HeaderStatus.OK:
            if last and scan.later_valid is None:
                # A crash while the segment was being created: it never held a record.
                _rewrite_header(fs, directory, path, base)
                torn = TornTail(path, base, scan.size, scan.header.value)
                actions.append(
                    f"rewrote the header of {path} ({scan.header.value}, {scan.size} bytes, "
                    "no records)"
                )
                segments.append(_Segment(base, path, SEGMENT_HEADER_SIZE, True))
                break
            damage = _Damage(i, path, base, scan.header.value, None)
            break
        records += scan.records
        if scan.reason is StopReason.END:
            segments.append(_Segment(base, path, scan.size, True, scan.marks))
            expected = base + scan.size
            continue
        bad = base + scan.good_end
        if last and scan.later_durable is None:
            with _translated("cut", path):
                _truncate(fs, path, scan.good_end)
            cut = scan.size - scan.good_end
            reason = _torn_reason(scan, base)
            torn = TornTail(path, bad, cut, reason)
            actions.append(f"cut a torn tail of {cut} bytes ({reason}) from {path} at offset {bad}")
            segments.append(_Segment(base, path, scan.good_end, True, scan.marks))
            break
        damage = _Damage(i, path, bad, _damage_reason(scan, base, last), scan.good_end)
        segments.append(_Segment(base, path, scan.good_end, True, scan.marks))
        break

    corruption: Corruption | None = None
    if damage is not None:
        corruption = _quarantine(fs, directory, qroot, damage, entries, records)
        actions.append(corruption.message)
    if not segments:
        base = damage.offset if damage is not None else 0
        path = os.path.join(directory, segment_name(base))
        with _translated("create", path):
            _create_segment(fs, directory, path, base)
        if damage is not None or entries:
            actions.append(f"created segment {path}")
        segments.append(_Segment(base, path, SEGMENT_HEADER_SIZE, True))
    last_seg = segments[-1]
    report = RecoveryReport(
        segments=len(segments),
        records=records,
        end_offset=last_seg.base + last_seg.size,
        torn_tail=torn,
        corruption=corruption,
        actions=tuple(actions),
    )
    return segments, report


def _damage_reason(scan: SegmentScan, base: int, last: bool) -> str:
    """Why the bad bytes a scan found are corruption (not a torn tail), in words."""
    reason = scan.reason.value
    if last and scan.later_durable is not None:
        pos, durable_before = scan.later_durable
        return (
            f"{reason}, with a valid record after it at offset {base + pos} that was written "
            f"when the log was durable up to offset {durable_before}, past the bad bytes"
        )
    if scan.later_valid is not None and last:
        return f"{reason}, with a valid record after it at offset {base + scan.later_valid}"
    if scan.later_valid is not None:
        return (
            f"{reason}, with a valid record after it at offset {base + scan.later_valid}, "
            "in a segment that is not the last one"
        )
    if not last:
        return f"{reason}, in a segment that is not the last one"
    return reason


def _torn_reason(scan: SegmentScan, base: int) -> str:
    """The reason of a torn tail cut from the last segment, in words."""
    reason = scan.reason.value
    if scan.later_valid is None:
        return reason
    return (
        f"{reason}; the valid records after it, from offset {base + scan.later_valid}, were "
        f"written before offset {base + scan.good_end} was durable, so none of them was "
        "ever acknowledged"
    )


def _old_version_message(path: str) -> str:
    return (
        f"segment {path} has segment format version 1, written by a development build of "
        f"trackd before the first release; this build reads format version "
        f"{SEGMENT_FORMAT_VERSION} only (records now carry a durable-before offset that "
        "version 1 lacks). Move the log folder aside and start a new repository, or read it "
        "with the build that wrote it"
    )


def _quarantine(
    fs: FileSystem,
    directory: str,
    qroot: str,
    damage: _Damage,
    entries: list[tuple[int, str]],
    records: int,
) -> Corruption:
    """Move everything from the damage on into a new quarantine folder, then cut the log.

    The order keeps every byte somewhere at every instant: copy the rest of the damaged
    segment and make it durable, move later segments (last first, so the log stays a prefix),
    fsync both directories, and only then cut the damaged segment. A crash in between
    finds the same damage again at the next open.
    """
    qdir = _new_quarantine_dir(fs, qroot)
    moved: list[str] = []
    later = entries[damage.index + 1 :] if damage.cut is not None else entries[damage.index :]
    if damage.cut is not None:
        dst = os.path.join(qdir, f"{os.path.basename(damage.path)}.from-{damage.offset:020d}")
        with _translated("copy", damage.path):
            _copy_file(fs, damage.path, dst, damage.cut)
        moved.append(dst)
    for _base, name in reversed(later):
        src = os.path.join(directory, name)
        dst = os.path.join(qdir, name)
        with _translated("move", src):
            _move_file(fs, src, dst)
        moved.append(dst)
    moved.sort()
    with _translated("fsync of directory", qdir):
        fs.fsync_dir(qdir)
    with _translated("fsync of directory", directory):
        fs.fsync_dir(directory)
    if damage.cut is not None:
        with _translated("cut", damage.path):
            _truncate(fs, damage.path, damage.cut)
    what = []
    if damage.cut is not None:
        what.append("the rest of that segment")
    n_later = len(later)
    if n_later:
        what.append(f"{n_later} {'later ' if damage.cut is not None else ''}segment file(s)")
    message = (
        f"event log {directory}: {damage.reason}, at offset {damage.offset} in segment "
        f"{damage.path}. Recovery stopped there and moved {' and '.join(what)} to {qdir}. "
        f"The log now ends at offset {damage.offset}; the moved records are kept in {qdir}; "
        f"`trackd log verify {directory}` shows details; reopening continues from offset "
        f"{damage.offset}."
    )
    note = os.path.join(qdir, _QUARANTINE_NOTE)
    with _translated("write", note):
        fd = fs.create(note)
        try:
            fs.pwrite(fd, (message + "\n").encode(), 0)
            fs.datasync(fd)
        finally:
            fs.close(fd)
        fs.fsync_dir(qdir)
    return Corruption(
        segment=damage.path,
        offset=damage.offset,
        reason=damage.reason,
        quarantine_dir=qdir,
        moved=tuple(moved),
        message=message,
    )


def _new_quarantine_dir(fs: FileSystem, qroot: str) -> str:
    with _translated("create directory", qroot):
        _ensure_dir(fs, qroot)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for n in range(1000):
        qdir = os.path.join(qroot, stamp if n == 0 else f"{stamp}-{n}")
        try:
            fs.mkdir(qdir)
        except FileExistsError:
            continue
        except OSError as e:
            raise LogIOError(f"create directory of {qdir} failed: {_describe(e)}") from e
        with _translated("fsync of directory", qroot):
            fs.fsync_dir(qroot)
        return qdir
    raise LogError(f"cannot find a free quarantine folder name under {qroot}")


# -- verification --------------------------------------------------------------------------


def verify_log(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check every segment of the log in ``directory`` without locking or changing anything.

    Safe to run next to a live writer: its last segment may then show a torn tail that is
    just a write in progress.

    Args:
        directory: The log directory.

    Returns:
        One report per segment file.

    Raises:
        LogError: ``directory`` is not a readable directory.
    """
    fs = OSFileSystem()
    path = os.path.abspath(os.fspath(directory))
    try:
        names = fs.listdir(path)
    except OSError as e:
        raise LogError(f"cannot read the event log directory {path}: {_describe(e)}") from e
    entries = sorted((b, n) for n in names if (b := parse_segment_name(n)) is not None)
    return _verify(fs, path, [(b, os.path.join(path, n), None) for b, n in entries])


def _verify(
    fs: FileSystem, directory: str, segs: Sequence[tuple[int, str, int | None]]
) -> VerifyReport:
    """Scan each ``(base, path, byte limit)`` and report; shared by verify() and verify_log()."""
    reports: list[SegmentReport] = []
    expected: int | None = None
    for i, (base, path, limit) in enumerate(segs):
        last = i == len(segs) - 1
        with _translated("read", path):
            scan = scan_segment(fs, path, base, limit)
        error: str | None = None
        error_offset: int | None = None
        torn = False
        if expected is not None and base != expected:
            error, error_offset = f"previous segment ends at offset {expected}", base
        elif scan.header is HeaderStatus.OLD_VERSION:
            error, error_offset = _old_version_message(path), base
        elif scan.header is not HeaderStatus.OK:
            error, error_offset = scan.header.value, base
            torn = last and scan.later_valid is None
        elif scan.reason is not StopReason.END:
            torn = last and scan.later_durable is None
            if torn:
                error = _torn_reason(scan, base) + " (a torn tail: the next open cuts it)"
            else:
                error = _damage_reason(scan, base, last)
            error_offset = base + scan.good_end
        reports.append(
            SegmentReport(
                path=path,
                base_offset=base,
                records=scan.records,
                bytes=scan.size,
                ok=error is None,
                error_offset=error_offset,
                error=error,
                torn_tail=torn,
            )
        )
        expected = base + scan.size
    return VerifyReport(directory=directory, segments=tuple(reports))


# -- small file helpers --------------------------------------------------------------------


@contextmanager
def _translated(op: str, path: str) -> Iterator[None]:
    """Translate OSError into LogIOError naming the operation, the file and the errno."""
    try:
        yield
    except OSError as e:
        raise LogIOError(f"{op} of {path} failed: {_describe(e)}") from e


def _describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "no errno"
    return f"{name} ({e.strerror or e})"


def _close_quietly(fs: FileSystem, fd: int) -> None:
    try:
        fs.close(fd)
    except OSError:
        pass  # nothing useful to do about a failed close on a path that is giving up


def _ensure_dir(fs: FileSystem, path: str) -> None:
    """Create ``path`` and missing parents, making each new name durable."""
    try:
        fs.mkdir(path)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        _ensure_dir(fs, parent)
        try:
            fs.mkdir(path)
        except FileExistsError:
            return
    fs.fsync_dir(os.path.dirname(path))


def _lock_holder(fs: FileSystem, lock_path: str) -> str:
    try:
        fd = fs.open_read(lock_path)
        try:
            text = fs.pread(fd, 64, 0).decode("ascii", "replace").strip()
        finally:
            fs.close(fd)
    except OSError:
        text = ""
    return text or "unknown"


def _truncate(fs: FileSystem, path: str, size: int) -> None:
    fd = fs.open_write(path)
    try:
        fs.truncate(fd, size)
        fs.datasync(fd)
    finally:
        fs.close(fd)


def _create_segment(fs: FileSystem, directory: str, path: str, base: int) -> None:
    fd = fs.create(path)
    try:
        fs.pwrite(fd, encode_segment_header(base), 0)
        fs.datasync(fd)
    finally:
        fs.close(fd)
    fs.fsync_dir(directory)


def _rewrite_header(fs: FileSystem, directory: str, path: str, base: int) -> None:
    with _translated("rewrite header", path):
        fd = fs.open_write(path)
        try:
            fs.truncate(fd, 0)
            fs.pwrite(fd, encode_segment_header(base), 0)
            fs.datasync(fd)
        finally:
            fs.close(fd)
        # The crash may have happened before the new name was made durable.
        fs.fsync_dir(directory)


def _copy_file(fs: FileSystem, src: str, dst: str, start: int) -> None:
    """Copy ``src`` from file position ``start`` to its end into a new durable file ``dst``."""
    fin = fs.open_read(src)
    try:
        fout = fs.create(dst)
        try:
            pos, out = start, 0
            while True:
                buf = fs.pread(fin, CHUNK_SIZE, pos)
                if not buf:
                    break
                fs.pwrite(fout, buf, out)
                pos += len(buf)
                out += len(buf)
            fs.datasync(fout)
        finally:
            fs.close(fout)
    finally:
        fs.close(fin)


def _move_file(fs: FileSystem, src: str, dst: str) -> None:
    try:
        fs.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # The quarantine folder is on another file system: copy durably, then remove.
        _copy_file(fs, src, dst, 0)
        fs.fsync_dir(os.path.dirname(dst))
        fs.remove(src)
