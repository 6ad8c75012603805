"""The projector on its own (fake views, no SQLite): transaction bounds, flush barriers
answered as soon as what precedes them is applied, memory released as it is applied."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from trackd.daemon import projector as projector_mod
from trackd.daemon.projector import MAX_APPLY_POINTS, Projector
from trackd.daemon.writer import Barrier, DurableMark
from trackd.eventlog.events import ContainerCreated, LoggedEvent, SequenceAppended


class FakeViews:
    """Records each committed transaction as the offsets of its events, in ``calls``, and
    every add() in ``adds``. ``gate`` holds the views thread in the first add() of a
    transaction until set; ``hold`` holds the commit of that number (from 0) until
    ``released`` is set."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.adds: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.hold = -1
        self.released = threading.Event()
        self.rolled_back: list[list[int]] = []

    def begin(self) -> FakeTransaction:
        return FakeTransaction(self)


class FakeTransaction:
    def __init__(self, views: FakeViews) -> None:
        self.views = views
        self.offsets: list[int] = []

    def add(self, events: Sequence[LoggedEvent]) -> None:
        v = self.views
        if not self.offsets:
            v.entered.set()
            v.gate.wait(10)
        v.adds.append([le.offset for le in events])
        self.offsets.extend(le.offset for le in events)

    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        v = self.views
        if len(v.calls) == v.hold:
            v.released.wait(10)
        if before_commit is not None:
            before_commit()
        v.calls.append(self.offsets)

    def rollback(self) -> None:
        if self.offsets:
            self.views.rolled_back.append(self.offsets)
        self.offsets = []


def _points(offset: int, n: int) -> LoggedEvent:
    ev = SequenceAppended.from_arrays(
        container="c", name="m", context={}, steps=np.arange(n), values=np.zeros(n)
    )
    return LoggedEvent(offset, offset + 1, ev)


def _plain(offset: int) -> LoggedEvent:
    return LoggedEvent(offset, offset + 1, ContainerCreated(container="c"))


async def _run(
    scenario: Any,
    views: FakeViews,
    batch_events: int = 20_000,
    durable: DurableMark | None = None,
) -> tuple[Projector, list[int]]:
    released: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        p = Projector(
            views,  # type: ignore[arg-type]
            pool,
            applied_offset=0,
            batch_events=batch_events,
            on_applied=released.append,
            on_fatal=lambda e: None,
            durable=durable,
        )
        task = asyncio.create_task(p.run())
        await scenario(p)
        p.stop()
        await asyncio.wait_for(task, 10)
    return p, released


