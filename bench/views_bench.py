"""Benchmarks of the SQLite views: projecting point batches, reading a sequence, rebuilding.

Prints a table of medians over repeats, each next to a baseline measured in the same run:

* apply: ``SQLiteViews.apply`` of LoggedEvents holding SequenceAppended batches, against raw
  ``executemany`` of the same step/value blobs into a bare table (same pragmas);
* read: ``ViewReader.points`` of a 1,000,000-point sequence (written in large applies, and as
  1,000 applies of 1,000 points), against ``np.frombuffer`` of one in-memory blob and against
  one raw ``SELECT`` of a single-row blob;
* rebuild: ``rebuild()`` from an EventLog on disk, against reading and decoding the log alone.

Not a test; nothing asserts on timings. Run: ``.venv/bin/python bench/views_bench.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from trackd.eventlog.events import (
    ContainerCreated,
    LoggedEvent,
    SequenceAppended,
    decode_event,
    encode_event,
)
from trackd.eventlog.log import EventLog
from trackd.views import SQLiteReader, SQLiteViews, open_views, rebuild
from trackd.views.sqlite import scan_views

BATCH = 10_000
CID = b"\x07" * 16


def batches(n_seqs: int, points_per_seq: int, batch: int = BATCH) -> list[SequenceAppended]:
    """Interleaved in-order batches of ``batch`` points for ``n_seqs`` sequences."""
    rng = np.random.default_rng(1)
    out = []
    for start in range(0, points_per_seq, batch):
        steps = np.arange(start, start + batch, dtype="<i8")
        for s in range(n_seqs):
            out.append(
                SequenceAppended(
                    container="c1",
                    name=f"metric{s}",
                    context={"subset": "train"},
                    steps=steps.tobytes(),
                    values=rng.random(batch).tobytes(),
                )
            )
    return out


def logged(events: list[SequenceAppended], first: int = 0) -> list[LoggedEvent]:
    """LoggedEvents behind a ContainerCreated, with made-up offsets."""
    evs = [ContainerCreated(container="c1", created_at=1.0), *events]
    return [
        LoggedEvent(100 * i, 100 * (i + 1), ev.with_envelope(CID, i + 1, 0.0))
        for i, ev in enumerate(evs, start=first)
    ]


def median_time(
    fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None
) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (``setup`` untimed before each)."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fresh(d: Path) -> Path:
    """An empty directory ``d``."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def bench_apply(
    root: Path, repeats: int, n_seqs: int, per_seq: int
) -> list[tuple[str, float, str]]:
    """apply() throughput vs raw executemany of the same blobs."""
    les = logged(batches(n_seqs, per_seq))
    total = n_seqs * per_seq
    per_call = 100  # 100 batches of 10k = 1 M points per transaction

    def run_apply() -> None:
        v = SQLiteViews.open(root / "apply" / "views.db")
        for i in range(0, len(les), per_call):
            v.apply(les[i : i + per_call])
        v.close()

    def run_raw() -> None:
        conn = sqlite3.connect(root / "apply" / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE t (seq INTEGER, steps BLOB, vals BLOB)")
        rows = [
            (hash(le.event.name), le.event.steps, le.event.values)  # type: ignore[attr-defined]
            for le in les[1:]
        ]
        for i in range(0, len(rows), per_call):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows[i : i + per_call])
            conn.execute("COMMIT")
        conn.close()

    t_apply = median_time(run_apply, repeats, lambda: fresh(root / "apply"))
    t_raw = median_time(run_raw, repeats, lambda: fresh(root / "apply"))
    return [
        (
            f"apply {total / 1e6:.0f} M points ({n_seqs} seqs, 10k/batch)",
            total / t_apply / 1e6,
            "M pts/s",
        ),
        ("  baseline: raw executemany of the same blobs", total / t_raw / 1e6, "M pts/s"),
        ("  ratio apply / raw", t_raw / t_apply, "x"),
    ]


