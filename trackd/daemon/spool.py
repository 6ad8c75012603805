"""The spool watcher of one repository: ingests what clients wrote while no daemon answered.

Owns: :class:`SpoolWatcher`. At repository open, and whenever ``watchfiles`` reports a change
in ``<repo>/.trackd/spool/``, every ``*.spool`` file whose writer is gone (its lock can be
taken) is read, its events are decoded and queued to the writer like any Append (duplicates
are dropped there by client id and seq), and once they are durable the file is unlinked and
the folder fsynced. A file with a bad record is moved to ``.trackd/quarantine/`` after the
records before the damage were ingested, with an ERROR naming it. While some file is still
locked by a live writer the folder is rescanned every ``spool_rescan_interval`` seconds,
because a writer's exit does not always produce a file event. Entries named like spool files
that are not regular files (a symbolic link could lead outside the repository, opening a FIFO
would block the watcher) are never opened; a warning names them.
Imports ``trackd.eventlog`` (spool reading, event codec) and watchfiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from trackd.daemon.writer import Batch, memory_cost
from trackd.errors import EventError
from trackd.eventlog.events import Event, decode_event
from trackd.eventlog.spool import SPOOL_SUFFIX, list_spool, read_spool, try_lock_spool

if TYPE_CHECKING:
    from trackd.daemon.repository import Repository

__all__ = ["SpoolWatcher"]

log = logging.getLogger("trackd.daemon.spool")


def _is_spool(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(SPOOL_SUFFIX)


class SpoolWatcher:
    """Watches one repository's spool folder and ingests abandoned spool files.

    Args:
        repo: The repository whose writer receives the events.

    Attributes:
        ingested_files: Spool files ingested (deleted or quarantined) so far.
    """

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._dir = repo.layout.spool_dir
        self._quarantine = repo.layout.quarantine_dir
        self._stop = asyncio.Event()
        self._waiting = False
        self.ingested_files = 0

    async def stop(self) -> None:
        """Ask :meth:`run` to return after the file it is ingesting, if any."""
        self._stop.set()

    async def run(self) -> None:
        """Scan once, then rescan on every change until :meth:`stop`."""
        await self.scan()
        interval_ms = max(50, int(self._repo.settings.spool_rescan_interval * 1000))
        while not self._stop.is_set():
            try:
                async for _changes in watchfiles.awatch(
                    self._dir,
                    watch_filter=_is_spool,
                    debounce=100,
                    step=20,
                    stop_event=self._stop,
                    rust_timeout=interval_ms,
                    yield_on_timeout=True,
                    recursive=False,
                ):
                    # An empty set is a timeout: rescan only if a writer was still alive.
                    if _changes or self._waiting:
                        await self.scan()
            except (OSError, RuntimeError) as e:
                # The folder vanished or the watcher failed: poll instead of giving up.
                log.warning("watching %s failed (%s); polling instead", self._dir, e)
                try:
                    await asyncio.wait_for(self._stop.wait(), interval_ms / 1000)
                except TimeoutError:
                    await asyncio.to_thread(self._dir.mkdir, mode=0o700, exist_ok=True)
                    await self.scan()

    async def scan(self) -> None:
        """Ingest every spool file whose writer is gone; remember if some writer lives."""
        try:
            names = await asyncio.to_thread(_list_spool, self._dir)
        except OSError as e:
            log.warning("cannot list spool folder %s: %s", self._dir, e)
            return
        waiting = False
        for path in names:
            if self._stop.is_set():
                break
            if not await self._ingest(path):
                waiting = True
        self._waiting = waiting

    async def _ingest(self, path: Path) -> bool:
        """Ingest one file. Returns False when a live writer still holds it."""
        try:
            handle = await asyncio.to_thread(try_lock_spool, path)
        except FileNotFoundError:
            return True  # ingested by an earlier scan, or removed by its writer
        except OSError as e:  # e.g. replaced by a symbolic link since it was listed
            log.warning("cannot open spool file %s (%s); leaving it alone", path, e)
            return True
        if handle is None:
            return False
        try:
            return await self._ingest_locked(path)
        finally:
            await asyncio.to_thread(handle.release)

    async def _ingest_locked(self, path: Path) -> bool:
        t0 = time.monotonic()
        try:
            contents = await asyncio.to_thread(read_spool, path)
        except FileNotFoundError:
            return True
        payloads = contents.payloads
        problem = contents.corruption
        events: list[Event] = []
        for i, payload in enumerate(payloads):
            try:
                events.append(decode_event(payload))
            except EventError as e:
                problem = problem or f"record {i} does not hold a valid event: {e}"
                break
        payloads = payloads[: len(events)]
        if events:
            await self._repo.wait_for_room()
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            nbytes = sum(memory_cost(p) for p in payloads)
            self._repo.submit(Batch(events, payloads, nbytes, sink=None, done=done))
            await done
        if problem:
            dest = await asyncio.to_thread(_quarantine, path, self._quarantine)
            log.error(
                "spool file %s is damaged (%s); ingested the %d events before the damage and "
                "moved the file to %s",
                path,
                problem,
                len(events),
                dest,
            )
        else:
            await asyncio.to_thread(_unlink, path)
            log.info(
                "ingested spool file %s: %d events in %.0f ms",
                path.name,
                len(events),
                (time.monotonic() - t0) * 1e3,
            )
        self.ingested_files += 1
        return True


def _list_spool(d: Path) -> list[Path]:
    """Spool files in ingest order; entries that are not regular files are left alone."""
    files, foreign = list_spool(d)
    for p in foreign:
        log.warning(
            "ignoring %s: it is named like a spool file but is not a regular file (a "
            "symbolic link, FIFO or folder), so trackd never opens it",
            p,
        )
    return files


def warm_up() -> None:
    """Import now what :func:`watchfiles.awatch` imports on first use (its anyio backend,
    ~45 ms), which would otherwise hold the event loop while the first clients connect.
    Best effort: a watchfiles that no longer needs it loses nothing."""
    with contextlib.suppress(ImportError):
        importlib.import_module("anyio._backends._asyncio")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)


def _quarantine(path: Path, qdir: Path) -> Path:
    qdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = qdir / path.name
    if dest.exists():
        dest = qdir / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
    os.rename(path, dest)
    _fsync_dir(qdir)
    _fsync_dir(path.parent)
    return dest
