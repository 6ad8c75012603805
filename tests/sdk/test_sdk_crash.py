"""Crashes and outages with real processes: producers killed, the daemon killed or absent,
many producers and many auto-starts at once. Nothing acknowledged is lost, nothing twice."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sdk_support import (
    assert_exactly_once,
    child_env,
    expected_value,
    finish,
    log_points,
    producer_code,
    read_hash,
    start_script,
    wait_for,
)

import trackd
from trackd.errors import FlushTimeoutError, TrackdError
from trackd.eventlog.events import SequenceAppended
from trackd.eventlog.layout import RepoLayout
from trackd.sdk.client import Client, SpoolWarning, get_client

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAMES = ("loss", "acc", "lr")


def _ctx(k: int) -> str:
    return json.dumps({"k": k}, separators=(",", ":"))


def _check_full_run(repo: Path, h: str, n: int) -> None:
    """Every point of a producer_code run is readable and logged exactly once."""
    c = trackd.Repo(repo).get_container(h)
    for k, name in enumerate(NAMES):
        got = list(c.sequences[(name, {"k": k})].items())
        assert got == [(i, expected_value(k, i)) for i in range(n)], f"{h}/{name}"
    assert_exactly_once(repo, h, {(name, _ctx(k)): n for k, name in enumerate(NAMES)})


def _spool_files(repo: Path) -> list[str]:
    d = RepoLayout.at(repo).spool_dir
    return sorted(p for p in os.listdir(d) if p.endswith(".spool")) if d.exists() else []


def test_many_producer_processes_at_once(daemon: DaemonProc, repo_path: Path) -> None:
    """Six processes tracking at the same time each get every point stored exactly once."""
    n = 4000
    procs = [start_script(producer_code(repo_path, n), env=child_env()) for _ in range(6)]
    hashes = [read_hash(p) for p in procs]
    for p in procs:
        finish(p)
    assert len(set(hashes)) == 6
    for h in hashes:
        _check_full_run(repo_path, h, n)


def test_exit_right_after_a_flush_spools_nothing(
    daemon: DaemonProc, repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events a flush confirmed are not spooled at exit, even when the flusher stops before
    it took the daemon's reply and acks from its inbox (the reply resolves the caller on the
    reader thread, so a process that exits right after close() can get there first; under
    load it did, and every such exit spooled events the daemon already had)."""
    real = Client._handle_inbox

    def without_messages(self: Client, resolved: list[Any]) -> None:
        # The flusher never gets to the daemon's messages before it shuts down.
        self._inbox = collections.deque(i for i in self._inbox if i[0] != "msg")
        real(self, resolved)

    monkeypatch.setattr(Client, "_handle_inbox", without_messages)
    client = get_client(repo_path)
    run = trackd.Run(repo=repo_path)
    for i in range(500):
        run.track(float(i), "loss", step=i)
    client.flush()
    client.close()
    assert client._unacked == collections.deque()
    assert _spool_files(repo_path) == []


KILLED_PRODUCER = """
    import time, trackd
    repo = {repo!r}
    run = trackd.Run(repo=repo)
    print("hash", run.hash, flush=True)
    names = ("loss", "acc", "lr")
    i = 0
    while True:
        for k, name in enumerate(names):
            run.track(i * 0.5 + k, name, context={{"k": k}})
        i += 1
        if i == 3000:
            trackd.Repo(repo).flush()
            print("flushed", i, flush=True)
        if i % 500 == 0:
            time.sleep(0.005)
"""