@pytest.fixture(autouse=True)
def _no_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply as soon as something is queued, so that the tests see each transaction."""
    monkeypatch.setattr(projector_mod, "APPLY_INTERVAL", 0.0)


def test_barrier_is_answered_before_events_queued_behind_it_are_applied() -> None:
    """A flush waits for what was submitted before it, not for a backlog behind it."""
    views = FakeViews()

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        views.gate.clear()
        views.hold = 2  # the transaction behind the barrier does not finish meanwhile
        p.submit([_plain(0)], 0, [])
        await loop.run_in_executor(None, views.entered.wait, 10)  # the first apply runs
        first: asyncio.Future[int] = loop.create_future()
        p.submit([_plain(1), _plain(2)], 0, [(2, Barrier(first, offset=3))])
        p.submit([_plain(3), _plain(4)], 0, [])
        views.gate.set()
        assert await asyncio.wait_for(first, 10) == 3
        # Answered after the transaction that ends at the barrier, before the one behind it.
        assert views.calls == [[0], [1, 2]]
        views.released.set()

    asyncio.run(_run(scenario, views))
    assert views.calls == [[0], [1, 2], [3, 4]]


def test_barrier_inside_a_group_waits_only_for_the_events_before_it() -> None:
    """A group synced together holds events queued after the flush: they are not applied
    before it is answered."""
    views = FakeViews()

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        views.hold = 1  # the transaction behind the barrier does not finish meanwhile
        fut: asyncio.Future[int] = loop.create_future()
        p.submit([_plain(0), _plain(1), _plain(2)], 0, [(1, Barrier(fut, offset=3))])
        assert await asyncio.wait_for(fut, 10) == 3
        assert views.calls == [[0]]
        views.released.set()

    asyncio.run(_run(scenario, views))
    assert views.calls == [[0], [1, 2]]


def test_barrier_with_nothing_before_it_is_answered_at_once() -> None:
    """A flush on an idle repository needs no transaction."""
    views = FakeViews()

    async def scenario(p: Projector) -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        p.submit([], 0, [(0, Barrier(fut, offset=0))])
        assert await asyncio.wait_for(fut, 10) == 0

    asyncio.run(_run(scenario, views))
    assert views.calls == []


def test_transactions_are_bounded_by_points_and_events() -> None:
    """A backlog is applied in transactions of at most MAX_APPLY_POINTS points and
    batch_events events, in order, and its memory is released as it goes."""
    views = FakeViews()
    half = MAX_APPLY_POINTS // 2 + 1

    async def scenario(p: Projector) -> None:
        views.gate.clear()
        p.submit([_points(i, half) for i in range(3)], 300, [])
        p.submit([_plain(i) for i in range(3, 8)], 500, [])
        views.gate.set()

    _p, released = asyncio.run(_run(scenario, views, batch_events=3))
    assert views.calls == [[0], [1], [2, 3, 4], [5, 6, 7]]
    assert sum(released) == 800
    assert released[0] == 300  # the first item's bytes left once all of it was applied


def test_failed_apply_fails_waiting_barriers() -> None:
    """When the views fail, every waiting flush gets the error."""

    class BrokenTransaction(FakeTransaction):
        def add(self, events: Sequence[LoggedEvent]) -> None:
            raise RuntimeError("disk on fire")

    class Broken(FakeViews):
        def begin(self) -> FakeTransaction:
            return BrokenTransaction(self)

    views = Broken()
    errors: list[BaseException] = []

    async def scenario(p: Projector) -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        p.submit([_plain(0)], 0, [(1, Barrier(fut, offset=1))])
        with pytest.raises(RuntimeError, match="disk on fire"):
            await asyncio.wait_for(fut, 10)
        errors.append(p.failed or RuntimeError("no failure recorded"))

    asyncio.run(_run(scenario, views))
    assert isinstance(errors[0], RuntimeError)


def test_events_nobody_waits_for_are_gathered_but_a_flush_is_not_delayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within APPLY_INTERVAL of a transaction's first events, new events join it, unless a
    flush barrier waits for them: then it commits at once. Each group is added (its work
    done) when it arrives, not when the barrier comes."""
    monkeypatch.setattr(projector_mod, "APPLY_INTERVAL", 0.5)
    views = FakeViews()
    waited: list[float] = []
    added_before_the_barrier: list[list[list[int]]] = []

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        for i in (0, 1, 2):
            p.submit([_plain(i)], 0, [])
            await asyncio.sleep(0.05)
        added_before_the_barrier.append(list(views.adds))
        assert views.calls == []
        fut: asyncio.Future[int] = loop.create_future()
        t0 = loop.time()
        p.submit([_plain(3)], 0, [(1, Barrier(fut, offset=4))])
        await asyncio.wait_for(fut, 10)
        waited.append(loop.time() - t0)

    asyncio.run(_run(scenario, views))
    # (A busy machine may hand two groups over in one add.)
    assert [[o for add in adds for o in add] for adds in added_before_the_barrier] == [[0, 1, 2]]
    assert views.calls == [[0, 1, 2, 3]]
    assert waited[0] < 0.4


def test_an_open_transaction_commits_after_the_interval_without_a_barrier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events nobody flushes are committed APPLY_INTERVAL after the transaction took them,
    not at once, and later events open the next transaction."""
    monkeypatch.setattr(projector_mod, "APPLY_INTERVAL", 0.2)
    views = FakeViews()
    gathered: list[float] = []

    async def until_committed(n: int) -> float:
        t0 = time.monotonic()
        while len(views.calls) < n:
            assert time.monotonic() - t0 < 10, f"transaction {n} not committed in 10 s"
            await asyncio.sleep(0.005)
        return time.monotonic() - t0

    async def scenario(p: Projector) -> None:
        p.submit([_plain(0), _plain(1)], 0, [])
        gathered.append(await until_committed(1))
        p.submit([_plain(2)], 0, [])
        gathered.append(await until_committed(2))

    p, _released = asyncio.run(_run(scenario, views))
    assert views.calls == [[0, 1], [2]]
    assert min(gathered) >= 0.15  # each waited for the interval: no barrier asked
    assert p.applied_offset == 3


def test_stopping_commits_the_open_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() while a transaction gathers: what it holds is committed before run() ends."""
    monkeypatch.setattr(projector_mod, "APPLY_INTERVAL", 60.0)
    views = FakeViews()

    async def scenario(p: Projector) -> None:
        p.submit([_plain(0)], 0, [])
        await asyncio.sleep(0.1)
        assert views.adds == [[0]]

    p, _released = asyncio.run(_run(scenario, views))
    assert views.calls == [[0]]
    assert p.applied_offset == 1


def test_events_from_another_thread_are_applied_while_the_loop_is_busy() -> None:
    """The log thread hands groups to the views thread directly: they are applied even
    while the event loop is busy, and only the answer to a flush needs the loop."""
    views = FakeViews()
    applied_while_blocked: list[bool] = []

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the projector starts (in the daemon, when the repo opens)
        fut: asyncio.Future[int] = loop.create_future()
        submitter = threading.Thread(
            target=p.submit, args=([_plain(0), _plain(1)], 0, [(2, Barrier(fut, offset=2))])
        )
        submitter.start()
        submitter.join(10)
        # Block the loop (no await) while the views thread applies.
        applied_while_blocked.append(views.entered.wait(10))
        assert await asyncio.wait_for(fut, 10) == 2

    asyncio.run(_run(scenario, views))
    assert applied_while_blocked == [True]
    assert views.calls == [[0, 1]]


