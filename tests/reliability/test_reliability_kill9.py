"""kill -9 loops: the daemon is SIGKILLed again and again while producers write to it.

Raw protocol producers (which see every Ack) and SDK producers (``trackd.Run``) run as
separate processes for the whole loop and keep an outside record of what was acknowledged,
fdatasynced by themselves (see ``producer.py``). The daemon is killed

* at random moments (``SIGKILL`` from the test), and
* at chosen code points, with strace fault injection and no hooks in the daemon: when its
  log thread enters the Nth ``fdatasync`` of the log segment (before durability), the Nth
  ``pwrite64`` of the segment (before the write), or the Nth ``write`` of the main thread
  (mostly the Ack going out on a socket after a sync).

After each kill the test recovers the log itself (as the next daemon would) and checks it
against the records: every client's events are exactly seqs 1..M in order, M is at least
the seq the client saw acknowledged. At the end the producers finish and everything
acknowledged, or confirmed by ``run.close()``, is present exactly once, in the log and in
the views.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from producer import POINTS_PER_EVENT, read_record, read_sdk_record
from reliability_support import (
    Daemon,
    classify_fd,
    killed_call,
    record_figure,
    start_producer,
    strace_available,
)

from trackd.eventlog.events import decode_event
from trackd.eventlog.log import EventLog
from trackd.eventlog.segment import parse_segment_name
from trackd.views import open_reader

pytestmark = [pytest.mark.integration]


@dataclass
class LogChecker:
    """Checks the log incrementally between daemon runs: seqs 1..M per client, in order."""

    log_dir: Path
    checked_end: int = 0
    last_seq: dict[bytes, int] = field(default_factory=dict)

    def check(self) -> None:
        """Open (recovering) the log and check everything appended since the last check."""
        with EventLog.open(self.log_dir, strict=False) as log:
            rep = log.recovery
            assert rep.corruption is None, f"kill -9 produced corruption: {rep.corruption}"
            end = log.synced_offset
            assert end >= self.checked_end, (
                f"the log shrank from {self.checked_end} to {end}: durable data was lost"
            )
            start = self.checked_end if self.checked_end > log.start_offset else None
            for rec in log.read(start):
                ev = decode_event(rec.payload)
                prev = self.last_seq.get(ev.client_id, 0)
                assert ev.client_seq == prev + 1, (
                    f"client {ev.client_id.hex()[:8]}: seq {ev.client_seq} after {prev} at "
                    f"offset {rec.offset} (a duplicate or a gap)"
                )
                self.last_seq[ev.client_id] = ev.client_seq
            self.checked_end = end


@dataclass
class Producers:
    """The producer processes of one loop and their records."""

    raw: dict[bytes, Path]
    sdk: list[Path]
    procs: list[object]
    stop_file: Path

    def check_records(self, checker: LogChecker) -> int:
        """Every raw client's acknowledged seq is in the log; returns events acked so far."""
        acked_total = 0
        for cid, rec in self.raw.items():
            acked, lost = read_record(rec)
            assert not lost, f"client {cid.hex()[:8]} saw acknowledged events vanish: {lost}"
            have = checker.last_seq.get(cid, 0)
            assert have >= acked, f"client {cid.hex()[:8]}: acked {acked}, log has {have}"
            acked_total += acked
        return acked_total


@pytest.fixture
def loop_dirs(tmp_path: Path, socket_env: Path) -> tuple[Path, Path, dict[str, str]]:
    """A repository, a folder for records, and the environment of daemon and producers."""
    repo = tmp_path / "repo"
    repo.mkdir()
    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ)
    env["TRACKD_AUTOSTART"] = "0"  # the test alone starts daemons
    env["TRACKD_FLUSH_TIMEOUT"] = "120"
    return repo, records, env


def _start_producers(
    repo: Path,
    records: Path,
    sock: Path,
    env: dict[str, str],
    counts: tuple[int, int],
    budget: float,
) -> Producers:
    n_raw, n_sdk = counts
    stop = records / "STOP"
    raw: dict[bytes, Path] = {}
    sdk: list[Path] = []
    procs: list[object] = []
    for i in range(n_raw):
        cid = bytes([0xA0 + i]) * 16
        rec = records / f"raw-{i}.txt"
        raw[cid] = rec
        args = ["raw", "--socket", str(sock), "--repo", str(repo), "--client", cid.hex()]
        args += ["--record", str(rec), "--events", "10000000", "--batch", "25"]
        args += ["--pace", "0.002", "--timeout", str(budget), "--stop-file", str(stop)]
        procs.append(start_producer(args, records / f"raw-{i}.out", env))
    for i in range(n_sdk):
        rec = records / f"sdk-{i}.txt"
        sdk.append(rec)
        args = ["sdk", "--repo", str(repo), "--record", str(rec), "--points", "20000"]
        args += ["--pace", "0.01", "--stop-file", str(stop)]
        procs.append(start_producer(args, records / f"sdk-{i}.out", env))
    return Producers(raw, sdk, procs, stop)


