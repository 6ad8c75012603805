"""Helpers for the event log tests: a fault-injecting file system and file surgery.

Imported by the test modules next to it (pytest puts this folder on ``sys.path``); the name is
unique so that it cannot clash with helpers of other test folders.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trackd.eventlog.fs import OSFileSystem
from trackd.eventlog.record import RECORD_HEADER_SIZE
from trackd.eventlog.segment import parse_segment_name


@dataclass
class _Rule:
    op: str
    err: int
    after: int
    partial: bool
    path_contains: str | None
    fired: int = 0


@dataclass
class FaultyFS(OSFileSystem):
    """The real file system, except that chosen calls raise ``OSError`` on demand.

    ``fail("datasync", errno.EIO, after=2)`` lets two ``datasync`` calls through and makes
    every later one raise. With ``partial=True`` a failing ``pwrite`` first writes half of
    its data, like a disk that filled up in the middle of a write.
    """

    rules: list[_Rule] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)

    def fail(
        self,
        op: str,
        err: int = errno.EIO,
        *,
        after: int = 0,
        partial: bool = False,
        path_contains: str | None = None,
    ) -> None:
        """Make the ``after``-th and later calls of ``op`` (from now on) raise ``err``."""
        self.rules.append(_Rule(op, err, self.calls.get(op, 0) + after, partial, path_contains))

    def heal(self) -> None:
        """Stop injecting failures."""
        self.rules.clear()

    def _check(self, op: str, path: str, fd: int = -1, data: bytes = b"", at: int = 0) -> None:
        n = self.calls.get(op, 0)
        self.calls[op] = n + 1
        for rule in self.rules:
            if rule.op != op or n < rule.after:
                continue
            if rule.path_contains is not None and rule.path_contains not in path:
                continue
            rule.fired += 1
            if rule.partial and data:
                super().pwrite(fd, data[: len(data) // 2], at)
            raise OSError(rule.err, os.strerror(rule.err), path)

    def open_read(self, path: str) -> int:
        """Open for reading, remembering the path of the handle."""
        self._check("open_read", path)
        fd = super().open_read(path)
        self.paths[fd] = path
        return fd

    def open_write(self, path: str) -> int:
        """Open for writing, remembering the path of the handle."""
        self._check("open_write", path)
        fd = super().open_write(path)
        self.paths[fd] = path
        return fd

    def create(self, path: str) -> int:
        """Create a file, remembering the path of the handle."""
        self._check("create", path)
        fd = super().create(path)
        self.paths[fd] = path
        return fd

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write, or write half and fail, or fail."""
        self._check("pwrite", self.paths.get(fd, "?"), fd, data, offset)
        super().pwrite(fd, data, offset)

    def datasync(self, fd: int) -> None:
        """fdatasync, or fail without syncing."""
        self._check("datasync", self.paths.get(fd, "?"))
        super().datasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """ftruncate, or fail."""
        self._check("truncate", self.paths.get(fd, "?"))
        super().truncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        """rename, or fail."""
        self._check("rename", src)
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        """fsync a directory, or fail."""
        self._check("fsync_dir", path)
        super().fsync_dir(path)


def segments(directory: Path) -> list[Path]:
    """The segment files of a log directory, in offset order."""
    found = [p for p in directory.iterdir() if parse_segment_name(p.name) is not None]
    return sorted(found, key=lambda p: p.name)


def flip_bit(path: Path, position: int, bit: int = 0) -> None:
    """Invert one bit of the file at byte ``position`` (in place)."""
    with open(path, "r+b") as f:
        f.seek(position)
        b = f.read(1)[0]
        f.seek(position)
        f.write(bytes([b ^ (1 << bit)]))


def payload_position(offset: int, base: int) -> int:
    """File position of the first payload byte of the record at global ``offset``."""
    return offset - base + RECORD_HEADER_SIZE


def copy_log(src: Path, dst: Path) -> Path:
    """Copy a log directory's segment files (not its lock) to ``dst``, like a crash image."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in segments(src):
        shutil.copyfile(p, dst / p.name)
    return dst


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and mtime, to show nothing changed."""
    out: dict[str, tuple[bytes, int]] = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(directory))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out
