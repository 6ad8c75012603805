"""One served repository: its log, views, writer, projector, spool watcher, locks and budget.

Owns: :class:`Repository`, the per-repository service a session attaches to after Hello.
It opens the :class:`EventLog` (on a dedicated log thread) and the views (on a dedicated
views thread), loads the durable high-water marks, and runs three tasks: the single
:class:`~trackd.daemon.writer.Writer`, the :class:`~trackd.daemon.projector.Projector` and the
:class:`~trackd.daemon.spool.SpoolWatcher`. It also keeps the container write locks (owned
by connections) and the pending-bytes budget that pauses reading when memory fills.
Imports ``trackd.eventlog``, ``trackd.views`` and its sibling daemon modules.

Threads: the log is touched only by ``log_thread``, the SQLite connection only by
``views_thread``; both are single-thread executors, so no object is ever used from two
threads at once. While the repository serves, the projector's loop occupies the views
thread, and the log thread hands it each group directly, as soon as it is appended; the
views commit a group only once its fdatasync returned (:class:`DurableMark`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

from trackd.daemon.projector import Projector
from trackd.daemon.settings import DaemonSettings
from trackd.daemon.spool import SpoolWatcher
from trackd.daemon.status import LatencyMeter, RateMeter
from trackd.daemon.writer import Barrier, Batch, DurableMark, Writer
from trackd.errors import AccessDeniedError, LockedError, TrackdError
from trackd.eventlog.events import LoggedEvent
from trackd.eventlog.layout import RepoLayout
from trackd.eventlog.log import EventLog
from trackd.views import ChunkPolicy, SQLiteViews, WalCheckpointer, open_views

#: Seconds between checkpoints of the views' WAL (see :class:`trackd.views.WalCheckpointer`).
CHECKPOINT_INTERVAL = 1.0

__all__ = ["Member", "Repository"]

log = logging.getLogger("trackd.daemon.repository")

#: How the daemon's projector stores points. The views rewrite a sequence's last chunk
#: together with new points while it holds fewer than ``top_up_below`` points. Under load
#: the daemon applies every 25 ms or so (and at each flush barrier), about a thousand
#: points per sequence each time, so the default of 8192 rewrote each point about four
#: times over; with 2048 the views' CPU per point fell by about a quarter in
#: bench/ingest.py. Chunks still hold at least 2048 points (48 KiB) but the last, so
#: reading a metric stays one query over few rows.
VIEWS_POLICY: Final = ChunkPolicy(top_up_below=2048)


class Member(Protocol):
    """What a repository needs of a connection attached to it (a session)."""

    @property
    def peer_pid(self) -> int:
        """Process id of the peer, for lock messages."""

    @property
    def client_id(self) -> bytes:
        """The client id from the connection's Hello."""

    def set_backpressure(self, paused: bool) -> None:
        """Stop (True) or resume (False) reading from the connection."""


@dataclass(slots=True)
class _LockHolder:
    member: Member
    since: float


