"""Benchmark: the SDK's ingest path, from ``run.track()`` to durable, queryable points.

Starts its own daemon (``python -m trackd daemon run``) on a private socket in a temporary
folder, measures, and stops it. Figures are medians of ``--repeats`` runs; baselines are
measured in the same run.

1. ``track()`` cost per call (median, p99), timed one call at a time with
   ``perf_counter_ns`` while the flusher and a daemon run; the baseline is appending the same
   tuple to a list, timed the same way. The timer's own cost (an empty timed call) is shown
   and subtracted from both.
2. One process, 3 metrics x ``--steps`` steps, until ``close()`` returns: points/s.
3. ``--procs`` processes at once, 3 metrics x ``--proc-steps`` steps each, from a common
   start until every ``close()`` returned: aggregate points/s. Start-up (``import trackd``,
   creating the run, connecting) happens before the common start: each process waits at a
   start gate (end of file on one shared pipe, so that all start at once). Meanwhile a
   probe process times flush barriers (one point, then ``flush()``, every 5 ms) from that
   start until the last ``close()`` returned, so every sample is taken under load. One load
   lasts well under a second and gives a few dozen samples, so the load is run again (up
   to 20 times) until at least ``--flush-samples`` are pooled: p50 and p99 of the pool. The
   probe runs in the trainers' session, as a trainer that flushes would: with the kernel's
   autogroup scheduling it then shares one CPU share with every trainer thread. As a
   diagnostic, as many samples again come from loads whose probe runs in a session of its
   own (alternating with the others), which leaves out that wait for a CPU. The probe
   also measures that wait itself, where Linux keeps scheduler statistics: the time its
   thread spent runnable but waiting for a CPU during each flush (``run_delay`` of
   ``/proc/thread-self/schedstat``, read outside the timed span), shown with each
   in-session flush less that wait, and the CPU time the calling thread spends per flush
   (one point and the barrier to pack, send, and the reply to read). The
   daemon's own share comes from its status (``flush_ms`` of the load's repository:
   request read to reply sent, over all that repository's flushes; and its two parts, until
   the events before it are durable and then until they are applied). Also shown: CPU time
   per point of the producers (all their threads, from the start to their ``close()``) and
   of the daemon over the same span, to tell where the time goes; and the bytes the daemon
   wrote to storage per point over that span (``write_bytes`` of ``/proc/<pid>/io``: log,
   views, their WAL and checkpoints), with the log's share: writeback volume is what
   lengthens the tail of every ``fdatasync`` a flush waits on.

   The floor under the same load: a third process, started with the probe, times what no
   trackd code can make faster, each every 5 ms while the load runs: one 32 KiB append plus
   ``fdatasync`` to a file next to the repository (a flush needs at least one); a
   thread wake-up round trip (one thread sets an event, another wakes and sets one back);
   and the least any flush needs end to end: a request over a socket pair to a process in
   a session of its own (as the daemon runs), which appends 32 KiB, fdatasyncs and
   answers, so two process wake-ups and one fdatasync, with no queue, apply or event loop.
4. Peak RSS of the daemon (``VmHWM`` from ``/proc``) after all of it.

The daemon runs in a session of its own, as ``trackd daemon start``, the SDK's auto-start
and systemd run it (``BENCH_DAEMON_SESSION=same`` keeps it in the benchmark's session).

Usage::

    .venv/bin/python bench/ingest.py [--repeats 3] [--steps 100000] [--procs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from trackd.sdk._connect import socket_answers

TARGETS = {
    "track_median_us": 1.0,
    "track_p99_us": 10.0,
    "single_pts_per_s": 500_000,
    "multi_pts_per_s": 1_000_000,
    "flush_p99_ms": 15.0,
    "daemon_rss_mb": 250,
}


def _py(code: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        **kw,
    )


class Daemon:
    """A private daemon for the benchmark."""

    def __init__(self, root: Path) -> None:
        self.sock = root / "trackd.sock"
        self.env = dict(os.environ, TRACKD_SOCKET=str(self.sock), TRACKD_AUTOSTART="0")
        self.log = open(root / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackd", "daemon", "run"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # In a session of its own, as `trackd daemon start` and the SDK's auto-start
            # run it (setsid) and as systemd runs it (its own cgroup). With the kernel's
            # autogroup scheduling a daemon inside the trainers' session would compete with
            # each of their threads, which no deployment does.
            start_new_session=os.environ.get("BENCH_DAEMON_SESSION", "own") == "own",
        )
        deadline = time.monotonic() + 20
        while not socket_answers(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start; see {root / 'daemon.log'}")
            time.sleep(0.02)

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def write_bytes(self) -> int:
        """Bytes the daemon caused to be written to storage so far (log, views, WAL)."""
        with open(f"/proc/{self.proc.pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))

    def flush_ms(self, repo: Path) -> dict[str, dict[str, float]]:
        """The daemon's flush latency summaries for ``repo`` (``trackd daemon status``):
        whole flushes, and their two parts (until durable, then until applied)."""
        out = subprocess.run(
            [sys.executable, "-m", "trackd", "daemon", "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for r in json.loads(out)["repositories"]:
            if Path(r["path"]) == repo.resolve():
                return {
                    "all": r["flush_ms"],
                    "sync": r["flush_sync_ms"],
                    "apply": r["flush_apply_ms"],
                }
        raise SystemExit(f"the daemon does not report {repo}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


TRACK_COST = """
    import json, time, trackd
    N = {n}
    run = trackd.Run(repo={repo!r})
    run.repo.flush()  # the run exists and its connection is up: start-up, not measured
    track = run.track
    ctx = {{"subset": "train"}}
    t = time.perf_counter_ns
    def timed(f):
        out = [0] * N
        for i in range(N):
            a = t()
            f(i)
            out[i] = t() - a
        return out
    lst = []
    ap = lst.append
    h = run.hash
    res = {{
        "timer": timed(lambda i: None),
        "list": timed(lambda i: ap((h, "loss", "k", i, 0.5, 1.0))),
        "track": timed(lambda i: track(0.5, "loss", i, ctx)),
        "track_literal_ctx": timed(lambda i: track(0.5, "acc", i, {{"subset": "train"}})),
        "track_no_ctx": timed(lambda i: track(0.5, "lr")),
    }}
    run.close()
    print(json.dumps(res))
