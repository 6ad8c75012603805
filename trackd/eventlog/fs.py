"""The file-system interface the event log does all of its I/O through.

Owns: :class:`FileSystem`, the narrow set of calls the log needs, and :class:`OSFileSystem`,
which maps them straight onto ``os.*``. A simulated disk (which may keep, drop or tear every
write not yet made durable) and fault injection plug in by implementing the same class.
Imports: stdlib only. Errors are plain ``OSError``; the log translates them.

Only two calls are durability points, and the interface says so in their names:

* :meth:`FileSystem.datasync` makes a file's written bytes and its size durable.
* :meth:`FileSystem.fsync_dir` makes a directory's entries (created, renamed and removed
  names) durable.

Everything else (``pwrite``, ``truncate``, ``create``, ``rename``, ``remove``, ``mkdir``) only
changes what later reads see, and may be lost, or for writes torn, by a crash until the
matching durability point returns.
"""

from __future__ import annotations

import fcntl
import os
from abc import ABC, abstractmethod

__all__ = ["FileSystem", "OSFileSystem"]


class FileSystem(ABC):
    """The calls the event log makes on files and directories.

    File handles are opaque ints owned by the implementation. Every method raises ``OSError``
    (with an ``errno``) on failure.
    """

    @abstractmethod
    def open_read(self, path: str) -> int:
        """Open an existing file for reading and return its handle."""

    @abstractmethod
    def open_write(self, path: str) -> int:
        """Open an existing file for reading and writing and return its handle."""

    @abstractmethod
    def create(self, path: str) -> int:
        """Create a new, empty file for reading and writing; fail if the name exists.

        The new name is durable only after :meth:`fsync_dir` of its directory.
        """

    @abstractmethod
    def close(self, fd: int) -> None:
        """Close a handle."""

    @abstractmethod
    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``. Not durable until :meth:`datasync`."""

    @abstractmethod
    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; fewer only when the file ends first."""

    @abstractmethod
    def size(self, fd: int) -> int:
        """Return the current size of the file in bytes."""

    @abstractmethod
    def truncate(self, fd: int, size: int) -> None:
        """Cut the file to ``size`` bytes. Not durable until :meth:`datasync`."""

    @abstractmethod
    def datasync(self, fd: int) -> None:
        """Durability point: make the file's written bytes and size survive a crash.

        After this raises, the state of the unsynced bytes is unknown and a retry proves
        nothing (the kernel may have dropped the dirty pages and cleared the error).
        """

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Return the names in a directory, in no particular order."""

    @abstractmethod
    def mkdir(self, path: str) -> None:
        """Create one directory level; ``FileExistsError`` when the name exists.

        The new name is durable only after :meth:`fsync_dir` of the parent.
        """

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` to ``dst``; durable after :meth:`fsync_dir` of both parents."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file name; durable after :meth:`fsync_dir` of its directory."""

    @abstractmethod
    def fsync_dir(self, path: str) -> None:
        """Durability point: make the entries of directory ``path`` survive a crash."""

    @abstractmethod
    def try_lock(self, path: str) -> int | None:
        """Open (creating if needed) ``path`` and take an exclusive lock on it without waiting.

        Returns:
            A read/write handle that holds the lock until it is closed, or None when another
            open file description holds the lock.
        """


class OSFileSystem(FileSystem):
    """:class:`FileSystem` on the real disk, through ``os.*`` and ``fcntl.flock``."""

    def open_read(self, path: str) -> int:
        """Open an existing file for reading and return its descriptor."""
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def open_write(self, path: str) -> int:
        """Open an existing file for reading and writing and return its descriptor."""
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def create(self, path: str) -> int:
        """Create a new, empty file (``O_EXCL``) and return a read/write descriptor."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def close(self, fd: int) -> None:
        """Close a descriptor."""
        os.close(fd)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``, continuing after short writes."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:  # a regular file never does this, but a loop that cannot end is worse
                raise OSError(f"pwrite wrote {n} bytes")
            view = view[n:]
            offset += n

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``, continuing after short reads."""
        data = os.pread(fd, size, offset)
        if len(data) == size or not data:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def size(self, fd: int) -> int:
        """Return the file size from ``fstat``."""
        return os.fstat(fd).st_size

    def truncate(self, fd: int, size: int) -> None:
        """``ftruncate`` the file."""
        os.ftruncate(fd, size)

    def datasync(self, fd: int) -> None:
        """``fdatasync`` the file (``fsync`` where the platform lacks it)."""
        _fdatasync(fd)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        """``os.mkdir`` with mode 0o755."""
        os.mkdir(path, 0o755)

    def rename(self, src: str, dst: str) -> None:
        """``os.rename``; fails across file systems (``EXDEV``)."""
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        """``os.remove``."""
        os.remove(path)

    def fsync_dir(self, path: str) -> None:
        """Open the directory read-only and ``fsync`` it."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def try_lock(self, path: str) -> int | None:
        """Take ``flock(LOCK_EX | LOCK_NB)`` on ``path``; None when someone else holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


# macOS has no fdatasync; its fsync is the closest honest equivalent.
_fdatasync = getattr(os, "fdatasync", os.fsync)
