"""Load figures for the daemon (not a test: pytest does not collect this file).

Starts a daemon, runs N producer processes that each send P points as fast as they can
over raw sockets (pipelined, acks read at the end), waits for every flush, and prints
points/s, events/s and the daemon's peak RSS (VmHWM). Usage::

    python tests/daemon/ingest_load.py [--producers 8] [--points 60000] [--per-event 1]

``LOAD_PYFLAGS="-m cProfile -o daemon.prof"`` runs the daemon under a profiler.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rawclient import RawClient, point_stream


def _produce(sock: str, repo: str, i: int, n: int, per_event: int, frame: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    c = RawClient(sock, timeout=600)
    c.welcome(repo)
    stream = point_stream(c.client_id, f"run{i}", "loss", n, per_event=per_event)
    q.put(("ready", i))
    t0 = time.perf_counter()
    for j in range(0, len(stream), frame):
        c.append(stream[j : j + frame])
    c.wait_ack(len(stream))
    t_ack = time.perf_counter() - t0
    c.flush()
    q.put(("done", i, t_ack, time.perf_counter() - t0, len(stream)))


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--producers", type=int, default=8)
    ap.add_argument("--points", type=int, default=60_000)
    ap.add_argument("--per-event", type=int, default=1, help="points per event")
    ap.add_argument("--frame", type=int, default=200, help="events per Append frame")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="tdl-", dir="/tmp"))
    sock, repo = d / "s.sock", d / "repo"
    repo.mkdir()
    env = dict(os.environ, TRACKD_SOCKET=str(sock))
    with open(d / "daemon.log", "wb") as logf:
        daemon = subprocess.Popen(
            [
                sys.executable,
                *os.environ.get("LOAD_PYFLAGS", "").split(),
                "-m",
                "trackd",
                "daemon",
                "run",
            ],
            env=env,
            stderr=logf,
        )
    while not sock.exists():
        time.sleep(0.05)
    time.sleep(0.2)
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(
            target=_produce,
            args=(str(sock), str(repo), i, args.points, args.per_event, args.frame, q),
        )
        for i in range(args.producers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        assert q.get()[0] == "ready"
    base = _vm(daemon.pid, "VmRSS")
    t0 = time.perf_counter()
    results = [q.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    total_points = args.points * args.producers
    total_events = sum(r[4] for r in results)
    print(
        f"{args.producers} producers x {args.points} points ({args.per_event}/event, "
        f"{args.frame} events/frame): {wall:.2f}s to all flushed, "
        f"{total_points / wall:,.0f} points/s, {total_events / wall:,.0f} events/s; "
        f"slowest ack {max(r[2] for r in results):.2f}s; "
        f"daemon RSS before {base / 1024:.0f} MB, peak (VmHWM) "
        f"{_vm(daemon.pid, 'VmHWM') / 1024:.0f} MB"
    )
    from trackd.daemon.client import DaemonClient

    with DaemonClient(sock) as dc:
        dc.hello("")
        (rs,) = dc.request("status")["repositories"]
        print(
            {k: rs[k] for k in ("events_written", "groups_synced", "sync_seconds", "apply_seconds")}
        )
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path(f"/proc/{daemon.pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(") ", 1)[1].split()
        name = (task / "comm").read_text().strip()
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    print("daemon CPU seconds by thread:", {k: round(v, 2) for k, v in sorted(cpu.items())})
    daemon.send_signal(signal.SIGTERM)
    print("daemon exit status", daemon.wait(60))


if __name__ == "__main__":
    main()