"""

SINGLE = """
    import json, time, trackd
    run = trackd.Run(repo={repo!r})
    run.repo.flush()  # the run exists and its connection is up: start-up, not measured
    ctx = {{"subset": "train"}}
    t0 = time.perf_counter()
    for i in range({steps}):
        run.track(0.5, "loss", i, ctx)
        run.track(0.25, "acc", i, ctx)
        run.track(0.1, "lr", i, ctx)
    t1 = time.perf_counter()
    run.close()
    t2 = time.perf_counter()
    print(json.dumps({{"loop": t1 - t0, "total": t2 - t0}}))
"""

MULTI = """
    import json, os, resource, sys, time, trackd
    run = trackd.Run(repo={repo!r})
    run.repo.flush()  # the run exists and its connection is up: start-up, not measured
    ctx = {{"subset": "train"}}
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    print("ready", flush=True)
    os.read({gate}, 1)  # the start gate: end of file, for every process at once
    t0 = time.time()
    c0 = cpu()
    for i in range({steps}):
        run.track(0.5, "loss", i, ctx)
        run.track(0.25, "acc", i, ctx)
        run.track(0.1, "lr", i, ctx)
    run.close()
    print(json.dumps({{"start": t0, "end": time.time(), "cpu": cpu() - c0}}), flush=True)
"""

PROBE = """
    import json, os, sys, threading, time, trackd
    from trackd.sdk.client import get_client
    run = trackd.Run(repo={repo!r})
    run.repo.flush()  # the run exists and its connection is up: start-up, not measured
    client = get_client(run.repo.path)
    print("ready", flush=True)
    os.read({gate}, 1)  # the start gate: end of file, for every process at once
    # Runs until the parent says every worker's close() returned: only under load.
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    # Time this thread spent runnable but waiting for a CPU (run_delay, Linux schedstat),
    # read outside the timed span: what of each flush was the scheduler's, not trackd's.
    try:
        stat = open("/proc/thread-self/schedstat", "rb", buffering=0)
    except OSError:
        stat = None
    def run_delay():
        stat.seek(0)
        return int(stat.read().split()[1])
    lat, waited, cpu = [], [], []
    i = 0
    deadline = time.time() + {seconds}
    while not stop.is_set() and time.time() < deadline:
        run.track(1.0, "probe", i)
        i += 1
        r0 = run_delay() if stat else 0
        c0 = time.thread_time()
        a = time.perf_counter()
        client.flush()
        lat.append(time.perf_counter() - a)
        cpu.append(time.thread_time() - c0)
        if stat:
            waited.append((run_delay() - r0) / 1e9)
        time.sleep(0.005)
    run.close()
    print(json.dumps({{"lat": lat, "waited": waited, "cpu": cpu}}), flush=True)