def test_killed_producer_leaves_a_prefix_including_its_flushes(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """kill -9 of a producer mid-run: each sequence holds a prefix of what it tracked, with
    everything before its last flush barrier, and nothing twice."""
    proc = start_script(KILLED_PRODUCER.format(repo=str(repo_path)), env=child_env())
    h = read_hash(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["flushed", "3000"]
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)

    # The daemon may still be applying what the producer sent just before it died: wait
    # until the views hold every point the log holds (nobody flushes for a dead client).
    def views_caught_up() -> bool:
        seqs = trackd.Repo(repo_path).get_container(h).sequences
        logged = log_points(repo_path)
        return all(
            len(list(seqs[(name, {"k": k})].items())) == len(logged[(h, name, _ctx(k))])
            for k, name in enumerate(NAMES)
        )

    wait_for(views_caught_up, what="the views to apply everything the log holds")
    c = trackd.Repo(repo_path).get_container(h)
    lengths = []
    for k, name in enumerate(NAMES):
        got = list(c.sequences[(name, {"k": k})].items())
        assert len(got) >= 3000, f"{name}: a point before the flush barrier is missing"
        assert got == [(i, expected_value(k, i)) for i in range(len(got))], f"{name}: no prefix"
        lengths.append(len(got))
    assert_exactly_once(
        repo_path,
        h,
        {(name, _ctx(k)): n for k, (name, n) in enumerate(zip(NAMES, lengths, strict=True))},
    )


SLOW_PRODUCER = """
    import time, trackd
    run = trackd.Run(repo={repo!r})
    print("hash", run.hash, flush=True)
    names = ("loss", "acc", "lr")
    for i in range({n}):
        for k, name in enumerate(names):
            run.track(i * 0.5 + k, name, context={{"k": k}})
        if i == {n} // 4:
            print("running", flush=True)
        if i % 200 == 0:
            time.sleep(0.01)
    run.close()
    print("closed", flush=True)
"""


def test_daemon_killed_mid_run_loses_nothing(daemon: DaemonProc, repo_path: Path) -> None:
    """kill -9 of the daemon while three producers track: they finish without an exception
    (a daemon is auto-started) and every point is stored exactly once."""
    n = 20_000
    code = SLOW_PRODUCER.format(repo=str(repo_path), n=n)
    procs = [start_script(code, env=child_env()) for _ in range(3)]
    hashes = [read_hash(p) for p in procs]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "running"
    old_pid = daemon.pid
    daemon.kill()
    for p in procs:
        out, err = finish(p)
        assert "closed" in out
        assert "Traceback" not in err
    pid_file = Path(str(daemon.socket) + ".pid")
    assert int(pid_file.read_text()) != old_pid  # a new daemon serves the socket
    for h in hashes:
        _check_full_run(repo_path, h, n)


def test_no_daemon_for_a_whole_run_spools_then_ingests(
    daemon_factory: DaemonProc, repo_path: Path
) -> None:
    """With no daemon and TRACKD_AUTOSTART=0 a producer writes a spool file and exits 0;
    a daemon started later ingests it completely, once, and deletes it."""
    n = 5000
    proc = start_script(producer_code(repo_path, n), env=child_env(TRACKD_AUTOSTART="0"))
    h = read_hash(proc)
    _out, err = finish(proc)
    assert "SpoolWarning" in err
    assert "become queryable once a daemon runs" in err
    spools = _spool_files(repo_path)
    assert len(spools) == 1
    assert spools[0] in err

    daemon_factory.start()
    repo = trackd.Repo(repo_path)
    repo.flush()  # the daemon serves a repository once a client names it
    wait_for(lambda: not _spool_files(repo_path), what="the daemon to ingest the spool")
    wait_for(lambda: h in repo.container_hashes, what="the spooled run in the views")
    wait_for(
        lambda: (
            all(len(s) == n for s in repo.get_container(h).sequences)
            and len(repo.get_container(h).sequences) == 3
        ),
        what="every spooled point in the views",
    )
    _check_full_run(repo_path, h, n)
    assert repo.get_container(h).active is False


def test_spooling_client_replays_its_spool_when_a_daemon_appears(
    daemon_factory: DaemonProc, repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: close() without a daemon warns and spools; once a daemon runs, the same
    client replays the spool before anything new, deletes it, and later writes go live."""
    monkeypatch.setenv("TRACKD_AUTOSTART", "0")
    n = 3000
    run = trackd.Run(repo=repo_path)
    for i in range(n):
        for k, name in enumerate(NAMES):
            run.track(expected_value(k, i), name, context={"k": k})
    with pytest.warns(SpoolWarning, match=r"\d+ events were written to the spool file"):
        run.close()
    assert len(_spool_files(repo_path)) == 1

    daemon_factory.start()
    second = trackd.Run(repo=repo_path)
    second.track(1.0, "after")
    second.close()  # barrier: replays the spool first, then this run
    # close() returns on the reader thread's copy of the reply; the flusher deletes the
    # spool once it has taken the acks, a moment later.
    wait_for(lambda: not _spool_files(repo_path), timeout=5, what="the replayed spool deleted")
    _check_full_run(repo_path, run.hash, n)
    assert list(trackd.Repo(repo_path).get_container(second.hash).sequences["after"].values()) == [
        1.0
    ]


CROWD = """
    import sys, trackd
    from trackd.sdk import _connect
    sys.stdin.readline()
    run = trackd.Run(repo={repo!r})
    for i in range(100):
        run.track(float(i), "m")
    run.close()
    print("hash", run.hash, len(_connect.spawned), flush=True)
"""


def test_crowd_of_processes_auto_starts_exactly_one_daemon(
    socket_env: Path, repo_path: Path
) -> None:
    """Five processes that find no daemon at the same moment start exactly one between
    them, and all their runs are stored."""
    assert not socket_env.exists()
    procs = [start_script(CROWD.format(repo=str(repo_path)), env=child_env()) for _ in range(5)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    results = [finish(p)[0].split() for p in procs]
    assert sum(int(r[2]) for r in results) == 1
    assert socket_env.exists()
    repo = trackd.Repo(repo_path)
    for r in results:
        assert list(repo.get_container(r[1]).sequences["m"].values()) == [
            float(i) for i in range(100)
        ]


STALLED = """
    import sys, time, trackd
    run = trackd.Run(repo={repo!r})
    print("hash", run.hash, flush=True)
    names = ("loss", "acc", "lr")
    for i in range({n}):
        for k, name in enumerate(names):
            run.track(i * 0.5 + k, name, context={{"k": k}})
        if i == 2000:
            print("running", flush=True)
            sys.stdin.readline()  # the test stops the daemon meanwhile
        if i % 1000 == 0:
            time.sleep(0.01)
    run.close()
    print("closed", flush=True)
"""


@contextlib.contextmanager
def _daemon_stopped_mid_run(
    daemon: DaemonProc, repo: Path, n: int
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a STALLED producer of ``n`` steps and SIGSTOP the daemon once it runs; the
    producer goes on tracking during the block, and the daemon continues after it."""
    proc = start_script(STALLED.format(repo=str(repo), n=n), env=child_env())
    h = read_hash(proc)
    assert proc.stdout is not None
    assert proc.stdin is not None
    assert proc.stdout.readline().strip() == "running"
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
        yield proc, h
    finally:
        os.kill(daemon.pid, signal.SIGCONT)


def test_stopped_daemon_makes_the_client_spool_then_replay(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """A daemon that stops reading (SIGSTOP) makes a producer spool after its sends stall;
    once the daemon continues, the spool is replayed and deleted, every point stored once."""
    n = 60_000
    with _daemon_stopped_mid_run(daemon, repo_path, n) as (proc, h):
        wait_for(lambda: len(_spool_files(repo_path)) == 1, what="the producer to spool")
    out, err = finish(proc)
    assert "closed" in out
    assert "spooling events to" in err
    assert _spool_files(repo_path) == []
    _check_full_run(repo_path, h, n)


def test_a_daemon_that_pauses_reading_for_seconds_keeps_its_clients(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """A daemon that reads nothing for 4 s, as when it pauses reads for memory under heavy
    load, is applying backpressure, not hung: the producer's sends wait, it neither drops
    the connection nor spools, and every point is stored once."""
    n = 60_000
    with _daemon_stopped_mid_run(daemon, repo_path, n) as (proc, h):
        time.sleep(4.0)
    out, err = finish(proc)
    assert "closed" in out
    assert "lost the connection" not in err, err
    assert "spool" not in err, err
    assert _spool_files(repo_path) == []
    _check_full_run(repo_path, h, n)


def _thread_cpu_seconds(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_client_whose_daemon_stopped_does_not_spin(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """A client with nothing to send that loses its daemon waits quietly: it neither
    reconnects (nothing wants a connection) nor busy-loops. Its flusher once spun at 100%
    of a core, because the reconnect time it waited for had already passed."""
    run = trackd.Run(repo=repo_path)
    run.track(1.0, "m")
    run.close()
    client = get_client(run.repo.path)
    assert client._thread is not None
    tid = client._thread.native_id
    assert tid is not None
    assert daemon.stop() == 0
    wait_for(lambda: client.mode != "live", what="the client to notice the daemon is gone")
    before = _thread_cpu_seconds(tid)
    time.sleep(1.0)
    assert _thread_cpu_seconds(tid) - before < 0.2
    assert not daemon.socket.exists()  # and it did not start a daemon of its own


def test_flush_times_out_against_a_connected_daemon_that_does_not_answer(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """flush() raises FlushTimeoutError naming the socket, the unacknowledged events and
    the timeout when the connected daemon does not confirm; later it completes."""
    run = trackd.Run(repo=repo_path)
    run.track(1.0, "m")
    trackd.Repo(repo_path).flush()
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        run.track(2.0, "m")
        with pytest.raises(FlushTimeoutError, match=r"unacknowledged events within 0.5s") as ei:
            get_client(run.repo.path).flush(timeout=0.5)
        assert str(daemon.socket) in str(ei.value)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    run.close()
    assert list(trackd.Repo(repo_path).get_container(run.hash).sequences["m"].values()) == [
        1.0,
        2.0,
    ]


def test_rejected_append_is_raised_from_the_next_flush(daemon: DaemonProc, repo_path: Path) -> None:
    """An event the daemon rejects is not raised into track() but from the next flush, as
    the error class the daemon named; the client goes on working afterwards."""
    run = trackd.Run(repo=repo_path)
    trackd.Repo(repo_path).flush()  # a rejected frame loses all its events: keep them apart
    bad = SequenceAppended(container=run.hash, name="", context={}, steps=b"", values=b"")
    get_client(run.repo.path).enqueue_event(bad)
    with pytest.raises(TrackdError, match="name must be a non-empty string"):
        trackd.Repo(repo_path).flush()
    run.track(3.0, "m")
    run.close()
    assert list(trackd.Repo(repo_path).get_container(run.hash).sequences["m"].values()) == [3.0]
