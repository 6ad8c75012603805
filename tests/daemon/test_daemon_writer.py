"""The writer on a real event log: group commit, dedupe, and where flush barriers fall in a
group (the projector's input)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trackd.daemon.writer import Barrier, Batch, DurableMark, Writer, memory_cost
from trackd.eventlog.events import ContainerCreated, LoggedEvent, encode_event
from trackd.eventlog.log import EventLog

Synced = tuple[list[LoggedEvent], int, list[tuple[int, Barrier]]]


def _batch(client: bytes, seqs: range) -> Batch:
    events = [ContainerCreated(container=f"c{s}", client_id=client, client_seq=s) for s in seqs]
    payloads = [encode_event(e) for e in events]
    return Batch(list(events), payloads, sum(memory_cost(p) for p in payloads))


def _writer(
    elog: EventLog,
    pool: ThreadPoolExecutor,
    on_appended: Callable[[list[LoggedEvent], int, list[tuple[int, Barrier]]], None],
    durable: DurableMark | None = None,
) -> Writer:
    """A writer with no group-commit wait whose drops and failures go nowhere."""
    return Writer(
        elog,
        pool,
        {},
        max_wait=0.0,
        durable=durable or DurableMark(elog.synced_offset),
        on_appended=on_appended,
        on_dropped=lambda nb: None,
        on_fatal=lambda e: None,
    )


async def _one_group(tmp_path: Path, items: list[Batch | Barrier]) -> list[Synced]:
    """Queue ``items`` before the writer starts, so that they form one group."""
    synced: list[Synced] = []
    with EventLog.open(tmp_path / "log") as elog, ThreadPoolExecutor(1) as pool:
        w = _writer(elog, pool, lambda ev, nb, bs: synced.append((ev, nb, bs)))
        for item in items:
            w.submit(item)
        w.stop()
        await asyncio.wait_for(w.run(), 10)
        assert elog.synced_offset == elog.end_offset
    return synced


def test_barrier_in_a_group_counts_only_the_events_queued_before_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        zeroth: asyncio.Future[int] = loop.create_future()
        first: asyncio.Future[int] = loop.create_future()
        second: asyncio.Future[int] = loop.create_future()
        synced = await _one_group(
            tmp_path,
            [
                Barrier(zeroth),
                _batch(b"a" * 16, range(1, 3)),
                Barrier(first),
                _batch(b"b" * 16, range(1, 4)),
                _batch(b"a" * 16, range(1, 3)),  # duplicates: never logged, never counted
                Barrier(second),
            ],
        )
        assert len(synced) == 1
        events, _nbytes, barriers = synced[0]
        assert [le.event.client_seq for le in events] == [1, 2, 1, 2, 3]
        assert [(n, b.future) for n, b in barriers] == [(0, zeroth), (2, first), (5, second)]
        # Each barrier carries the end of the last event before it (for the first, the end
        # of the log before the group).
        assert [b.offset for _n, b in barriers] == [
            events[0].offset,
            events[1].end,
            events[4].end,
        ]

    asyncio.run(scenario())


def test_group_is_handed_over_on_the_log_thread_before_its_sync(tmp_path: Path) -> None:
    """The projector gets a group from the log thread as soon as it is appended, without a
    pass through the event loop, so that the views apply it while the fdatasync runs; the
    durable mark (which gates the views' commit) passes it only after the sync."""
    seen: list[tuple[str, int, int]] = []
    mark = DurableMark(0)

    async def scenario() -> None:
        with (
            EventLog.open(tmp_path / "log") as elog,
            ThreadPoolExecutor(1, thread_name_prefix="log-under-test") as pool,
        ):

            def on_appended(ev: list[LoggedEvent], nb: int, bs: list[tuple[int, Barrier]]) -> None:
                seen.append((threading.current_thread().name, ev[-1].end, mark.offset))

            w = _writer(elog, pool, on_appended, mark)
            w.submit(_batch(b"a" * 16, range(1, 4)))
            w.stop()
            await asyncio.wait_for(w.run(), 10)
            assert elog.synced_offset == mark.offset

    asyncio.run(scenario())
    assert len(seen) == 1
    thread, end, durable_then = seen[0]
    assert thread.startswith("log-under-test")
    assert durable_then < end  # handed over before its sync...
    assert mark.offset == end  # ...and marked durable after it


def test_durable_mark_waits_for_the_sync_and_passes_on_a_failure() -> None:
    mark = DurableMark(10)
    mark.wait(10)  # durable already: returns at once
    woke: list[str] = []

    def waiter(offset: int) -> None:
        try:
            mark.wait(offset)
            woke.append(f"durable {offset}")
        except OSError as e:
            woke.append(f"failed {offset}: {e}")

    first = threading.Thread(target=waiter, args=(20,))
    first.start()
    first.join(0.2)
    assert first.is_alive()  # not durable yet: still waiting
    assert woke == []
    mark.advance(25)
    first.join(10)
    assert woke == ["durable 20"]
    second = threading.Thread(target=waiter, args=(30,))
    second.start()
    mark.fail(OSError("fdatasync failed"))
    second.join(10)
    assert woke == ["durable 20", "failed 30: fdatasync failed"]


def test_groups_are_written_while_the_loop_is_busy_and_acked_on_the_loop(tmp_path: Path) -> None:
    """The writer's loop runs on the log thread: a batch is appended, synced and handed to
    the projector even while the event loop is busy. Acks go out on the event loop."""
    ack_threads: list[tuple[int, bool]] = []
    handed = threading.Event()

    class Sink:
        def on_durable(self, seq: int) -> None:
            ack_threads.append((seq, threading.current_thread() is threading.main_thread()))

    async def scenario() -> None:
        with EventLog.open(tmp_path / "log") as elog, ThreadPoolExecutor(1) as pool:
            w = _writer(elog, pool, lambda ev, nb, bs: handed.set())
            task = asyncio.create_task(w.run())
            await asyncio.sleep(0)  # the writer starts (in the daemon, when the repo opens)
            batch = _batch(b"a" * 16, range(1, 4))
            batch.sink = Sink()
            w.submit(batch)
            # The loop is blocked here (no await) while the log thread does the work.
            assert handed.wait(10)
            assert ack_threads == []  # not acked yet: that takes the loop
            w.stop()
            await asyncio.wait_for(task, 10)
            assert w.marks == {b"a" * 16: 3}

    asyncio.run(scenario())
    assert ack_threads == [(3, True)]