"""


FLOOR_SERVER = """
    import os, socket, sys
    sock = socket.socket(fileno=int(sys.argv[1]))
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = os.urandom(32 << 10)
    off = 0
    while sock.recv(1):
        os.pwrite(fd, data, off)
        off += len(data)
        os.fdatasync(fd)
        sock.send(b"x")
    os.close(fd)
    os.unlink(sys.argv[2])
"""

FLOOR = """
    import json, os, socket, subprocess, sys, threading, time
    fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = os.urandom(32 << 10)
    # The least any flush needs: a request wakes a process in a session of its own (as the
    # daemon runs), which writes, fdatasyncs and answers, waking the caller.
    ours, theirs = socket.socketpair()
    server = subprocess.Popen(
        [sys.executable, "-c", {server!r}, str(theirs.fileno()), {path!r} + ".rpc"],
        pass_fds=(theirs.fileno(),), start_new_session=True,
    )
    theirs.close()
    ping, pong = threading.Event(), threading.Event()
    def echo():
        while True:
            ping.wait()
            ping.clear()
            pong.set()
    threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    os.read({gate}, 1)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    sync, wake, rpc = [], [], []
    off = 0
    while not stop.is_set():
        os.pwrite(fd, data, off)
        off += len(data)
        a = time.perf_counter()
        os.fdatasync(fd)
        b = time.perf_counter()
        ping.set()
        pong.wait()
        pong.clear()
        c = time.perf_counter()
        ours.send(b"x")
        ours.recv(1)
        sync.append(b - a)
        wake.append(c - b)
        rpc.append(time.perf_counter() - c)
        time.sleep(0.005)
    ours.close()
    server.wait()
    os.close(fd)
    os.unlink({path!r})
    print(json.dumps({{"sync": sync, "wake": wake, "rpc": rpc}}), flush=True)
