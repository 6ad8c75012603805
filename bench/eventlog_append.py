"""Benchmark: durable appends of columnar point batches to the event log, and reading them back.

Each payload is an encoded ``SequenceAppended`` event of ``--points`` points (int64 steps,
float64 values). For every commit size the log appends the batches and calls ``sync()``
after every N of them; the baseline, measured in the same run on the same file system, writes
the same framed bytes with ``os.write`` and ``os.fdatasync`` at the same points, alternating
with the log runs. Figures are medians of ``--repeats`` runs, each on a fresh directory;
``log/raw`` is the median of the per-pair ratios.

Usage::

    .venv/bin/python bench/eventlog_append.py [--batches 640] [--points 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from trackd.eventlog.events import SequenceAppended, decode_event, encode_event
from trackd.eventlog.log import EventLog
from trackd.eventlog.record import encode_records


def make_payloads(count: int, points: int) -> list[bytes]:
    """``count`` distinct encoded point batches of ``points`` points each."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        ev = SequenceAppended.from_arrays(
            container="8f14e45fceea167a5a36dedd4bea2543",
            name="loss",
            context={"subset": "train"},
            steps=np.arange(i * points, (i + 1) * points, dtype=np.int64),
            values=rng.random(points),
            client_id=os.urandom(16),
            client_seq=i + 1,
            client_time=time.time(),
        )
        out.append(encode_event(ev))
    return out


def run_log(directory: str, payloads: list[bytes], per_sync: int) -> float:
    """Append every payload, syncing after each ``per_sync``; return seconds."""
    path = os.path.join(directory, "log")
    with EventLog.open(path) as log:
        t0 = time.perf_counter()
        for i in range(0, len(payloads), per_sync):
            log.append(payloads[i : i + per_sync])
            log.sync()
        elapsed = time.perf_counter() - t0
    return elapsed


def run_raw(directory: str, payloads: list[bytes], per_sync: int) -> float:
    """Write the same framed bytes with os.write + os.fdatasync; return seconds."""
    groups = [encode_records(payloads[i : i + per_sync]) for i in range(0, len(payloads), per_sync)]
    fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        t0 = time.perf_counter()
        for g in groups:
            os.write(fd, g)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    return elapsed


def settle() -> None:
    """Let the disk finish the previous run's deletes (the file system may discard blocks)
    before the next timing starts, so that runs do not slow each other down."""
    os.sync()
    time.sleep(0.3)


def paired_medians(
    repeats: int, parent: str, fns: tuple[Callable[[str], float], Callable[[str], float]]
) -> tuple[float, float, float]:
    """Run the two timings alternately on fresh directories (so that both see the same disk
    weather); return the median seconds of each and the median of their per-pair ratio."""
    a_times, b_times, ratios = [], [], []
    for i in range(repeats):
        pair = []
        for fn in fns if i % 2 == 0 else fns[::-1]:
            d = tempfile.mkdtemp(prefix="trackd-bench-", dir=parent)
            try:
                pair.append(fn(d))
            finally:
                shutil.rmtree(d)
                settle()
        a, b = pair if i % 2 == 0 else pair[::-1]
        a_times.append(a)
        b_times.append(b)
        ratios.append(b / a)
    return statistics.median(a_times), statistics.median(b_times), statistics.median(ratios)


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=640, help="point batches per run")
    ap.add_argument("--points", type=int, default=10_000, help="points per batch")
    ap.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    ap.add_argument("--dir", default="/tmp", help="parent of the temporary directories")
    args = ap.parse_args()

    payloads = make_payloads(args.batches, args.points)
    size = len(payloads[0])
    total = sum(len(p) for p in payloads)
    points = args.batches * args.points
    one_mib = max(1, (1 << 20) // size)
    eight_mib = max(1, (8 << 20) // size)
    print(
        f"{args.batches} batches x {args.points} points, payload {size} bytes "
        f"({total / 1e6:.1f} MB per run), median of {args.repeats}, dir {args.dir}"
    )
    print()
    header = (
        f"{'commit':<22}{'log Mpts/s':>11}{'log MB/s':>10}{'raw Mpts/s':>12}"
        f"{'raw MB/s':>10}{'log/raw':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, per_sync in (
        ("1 sync per batch", 1),
        (f"{one_mib} batches (~1 MiB)", one_mib),
        (f"{eight_mib} batches (~8 MiB)", eight_mib),
    ):
        t_log, t_raw, ratio = paired_medians(
            args.repeats,
            args.dir,
            (
                lambda d, n=per_sync: run_log(d, payloads, n),
                lambda d, n=per_sync: run_raw(d, payloads, n),
            ),
        )
        print(
            f"{label:<22}{points / t_log / 1e6:>11.2f}{total / t_log / 1e6:>10.0f}"
            f"{points / t_raw / 1e6:>12.2f}{total / t_raw / 1e6:>10.0f}{ratio:>9.2f}"
        )

    # Reading back, as a rebuild of the views does (page cache warm).
    d = tempfile.mkdtemp(prefix="trackd-bench-", dir=args.dir)
    try:
        run_log(d, payloads, eight_mib)
        with EventLog.open(os.path.join(d, "log")) as log:
            read_times, decode_times = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n = sum(len(r.payload) for r in log.read())
                read_times.append(time.perf_counter() - t0)
                assert n == total
                t0 = time.perf_counter()
                for r in log.read():
                    decode_event(r.payload)
                decode_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            log.verify()
            t_verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        with EventLog.open(os.path.join(d, "log")):
            t_open = time.perf_counter() - t0
    finally:
        shutil.rmtree(d)
    t_read = statistics.median(read_times)
    t_dec = statistics.median(decode_times)
    print()
    print(
        f"{'read()':<22}{points / t_read / 1e6:>11.2f}{total / t_read / 1e6:>10.0f}"
        "   (records with checksums, page cache warm)"
    )
    print(f"{'read() + decode_event':<22}{points / t_dec / 1e6:>11.2f}{total / t_dec / 1e6:>10.0f}")
    print(f"{'verify()':<22}{'':>11}{total / t_verify / 1e6:>10.0f}")
    print(f"{'open (full recovery scan)':<22}{'':>8}{total / t_open / 1e6:>10.0f}")


if __name__ == "__main__":
    main()
