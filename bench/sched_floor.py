"""Benchmark: the scheduler's floor under a flush, with no trackd load at all.

``bench/ingest.py`` times flush barriers from a probe in the trainers' session, where the
flushing thread shares one CPU share with every trainer. This asks how much of that the
kernel alone accounts for: the same probe (one point, then ``flush()``, every 5 ms) runs
beside ``--hogs`` processes that only spin (``while True: pass``) in its session, against a
private daemon that serves nothing else. Whatever the probe measures here beyond the idle
run (``--hogs 0``) is its thread waiting for a CPU, which no daemon or SDK code can remove.

For each load: flush p50/p99, the probe thread's run-queue wait during each flush
(``run_delay`` of ``/proc/thread-self/schedstat``, read outside the timed span; Linux with
scheduler statistics only) and each flush less that wait. Figures are pooled over
``--repeats`` runs of each load, alternating loads so that a noisy neighbour spreads over
all of them.

Usage::

    .venv/bin/python bench/sched_floor.py [--repeats 2] [--hogs 0,8,16] [--flushes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ingest import Daemon, _pct

PROBE = """
    import json, subprocess, sys, time, trackd
    from trackd.sdk.client import get_client
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range({hogs})
    ]
    try:
        run = trackd.Run(repo={repo!r})
        run.repo.flush()  # the run exists and its connection is up: start-up, not measured
        client = get_client(run.repo.path)
        stat = open("/proc/thread-self/schedstat", "rb", buffering=0)
        def run_delay():
            stat.seek(0)
            return int(stat.read().split()[1])
        time.sleep(0.5)  # the hogs are up and spinning
        lat, waited = [], []
        for i in range({flushes}):
            run.track(1.0, "probe", i)
            r0 = run_delay()
            a = time.perf_counter()
            client.flush()
            lat.append(time.perf_counter() - a)
            waited.append((run_delay() - r0) / 1e9)
            time.sleep(0.005)
        run.close()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(json.dumps({{"lat": lat, "waited": waited}}), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hogs", default="0,8,16", help="comma-separated spinning processes")
    ap.add_argument("--flushes", type=int, default=1000, help="timed flushes per run")
    args = ap.parse_args()
    if not os.path.exists("/proc/thread-self/schedstat"):
        raise SystemExit("needs Linux scheduler statistics (/proc/thread-self/schedstat)")
    loads = [int(h) for h in args.hogs.split(",")]

    root = Path(tempfile.mkdtemp(prefix="td-sched-", dir="/tmp"))
    os.chmod(root, 0o700)
    d = Daemon(root)
    pooled: dict[int, dict[str, list[float]]] = {h: {"lat": [], "waited": []} for h in loads}
    try:
        for r in range(args.repeats):
            for h in loads:
                code = PROBE.format(hogs=h, repo=str(root / f"r{r}h{h}"), flushes=args.flushes)
                out = subprocess.run(
                    [sys.executable, "-c", textwrap.dedent(code)],
                    env=d.env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                ).stdout
                res = json.loads(out)
                pooled[h]["lat"].extend(res["lat"])
                pooled[h]["waited"].extend(res["waited"])
                print(f"repeat {r + 1}/{args.repeats}, {h} hogs done", file=sys.stderr)
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nflush beside spinning processes, {os.cpu_count()} CPUs, idle daemon")
    print(f"{args.repeats} runs x {args.flushes} flushes pooled per load; ms\n")
    head = ("spinning", "p50", "p99", "CPU wait p50", "p99", "less wait p99")
    print("  ".join(f"{h:>{w}}" for h, w in zip(head, (8, 6, 6, 12, 6, 13), strict=True)))
    for h in loads:
        lat, waited = pooled[h]["lat"], pooled[h]["waited"]
        net = [t - w for t, w in zip(lat, waited, strict=True)]
        print(
            f"{h:>8}  {_pct(lat, 0.5) * 1e3:>6.2f}  {_pct(lat, 0.99) * 1e3:>6.2f}  "
            f"{_pct(waited, 0.5) * 1e3:>12.2f}  {_pct(waited, 0.99) * 1e3:>6.2f}  "
            f"{_pct(net, 0.99) * 1e3:>13.2f}"
        )
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