def _finish(
    producers: Producers, daemon: Daemon, repo: Path, records: Path, checker: LogChecker
) -> tuple[int, int]:
    """Let producers finish against a healthy daemon; check everything. Returns counts."""
    producers.stop_file.touch()
    if not daemon.alive():
        daemon.start()
    for p in producers.procs:
        rc = p.wait(timeout=180)  # type: ignore[attr-defined]
        out = sorted(records.glob("*.out"))
        assert rc == 0, "a producer failed:\n" + "\n".join(f.read_text() for f in out)
    spool = repo / ".trackd" / "spool"
    deadline = time.monotonic() + 60
    while list(spool.glob("*.spool")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(spool.glob("*.spool")), "spool files were never ingested"
    _wait_projected(repo, daemon)
    assert daemon.stop() == 0, daemon.log()[-3000:]
    checker.check()
    acked_total = producers.check_records(checker)
    for cid, rec in producers.raw.items():
        acked, _ = read_record(rec)
        assert checker.last_seq.get(cid, 0) == acked, "a finished client has unacked events"
    points = 0
    reader = open_reader(repo / ".trackd")
    try:
        for cid in producers.raw:
            row = reader.sequence(f"raw-{cid.hex()[:8]}", "loss", {})
            n = (checker.last_seq[cid] - 1) * POINTS_PER_EVENT
            assert row is not None
            assert row.count == n
            pts = reader.points(row.id)
            assert pts.steps.tolist() == list(range(n))
            assert pts.values.tolist() == [s * 0.5 for s in range(n)]
        for rec in producers.sdk:
            for run_hash, _start, closed, _end in read_sdk_record(rec):
                assert closed is not None, f"{rec}: run.close() never returned"
                row = reader.sequence(run_hash, "loss", {})
                assert row is not None, f"run {run_hash} has no points"
                pts = reader.points(row.id)
                assert pts.steps.tolist() == list(range(closed)), f"run {run_hash}"
                assert pts.values.tolist() == [s * 0.5 for s in range(closed)]
                points += closed
    finally:
        reader.close()
    return acked_total, points


def _wait_projected(repo: Path, daemon: Daemon) -> None:
    """Ask the daemon to flush (durable and applied) over a raw connection."""
    from producer import _connect

    from trackd.wire import FrameDecoder, Hello, Reply, Request, decode_message, encode_message

    s = _connect(str(daemon.socket), time.monotonic() + 30)
    assert s is not None
    try:
        s.sendall(encode_message(Hello(client_id=os.urandom(16), pid=os.getpid(), repo=str(repo))))
        s.sendall(encode_message(Request(id=1, op="flush", args={})))
        dec = FrameDecoder()
        while True:
            data = s.recv(1 << 16)
            assert data, "daemon closed the connection during flush"
            if any(isinstance(decode_message(b), Reply) for b in dec.feed(data)):
                return
    finally:
        s.close()


def _segment_path(repo: Path) -> str:
    log_dir = repo / ".trackd" / "log"
    names = sorted(n for n in os.listdir(log_dir) if parse_segment_name(n) is not None)
    return str(log_dir / (names[-1] if names else "00000000000000000000.seg"))


@pytest.mark.timeout(300)
def test_kill9_at_random_moments_loses_nothing_acknowledged(
    loop_dirs: tuple[Path, Path, dict[str, str]], socket_env: Path, long_mode: bool
) -> None:
    """SIGKILL the daemon at random moments many times: every acked event survives, once."""
    repo, records, env = loop_dirs
    iterations = 500 if long_mode else 14
    rng = random.Random(20261122)
    daemon = Daemon(socket_env, env, records / "daemon.log")
    daemon.start()
    producers = _start_producers(repo, records, socket_env, env, (3, 1), 60 + 3 * iterations)
    checker = LogChecker(repo / ".trackd" / "log")
    t0 = time.monotonic()
    try:
        for _ in range(iterations):
            time.sleep(rng.uniform(0.05, 0.6))
            daemon.kill()
            checker.check()
            producers.check_records(checker)
            daemon.start()
        acked, points = _finish(producers, daemon, repo, records, checker)
    finally:
        producers.stop_file.touch()
        daemon.kill()
        for p in producers.procs:
            p.kill()  # type: ignore[attr-defined]
            p.wait()  # type: ignore[attr-defined]
    elapsed = time.monotonic() - t0
    print(
        f"\nkill -9 at random moments: {iterations} iterations in {elapsed:.0f}s, "
        f"{acked} raw events acknowledged, {points} SDK points confirmed by close(), 0 lost"
    )
    record_figure("kill -9 iterations (random moments)", iterations)
    record_figure("kill -9 raw events acknowledged", acked)
    record_figure("kill -9 SDK points confirmed by close()", points)
    record_figure("kill -9 acknowledged events lost", 0)


STRACE_POINTS = [
    ("fdatasync", (1, 30), True),  # the log thread, before durability
    ("pwrite64", (1, 30), True),  # the log thread, before the write
    ("write", (4, 120), False),  # the main thread: acks, replies, log lines
]


@pytest.mark.timeout(300)
def test_kill9_at_chosen_syscalls_loses_nothing_acknowledged(
    loop_dirs: tuple[Path, Path, dict[str, str]], socket_env: Path, long_mode: bool
) -> None:
    """strace kills the daemon at its Nth fdatasync/pwrite64/write: nothing acked is lost."""
    reason = strace_available()
    if reason is not None:
        pytest.skip(reason)
    repo, records, env = loop_dirs
    rounds = 20 if long_mode else 3
    rng = random.Random(4242)
    daemon = Daemon(socket_env, env, records / "daemon.log")
    daemon.start()
    producers = _start_producers(repo, records, socket_env, env, (3, 1), 120 + 30 * rounds)
    checker = LogChecker(repo / ".trackd" / "log")
    hits: dict[str, int] = {}
    iterations = 0
    try:
        deadline = time.monotonic() + 30
        while checker.checked_end == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            if (repo / ".trackd" / "log").exists():
                daemon.kill()
                checker.check()  # producers have written something: the repository is open
                if checker.checked_end == 0 or not checker.last_seq:
                    checker.checked_end = 0
                    daemon.start()
        assert checker.last_seq, "the producers never got going"
        for _ in range(rounds):
            for syscall, (lo, hi), on_segment in STRACE_POINTS:
                n = rng.randint(lo, hi)
                args = ["-e", f"trace={syscall}"]
                args += ["-e", f"inject={syscall}:signal=SIGKILL:when={n}"]
                if on_segment:
                    args += ["-P", _segment_path(repo)]
                daemon.start(strace=args, must_serve=False)
                status = daemon.wait(timeout=8.0)
                if status is None:  # not reached in time: kill it the ordinary way
                    daemon.kill()
                assert daemon.trace_path is not None
                where = classify_fd(killed_call(daemon.trace_path, syscall))
                key = f"{syscall}#{n}: {where}"
                hits[key] = hits.get(key, 0) + 1
                iterations += 1
                checker.check()
                producers.check_records(checker)
        acked, points = _finish(producers, daemon, repo, records, checker)
    finally:
        producers.stop_file.touch()
        daemon.kill()
        for p in producers.procs:
            p.kill()  # type: ignore[attr-defined]
            p.wait()  # type: ignore[attr-defined]
    reached = {k: v for k, v in hits.items() if "not reached" not in k}
    print(f"\nkill -9 at chosen syscalls: {iterations} iterations; kill points:")
    for k, v in sorted(hits.items()):
        print(f"  {k} x{v}")
    print(f"{acked} raw events acknowledged, {points} SDK points confirmed, 0 lost")
    assert len(reached) >= iterations // 2, f"too few injections reached: {hits}"
    assert any("log segment" in k for k in reached), hits
    record_figure("kill -9 iterations (strace at chosen syscalls)", iterations)
    record_figure("kill -9 strace kill points reached", len(reached))
    record_figure("kill -9 raw events acknowledged", acked)
    record_figure("kill -9 SDK points confirmed by close()", points)
    record_figure("kill -9 acknowledged events lost", 0)
