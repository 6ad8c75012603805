"""``trackd daemon start|status|stop`` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from rawclient import RawClient, point_stream

from trackd.wire.sockfiles import read_pidfile

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def trackd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``trackd ARGS`` with this interpreter and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "trackd", *args], capture_output=True, text=True, timeout=60
    )


def test_start_status_stop(socket_env: Path, repo_path: Path) -> None:
    """start backgrounds a daemon, status reports it (JSON and text), stop ends it; then 3."""
    started = trackd("daemon", "start")
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    pid = int(Path(f"{socket_env}.pid").read_text())

    again = trackd("daemon", "start")
    assert again.returncode == 0
    assert f"already running (pid {pid})" in again.stdout

    c = RawClient(socket_env)
    c.welcome(repo_path)
    c.append(point_stream(c.client_id, "r", "loss", 10))
    c.flush()
    c.flush()

    st = trackd("daemon", "status", "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["pid"] == pid
    assert doc["uptime_s"] > 0
    (repo,) = doc["repositories"]
    assert repo["path"] == str(repo_path.resolve())
    assert repo["events_written"] == 11
    assert repo["lag_bytes"] == 0
    assert repo["lag_events"] == 0
    assert "events_per_s" in doc
    flush = repo["flush_ms"]
    assert flush["count"] == 2
    assert 0 < flush["p50"] <= flush["p99"] <= flush["max"] < 10_000
    # Each flush splits into until durable + until applied: neither part exceeds the whole,
    # and together they account for it (to the rounding of the two parts).
    durable, applied = repo["flush_sync_ms"], repo["flush_apply_ms"]
    assert durable["count"] == applied["count"] == 2
    for part in (durable, applied):
        assert 0 <= part["p50"] <= part["max"] <= flush["max"]
    assert durable["max"] + applied["max"] >= flush["max"] - 0.02

    text = trackd("daemon", "status")
    assert text.returncode == 0
    assert f"pid {pid}" in text.stdout
    assert str(repo_path.resolve()) in text.stdout
    assert "flushes 2: p50 " in text.stdout
    assert "durable p50 " in text.stdout
    c.close()

    stopped = trackd("daemon", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not socket_env.exists()
    log = Path(f"{socket_env}.log").read_text()
    assert "stopped (exit status 0)" in log

    gone = trackd("daemon", "status")
    assert gone.returncode == 3
    assert f"daemon unreachable at {socket_env}" in gone.stderr
    assert trackd("daemon", "stop").returncode == 3


def test_every_daemon_command_has_help() -> None:
    """Each daemon subcommand prints help and exits 0."""
    for cmd in ("run", "start", "stop", "status"):
        out = trackd("daemon", cmd, "--help")
        assert out.returncode == 0, cmd
        assert "Usage" in out.stdout, cmd


def test_pidfile_exists_as_soon_as_the_socket_answers(daemon_factory: DaemonProc) -> None:
    """Whoever sees the socket answer can read the daemon's pid (no 'pid None')."""
    for _ in range(5):
        daemon = daemon_factory.start()
        assert read_pidfile(daemon.socket) == daemon.pid
        assert daemon.stop() == 0