def test_a_transaction_commits_only_once_the_log_is_durable_past_it() -> None:
    """The views apply a group while its fdatasync runs, but commit (and answer the flush)
    only once the durable mark covers the transaction's last event."""
    views = FakeViews()
    mark = DurableMark(0)
    log: list[str] = []

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        p.submit([_plain(0), _plain(1)], 0, [(2, Barrier(fut, offset=2))])
        # The work starts before the sync returns...
        assert await loop.run_in_executor(None, views.entered.wait, 10)
        await asyncio.sleep(0.2)
        log.append(f"before the sync: calls {views.calls}, answered {fut.done()}")
        mark.advance(1)  # durable up to the first event only: still not committed
        await asyncio.sleep(0.2)
        log.append(f"durable to 1: calls {views.calls}, answered {fut.done()}")
        mark.advance(2)
        assert await asyncio.wait_for(fut, 10) == 2
        log.append(f"durable to 2: calls {views.calls}")

    asyncio.run(_run(scenario, views, durable=mark))
    assert log == [
        "before the sync: calls [], answered False",
        "durable to 1: calls [], answered False",
        "durable to 2: calls [[0, 1]]",
    ]


def test_a_failed_sync_fails_the_waiting_flush_and_commits_nothing() -> None:
    views = FakeViews()
    mark = DurableMark(0)
    fatal: list[BaseException] = []

    async def scenario(p: Projector) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        p.submit([_plain(0)], 0, [(1, Barrier(fut, offset=1))])
        assert await loop.run_in_executor(None, views.entered.wait, 10)
        mark.fail(OSError("fdatasync failed"))
        with pytest.raises(OSError, match="fdatasync failed"):
            await asyncio.wait_for(fut, 10)

    released: list[int] = []
    with ThreadPoolExecutor(1) as pool:

        async def main() -> None:
            p = Projector(
                views,  # type: ignore[arg-type]
                pool,
                applied_offset=0,
                batch_events=100,
                on_applied=released.append,
                on_fatal=fatal.append,
                durable=mark,
            )
            task = asyncio.create_task(p.run())
            await scenario(p)
            p.stop()
            await asyncio.wait_for(task, 10)
            assert p.applied_offset == 0

        asyncio.run(main())
    assert views.calls == []
    assert [type(e) for e in fatal] == [OSError]


def _cancellable(
    views: FakeViews,
    pool: ThreadPoolExecutor,
    durable: DurableMark,
    *,
    on_fatal: Callable[[BaseException], None],
) -> Projector:
    """A projector for the cancel tests, which run it themselves."""
    return Projector(
        views,  # type: ignore[arg-type]
        pool,
        applied_offset=0,
        batch_events=100,
        on_applied=lambda n: None,
        on_fatal=on_fatal,
        durable=durable,
    )


def test_cancelling_rolls_back_a_transaction_waiting_for_its_sync_without_a_fatal() -> None:
    """A fatal stop elsewhere (or a drain that timed out) cancels the projector: a
    transaction waiting for a sync that will not come rolls back, and that is not reported
    as a failure of the views."""
    views = FakeViews()
    mark = DurableMark(0)
    fatal: list[BaseException] = []
    outcome: list[str] = []

    async def main(pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        p = _cancellable(views, pool, mark, on_fatal=fatal.append)
        task = asyncio.create_task(p.run())
        await asyncio.sleep(0)
        p.submit([_plain(0)], 0, [])
        assert await loop.run_in_executor(None, views.entered.wait, 10)
        task.cancel()
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
        await asyncio.sleep(0.1)  # anything the views thread posted has run
        assert p.applied_offset == 0

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(main(pool))
    assert outcome == ["cancelled"]
    assert views.calls == []
    assert fatal == []


def test_cancelling_rolls_back_a_transaction_that_is_still_gathering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel while events wait in an open transaction for the interval: the views
    thread rolls it back on its way out; nothing is committed."""
    monkeypatch.setattr(projector_mod, "APPLY_INTERVAL", 60.0)
    views = FakeViews()

    async def main(pool: ThreadPoolExecutor) -> None:
        p = _cancellable(views, pool, DurableMark(10), on_fatal=lambda e: None)
        task = asyncio.create_task(p.run())
        await asyncio.sleep(0)
        p.submit([_plain(0), _plain(1)], 0, [])
        await asyncio.sleep(0.1)
        assert views.adds == [[0, 1]]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert p.applied_offset == 0

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(main(pool))
    assert views.calls == []
    assert views.rolled_back == [[0, 1]]
