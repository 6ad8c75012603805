"""``trackd views rebuild|verify``, ``log verify`` and ``sync`` against real repositories
written by a real daemon process."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import ALPHA, BETA, Populated, trackd, write_offline_spool

import trackd as td

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _snapshot(root: Path) -> tuple[str, str, str]:
    """What the read commands print: the run list, alpha's metrics, and one metric's points."""
    outs = (
        trackd("runs", "ls", "--repo", root, "--json"),
        trackd("metrics", ALPHA, "--repo", root, "--json"),
        trackd("metrics", ALPHA, "loss", "--context", "subset=val", "--repo", root, "--json"),
    )
    assert all(o.exit_code == 0 for o in outs), [o.output for o in outs]
    return outs[0].stdout, outs[1].stdout, outs[2].stdout


def test_views_rebuild_needs_the_log_then_matches(populated: Populated, daemon: Any) -> None:
    """views rebuild and verify refuse (exit 1) while the daemon owns the log; after it stops,
    rebuild works, the commands print the same as before, and verify finds them equal."""
    root = populated.root
    for cmd in (("views", "rebuild", "-y"), ("views", "verify")):
        refused = trackd(*cmd, "--repo", root)
        assert refused.exit_code == 1, refused.output
        assert "in use by another process" in refused.stderr
        assert "stop it first (`trackd daemon stop`)" in refused.stderr

    populated.runs["gamma"].close()
    before = _snapshot(root)
    assert daemon.stop() == 0

    rebuilt = trackd("views", "rebuild", "-y", "--repo", root)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "3 runs, 5 sequences, 265 points" in rebuilt.stdout
    assert _snapshot(root) == before

    verified = trackd("views", "verify", "--repo", root, "--json")
    assert verified.exit_code == 0, verified.output
    doc = json.loads(verified.stdout)
    assert (doc["equal"], doc["differences"], doc["points"]) == (True, [], 265)
    assert not list((root / ".trackd").glob(".views-verify-*"))  # the comparison is removed


def test_views_verify_reports_differences(populated: Populated, daemon: Any) -> None:
    """verify exits 1 and names each difference between views.db and a rebuild."""
    populated.runs["gamma"].close()
    assert daemon.stop() == 0
    db = sqlite3.connect(populated.root / ".trackd" / "views.db")
    with db:
        db.execute("UPDATE containers SET name = 'evil' WHERE hash = ?", (ALPHA,))
        db.execute(
            "DELETE FROM sequence_chunks WHERE sequence_id IN "
            "(SELECT id FROM sequences WHERE container = ?)",
            (BETA,),
        )
    db.close()
    out = trackd("views", "verify", "--repo", populated.root)
    assert out.exit_code == 1, out.output
    assert f"run {ALPHA}: name is 'evil' in the views, 'alpha' in the log" in out.stdout
    assert f"run {BETA} metric 'loss' [subset=train]: 0 points in the views, 50 in the log" in (
        out.stdout
    )
    doc = json.loads(trackd("views", "verify", "--repo", populated.root, "--json").stdout)
    assert doc["equal"] is False
    assert len(doc["differences"]) == 2


def test_a_damaged_chunk_is_reported_by_verify_and_rebuilt_by_the_next_daemon(
    populated: Populated, daemon: Any
) -> None:
    """A chunk whose bytes no longer match its checksum: `views verify` names it and exits 1;
    `trackd metrics` refuses to print it as data; the next daemon rebuilds the views at open
    and serves the original points."""
    populated.runs["gamma"].close()
    before = _snapshot(populated.root)
    assert daemon.stop() == 0
    db = sqlite3.connect(populated.root / ".trackd" / "views.db")
    with db:
        # Alpha's epoch metric's steps start at 1024 instead of 0, as a flipped bit in the
        # first step of its (compact, arithmetic) steps column would make them.
        (sid,) = db.execute(
            "SELECT id FROM sequences WHERE container = ? AND name = 'epoch'", (ALPHA,)
        ).fetchone()
        (steps,) = db.execute(
            "SELECT steps FROM sequence_chunks WHERE sequence_id = ?", (sid,)
        ).fetchone()
        bad = bytearray(steps)
        bad[5 + 1] ^= 0x04  # after the column's kind byte and count
        db.execute("UPDATE sequence_chunks SET steps = ? WHERE sequence_id = ?", (bad, sid))
    db.close()

    out = trackd("views", "verify", "--repo", populated.root)
    assert out.exit_code == 1, out.output
    assert f"run {ALPHA} metric 'epoch' [-]: views at" in out.stdout
    assert "fails its checksum" in out.stdout
    shown = trackd("metrics", ALPHA, "epoch", "--repo", populated.root, "--json")
    assert shown.exit_code == 1, shown.output
    assert "fails its checksum" in shown.stderr

    daemon.start()
    td.Repo(populated.root).flush()
    assert _snapshot(populated.root) == before
    epoch = json.loads(trackd("metrics", ALPHA, "epoch", "--repo", populated.root, "--json").stdout)
    assert [p["step"] for p in epoch["points"]] == list(range(100))


def test_log_verify_detects_a_bit_flip(daemon: Any, repo_path: Path) -> None:
    """log verify passes on a clean log and exits 1, naming the offset, after one bit of a
    record in the middle of the segment is flipped."""
    segment = repo_path / ".trackd" / "log" / f"{0:020d}.seg"
    with td.Run(repo=repo_path) as first:
        for i in range(300):
            first.track(float(i), name="x", step=i)
    durable = segment.stat().st_size
    with td.Run(repo=repo_path) as second:
        for i in range(300):
            second.track(float(i), name="x", step=i)
    assert daemon.stop() == 0

    clean = trackd("log", "verify", "--repo", repo_path, "--json")
    assert clean.exit_code == 0, clean.output
    doc = json.loads(clean.stdout)
    assert (doc["ok"], doc["corrupt"]) == (True, False)
    records = doc["records"]
    assert records > 4

    pos = durable // 2
    data = bytearray(segment.read_bytes())
    data[pos] ^= 0x10
    segment.write_bytes(bytes(data))
    bad = trackd("log", "verify", "--repo", repo_path, "--json")
    assert bad.exit_code == 1, bad.output
    doc = json.loads(bad.stdout)
    assert doc["corrupt"] is True
    (seg,) = doc["segments"]
    assert seg["ok"] is False
    assert seg["torn_tail"] is False
    assert 0 < seg["error_offset"] <= pos
    assert seg["records"] < records
    text = trackd("log", "verify", "--repo", repo_path)
    assert text.exit_code == 1
    assert f"corrupt at offset {seg['error_offset']}" in text.stdout
    assert "CORRUPT" in text.stdout


def test_sync_ingests_offline_spool_files(daemon: Any, repo_path: Path, socket_env: Path) -> None:
    """sync copies a spool file written without a daemon into the repository, the daemon
    ingests it (the run becomes readable), and a second sync counts only duplicates."""
    spool = write_offline_spool(repo_path.parent / "offline", socket_env.parent / "no.sock", 300)
    assert trackd("init", "--repo", repo_path).exit_code == 0

    first = trackd("sync", spool, "--repo", repo_path, "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["copied"] == [str(repo_path / ".trackd" / "spool" / spool.name)]
    assert doc["events"] > 0
    assert (doc["ingested"], doc["duplicates"]) == (doc["events"], 0)
    assert not (repo_path / ".trackd" / "spool" / spool.name).exists()
    assert spool.exists()  # copied, not moved

    (run,) = json.loads(trackd("runs", "ls", "--repo", repo_path, "--json").stdout)
    assert (run["name"], run["experiment"], run["state"]) == ("offline", "offline", "finished")
    points = json.loads(
        trackd("metrics", run["hash"], "loss", "--repo", repo_path, "--json").stdout
    )
    assert [p["value"] for p in points["points"]] == [i * 0.5 for i in range(300)]

    again = trackd("sync", spool, "--repo", repo_path)
    assert again.exit_code == 0, again.output
    n = doc["events"]
    assert f"{n:,} events, 0 new, {n:,} duplicates dropped" in again.stdout
    assert len(json.loads(trackd("runs", "ls", "--repo", repo_path, "--json").stdout)) == 1

    idle = trackd("sync", "--repo", repo_path)
    assert idle.exit_code == 0
    assert "nothing to sync" in idle.stdout
