"""The views file of a repository: open it, rebuild it from the log, open a reader on it.

Owns: the life cycle of ``<repo>/.trackd/views.db``: the checks that decide a rebuild
(missing, damaged, newer schema, checkpoint past the synced log or not on a record of it),
the rebuild into ``views.db.rebuild`` and its atomic swap, and catching up after open.
Imports: ``trackd.errors``, the rest of ``trackd.views``, stdlib.

Views are disposable: every decision here errs towards rebuilding from the log, never towards
repairing a file. Environmental failures (disk full, permissions, a busy lock) raise instead,
because a rebuild would fail the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from trackd.errors import TrackdError, ViewsError
from trackd.views.base import LogSource
from trackd.views.projection import Progress, catch_up
from trackd.views.sqlite import (
    ChunkPolicy,
    RebuildRequiredError,
    SQLiteReader,
    SQLiteViews,
    connect_writer,
    remove_sidecars,
    scan_views,
)

__all__ = ["REBUILD_SUFFIX", "VIEWS_FILE", "open_reader", "open_views", "rebuild"]

VIEWS_FILE = "views.db"
REBUILD_SUFFIX = ".rebuild"
_ASIDE_SUFFIX = ".old"

_log = logging.getLogger(__name__)

# SQLite result codes that say something about the machine, not about the file's content.
_ENVIRONMENTAL = frozenset(
    {
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_FULL",
        "SQLITE_PERM",
        "SQLITE_CANTOPEN",
        "SQLITE_NOMEM",
        "SQLITE_IOERR",
        "SQLITE_READONLY",
    }
)


def _environmental(e: sqlite3.Error) -> bool:
    name = str(getattr(e, "sqlite_errorname", ""))
    return any(name == c or name.startswith(c + "_") for c in _ENVIRONMENTAL)


def _truncated(conn: sqlite3.Connection, path: Path) -> str:
    """Why the main file is shorter than SQLite believes, or "" when it is whole.

    SQLite reads the missing end of a cut file as zeros and quick_check passes, so readers
    would get zeroed points. Only decidable without a WAL: pages may live there instead.
    """
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return ""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    size = path.stat().st_size
    if size < pages * page_size:
        return f"the file is truncated ({size} bytes, {pages} pages of {page_size})"
    return ""


def open_views(
    dot_trackd_dir: str | os.PathLike[str],
    log: LogSource,
    *,
    progress: Progress | None = None,
    policy: ChunkPolicy | None = None,
) -> SQLiteViews:
    """Open a repository's views for writing, rebuilt if needed and caught up with the log.

    The file is rebuilt from the log when it is missing, unreadable or damaged (a failed
    ``PRAGMA quick_check``, a truncated file, a chunk failing its checksum or a sequence
    whose summary disagrees with its chunks), of another schema than this build's, or when its
    checkpoint is past ``log.synced_offset`` or does not end a record of this log (the log
    was cut at recovery). Then every synced record past the checkpoint is applied.

    Open the log first (so that recovery has cut it) and keep one writer per repository.

    Args:
        dot_trackd_dir: The repository's ``.trackd`` folder.
        log: The open event log.
        progress: ``progress(done_offset, total_offset)`` during rebuild and catch-up.
        policy: Chunk sizes (defaults suit the daemon).

    Returns:
        The writer, with ``checkpoint`` at the log's synced end.

    Raises:
        ViewsError: the views cannot be opened or rebuilt (disk full, permissions, ...).
    """
    dot = Path(dot_trackd_dir)
    path = dot / VIEWS_FILE
    views, reason = _open_existing(path, log, policy)
    if views is None:
        _log.warning("rebuilding %s from the log: %s", path, reason)
        rebuild(dot, log, progress=progress, policy=policy)
        views = SQLiteViews.open(path, policy=policy)
    try:
        catch_up(views, log, progress=progress)
    except BaseException:
        views.close()
        raise
    return views


def _open_existing(
    path: Path, log: LogSource, policy: ChunkPolicy | None
) -> tuple[SQLiteViews | None, str]:
    """The views at ``path`` if they can be kept, else None and the reason to rebuild."""
    if not path.exists():
        return None, "no views file"
    try:
        conn = connect_writer(path)
    except RebuildRequiredError as e:
        return None, str(e)
    except sqlite3.Error as e:
        if _environmental(e):
            raise ViewsError(f"cannot open views at {path}: {e}") from e
        return None, f"the file is damaged ({e})"
    try:
        check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            conn.close()
            return None, f"quick_check failed: {'; '.join(map(str, check[:3]))}"
        short = _truncated(conn, path) or scan_views(conn, path)
        if short:
            conn.close()
            return None, short
        views = SQLiteViews(conn, path, policy)
    except (sqlite3.Error, ViewsError) as e:
        conn.close()
        cause = e.__cause__ if isinstance(e, ViewsError) else e
        if isinstance(cause, sqlite3.Error) and _environmental(cause):
            raise ViewsError(f"cannot open views at {path}: {cause}") from e
        return None, f"the file is damaged ({e})"
    reason = _log_mismatch(views, log)
    if reason:
        views.close()
        return None, reason
    return views, ""


def _log_mismatch(views: SQLiteViews, log: LogSource) -> str:
    """Why the views do not belong to this log (empty when they do)."""
    cp, last = views.checkpoint, views.last_offset
    if cp == 0:
        return ""
    if cp > log.synced_offset:
        return f"checkpoint {cp} is past the end of the synced log ({log.synced_offset})"
    if last is None or last < log.start_offset:
        return f"checkpoint {cp} is before the start of the log ({log.start_offset})"
    try:
        first = next(iter(log.read(last, cp)), None)
    except TrackdError as e:
        return f"the log cannot be read at the checkpoint ({e})"
    if first is None or first.offset != last or first.end != cp:
        return f"no record of the log ends at checkpoint {cp}"
    return ""


def rebuild(
    dot_trackd_dir: str | os.PathLike[str],
    log: LogSource,
    *,
    progress: Progress | None = None,
    policy: ChunkPolicy | None = None,
) -> None:
    """Build new views from the whole log and swap them in atomically.

    The new file is written as ``views.db.rebuild`` (no journal, no syncs: it is thrown away
    if anything fails), fsynced, and renamed over ``views.db``; the old file and its
    ``-wal``/``-shm`` are removed before the rename so that SQLite can never pair the new file
    with the old write-ahead log. A crash at any point leaves either the old views, the new
    ones, or none (which the next :func:`open_views` rebuilds).

    No writer may have ``views.db`` open. Readers that have it open keep reading the old
    file until they reopen.

    Args:
        dot_trackd_dir: The repository's ``.trackd`` folder.
        log: The open event log.
        progress: ``progress(done_offset, total_offset)`` after each transaction.
        policy: Chunk sizes.

    Raises:
        ViewsError: the new file cannot be written (nothing was replaced then).
    """
    dot = Path(dot_trackd_dir)
    final = dot / VIEWS_FILE
    tmp = dot / (VIEWS_FILE + REBUILD_SUFFIX)
    _remove_db(tmp)
    try:
        try:
            conn = connect_writer(tmp, building=True)
        except sqlite3.Error as e:
            raise ViewsError(f"cannot create {tmp}: {e}") from e
        views = SQLiteViews(conn, tmp, policy)
        try:
            catch_up(views, log, progress=progress)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as e:
                raise ViewsError(f"cannot finish {tmp}: {e}") from e
        finally:
            views.close()
        wal = Path(f"{tmp}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise ViewsError(f"rebuilt views {tmp} were closed with a non-empty WAL; not used")
        remove_sidecars(tmp)
        _fsync_path(tmp)
        _swap(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove_db(tmp)
        raise


def _swap(new: Path, final: Path) -> None:
    aside = final.with_name(final.name + _ASIDE_SUFFIX)
    try:
        if final.exists():
            os.replace(final, aside)
        remove_sidecars(final)
        os.replace(new, final)
        _fsync_path(final.parent)
    except OSError as e:
        raise ViewsError(f"cannot move rebuilt views into place at {final}: {e}") from e
    with contextlib.suppress(OSError):
        _remove_db(aside)


def _remove_db(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    remove_sidecars(path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_reader(dot_trackd_dir: str | os.PathLike[str]) -> SQLiteReader:
    """A read-only reader of a repository's views.

    Raises:
        NotFoundError: there is no ``views.db`` in ``dot_trackd_dir``.
        ViewsError: it cannot be read.
    """
    return SQLiteReader(Path(dot_trackd_dir) / VIEWS_FILE)
