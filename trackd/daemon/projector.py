"""The projector of one repository: applies appended events to the SQLite views, committing
only what the log has made durable.

Owns: :class:`Projector`, the loop that adds events to views transactions
(:meth:`SQLiteViews.begin`) and commits them in large batches on the repository's views
thread (SQLite connections are used by one thread at a time), advances the applied offset,
and answers flush barriers. Imports ``trackd.views`` and ``trackd.eventlog`` event types;
never the log itself: it gets the decoded events the writer already holds, so nothing is
read back from disk.

The projector's loop runs on the views thread itself, for as long as the repository is
open, and takes its input from a thread-safe queue: the log thread hands it each group the
moment it is appended, before its fdatasync, and the views thread answers flush barriers
with one ``call_soon_threadsafe`` that sends the replies. A flush so passes through the
event loop once on its way back instead of three times (writer task, projector task,
reply), each of which waited behind whatever else the loop had to do under load.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Final

from trackd.daemon.writer import Barrier, DurableMark, run_on_thread
from trackd.eventlog.events import LoggedEvent
from trackd.views import SQLiteViews, Transaction

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
        views: The open views; only ever called on ``views_thread``, which :meth:`run`
            occupies until the projector stops.
        views_thread: A single-thread executor that owns the SQLite connection.
        applied_offset: The views' checkpoint when the projector starts.
        batch_events: Most events per :meth:`SQLiteViews.apply` call (one transaction).
        on_applied: Called on the loop with the pending bytes that left memory.
        on_fatal: Called once on the loop when applying fails; the projector stops
            applying afterwards and fails every flush that waits or comes.
        durable: How far the log is durable: a transaction commits only once it covers
            the transaction's last event (None: everything submitted is durable already).
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
        durable: DurableMark | None = None,
    ) -> None:
        self._views = views
        self._durable = durable
        self._thread = views_thread
        self._batch = batch_events
        self._on_applied = on_applied
        self._on_fatal = on_fatal
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by abort(): the views thread stops at the next item, applying nothing more.
        self._abort = False
        self.applied_offset = applied_offset
        # Written by the submitting thread (the log thread, or the loop for groups without
        # events, never both at once) and by the views thread respectively.
        self.submitted_events = 0
        self.applied_events = 0
        self.apply_seconds = 0.0
        self.failed: BaseException | None = None

    @property
    def queued_events(self) -> int:
        """Events submitted and not applied yet."""
        return self.submitted_events - self.applied_events

    def submit(
        self, events: list[LoggedEvent], nbytes: int, barriers: list[tuple[int, Barrier]]
    ) -> None:
        """Queue appended events for the views, with the flush barriers among them.

        Safe from any thread; the writer calls it on the log thread, right after appending
        and before the sync. They are applied at once, but committed only once the durable
        mark covers them.

        Args:
            events: Appended events, in log order.
            nbytes: Pending bytes they hold (released once they are applied).
            barriers: Each barrier with the number of ``events`` queued before it: it is
                answered once those (and everything submitted earlier) are applied.
        """
        self.submitted_events += len(events)
        self._queue.put((events, nbytes, barriers))

    def stop(self) -> None:
        """Queue the end: everything submitted before is applied, then :meth:`run` returns."""
        self._queue.put(_STOP)

    async def run(self) -> None:
        """Apply on the views thread until :meth:`stop` is reached or the views fail.

        Cancelling it (a fatal stop) makes the views thread stop at once, applying nothing
        more, and still waits for it to let go of the views.
        """
        self._loop = asyncio.get_running_loop()
        await run_on_thread(self._thread, self._main, self._cancel)

    def _cancel(self) -> None:
        self._abort = True
        self._queue.put(_STOP)
        if self._durable is not None:  # a transaction waiting for a sync rolls back
            self._durable.fail(RuntimeError("the repository is closing"))

    # -- on the views thread ---------------------------------------------------------------

    def _main(self) -> None:
        """Apply in order, in transactions of at most ``batch_events`` events and
        :data:`MAX_APPLY_POINTS` points.

        Events go into an open transaction as they arrive, which does the work of applying
        them then; it commits once a flush barrier waits for what it holds, once it is full,
        or :data:`APPLY_INTERVAL` after it took its first events. A transaction never takes
        an event queued behind a waiting barrier, so each barrier is answered as soon as
        what was submitted before it is applied, not after whatever was submitted behind it;
        and what a barrier waits for is mostly applied already when it arrives.
        """
        q = self._queue
        pending: collections.deque[LoggedEvent] = collections.deque()
        # (events submitted before it, barrier) and (events submitted up to it, bytes)
        waits: collections.deque[tuple[int, Barrier]] = collections.deque()
        releases: collections.deque[tuple[int, int]] = collections.deque()
        submitted = applied = 0
        stop = False
        # The open transaction: the events and points it holds, when it took the first.
        txn: Transaction | None = None
        held = held_points = last_end = 0
        opened = 0.0

        def take(item: _Item) -> None:
            nonlocal submitted, stop
            if isinstance(item, _Stop):
                stop = True
                return
            events, nbytes, barriers = item
            waits.extend((submitted + before, b) for before, b in barriers)
            pending.extend(events)
            submitted += len(events)
            if nbytes:
                releases.append((submitted, nbytes))

        def fail(e: Exception) -> None:
            nonlocal txn, held, held_points
            log.error("applying to the views failed: %s", e)
            self.failed = e
            self._post_failure(waits)
            self._post_fatal(e)
            pending.clear()
            txn, held, held_points = None, 0, 0

        try:
            while not self._abort:
                if not pending and not stop:
                    if txn is None:
                        take(q.get())
                    elif (wait := opened + APPLY_INTERVAL - time.monotonic()) > 0:
                        # Nobody waits for the open transaction yet: gather more into it.
                        # A commit costs the views about 1.5 ms whatever it holds (the WAL
                        # pages of the tables it touches), so fewer, larger ones leave more
                        # CPU to ingest.
                        try:
                            take(q.get(timeout=wait))
                        except queue.Empty:
                            pass
                while not stop:
                    try:
                        take(q.get_nowait())
                    except queue.Empty:
                        break
                if self._abort:  # cancelled: an open transaction rolls back (below)
                    return
                if self.failed is not None:  # every flush that waits or comes gets the error
                    self._post_failure(waits)
                    pending.clear()
                    if stop:
                        return
                    continue
                if answered := _answered(waits, applied):
                    self._post(answered, 0)
                # Add what may go into the open transaction: up to the first waiting
                # barrier, within the transaction's bounds.
                full = False
                if pending:
                    limit = waits[0][0] - applied - held if waits else len(pending)
                    limit = min(limit, self._batch - held)
                    if limit > 0:
                        chunk, points = _take_events(
                            pending, limit, MAX_APPLY_POINTS - held_points, first=not held
                        )
                        # Something that could go in does not fit: commit, then go on.
                        full = len(chunk) < limit and bool(pending)
                        if chunk:
                            t0 = time.perf_counter()
                            try:
                                if txn is None:
                                    txn = self._views.begin()
                                    opened = time.monotonic()
                                txn.add(chunk)
                            except Exception as e:
                                fail(e)
                                continue
                            finally:
                                self.apply_seconds += time.perf_counter() - t0
                            held += len(chunk)
                            held_points += points
                            last_end = chunk[-1].end
                    full = full or held >= self._batch
                if txn is None:
                    if stop and not pending:
                        return
                    continue
                due = (
                    full
                    or stop
                    or bool(waits and waits[0][0] <= applied + held)
                    or time.monotonic() >= opened + APPLY_INTERVAL
                )
                if not due:
                    continue
                t0 = time.perf_counter()
                try:
                    self._commit(txn, last_end)
                except Exception as e:
                    if self._abort:  # a transaction waiting for its sync, rolled back
                        return
                    fail(e)
                    continue
                finally:
                    self.apply_seconds += time.perf_counter() - t0
                self.applied_offset = last_end
                self.applied_events += held
                applied += held
                txn, held, held_points = None, 0, 0
                freed = 0
                while releases and releases[0][0] <= applied:
                    freed += releases.popleft()[1]
                answered = _answered(waits, applied)
                if answered or freed:
                    self._post(answered, freed)
        finally:
            if txn is not None:
                txn.rollback()

    def _commit(self, txn: Transaction, end: int) -> None:
        """Commit once the log is durable past ``end``, the transaction's last event."""
        durable = self._durable
        if durable is None:
            txn.commit()
        else:
            txn.commit(before_commit=lambda: durable.wait(end))
        log.debug("applied events up to %d", end)

    def _post(self, answered: list[Barrier], freed: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, answered, freed)

    def _post_failure(self, waits: collections.deque[tuple[int, Barrier]]) -> None:
        if waits:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_fail, [b for _n, b in waits], self.failed)
            waits.clear()

    def _post_fatal(self, exc: BaseException) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_fatal, exc)

    # -- on the event loop -----------------------------------------------------------------

    def _deliver(self, answered: list[Barrier], freed: int) -> None:
        """Answer the barriers (their replies go out from here) and release memory."""
        for b in answered:
            if not b.future.done():
                b.future.set_result(b.offset)
                if b.on_applied is not None:
                    b.on_applied(b.offset)
        if freed:
            self._on_applied(freed)


def _take_events(
    pending: collections.deque[LoggedEvent], limit: int, room: int, *, first: bool
) -> tuple[list[LoggedEvent], int]:
    """Take up to ``limit`` events holding at most ``room`` points from ``pending``, and
    count their points; with ``first`` (an empty transaction) at least one, whatever it
    holds."""
    chunk: list[LoggedEvent] = []
    points = 0
    while pending and len(chunk) < limit:
        n = getattr(pending[0].event, "count", 0)
        if points + n > room and not (first and not chunk):
            break
        points += n
        chunk.append(pending.popleft())
    return chunk, points


def _answered(waits: collections.deque[tuple[int, Barrier]], applied: int) -> list[Barrier]:
    """Take the barriers whose preceding events are all applied."""
    out = []
    while waits and waits[0][0] <= applied:
        out.append(waits.popleft()[1])
    return out


def _fail(barriers: list[Barrier], exc: BaseException | None) -> None:
    for b in barriers:
        if not b.future.done():
            b.future.set_exception(exc or RuntimeError("the views failed"))
