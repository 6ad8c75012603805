"""Crash states of the event log on a simulated disk, recovered by the real code.

Each workload appends and syncs encoded events through ``EventLog`` on a :class:`SimDisk`.
Before and after every durability call (each ``fdatasync`` and directory ``fsync``, so also
every step of a segment roll-over) the disk is snapshotted, and the crash images a crash
there can leave are enumerated: every unsynced write kept, dropped, zero-filled, torn to a
prefix or torn page by page, every unsynced directory operation applied or not. Each image
is written to a real folder and opened with ``EventLog.open(strict=False)`` and
``open_views``. Afterwards:

* every acknowledged event (its ``sync()`` had returned) is present, in order;
* the log is a prefix of what was appended: nothing invented, mangled or reordered;
* recovery reports no corruption (nothing durable was damaged, so none may be claimed);
* a second open changes nothing;
* the views (opened from the views file of the last acknowledged sync, then caught up)
  equal a rebuild from the recovered log.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability_support import EventMaker, dump_views, fast_tmp, record_figure
from simdisk import CrashImage, SimDisk, SyncPoint

from trackd.eventlog.events import decode_event
from trackd.eventlog.log import EventLog
from trackd.views import VIEWS_FILE, open_views, rebuild

SIM_ROOT = "/sim"
LOG_DIR = f"{SIM_ROOT}/repo/.trackd/log"


@dataclass
class Workload:
    """Groups of payloads; each group is appended, then synced."""

    name: str
    segment_size: int
    groups: list[list[bytes]]


def _mixed() -> Workload:
    m = EventMaker()
    groups = [
        [m.created()],
        [m.params("lr", 0.001), m.params("layers", [64, 64])],
        [m.points(3)],
        [m.points(40), m.props(name="run-1")],
        [m.points(1), m.points(2), m.points(3)],
        [m.finished()],
    ]
    return Workload("mixed", 64 << 20, groups)


def _rollover() -> Workload:
    m = EventMaker()
    groups = [
        [m.created(), m.points(60)],
        [m.points(100)],
        [m.points(150), m.params("seed", 7)],
        [m.points(90), m.points(90)],
        [m.points(20)],
        [m.points(200), m.points(10)],
    ]
    return Workload("rollover", 3000, groups)


def _pages() -> Workload:
    m = EventMaker()
    groups = [
        [m.created(), m.points(700)],
        [m.points(400), m.points(500)],
        [m.points(5), m.points(900)],
        [m.params("done", True)],
    ]
    return Workload("pages", 64 << 20, groups)


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "mixed": _mixed,
    "rollover": _rollover,
    "pages": _pages,
}


@dataclass
class CrashPoint:
    """A snapshot taken at one durability call, with what was acknowledged by then."""

    point: SyncPoint
    state: object
    acked: int


def _run_on_simdisk(w: Workload) -> tuple[list[CrashPoint], list[bytes], SimDisk]:
    disk = SimDisk()
    points: list[CrashPoint] = []
    acked = 0

    def hook(p: SyncPoint) -> None:
        points.append(CrashPoint(p, disk.snapshot(), acked))

    disk.hook = hook
    appended: list[bytes] = []
    log = EventLog.open(LOG_DIR, fs=disk, segment_size=w.segment_size)
    for k, group in enumerate(w.groups):
        log.append(group)
        appended += group
        points.append(
            CrashPoint(SyncPoint("append", f"group {k}", "after", 0), disk.snapshot(), acked)
        )
        log.sync()
        acked = len(appended)
        # The ack point itself: sync() returned, so the group is acknowledged.
        points.append(
            CrashPoint(SyncPoint("sync()", f"group {k}", "after", 0), disk.snapshot(), acked)
        )
    log.close()
    return points, appended, disk


def _reference_views(w: Workload, where: Path) -> dict[int, Path]:
    """Run the workload on the real disk; keep the views file after each sync.

    Returns the views file by number of events acknowledged when it was taken.
    """
    dot = where / "repo" / ".trackd"
    out: dict[int, Path] = {}
    with EventLog.open(dot / "log", segment_size=w.segment_size) as log:
        n = 0
        for group in w.groups:
            log.append(group)
            log.sync()
            n += len(group)
            views = open_views(dot, log)
            views.close()
            keep = where / f"views-{n}.db"
            shutil.copyfile(dot / VIEWS_FILE, keep)
            out[n] = keep
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _check_image(
    img: CrashImage,
    where: Path,
    w: Workload,
    appended: list[bytes],
    acked: int,
    label: str,
) -> int:
    """Recover one crash image; return the number of records recovered."""
    img.materialise(where, SIM_ROOT)
    logdir = where / "repo" / ".trackd" / "log"
    with EventLog.open(logdir, segment_size=w.segment_size, strict=False) as log:
        rep = log.recovery
        got = [r.payload for r in log.read()]
    what = f"{label} [{img.label}]"
    assert rep.corruption is None, f"{what}: recovery claimed corruption: {rep.corruption}"
    assert got == appended[: len(got)], f"{what}: log is not a prefix of what was appended"
    assert len(got) >= acked, f"{what}: {acked} events were acknowledged, {len(got)} recovered"
    for p in got:
        decode_event(p)
    before = _files(logdir)
    with EventLog.open(logdir, segment_size=w.segment_size, strict=False) as log:
        assert log.recovery.clean, f"{what}: second open changed {log.recovery.actions}"
        assert [r.payload for r in log.read()] == got
    after = _files(logdir)
    before.pop("LOCK", None)
    after.pop("LOCK", None)
    assert after == before, f"{what}: second open changed files"
    return len(got)


def _check_views(
    img: CrashImage, where: Path, w: Workload, views_file: Path | None, label: str
) -> None:
    """Open the views of the last acknowledged sync on the recovered log; compare to rebuild."""
    img.materialise(where, SIM_ROOT)
    dot = where / "repo" / ".trackd"
    dot.mkdir(parents=True, exist_ok=True)
    if views_file is not None:
        shutil.copyfile(views_file, dot / VIEWS_FILE)
    with EventLog.open(dot / "log", segment_size=w.segment_size, strict=False) as log:
        views = open_views(dot, log)
        try:
            live = dump_views(views, views)
            recs = list(log.read())
            assert views.checkpoint == (recs[-1].end if recs else 0), label
        finally:
            views.close()
        rebuild(dot, log)
        views = open_views(dot, log)
        try:
            rebuilt = dump_views(views, views)
        finally:
            views.close()
    assert live == rebuilt, f"{label} [{img.label}]: views differ from a rebuild"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_crash_at_every_sync_point_loses_nothing_acknowledged(
    workload: str, long_mode: bool
) -> None:
    """Every crash image at every sync point recovers every acked event and nothing invented."""
    w = WORKLOADS[workload]()
    per_point = 400 if long_mode else 20
    points, appended, disk = _run_on_simdisk(w)
    assert len(points) >= 4 * len(w.groups), "every sync must be a crash point"
    states = 0
    views_checked = 0
    torn_seen = 0
    with fast_tmp("td-crash-") as tmp:
        views_by_acked = _reference_views(w, tmp / "reference")
        # The simulated and the real run must have written the same bytes.
        final = disk.snapshot().crash_states(limit=1, seed=0)[0]
        final.materialise(tmp / "final", SIM_ROOT)
        sim_files = _files(tmp / "final" / "repo" / ".trackd" / "log")
        real_files = _files(tmp / "reference" / "repo" / ".trackd" / "log")
        sim_files.pop("LOCK", None)
        real_files.pop("LOCK", None)
        assert sim_files == real_files
        checked_views: set[tuple[int, int]] = set()
        for i, cp in enumerate(points):
            label = f"{workload}: crash {cp.point.label}, {cp.acked} acked"
            images = cp.state.crash_states(limit=per_point, seed=i)  # type: ignore[attr-defined]
            for j, img in enumerate(images):
                where = tmp / f"p{i}-{j}"
                n = _check_image(img, where, w, appended, cp.acked, label)
                states += 1
                if n < len(appended) and n > cp.acked:
                    torn_seen += 1
                shutil.rmtree(where)
                key = (cp.acked, n)
                if key not in checked_views:
                    checked_views.add(key)
                    _check_views(img, where, w, views_by_acked.get(cp.acked), label)
                    views_checked += 1
                    shutil.rmtree(where)
    print(
        f"\n{workload}: {len(points)} crash points, {states} crash states checked "
        f"({torn_seen} kept some unacknowledged events), {views_checked} view states "
        "compared with a rebuild"
    )
    record_figure("crash states checked", states)
    record_figure("crash points (before/after each durability call)", len(points))
    assert states >= len(points)
