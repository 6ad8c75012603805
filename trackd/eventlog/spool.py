"""Spool files: records a client writes while no daemon answers, for the daemon to ingest later.

Owns: creating, appending to, locking, reading and removing spool files. A spool file has the
same format as a log segment (:mod:`trackd.eventlog.record`): a segment header with base
offset 0, then length-prefixed, checksummed records whose payloads are ``encode_event()``
bytes of one client, in ``client_seq`` order.
Imports: ``trackd.eventlog.record``, ``trackd.eventlog.segment``, ``trackd.eventlog.fs``,
``trackd.errors``, stdlib. Synchronous; no sockets.

Names and locks::

    <repo>/.trackd/spool/<client_id hex>-<pid>-<time_ns>.spool

Only regular files are spool files: an entry named like one that is a symbolic link (which
could lead outside the repository), a FIFO (opening it would block) or any other kind of file
was not written by trackd, and :func:`list_spool` and :func:`try_lock_spool` never open it.

A writer creates the file under a hidden temporary name, takes an exclusive ``flock`` on it,
writes and syncs the header, and only then renames it to its ``.spool`` name and syncs the
folder. So a reader that finds a ``.spool`` file and can lock it (:func:`try_lock_spool`)
knows that its writer is gone (closed it or died): the lock belongs to the writer's open
file, which the kernel releases when the process exits, however it exits.

Reading (:func:`read_spool`) stops at a torn tail (a record cut short or zero-filled by a
crash), which is simply the end. A bad record followed by valid ones is corruption: it is
reported in :attr:`SpoolContents.corruption`, never skipped silently.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trackd.errors import LogCorruptedError
from trackd.eventlog.fs import OSFileSystem
from trackd.eventlog.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    StopReason,
    check_segment_header,
    encode_records,
    encode_segment_header,
)
from trackd.eventlog.segment import RecordWalk, find_valid_record

__all__ = [
    "SPOOL_SUFFIX",
    "SpoolContents",
    "SpoolLock",
    "SpoolWriter",
    "iter_spool",
    "list_spool",
    "parse_spool_name",
    "read_spool",
    "try_lock_spool",
]

SPOOL_SUFFIX = ".spool"
_TMP_PREFIX = "."
_TMP_SUFFIX = ".tmp"
#: A spool file is a segment whose base offset is 0.
_SPOOL_BASE = 0

_fs = OSFileSystem()


def parse_spool_name(name: str) -> tuple[bytes, int, int] | None:
    """Return ``(client_id, pid, time_ns)`` for a spool file name, or None for other names.

    Spool files of one client sort by ``time_ns``; a reader ingests them in that order.
    """
    if not name.endswith(SPOOL_SUFFIX) or name.startswith(_TMP_PREFIX):
        return None
    parts = name[: -len(SPOOL_SUFFIX)].split("-")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    try:
        client_id = bytes.fromhex(parts[0])
    except ValueError:
        return None
    return client_id, int(parts[1]), int(parts[2])


def list_spool(spool_dir: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """The spool files of a folder in ingest order, and the entries named like spool files
    that are not regular files (see the module docstring), which the caller must leave alone.

    Spool files sort by ``time_ns``, so one client's files stay in the order it wrote them.

    Raises:
        OSError: the folder cannot be listed.
    """
    d = Path(spool_dir)
    found: list[tuple[int, str]] = []
    foreign: list[Path] = []
    with os.scandir(d) as entries:
        for entry in entries:
            parsed = parse_spool_name(entry.name)
            if parsed is None:
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:  # removed meanwhile
                continue
            if regular:
                found.append((parsed[2], entry.name))
            else:
                foreign.append(d / entry.name)
    return [d / name for _t, name in sorted(found)], sorted(foreign)


class SpoolWriter:
    """One client's spool file, open for appending and exclusively locked while open.

    Not thread-safe: one thread appends. Appends are plain ``write`` calls; they are durable
    after :meth:`sync` (or :meth:`close`).
    """

    def __init__(self, spool_dir: Path, client_id: bytes) -> None:
        """Create ``<spool_dir>/<client_id hex>-<pid>-<time_ns>.spool`` and lock it.

        The folder is created (mode 0700) when missing. On return the file exists under its
        final name with a durable header, and this object holds its lock.

        Raises:
            OSError: the folder or file cannot be created, written or synced.
        """
        spool_dir = Path(spool_dir)
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = spool_dir
        name = f"{client_id.hex()}-{os.getpid()}-{time.time_ns()}{SPOOL_SUFFIX}"
        tmp = spool_dir / f"{_TMP_PREFIX}{name}{_TMP_SUFFIX}"
        self.path = spool_dir / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, encode_segment_header(_SPOOL_BASE))
            _fs.datasync(fd)
            os.rename(tmp, self.path)
            _fs.fsync_dir(str(spool_dir))
        except BaseException:
            os.close(fd)
            for p in (tmp, self.path):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        self._fd: int | None = fd
        self.records = 0
        self.bytes = SEGMENT_HEADER_SIZE

    @property
    def closed(self) -> bool:
        """True after :meth:`close` or :meth:`remove`."""
        return self._fd is None

    def append(self, payloads: Sequence[bytes]) -> None:
        """Append one record per payload (not yet durable; see :meth:`sync`).

        Raises:
            LogError: a payload is empty or too large for one record.
            OSError: the write failed.
            ValueError: the writer is closed.
        """
        if not payloads:
            return
        data = encode_records(payloads)
        _write_all(self._require_fd(), data)
        self.records += len(payloads)
        self.bytes += len(data)

    def sync(self) -> None:
        """Make every appended record durable (``fdatasync``).

        Raises:
            OSError: the sync failed.
            ValueError: the writer is closed.
        """
        _fs.datasync(self._require_fd())

    def close(self) -> None:
        """Sync, release the lock and close the file. Idempotent.

        Raises:
            OSError: the final sync failed (the file is closed all the same).
        """
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            _fs.datasync(fd)
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def remove(self) -> None:
        """Delete the file (its name durably) and close it, unlocking only after the unlink.

        Removing while still holding the lock means no reader can take the file in between.
        Idempotent.
        """
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        else:
            _fs.fsync_dir(str(self._dir))
        fd = self._fd
        if fd is not None:
            self._fd = None
            os.close(fd)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"spool file {self.path} is closed")
        return self._fd

    def __repr__(self) -> str:
        return f"SpoolWriter({str(self.path)!r}, records={self.records})"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass(slots=True)
class SpoolContents:
    """What :func:`read_spool` found in one spool file.

    Attributes:
        payloads: The payloads of the valid records before the first problem, in order.
        torn_tail_bytes: Bytes after the last valid record that are a torn tail (a crash cut
            the writer short); 0 for a clean file.
        corruption: None, or a message naming the offset of a bad record that valid records
            follow. Those later records are not in ``payloads``.
    """

    payloads: list[bytes] = field(default_factory=list)
    torn_tail_bytes: int = 0
    corruption: str | None = None


def iter_spool(path: str | os.PathLike[str]) -> Iterator[list[bytes]]:
    """Yield the payloads of a spool file in chunks (lists of payloads), in order.

    For files too large to hold in memory at once. A torn tail ends the iteration quietly.

    Raises:
        LogCorruptedError: a bad record (or header) that valid records follow; raised after
            every payload before it was yielded.
        OSError: the file cannot be read.
    """
    contents = SpoolContents()
    yield from _walk(path, contents)
    if contents.corruption is not None:
        raise LogCorruptedError(contents.corruption)


def read_spool(path: str | os.PathLike[str]) -> SpoolContents:
    """Read every valid record of a spool file.

    Raises:
        OSError: the file cannot be read.
    """
    contents = SpoolContents()
    for chunk in _walk(path, contents):
        contents.payloads.extend(chunk)
    return contents


def _walk(path: str | os.PathLike[str], out: SpoolContents) -> Iterator[list[bytes]]:
    """Yield payload chunks; fill ``out.torn_tail_bytes`` / ``out.corruption`` at the end."""
    p = os.fspath(path)
    fd = _fs.open_read(p)
    try:
        size = _fs.size(fd)
        header = check_segment_header(_fs.pread(fd, SEGMENT_HEADER_SIZE, 0), _SPOOL_BASE)
        if header is not HeaderStatus.OK:
            later = find_valid_record(_fs, fd, min(SEGMENT_HEADER_SIZE, size), size)
            if later is not None or header not in (HeaderStatus.SHORT, HeaderStatus.ZEROS):
                out.corruption = f"spool file {p}: {header.value}"
                if later is not None:
                    out.corruption += f"; a valid record follows at offset {later}"
            else:
                out.torn_tail_bytes = size
            return
        walk = RecordWalk(_fs, fd, SEGMENT_HEADER_SIZE, size)
        for _pos, buf, spans in walk:
            yield [buf[s + RECORD_HEADER_SIZE : e] for s, e in spans]
        if walk.reason is StopReason.END:
            return
        later = find_valid_record(_fs, fd, walk.stop + 1, size)
        if later is None:
            out.torn_tail_bytes = size - walk.stop
        else:
            out.corruption = (
                f"spool file {p}: {walk.reason.value} at offset {walk.stop}, "
                f"but a valid record follows at offset {later}"
            )
    finally:
        _fs.close(fd)


class SpoolLock:
    """An exclusive lock on a spool file whose writer is gone; held until :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        """Wrap an open, locked descriptor (use :func:`try_lock_spool`)."""
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock and close. Idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> SpoolLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock_spool(path: str | os.PathLike[str]) -> SpoolLock | None:
    """Take a spool file's lock without waiting.

    A symbolic link is not followed and a FIFO does not block (see the module docstring).

    Returns:
        The lock, or None while a live writer holds it (or the file no longer exists).

    Raises:
        OSError: the file exists but cannot be opened or locked for another reason, e.g.
            it is a symbolic link (``ELOOP``).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return SpoolLock(p, fd)