def bench_read(root: Path, repeats: int) -> list[tuple[str, float, str]]:
    """points() of 1 M points, written in large applies and in 1,000 small ones."""
    n = 1_000_000
    rng = np.random.default_rng(2)
    steps = np.arange(n, dtype="<i8")
    values = rng.random(n)
    out = []
    d = fresh(root / "read")
    for label, size in (
        ("1 M points, 10k-point applies", 10_000),
        ("1 M points, 1,000 applies of 1,000", 1_000),
    ):
        path = d / f"views-{size}.db"
        v = SQLiteViews.open(path)
        les = logged([])
        v.apply(les)
        off = les[-1].end
        t0 = time.perf_counter()
        for i in range(0, n, size):
            ev = SequenceAppended(
                container="c1",
                name="m",
                context={},
                steps=steps[i : i + size].tobytes(),
                values=values[i : i + size].tobytes(),
            )
            v.apply([LoggedEvent(off, off + 100, ev)])
            off += 100
        t_write = time.perf_counter() - t0
        v.close()
        r = SQLiteReader(path)
        seq = r.sequence("c1", "m", {})
        assert seq is not None
        got = r.points(seq.id)
        assert np.array_equal(got.steps, steps)
        assert np.array_equal(got.values, values)
        conn = sqlite3.connect(path)
        nchunks = conn.execute("SELECT count(*) FROM sequence_chunks").fetchone()[0]
        conn.close()
        sid = seq.id
        t = median_time(partial(r.points, sid), repeats)
        r.close()
        out.append((f"read {label} ({nchunks} chunks)", t * 1e3, "ms"))
        if size == 10_000:
            conn = sqlite3.connect(path)
            t_scan = median_time(partial(scan_views, conn, path), repeats)
            assert scan_views(conn, path) == ""
            conn.close()
            out.append(("  checksum scan of those chunks (open_views)", t_scan * 1e3, "ms"))
        out.append(
            (f"  (writing it: {n // size:,} applies, one run)", n / t_write / 1e6, "M pts/s")
        )

    blob_s, blob_v = steps.tobytes(), values.tobytes()
    t_mem = median_time(
        lambda: (np.frombuffer(blob_s, "<i8"), np.frombuffer(blob_v, "<f8")), repeats
    )
    out.append(("  baseline: np.frombuffer of an in-memory blob", t_mem * 1e6, "us"))
    for label, pragmas in (
        ("default pragmas", ()),
        ("views' pragmas", ("PRAGMA page_size = 16384", "PRAGMA mmap_size = 1073741824")),
    ):
        raw = sqlite3.connect(d / f"raw-{len(pragmas)}.db", isolation_level=None)
        for pragma in pragmas:
            raw.execute(pragma)
        raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, steps BLOB, vals BLOB)")
        raw.execute("INSERT INTO t VALUES (1, ?, ?)", (blob_s, blob_v))

        def raw_read(raw: sqlite3.Connection = raw) -> None:
            s, v = raw.execute("SELECT steps, vals FROM t WHERE id = 1").fetchone()
            np.frombuffer(s, "<i8")
            np.frombuffer(v, "<f8")

        t_raw = median_time(raw_read, repeats)
        raw.close()
        out.append((f"  baseline: raw SELECT of one 16 MB row, {label}", t_raw * 1e3, "ms"))
    return out


def bench_rebuild(
    root: Path, repeats: int, n_seqs: int, per_seq: int
) -> list[tuple[str, float, str]]:
    """rebuild() from an on-disk EventLog vs reading and decoding that log alone."""
    d = fresh(root / "rebuild")
    dot = d / ".trackd"
    dot.mkdir()
    evs = [ContainerCreated(container="c1", created_at=1.0), *batches(n_seqs, per_seq)]
    total = n_seqs * per_seq
    log = EventLog.open(dot / "log")
    try:
        payloads = [encode_event(ev.with_envelope(CID, i + 1, 0.0)) for i, ev in enumerate(evs)]
        for i in range(0, len(payloads), 100):
            log.append(payloads[i : i + 100])
        log.sync()

        def read_decode() -> None:
            for rec in log.read():
                decode_event(rec.payload)

        t_read = median_time(read_decode, repeats)
        t_rebuild = median_time(lambda: rebuild(dot, log), repeats)
        v = open_views(dot, log)
        seqs = v.sequences()
        assert sum(s.count for s in seqs) == total
        v.close()
    finally:
        log.close()
    return [
        (f"rebuild from log, {total / 1e6:.0f} M points", total / t_rebuild / 1e6, "M pts/s"),
        ("  baseline: read + decode the log only", total / t_read / 1e6, "M pts/s"),
        ("  rebuild time / read+decode time", t_rebuild / t_read, "x"),
    ]


def main() -> None:
    """Run every benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--points-per-seq", type=int, default=500_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="views-bench-", dir=args.dir))
    try:
        rows = [
            *bench_apply(root, args.repeats, args.seqs, args.points_per_seq),
            *bench_read(root, args.repeats),
            *bench_rebuild(root, args.repeats, args.seqs, args.points_per_seq),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"views benchmarks (median of {args.repeats} runs; sqlite {sqlite3.sqlite_version})")
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>9.2f} {unit}")


if __name__ == "__main__":
    main()