"""


#: Every flush latency of every load, pooled for the reported percentiles.
_POOLED: list[float] = []
#: The same, from loads whose probe ran in a session of its own (the diagnostic).
_POOLED_OWN: list[float] = []
#: In the trainers' session: how long the probe waited for a CPU during each flush (its
#: run queue delay, from /proc/thread-self/schedstat), and each flush less that wait.
_WAITED: list[float] = []
_NET: list[float] = []
#: The probe's CPU time (its calling thread's) per flush, every load.
_FLUSH_CPU: list[float] = []
#: The floor under the same loads: fdatasync alone, and a thread wake-up round trip.
_FLOOR_SYNC: list[float] = []
_FLOOR_WAKE: list[float] = []
_FLOOR_RPC: list[float] = []


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_track(d: Daemon, repo: Path, n: int) -> dict[str, float]:
    p = _py(TRACK_COST.format(repo=str(repo), n=n), d.env)
    out, _ = p.communicate(timeout=600)
    res = json.loads(out)
    timer = statistics.median(res["timer"])
    row: dict[str, float] = {"timer_ns": timer}
    for k in ("list", "track", "track_literal_ctx", "track_no_ctx"):
        row[f"{k}_median_us"] = max(0.0, statistics.median(res[k]) - timer) / 1000
        row[f"{k}_p99_us"] = max(0.0, _pct(res[k], 0.99) - timer) / 1000
    return row


def bench_single(d: Daemon, repo: Path, steps: int) -> dict[str, float]:
    p = _py(SINGLE.format(repo=str(repo), steps=steps), d.env)
    out, _ = p.communicate(timeout=600)
    res = json.loads(out)
    return {"single_pts_per_s": 3 * steps / res["total"], "single_loop_s": res["loop"]}


def bench_multi(
    d: Daemon, repo: Path, procs: int, steps: int, *, own_session: bool = False
) -> dict[str, float]:
    # Every process waits for end of file on one pipe: closing it starts all of them with
    # one system call, where a line written to each in turn started the last one ~20 ms late.
    gate, release = os.pipe()
    code = MULTI.format(repo=str(repo), steps=steps, gate=gate)
    workers = [_py(code, d.env, pass_fds=(gate,)) for _ in range(procs)]
    probe = _py(
        PROBE.format(repo=str(repo), seconds=120.0, gate=gate),
        d.env,
        pass_fds=(gate,),
        start_new_session=own_session,
    )
    floor_file = repo.parent / f"{repo.name}.floor"
    floor_code = FLOOR.format(path=str(floor_file), gate=gate, server=textwrap.dedent(FLOOR_SERVER))
    floor = _py(floor_code, d.env, pass_fds=(gate,))
    os.close(gate)
    for p in [*workers, probe, floor]:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    cpu0, io0 = d.cpu_seconds(), d.write_bytes()
    os.close(release)
    spans = [json.loads(p.communicate(timeout=600)[0]) for p in workers]
    daemon_cpu, daemon_io = d.cpu_seconds() - cpu0, d.write_bytes() - io0
    # The probe times flushes while the workers run, and stops once the last close() returned.
    probed = json.loads(probe.communicate("\n", timeout=600)[0])
    lat = probed["lat"]
    fl = json.loads(floor.communicate("\n", timeout=600)[0])
    _FLOOR_SYNC.extend(fl["sync"])
    _FLOOR_WAKE.extend(fl["wake"])
    _FLOOR_RPC.extend(fl["rpc"])
    elapsed = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    points = 3 * steps * procs
    in_daemon = d.flush_ms(repo)
    (_POOLED_OWN if own_session else _POOLED).extend(lat)
    _FLUSH_CPU.extend(probed["cpu"])
    if not own_session and probed["waited"]:
        _WAITED.extend(probed["waited"])
        _NET.extend(t - w for t, w in zip(lat, probed["waited"], strict=True))
    return {
        "multi_pts_per_s": points / elapsed,
        "multi_s": elapsed,
        "multi_producer_cpu_us": sum(s["cpu"] for s in spans) / points * 1e6,
        "multi_daemon_cpu_us": daemon_cpu / points * 1e6,
        "multi_daemon_write_b": daemon_io / points,
        "multi_log_b": sum(f.stat().st_size for f in (repo / ".trackd" / "log").glob("*.seg"))
        / points,
        "flush_median_ms": statistics.median(lat) * 1000,
        "flush_p99_ms": _pct(lat, 0.99) * 1000,
        "flush_samples": len(lat),
        "probe_own_session": float(own_session),
        "flush_daemon_p50_ms": in_daemon["all"]["p50"],
        "flush_daemon_p99_ms": in_daemon["all"]["p99"],
        "flush_daemon_sync_p99_ms": in_daemon["sync"]["p99"],
        "flush_daemon_apply_p99_ms": in_daemon["apply"]["p99"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200_000, help="timed track() calls per kind")
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the single process")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--proc-steps", type=int, default=20_000)
    ap.add_argument(
        "--flush-samples",
        type=int,
        default=300,
        help="run the multi-process load again until this many flush samples are pooled",
    )
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="td-bench-", dir="/tmp"))
    os.chmod(root, 0o700)
    d = Daemon(root)
    rows: list[dict[str, float]] = []
    try:
        for r in range(args.repeats):
            repo = root / f"repo{r}"
            row: dict[str, float] = {}
            row.update(bench_track(d, repo, args.calls))
            row.update(bench_single(d, repo, args.steps))
            # A repository of its own, so that its flush_ms holds only this load's flushes.
            row.update(bench_multi(d, root / f"multi{r}", args.procs, args.proc_steps))
            rows.append(row)
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        rss = d.peak_rss_mb()
        extra: list[dict[str, float]] = []
        while (
            min(len(_POOLED), len(_POOLED_OWN)) < args.flush_samples
            and len(extra) + args.repeats < 40
        ):
            repo = root / f"load{len(extra)}"
            own = len(_POOLED_OWN) < len(_POOLED) or len(_POOLED) >= args.flush_samples
            extra.append(bench_multi(d, repo, args.procs, args.proc_steps, own_session=own))
        rss_after = d.peak_rss_mb()
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    loads = rows + extra
    for k in (
        "flush_daemon_p50_ms",
        "flush_daemon_p99_ms",
        "flush_daemon_sync_p99_ms",
        "flush_daemon_apply_p99_ms",
    ):
        med[k] = statistics.median(r[k] for r in loads)
    med["flush_median_ms"] = statistics.median(_POOLED) * 1000
    med["flush_p99_ms"] = _pct(_POOLED, 0.99) * 1000
    print(f"\ntrackd ingest benchmark: median of {args.repeats} repeats, {os.cpu_count()} CPUs")
    print(f"timer overhead subtracted: {med['timer_ns']:.0f} ns per timed call\n")
    lines = [
        ("list.append(tuple) baseline, median", med["list_median_us"], "us", None),
        ("list.append(tuple) baseline, p99", med["list_p99_us"], "us", None),
        ("track(v, name, step, ctx) median", med["track_median_us"], "us", "track_median_us"),
        ("track(v, name, step, ctx) p99", med["track_p99_us"], "us", "track_p99_us"),
        # The baseline can round to 0 once the timer's own cost is subtracted.
        (
            "  ratio to baseline (median)",
            med["track_median_us"] / max(med["list_median_us"], 0.01),
            "x",
            None,
        ),
        ("track(..., ctx literal per call) median", med["track_literal_ctx_median_us"], "us", None),
        ("track(..., ctx literal per call) p99", med["track_literal_ctx_p99_us"], "us", None),
        ("track(v, name) median", med["track_no_ctx_median_us"], "us", None),
        ("track(v, name) p99", med["track_no_ctx_p99_us"], "us", None),
        (
            f"1 process, 3 x {args.steps:,} steps, until close()",
            med["single_pts_per_s"],
            "pts/s",
            "single_pts_per_s",
        ),
        (
            f"{args.procs} processes, 3 x {args.proc_steps:,} steps each",
            med["multi_pts_per_s"],
            "pts/s",
            "multi_pts_per_s",
        ),
        ("  producer CPU per point (all threads)", med["multi_producer_cpu_us"], "us", None),
        ("  daemon CPU per point", med["multi_daemon_cpu_us"], "us", None),
        ("  daemon disk writes per point (log, views)", med["multi_daemon_write_b"], "bytes", None),
        ("  of them the log's, per point", med["multi_log_b"], "bytes", None),
        (
            f"flush barrier under load, p50 ({len(_POOLED)} samples, {len(loads)} loads)",
            med["flush_median_ms"],
            "ms",
            None,
        ),
        ("flush barrier under load, p99 (pooled)", med["flush_p99_ms"], "ms", "flush_p99_ms"),
        (
            f"  probe in a session of its own, p50 ({len(_POOLED_OWN)} samples)",
            statistics.median(_POOLED_OWN) * 1000,
            "ms",
            None,
        ),
        ("  probe in a session of its own, p99", _pct(_POOLED_OWN, 0.99) * 1000, "ms", None),
        *(
            (label, _pct(samples, q) * 1000, "ms", None)
            for label, samples, q in (
                ("  of it waiting for a CPU (run queue), p50", _WAITED, 0.5),
                ("  of it waiting for a CPU (run queue), p99", _WAITED, 0.99),
                ("  less that wait, p99", _NET, 0.99),
                ("  the calling thread's CPU time per flush, p50", _FLUSH_CPU, 0.5),
            )
            if samples
        ),
        ("  of it in the daemon, p50 (median of loads)", med["flush_daemon_p50_ms"], "ms", None),
        ("  of it in the daemon, p99 (median of loads)", med["flush_daemon_p99_ms"], "ms", None),
        ("    until durable, p99", med["flush_daemon_sync_p99_ms"], "ms", None),
        ("    then until applied, p99", med["flush_daemon_apply_p99_ms"], "ms", None),
        *(
            (f"floor, same loads: {what}, {name}", _pct(samples, q) * 1000, "ms", None)
            for what, samples in (
                ("fdatasync 32 KiB", _FLOOR_SYNC),
                ("thread wake round trip", _FLOOR_WAKE),
                ("request, fdatasync, reply", _FLOOR_RPC),
            )
            for name, q in (("p50", 0.5), ("p99", 0.99))
        ),
        ("daemon peak RSS (VmHWM) after the repeats", rss, "MB", "daemon_rss_mb"),
        (f"  after {len(extra)} more loads, one new repository each", rss_after, "MB", None),
    ]
    print(f"{'measure':<48} {'value':>14}  {'unit':<6} target")
    print("-" * 82)
    for label, value, unit, key in lines:
        target = ""
        if key is not None:
            goal = TARGETS[key]
            ok = value >= goal if unit == "pts/s" else value <= goal
            target = f"{'>=' if unit == 'pts/s' else '<='} {goal:,g}  {'ok' if ok else 'MISSED'}"
        shown = f"{value:,.0f}" if unit == "pts/s" else f"{value:,.2f}"
        print(f"{label:<48} {shown:>14}  {unit:<6} {target}")
    # The spread behind the medians: this machine is shared, and one busy neighbour moves
    # every figure.
    print("\nper repeat:")
    for k in ("track_median_us", "single_pts_per_s", "multi_pts_per_s"):
        print(f"  {k:<18} " + "  ".join(f"{r[k]:,.2f}" for r in rows))
    print("per load (multi-process):")
    for k in ("multi_pts_per_s", "flush_p99_ms", "flush_daemon_p99_ms", "probe_own_session"):
        print(f"  {k:<19} " + "  ".join(f"{r[k]:,.1f}" for r in loads))
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
