"""The projector of one repository: applies synced events to the SQLite views.

Owns: :class:`Projector`, the task that feeds :meth:`SQLiteViews.apply` in large batches on
the repository's views thread (SQLite connections are bound to the thread that made them),
advances the applied offset, and answers flush barriers. Imports ``trackd.views`` and
``trackd.eventlog`` event types; never the log itself: it gets the decoded events the writer
already holds, so nothing is read back from disk.
"""

from __future__ import annotations

import asyncio
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

_Item = tuple[list[LoggedEvent], int, list[Barrier]] | _Stop


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

    def submit(self, events: list[LoggedEvent], nbytes: int, barriers: list[Barrier]) -> None:
        """Queue durable events (and the flush barriers that follow them) for the views."""
        if self.failed is not None:
            for b in barriers:
                if not b.future.done():
                    b.future.set_exception(self.failed)
            return
        self.queued_events += len(events)
        self._queue.put_nowait((events, nbytes, barriers))

    def stop(self) -> None:
        """Queue the end: everything submitted before is applied, then :meth:`run` returns."""
        self._queue.put_nowait(_STOP)

    async def run(self) -> None:
        """Apply until :meth:`stop` is reached or the views fail."""
        queue = self._queue
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            events: list[LoggedEvent] = []
            nbytes = 0
            barriers: list[Barrier] = []
            stop = False
            for item in items:
                if isinstance(item, _Stop):
                    stop = True
                    continue
                events.extend(item[0])
                nbytes += item[1]
                barriers.extend(item[2])
            try:
                await self._apply(events)
            except Exception as e:
                self.failed = e
                for b in barriers:
                    if not b.future.done():
                        b.future.set_exception(e)
                self._fail_queued(e)
                self._on_fatal(e)
                return
            if nbytes:
                self._on_applied(nbytes)
            for b in barriers:
                if not b.future.done():
                    b.future.set_result(b.offset)
            if stop:
                return

    async def _apply(self, events: list[LoggedEvent]) -> None:
        loop = asyncio.get_running_loop()
        step = self._batch
        for start in range(0, len(events), step):
            chunk = events[start : start + step]
            t0 = time.perf_counter()
            await loop.run_in_executor(self._thread, self._views.apply, chunk)
            elapsed = time.perf_counter() - t0
            self.apply_seconds += elapsed
            log.debug(
                "applied %d events up to %d in %.1f ms", len(chunk), chunk[-1].end, elapsed * 1e3
            )
            self.applied_offset = chunk[-1].end
            self.queued_events -= len(chunk)
            self.applied_events += len(chunk)

    def _fail_queued(self, exc: BaseException) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _Stop):
                for b in item[2]:
                    if not b.future.done():
                        b.future.set_exception(exc)
