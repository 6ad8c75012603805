"""The projector of one repository: applies synced events to the SQLite views.

Owns: :class:`Projector`, the task that feeds :meth:`SQLiteViews.apply` in large batches on
the repository's views thread (SQLite connections are bound to the thread that made them),
advances the applied offset, and answers flush barriers. Imports ``trackd.views`` and
``trackd.eventlog`` event types; never the log itself: it gets the decoded events the writer
already holds, so nothing is read back from disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Final

from trackd.daemon.writer import Barrier
from trackd.eventlog.events import LoggedEvent
from trackd.views import SQLiteViews

__all__ = ["Projector"]

log = logging.getLogger("trackd.daemon.projector")


class _Stop:
    """Queue sentinel: apply everything before it, then return."""


_STOP: Final = _Stop()

#: Most points applied in one transaction. A flush barrier that arrives while a transaction
#: runs waits for it; bounding it keeps that wait short (about 10 ms here) while a backlog
#: is still applied in large transactions.
MAX_APPLY_POINTS: Final = 65_536
#: Least time between the starts of two transactions while no flush barrier waits. Every
#: producer sends every 50 ms, so under load this gathers several producers' batches into
#: one transaction (a third as many commits in bench/ingest.py), while the views follow
#: the log within 25 ms and a flush never waits for it.
APPLY_INTERVAL: Final = 0.025

_Item = tuple[list[LoggedEvent], int, list[tuple[int, Barrier]]] | _Stop


class Projector:
    """Applies what the writer made durable, in order, in transactions of many events.

    Args:
        views: The open views; only ever called on ``views_thread``.
        views_thread: A single-thread executor that owns the SQLite connection.
        applied_offset: The views' checkpoint when the projector starts.
        batch_events: Most events per :meth:`SQLiteViews.apply` call (one transaction).
        on_applied: Called on the loop with the pending bytes that left memory.
        on_fatal: Called once when applying fails; the projector stops afterwards.
    """

    def __init__(
        self,
        views: SQLiteViews,
        views_thread: Executor,
        *,
        applied_offset: int,
        batch_events: int,
        on_applied: Callable[[int], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._views = views
        self._thread = views_thread
        self._batch = batch_events
        self._on_applied = on_applied
        self._on_fatal = on_fatal
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.applied_offset = applied_offset
        self.queued_events = 0
        self.applied_events = 0
        self.apply_seconds = 0.0
        self.failed: BaseException | None = None

    def submit(
        self, events: list[LoggedEvent], nbytes: int, barriers: list[tuple[int, Barrier]]
    ) -> None:
        """Queue durable events for the views, with the flush barriers among them.

        Args:
            events: Durable events, in log order.
            nbytes: Pending bytes they hold (released once they are applied).
            barriers: Each barrier with the number of ``events`` queued before it: it is
                answered once those (and everything submitted earlier) are applied.
        """
        if self.failed is not None:
            for _n, b in barriers:
                if not b.future.done():
                    b.future.set_exception(self.failed)
            return
        self.queued_events += len(events)
        self._queue.put_nowait((events, nbytes, barriers))

    def stop(self) -> None:
        """Queue the end: everything submitted before is applied, then :meth:`run` returns."""
        self._queue.put_nowait(_STOP)

    async def run(self) -> None:
        """Apply until :meth:`stop` is reached or the views fail.

        Events are applied in order, in transactions of at most ``batch_events`` events and
        :data:`MAX_APPLY_POINTS` points, and a transaction never runs past a waiting flush
        barrier: each barrier is answered as soon as everything submitted before it is
        applied, not after whatever was submitted behind it.
        """
        queue = self._queue
        pending: collections.deque[LoggedEvent] = collections.deque()
        # (events submitted before it, barrier) and (events submitted up to it, bytes)
        waits: collections.deque[tuple[int, Barrier]] = collections.deque()
        releases: collections.deque[tuple[int, int]] = collections.deque()
        submitted = applied = pending_points = 0
        stop = False
        loop = asyncio.get_running_loop()
        last_apply = -APPLY_INTERVAL

        def take(item: _Item) -> None:
            nonlocal submitted, stop, pending_points
            if isinstance(item, _Stop):
                stop = True
                return
            events, nbytes, barriers = item
            waits.extend((submitted + before, b) for before, b in barriers)
            pending.extend(events)
            pending_points += sum(getattr(le.event, "count", 0) for le in events)
            submitted += len(events)
            if nbytes:
                releases.append((submitted, nbytes))

        while True:
            if not pending and not stop:
                take(await queue.get())
            while not queue.empty():
                take(queue.get_nowait())
            self._answer(waits, applied)
            if not pending:
                if stop:
                    return
                continue
            wait = last_apply + APPLY_INTERVAL - loop.time()
            if wait > 0 and not waits and not stop and pending_points < MAX_APPLY_POINTS:
                # Nobody waits for these yet: gather more into the same transaction. Each
                # commit costs the views about 1.5 ms whatever it holds (the WAL pages of
                # the tables it touches), so fewer, larger ones leave more CPU to ingest.
                with contextlib.suppress(TimeoutError):
                    take(await asyncio.wait_for(queue.get(), wait))
                continue
            chunk, points = self._next_chunk(
                pending, waits[0][0] - applied if waits else len(pending)
            )
            pending_points -= points
            last_apply = loop.time()
            try:
                await self._apply(chunk)
            except Exception as e:
                self.failed = e
                for _n, b in waits:
                    if not b.future.done():
                        b.future.set_exception(e)
                self._fail_queued(e)
                self._on_fatal(e)
                return
            applied += len(chunk)
            self._answer(waits, applied)
            freed = 0
            while releases and releases[0][0] <= applied:
                freed += releases.popleft()[1]
            if freed:
                self._on_applied(freed)

    @staticmethod
    def _answer(waits: collections.deque[tuple[int, Barrier]], applied: int) -> None:
        """Resolve the barriers whose preceding events are all applied."""
        while waits and waits[0][0] <= applied:
            _n, b = waits.popleft()
            if not b.future.done():
                b.future.set_result(b.offset)
                if b.on_applied is not None:
                    b.on_applied(b.offset)

    def _next_chunk(
        self, pending: collections.deque[LoggedEvent], limit: int
    ) -> tuple[list[LoggedEvent], int]:
        """Take the events of the next transaction, and count their points: at most
        ``limit`` events (up to the next barrier) within the batch bounds, at least one."""
        limit = max(1, min(limit, self._batch))
        chunk = [pending.popleft()]
        points = getattr(chunk[0].event, "count", 0)
        while pending and len(chunk) < limit:
            n = getattr(pending[0].event, "count", 0)
            if points + n > MAX_APPLY_POINTS:
                break
            points += n
            chunk.append(pending.popleft())
        return chunk, points

    async def _apply(self, chunk: list[LoggedEvent]) -> None:
        """Apply one transaction on the views thread."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await loop.run_in_executor(self._thread, self._views.apply, chunk)
        elapsed = time.perf_counter() - t0
        self.apply_seconds += elapsed
        log.debug("applied %d events up to %d in %.1f ms", len(chunk), chunk[-1].end, elapsed * 1e3)
        self.applied_offset = chunk[-1].end
        self.queued_events -= len(chunk)
        self.applied_events += len(chunk)

    def _fail_queued(self, exc: BaseException) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _Stop):
                for _n, b in item[2]:
                    if not b.future.done():
                        b.future.set_exception(exc)