class Repository:
    """The service of one repository inside the daemon. Build it with :meth:`open`.

    Attributes:
        layout: Where the repository's files are.
        writer: The single writer task's object (log, dedupe, group commit, acks).
        projector: The task that applies synced events to the views.
        members: Connections attached to this repository.
    """

    def __init__(
        self,
        layout: RepoLayout,
        settings: DaemonSettings,
        log_: EventLog,
        views: SQLiteViews,
        marks: dict[bytes, int],
        checkpoint: int,
        log_thread: ThreadPoolExecutor,
        views_thread: ThreadPoolExecutor,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.layout = layout
        self.settings = settings
        self._log = log_
        self._views = views
        self._log_thread = log_thread
        self._views_thread = views_thread
        self._on_fatal = on_fatal
        self.opened_at = time.monotonic()
        #: When a client last attached, detached or was handed this repository.
        self.used_at = self.opened_at
        self.members: set[Member] = set()
        self._locks: dict[str, _LockHolder] = {}
        self.pending_bytes = 0
        self.paused = False
        self._room = asyncio.Event()
        self._room.set()
        self.rate = RateMeter()
        self.flush_latency = LatencyMeter()
        # The two parts of each flush: until its events are durable, then until applied.
        self.flush_sync_latency = LatencyMeter()
        self.flush_apply_latency = LatencyMeter()
        durable = DurableMark(log_.synced_offset)
        self.writer = Writer(
            log_,
            log_thread,
            marks,
            max_wait=settings.group_commit_max_wait,
            durable=durable,
            on_appended=self._appended,
            on_logged=self.rate.add,
            on_dropped=self.release,
            on_fatal=self._fatal,
        )
        self.projector = Projector(
            views,
            views_thread,
            applied_offset=checkpoint,
            durable=durable,
            batch_events=settings.projector_batch_events,
            on_applied=self.release,
            on_fatal=self._fatal,
        )
        self.spool = SpoolWatcher(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # The views' WAL is checkpointed on a thread of its own, off the projector's commits.
        self._checkpoint_thread = ThreadPoolExecutor(
            1, thread_name_prefix=f"trackd-ckpt-{os.path.basename(layout.root) or 'root'}"
        )
        self._checkpointer: WalCheckpointer | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(
        cls, root: Path, settings: DaemonSettings, on_fatal: Callable[[BaseException], None]
    ) -> Repository:
        """Open (creating ``.trackd`` if needed) the repository at ``root`` and start its tasks.

        Log recovery that found corruption is reported at ERROR and serving continues from
        the last good record. Views that lag behind the log are caught up before this returns.

        Raises:
            LogLockedError: another process holds the log.
            AccessDeniedError: the daemon may not create or write the repository's files.
            TrackdError: the log or views cannot be opened.
        """
        layout = RepoLayout(root)
        loop = asyncio.get_running_loop()
        name = os.path.basename(root) or "root"
        log_thread = ThreadPoolExecutor(1, thread_name_prefix=f"trackd-log-{name}")
        views_thread = ThreadPoolExecutor(1, thread_name_prefix=f"trackd-views-{name}")
        elog: EventLog | None = None
        views: SQLiteViews | None = None
        t0 = time.monotonic()
        try:
            await loop.run_in_executor(log_thread, layout.ensure)
            elog = await loop.run_in_executor(
                log_thread,
                partial(
                    EventLog.open,
                    layout.log_dir,
                    segment_size=settings.segment_size,
                    strict=False,
                    quarantine_dir=layout.quarantine_dir,
                ),
            )
            _report_recovery(layout, elog)
            views = await loop.run_in_executor(
                views_thread,
                partial(
                    open_views, layout.dot, elog, progress=_Progress(root), policy=VIEWS_POLICY
                ),
            )
            marks = await loop.run_in_executor(views_thread, views.client_marks)
            checkpoint = await loop.run_in_executor(views_thread, lambda: views.checkpoint)
            # The WAL is checkpointed off the projector's commits (see _checkpoint_loop).
            # Set before the projector takes the views thread for as long as it runs.
            await loop.run_in_executor(views_thread, views.set_autocheckpoint, 0)
        except BaseException as e:
            if views is not None:
                await loop.run_in_executor(views_thread, views.close)
            if elog is not None:
                await loop.run_in_executor(log_thread, elog.close)
            log_thread.shutdown(wait=False)
            views_thread.shutdown(wait=False)
            if isinstance(e, PermissionError):
                raise AccessDeniedError(f"cannot use repository {root}: {e}") from e
            if isinstance(e, OSError):
                raise TrackdError(f"cannot open repository {root}: {e}") from e
            raise
        repo = cls(
            layout, settings, elog, views, marks, checkpoint, log_thread, views_thread, on_fatal
        )
        log.info(
            "opened repository %s: log %d..%d, views at %d, %d clients known, in %.2fs",
            root,
            elog.start_offset,
            elog.end_offset,
            checkpoint,
            len(marks),
            time.monotonic() - t0,
        )
        repo._start()
        return repo

    def _start(self) -> None:
        self._checkpoint_task = asyncio.create_task(
            self._checkpoint_loop(), name=f"checkpoint {self.layout.root}"
        )
        self._tasks = [
            asyncio.create_task(self.writer.run(), name=f"writer {self.layout.root}"),
            asyncio.create_task(self.projector.run(), name=f"projector {self.layout.root}"),
            asyncio.create_task(self.spool.run(), name=f"spool {self.layout.root}"),
        ]

    async def drain(self) -> None:
        """Graceful stop: ingest everything queued, sync, apply, then close log and views.

        The caller has stopped reading from the connections first, so the queues only
        shrink. Pending flushes are answered before this returns.
        """
        if self._closed:
            return
        writer_task, projector_task, spool_task = self._tasks
        await self.spool.stop()
        await _settle(spool_task)
        self.writer.stop()
        await _settle(writer_task)
        self.projector.stop()
        await _settle(projector_task)
        await self._close_files()

    async def abort(self) -> None:
        """Fatal stop: cancel the tasks without draining, then close log and views."""
        if self._closed:
            return
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            await _settle(t)
        await self._close_files()

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the views' WAL every second (SQLite's own, in-commit, is off)."""
        loop = asyncio.get_running_loop()
        self._checkpointer = await loop.run_in_executor(
            self._checkpoint_thread, WalCheckpointer, self.layout.views_db
        )
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await loop.run_in_executor(self._checkpoint_thread, self._checkpointer.run)
            except TrackdError as e:  # views are disposable; the next try may succeed
                log.warning("checkpoint of %s failed: %s", self.layout.views_db, e)

    async def _close_files(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            await _settle(self._checkpoint_task)
        if self._checkpointer is not None:
            await loop.run_in_executor(self._checkpoint_thread, self._checkpointer.close)
        self._checkpoint_thread.shutdown(wait=True)
        try:
            await loop.run_in_executor(self._views_thread, self._views.close)
        except Exception:
            log.exception("closing the views of %s failed", self.layout.root)
        try:
            await loop.run_in_executor(self._log_thread, self._log.close)
        except Exception:
            log.exception("closing the log of %s failed", self.layout.root)
        self._log_thread.shutdown(wait=True)
        self._views_thread.shutdown(wait=True)
        log.info(
            "closed repository %s at offset %d (%d events written, %d duplicates dropped)",
            self.layout.root,
            self.writer.synced_offset,
            self.writer.stats.events,
            self.writer.stats.duplicates,
        )

    def _fatal(self, exc: BaseException) -> None:
        self._on_fatal(exc)

    # -- ingest ----------------------------------------------------------------------------

    def hwm(self, client_id: bytes) -> int:
        """Highest durable client_seq of ``client_id`` (0 when none)."""
        return self.writer.marks.get(client_id, 0)

    def submit(self, batch: Batch) -> None:
        """Queue validated events for the writer, counting them against the budget."""
        self.reserve(batch.nbytes)
        self.writer.submit(batch)

    def flush(self, on_applied: Callable[[int], None] | None = None) -> asyncio.Future[int]:
        """Queue a flush barrier behind everything queued so far.

        Args:
            on_applied: Called with the offset as soon as the barrier is answered (see
                :class:`~trackd.daemon.writer.Barrier`); failures only resolve the future.

        Returns:
            A future resolved with the log offset once everything before it is durable and
            applied to the views.
        """
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()

        def applied(offset: int) -> None:
            now = time.perf_counter()
            self.flush_latency.add(now - t0)
            self.flush_sync_latency.add(barrier.synced_at - t0)
            self.flush_apply_latency.add(now - barrier.synced_at)
            if on_applied is not None:
                on_applied(offset)

        barrier = Barrier(fut, on_applied=applied)
        self.writer.submit(barrier)
        return fut

    def _appended(
        self, events: list[LoggedEvent], nbytes: int, barriers: list[tuple[int, Barrier]]
    ) -> None:
        # On the log thread (see Writer's on_appended): only the thread-safe submit.
        self.projector.submit(events, nbytes, barriers)

    # -- memory budget ---------------------------------------------------------------------

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` of received events as pending; pause reading above the mark."""
        self.pending_bytes += nbytes
        if not self.paused and self.pending_bytes > self.settings.max_pending_bytes:
            self.paused = True
            self._room.clear()
            log.info(
                "%s: %d MiB pending; pausing %d connections",
                self.layout.root,
                self.pending_bytes >> 20,
                len(self.members),
            )
            for m in self.members:
                m.set_backpressure(True)

    def release(self, nbytes: int) -> None:
        """Bytes that left memory (applied, or dropped as duplicates); resume below the mark."""
        self.pending_bytes -= nbytes
        if self.paused and self.pending_bytes < self.settings.low_water_bytes:
            self.paused = False
            self._room.set()
            log.info("%s: pending below the low mark; resuming reads", self.layout.root)
            for m in self.members:
                m.set_backpressure(False)

    async def wait_for_room(self) -> None:
        """Wait while the pending budget is exhausted (used by the spool ingest)."""
        await self._room.wait()

    # -- connections and locks -------------------------------------------------------------

    def attach(self, member: Member) -> None:
        """A connection said Hello for this repository."""
        self.members.add(member)
        self.used_at = time.monotonic()
        if self.paused:
            member.set_backpressure(True)

    def detach(self, member: Member) -> None:
        """A connection closed: forget it and release every lock it held."""
        self.members.discard(member)
        self.used_at = time.monotonic()
        freed = [c for c, h in self._locks.items() if h.member is member]
        for c in freed:
            del self._locks[c]
        if freed:
            log.info(
                "%s: released %d container locks of closed connection (pid %d)",
                self.layout.root,
                len(freed),
                member.peer_pid,
            )

    def open_container(self, container: str, member: Member) -> None:
        """Take the write lock of ``container`` for ``member`` (idempotent for the holder).

        A new connection of the client that holds the lock takes it over.

        Raises:
            LockedError: another live connection holds it; the message names its pid.
        """
        holder = self._locks.get(container)
        if holder is not None and holder.member is not member:
            if holder.member.client_id == member.client_id:
                # The same client reconnected (it gave up a connection the daemon had not
                # read for a while); its old connection is dead to it, so the lock moves.
                holder.member = member
                return
            raise LockedError(
                f"container {container!r} is locked by another live client (pid "
                f"{holder.member.peer_pid}) since {time.ctime(holder.since)}"
            )
        if holder is None:
            self._locks[container] = _LockHolder(member, time.time())

    def close_container(self, container: str, member: Member) -> bool:
        """Release ``member``'s lock on ``container``; False when it did not hold it."""
        holder = self._locks.get(container)
        if holder is None or holder.member is not member:
            return False
        del self._locks[container]
        return True

    def idle_for(self, now: float) -> float:
        """Seconds since a client last used this repository, when none is attached and
        nothing is left to write or apply; 0 while it is in use or busy."""
        if (
            self.members
            or self.pending_bytes
            or self.writer.queued
            or self.projector.queued_events
            or self.writer.synced_offset != self.projector.applied_offset
        ):
            return 0.0
        return max(0.0, now - self.used_at)

    # -- status ----------------------------------------------------------------------------

    def update_settings(self, settings: DaemonSettings) -> None:
        """SIGHUP: take the runtime-changeable tunables (group commit wait, memory budget)."""
        self.settings = settings
        self.writer.set_max_wait(settings.group_commit_max_wait)
        # A lower budget takes effect at the next reserve(); a higher one may free readers now.
        self.release(0)

    def writer_alive(self) -> bool:
        """True while the writer task runs (systemd's watchdog pings only then)."""
        return bool(self._tasks) and not self._tasks[0].done()

    def status(self) -> dict[str, Any]:
        """This repository's part of the daemon status map."""
        w, p = self.writer, self.projector
        return {
            "path": str(self.layout.root),
            "end_offset": w.end_offset,
            "synced_offset": w.synced_offset,
            "applied_offset": p.applied_offset,
            "lag_bytes": max(0, w.synced_offset - p.applied_offset),
            "lag_events": p.queued_events,
            "clients": len(self.members),
            "locks": len(self._locks),
            "pending_bytes": self.pending_bytes,
            "paused": self.paused,
            "events_written": w.stats.events,
            "duplicates_dropped": w.stats.duplicates,
            "groups_synced": w.stats.groups,
            "events_per_s": round(self.rate.rate(), 1),
            "spool_files_ingested": self.spool.ingested_files,
            "sync_seconds": round(w.stats.sync_seconds, 3),
            "apply_seconds": round(p.apply_seconds, 3),
            "flush_ms": self.flush_latency.summary(),
            "flush_sync_ms": self.flush_sync_latency.summary(),
            "flush_apply_ms": self.flush_apply_latency.summary(),
        }


class _Progress:
    """Logs how far a views rebuild or catch-up got, at most every few seconds."""

    def __init__(self, root: Path, every: float = 5.0) -> None:
        self._root = root
        self._every = every
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            log.info(
                "%s: bringing the views up to date: %d of %d log bytes (%.0f%%)",
                self._root,
                done,
                total,
                100.0 * done / max(total, 1),
            )


def _report_recovery(layout: RepoLayout, elog: EventLog) -> None:
    """Say what log recovery found: corruption at ERROR (serving continues), a cut tail at
    WARNING, nothing for a clean log."""
    report = elog.recovery
    if report.corruption is not None:
        log.error(
            "log of %s is corrupted; serving on from the last good record at %d: %s",
            layout.root,
            report.corruption.offset,
            report.corruption.message,
        )
    if report.torn_tail is not None:
        t = report.torn_tail
        log.warning(
            "log of %s had a torn tail (a crash cut a write short): cut %d bytes at %d (%s)",
            layout.root,
            t.bytes_cut,
            t.offset,
            t.reason,
        )


async def _settle(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.exception("task %s failed", task.get_name())
