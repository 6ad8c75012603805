"""Spool files left by clients that found no daemon: ingested once, deduplicated, deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from rawclient import (
    ClientFactory,
    log_identities,
    point_stream,
    read_points,
    sequence_count,
    wait_for,
)

from trackd.eventlog.record import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from trackd.eventlog.spool import SpoolWriter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _spool_files(repo: Path) -> list[Path]:
    return sorted((repo / ".trackd" / "spool").glob("*.spool"))


def test_spool_of_dead_writer_is_ingested_deduplicated_and_deleted(
    daemon_factory, connect: ClientFactory, repo_path: Path
) -> None:
    """At repository open a dead writer's spool file is ingested, minus what was durable."""
    cid = os.urandom(16)
    stream = point_stream(cid, "r", "loss", 119)  # seqs 1..120
    daemon_factory.start()
    c = connect()
    c.welcome(repo_path, cid)
    c.append(stream[:50])
    c.wait_ack(50)
    c.close()
    assert daemon_factory.stop() == 0

    w = SpoolWriter(repo_path / ".trackd" / "spool", cid)
    w.append(stream)  # the client spooled everything again, then died
    w.close()
    assert len(_spool_files(repo_path)) == 1

    daemon_factory.start()
    other = connect()
    other.welcome(repo_path)  # opening the repository scans its spool
    wait_for(lambda: not _spool_files(repo_path), what="the spool file to be ingested")
    other.flush()
    assert read_points(repo_path, "r", "loss") == [(s, s * 0.5) for s in range(119)]
    assert daemon_factory.stop() == 0
    assert log_identities(repo_path) == [(cid, s) for s in range(1, 121)]
    assert "ingested spool file" in daemon_factory.log()


def test_spool_of_live_writer_waits_until_it_is_closed(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A spool file still locked by its writer is left alone, and ingested once it closes."""
    c = connect()
    c.welcome(repo_path)
    cid = os.urandom(16)
    w = SpoolWriter(repo_path / ".trackd" / "spool", cid)
    w.append(point_stream(cid, "s", "acc", 30))
    w.sync()
    time.sleep(1.0)  # the watcher has seen the file by now, and must not take it
    assert _spool_files(repo_path) == [w.path]
    assert sequence_count(repo_path, "s", "acc") == 0
    w.close()
    wait_for(lambda: not _spool_files(repo_path), what="the spool file to be ingested")
    c.flush()
    assert sequence_count(repo_path, "s", "acc") == 30
    # A client reconnecting with that id learns that its spooled events are durable.
    again = connect()
    assert again.welcome(repo_path, cid).hwm == 31


def test_damaged_spool_is_quarantined_after_ingesting_its_good_prefix(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A spool file with a bad record before valid ones goes to quarantine, prefix ingested."""
    cid = os.urandom(16)
    stream = point_stream(cid, "q", "loss", 5)  # seqs 1..6
    w = SpoolWriter(repo_path / ".trackd" / "spool", cid)
    w.append(stream)
    w.close()
    path = w.path
    # Flip a payload byte of the fourth record (seq 4): records 1-3 stay good, 5-6 follow.
    pos = SEGMENT_HEADER_SIZE + sum(RECORD_HEADER_SIZE + len(p) for p in stream[:3])
    with open(path, "r+b") as f:
        f.seek(pos + RECORD_HEADER_SIZE + 5)
        byte = f.read(1)
        f.seek(pos + RECORD_HEADER_SIZE + 5)
        f.write(bytes([byte[0] ^ 0xFF]))

    c = connect()
    c.welcome(repo_path)
    wait_for(lambda: not path.exists(), what="the spool file to be moved")
    c.flush()
    moved = list((repo_path / ".trackd" / "quarantine").rglob(path.name))
    assert len(moved) == 1
    assert read_points(repo_path, "q", "loss") == [(0, 0.0), (1, 0.5)]
    wait_for(lambda: "is damaged" in daemon.log(), what="the damage to be logged")
    assert path.name in daemon.log()


def test_warm_up_imports_what_the_watcher_would_import_on_the_event_loop() -> None:
    """After warm_up() (which the daemon runs before it serves), the anyio backend that
    watchfiles.awatch would import inside the first spool watcher is already loaded."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from trackd.daemon import spool\n"
        "assert 'anyio._backends._asyncio' not in sys.modules\n"
        "spool.warm_up()\n"
        "assert 'anyio._backends._asyncio' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
