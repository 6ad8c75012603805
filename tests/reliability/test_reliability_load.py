"""Load: many SDK producer processes against one daemon.

CI: 8 producers for 10 s; long mode (``--long``): 64 for 60 s. Each producer tracks points
with ``trackd.Run`` as fast as it can until told to stop, then closes its run. Afterwards:
no producer failed, the daemon's peak RSS (``VmHWM``) stayed within the bound, and every
point of every run is in the views, exactly. Prints sustained points/s and peak RSS.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from producer import read_sdk_record
from reliability_support import Daemon, record_figure, start_producer

from trackd.views import open_reader
from trackd.wire import Reply

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
from rawclient import RawClient

pytestmark = [pytest.mark.integration]

RSS_LIMIT_MB = 250


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.timeout(900)
def test_many_producers_no_errors_bounded_memory_every_point_present(
    socket_env: Path, tmp_path: Path, long_mode: bool
) -> None:
    """N producers for T seconds: no errors, daemon RSS bounded, every point in the views."""
    producers, seconds = (64, 60.0) if long_mode else (8, 10.0)
    # For exploring other sizes by hand: TRACKD_LOAD_PRODUCERS=16 TRACKD_LOAD_SECONDS=60.
    producers = int(os.environ.get("TRACKD_LOAD_PRODUCERS", producers))
    seconds = float(os.environ.get("TRACKD_LOAD_SECONDS", seconds))
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ)
    env["TRACKD_AUTOSTART"] = "0"
    d = Daemon(socket_env, env, tmp_path / "daemon.log")
    d.start()
    pid = d.daemon_pid
    assert pid is not None
    stop = tmp_path / "STOP"
    procs = []
    records = []
    for i in range(producers):
        rec = tmp_path / f"sdk-{i}.txt"
        records.append(rec)
        args = ["sdk", "--repo", str(repo), "--record", str(rec), "--points", "1000000000"]
        args += ["--stop-file", str(stop)]
        procs.append(start_producer(args, tmp_path / f"sdk-{i}.out", env))
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() and r.read_text().startswith("run ") for r in records):
            assert time.monotonic() < deadline, "producers did not start"
            assert all(p.poll() is None for p in procs), "a producer died while starting"
            time.sleep(0.05)
        time.sleep(seconds)
        stop.touch()
        for p in procs:
            assert p.wait(timeout=300) == 0, (tmp_path / "sdk-0.out").read_text()
        peak_mb = _vm_hwm_mb(pid)
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = "".join(f.read_text() for f in tmp_path.glob("sdk-*.out"))
    assert "Traceback" not in outputs, outputs[-3000:]
    assert "spool" not in outputs.lower(), "a producer could not reach the daemon under load"
    assert d.stop() == 0, d.log()[-3000:]
    total = 0
    starts, ends = [], []
    reader = open_reader(repo / ".trackd")
    try:
        for rec in records:
            ((run_hash, t_start, n, t_end),) = read_sdk_record(rec)
            assert n is not None, f"{rec}: close() never returned"
            row = reader.sequence(run_hash, "loss", {})
            assert row is not None, f"run {run_hash} has no points"
            assert row.count == n, f"run {run_hash}: {row.count} points, tracked {n}"
            pts = reader.points(row.id)
            assert pts.steps.tolist() == list(range(n))
            assert pts.values[-1] == (n - 1) * 0.5
            total += n
            starts.append(t_start)
            ends.append(t_end)
    finally:
        reader.close()
    span = max(ends) - min(starts)
    rate = total / span
    print(
        f"\nload: {producers} producers for {seconds:.0f}s: {total} points in {span:.1f}s "
        f"(start to last close), {rate:,.0f} points/s sustained; daemon peak RSS "
        f"{peak_mb:.0f} MB"
    )
    record_figure(f"load {producers}x{seconds:.0f}s: points", total)
    record_figure(f"load {producers}x{seconds:.0f}s: sustained points/s", round(rate))
    record_figure(f"load {producers}x{seconds:.0f}s: daemon peak RSS MB", round(peak_mb))
    assert peak_mb <= RSS_LIMIT_MB, f"daemon peak RSS {peak_mb:.0f} MB > {RSS_LIMIT_MB} MB"


@pytest.mark.timeout(60)
def test_reconnect_of_the_same_client_takes_over_its_run_lock(
    socket_env: Path, tmp_path: Path
) -> None:
    """A client that reconnects while its old connection looks alive re-opens its own run."""
    repo = tmp_path / "repo"
    repo.mkdir()
    d = Daemon(socket_env, dict(os.environ), tmp_path / "daemon.log")
    d.start()
    cid = os.urandom(16)
    old = RawClient(socket_env)
    new = RawClient(socket_env)
    try:
        old.welcome(repo, cid)
        assert isinstance(old.request("open_container", {"container": "run1"}), Reply)
        new.welcome(repo, cid)  # the old connection is given up, but not closed yet
        answer = new.request("open_container", {"container": "run1"})
    finally:
        old.close()
        new.close()
        d.stop()
    assert isinstance(answer, Reply), answer
