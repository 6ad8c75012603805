"""The single writer of one repository: dedupe, append, group commit, ack.

Owns: :class:`Writer`, the only code that appends to a repository's :class:`EventLog`, and
the queue items it consumes (:class:`Batch`, :class:`Barrier`). Imports ``trackd.eventlog``
and asyncio; never sockets (acks go out through :class:`AckSink`).

Group commit: the writer's loop runs on the repository's log thread for as long as the
repository is open. It takes everything queued, drops duplicates against the high-water
marks, appends and fdatasyncs, hands the group to the projector, and posts the acks to the
event loop in one callback. While a sync runs the event loop keeps reading sockets and
queueing; the next turn takes all of it at once, without a pass through the event loop in
between. So one fdatasync covers as many events as arrived during the previous one, and an
idle daemon syncs at once. The log is touched by that one thread only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Final, Protocol

from trackd.eventlog.events import Event, LoggedEvent
from trackd.eventlog.log import EventLog
from trackd.eventlog.record import RECORD_HEADER_SIZE

__all__ = [
    "EVENT_OVERHEAD",
    "AckSink",
    "Barrier",
    "Batch",
    "DurableMark",
    "Writer",
    "memory_cost",
    "run_on_thread",
]

log = logging.getLogger("trackd.daemon.writer")


#: Bytes of Python objects around one decoded event held in memory (the event dataclass, its
#: bytes and dict fields, the LoggedEvent wrapper, list slots). Measured with tracemalloc at
#: about 540 bytes for a one-point SequenceAppended beyond its payload.
EVENT_OVERHEAD: Final = 512


def memory_cost(payload: bytes) -> int:
    """What one received event costs in memory until it is applied, for the pending budget.

    The encoded payload is held until the log has it, and the decoded event (whose byte
    fields are copies of the payload's) until the views have applied it: so twice the
    payload plus the objects around it. For small events the objects dominate, which is
    why counting wire bytes alone would let memory grow several times past the budget.
    """
    return 2 * len(payload) + EVENT_OVERHEAD


class AckSink(Protocol):
    """Whoever sent a batch and wants to hear when it is durable (a session)."""

    def on_durable(self, seq: int) -> None:
        """Every event of this sink up to client_seq ``seq`` is durable."""


@dataclass(slots=True, eq=False)
class Batch:
    """Validated events to append, in client_seq order, with their encoded payloads.

    Attributes:
        events: The decoded events (handed to the projector after the sync).
        payloads: The exact bytes written to the log, one per event.
        nbytes: Bytes counted against the repository's pending budget
            (:func:`memory_cost` of each payload).
        sink: Who gets the cumulative ack (None for spool ingest).
        done: Resolved with the synced end offset once the batch is durable.
    """

    events: list[Event]
    payloads: list[bytes]
    nbytes: int
    sink: AckSink | None = None
    done: asyncio.Future[int] | None = None


@dataclass(slots=True, eq=False)
class Barrier:
    """A flush: resolved with ``offset`` once everything queued before it is applied.

    Attributes:
        future: Resolved (by the projector) with the log offset that is durable and applied.
        offset: The end of the last event logged before the barrier (set by the writer once
            that is durable): everything before it is durable and, once answered, applied.
        on_applied: Called with that offset the moment the projector answers the barrier,
            before the future's callbacks (which run one loop iteration later, behind
            whatever else is ready then): a reply sent from here reaches the client sooner.
        synced_at: ``time.perf_counter()`` when the writer was back from the sync that made
            everything before the barrier durable (the split of ``status``'s flush time).
    """

    future: asyncio.Future[int]
    offset: int = 0
    on_applied: Callable[[int], None] | None = None
    synced_at: float = 0.0


class DurableMark:
    """How far the log is durable, shared by the log thread and the views thread.

    The writer hands each group to the projector as soon as it is appended, so that the
    views apply it while the fdatasync runs; the projector then commits a transaction only
    once :meth:`wait` says the log is durable past its last event. Projections so never run
    ahead of the synced log.

    Args:
        offset: The durable end of the log to start from.
    """

    def __init__(self, offset: int) -> None:
        self._offset = offset
        self._failed: BaseException | None = None
        self._cond = threading.Condition(threading.Lock())

    @property
    def offset(self) -> int:
        """The log is durable up to here."""
        return self._offset

    def advance(self, offset: int) -> None:
        """The log is durable up to ``offset`` (on the log thread, after a sync)."""
        with self._cond:
            if offset > self._offset:
                self._offset = offset
                self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Nothing more becomes durable: every waiter, now or later, gets ``exc``."""
        with self._cond:
            if self._failed is None:
                self._failed = exc
            self._cond.notify_all()

    def wait(self, offset: int) -> None:
        """Block until the log is durable up to ``offset``.

        Raises:
            BaseException: what :meth:`fail` was given, if the log failed first.
        """
        with self._cond:
            while self._offset < offset:
                if self._failed is not None:
                    raise self._failed
                self._cond.wait()


class _Stop:
    """Queue sentinel: finish everything before it, then return."""


STOP: Final = _Stop()

_Item = Batch | Barrier | _Stop


@dataclass(slots=True)
class WriterStats:
    """Counters for status and logs."""

    groups: int = 0
    events: int = 0
    duplicates: int = 0
    bytes: int = 0
    sync_seconds: float = 0.0


class Writer:
    """Consumes one repository's queue; the single task that appends to its log.

    Args:
        log: The open event log. Only ever called on ``log_thread``.
        log_thread: A single-thread executor dedicated to this log.
        marks: Highest durable client_seq per client id; updated after each sync.
        max_wait: Seconds to wait for more events after the first of a group.
        durable: Advanced after each sync; the projector commits only what it covers.
        on_appended: Called on the log thread with each group's logged events, their
            pending bytes, and the group's barriers, each with the number of those events
            queued before it (the projector's input): as soon as the group is appended,
            before its fdatasync (see :class:`DurableMark`), or at once for a group that
            logged nothing. It must be thread-safe.
        on_logged: Called on the loop with the number of events each group logged.
        on_dropped: Called on the loop with bytes of duplicates that never go to the
            projector.
        on_fatal: Called once on the loop when the log fails; the writer stops afterwards.
    """

    def __init__(
        self,
        log: EventLog,
        log_thread: Executor,
        marks: dict[bytes, int],
        *,
        max_wait: float,
        durable: DurableMark,
        on_appended: Callable[[list[LoggedEvent], int, list[tuple[int, Barrier]]], None],
        on_logged: Callable[[int], None] = lambda n: None,
        on_dropped: Callable[[int], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._log = log
        self._thread = log_thread
        self.marks = marks
        # Marks of everything appended, durable or not: the dedupe reference. Ahead of
        # ``marks`` only while a sync runs.
        self._appended = dict(marks)
        self._max_wait = max_wait
        self._mark = durable
        self._on_appended = on_appended
        self._on_logged = on_logged
        self._on_dropped = on_dropped
        self._on_fatal = on_fatal
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when run() is cancelled (a fatal stop): the log thread stops at the next turn.
        self._abort = False
        self.synced_offset: int = log.synced_offset
        self.end_offset: int = log.end_offset
        self.stats = WriterStats()
        self.failed: BaseException | None = None

    def submit(self, item: Batch | Barrier) -> None:
        """Queue a batch or a barrier behind everything queued before (on the loop)."""
        if self.failed is not None:
            if item_future := _future_of(item):
                item_future.set_exception(self.failed)
            return
        self._queue.put(item)

    def stop(self) -> None:
        """Queue the end: the writer finishes what was queued before, then :meth:`run` returns."""
        self._queue.put(STOP)

    @property
    def queued(self) -> int:
        """Items waiting in the queue."""
        return self._queue.qsize()

    def set_max_wait(self, seconds: float) -> None:
        """Change the group-commit wait (SIGHUP reload); the next group uses it."""
        self._max_wait = seconds

    async def run(self) -> None:
        """Write groups on the log thread until :meth:`stop` is reached or the log fails.

        Cancelling it (a fatal stop) makes the log thread stop after the group it is
        writing, and still waits for it to let go of the log.
        """
        self._loop = asyncio.get_running_loop()
        await run_on_thread(self._thread, self._main, self._cancel)

    def _cancel(self) -> None:
        self._abort = True
        self._queue.put(STOP)

    # -- on the log thread -----------------------------------------------------------------

    def _main(self) -> None:
        q = self._queue
        while not self._abort:
            items = [q.get()]
            if self._max_wait > 0 and not isinstance(items[0], _Stop):
                time.sleep(self._max_wait)
            while True:
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            work = [i for i in items if not isinstance(i, _Stop)]
            try:
                self._commit(work)
            except Exception as e:
                log.error("writing to the log failed: %s", e)
                self.failed = e
                self._mark.fail(e)
                while True:
                    try:
                        items.append(q.get_nowait())
                    except queue.Empty:
                        break
                self._post(self._fail, [i for i in items if not isinstance(i, _Stop)], e)
                return
            if len(work) < len(items):  # STOP was among them
                return

    def _commit(self, items: Sequence[Batch | Barrier]) -> None:
        appended = self._appended
        payloads: list[bytes] = []
        events: list[Event] = []
        new_bytes = 0
        dup_bytes = 0
        dups = 0
        acks: dict[AckSink, int] = {}
        group_marks: dict[bytes, int] = {}
        batches: list[Batch] = []
        # A barrier waits for the events queued before it, not for those that arrived
        # behind it while the previous group synced (another producer's batch of thousands
        # of points would otherwise be applied before the flush is answered).
        barriers: list[tuple[int, Barrier]] = []
        for item in items:
            if isinstance(item, Barrier):
                barriers.append((len(events), item))
                continue
            batches.append(item)
            share = item.nbytes // max(1, len(item.events))
            for payload, event in zip(item.payloads, item.events, strict=True):
                cid, seq = event.client_id, event.client_seq
                if seq <= appended.get(cid, 0):
                    dups += 1
                    dup_bytes += share
                else:
                    appended[cid] = seq
                    group_marks[cid] = seq
                    payloads.append(payload)
                    events.append(event)
                    new_bytes += share
            # Rounding of the per-event share: keep the accounting exact.
            rest = item.nbytes - share * len(item.events)
            new_bytes += rest
            if item.sink is not None and item.events:
                last = item.events[-1].client_seq
                if last > acks.get(item.sink, 0):
                    acks[item.sink] = last
            item.payloads = []  # the bytes are no longer needed once handed to the log
        before_group = self.synced_offset
        if payloads:
            t0 = time.perf_counter()
            offsets = self._log.append(payloads)
            end = self.end_offset = self._log.end_offset
            # A record ends after its header and payload; the next one may start later,
            # after the header of a new segment file.
            logged = [
                LoggedEvent(o, o + RECORD_HEADER_SIZE + len(p), ev)
                for o, p, ev in zip(offsets, payloads, events, strict=True)
            ]
            now = time.perf_counter()
            for before, barrier in barriers:
                if before:
                    barrier.offset = logged[before - 1].end
                else:  # nothing of this group before it: durable already
                    barrier.offset, barrier.synced_at = before_group, now
            # The views apply while the fdatasync runs; they commit once it returned.
            self._on_appended(logged, new_bytes, barriers)
            try:
                self._log.sync()
            except BaseException as e:
                self._mark.fail(e)
                raise
            synced_at = time.perf_counter()
            for before, barrier in barriers:
                if before:
                    barrier.synced_at = synced_at
            self.synced_offset = end
            # The acks are queued on the loop before the views may commit (and answer a
            # flush): a client hears of its events' durability before a flush reply.
            self._post_durable(group_marks, acks, batches, dup_bytes, len(events))
            self._mark.advance(end)
            self.stats.sync_seconds += synced_at - t0
            self.stats.groups += 1
            self.stats.events += len(events)
            self.stats.bytes += new_bytes
            log.debug(
                "group of %d events (%d duplicates) synced to %d in %.1f ms",
                len(events),
                dups,
                end,
                (synced_at - t0) * 1e3,
            )
        else:
            # Nothing new to log (duplicates at most): everything before is durable already.
            self._post_durable(group_marks, acks, batches, dup_bytes + new_bytes, 0)
            if barriers:
                now = time.perf_counter()
                for _before, barrier in barriers:
                    barrier.offset = before_group
                    barrier.synced_at = now
                self._on_appended([], 0, barriers)
        self.stats.duplicates += dups

    def _post_durable(
        self,
        group_marks: dict[bytes, int],
        acks: dict[AckSink, int],
        batches: list[Batch],
        dropped: int,
        logged: int,
    ) -> None:
        if acks or batches or dropped or logged:
            self._post(
                self._durable, group_marks, acks, batches, self.synced_offset, dropped, logged
            )

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop -----------------------------------------------------------------

    def _durable(
        self,
        group_marks: dict[bytes, int],
        acks: dict[AckSink, int],
        batches: list[Batch],
        offset: int,
        dropped: int,
        logged: int,
    ) -> None:
        """A group is durable: advance the marks, ack its senders, release duplicates."""
        self.marks.update(group_marks)
        for sink, seq in acks.items():
            sink.on_durable(seq)
        for batch in batches:
            if batch.done is not None and not batch.done.done():
                batch.done.set_result(offset)
        if dropped:
            self._on_dropped(dropped)
        if logged:
            self._on_logged(logged)

    def _fail(self, items: list[Batch | Barrier], exc: BaseException) -> None:
        """The log failed: fail everything that waited, then stop the daemon."""
        for item in items:
            if (f := _future_of(item)) and not f.done():
                f.set_exception(exc)
        self._on_fatal(exc)


async def run_on_thread(
    executor: Executor, main: Callable[[], None], on_cancel: Callable[[], None]
) -> None:
    """Run ``main`` on ``executor`` until it returns (a loop that owns that thread).

    When the awaiting task is cancelled, ``on_cancel`` (on the loop) must make ``main``
    return soon; the thread is still waited for, so that whoever closes the log or the
    views after this never does it under a running loop, and the cancellation propagates.
    """
    done = asyncio.get_running_loop().run_in_executor(executor, main)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        on_cancel()
        await asyncio.wait([done])
        raise


def _future_of(item: Batch | Barrier) -> asyncio.Future[int] | None:
    return item.future if isinstance(item, Barrier) else item.done
