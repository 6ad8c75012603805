"""Corruption of log segments, of views.db and of spool files, with fixed seeds.

Damage kinds: truncation at a random length, bit flips, zeroed 512-byte sectors and
sectors of random garbage. Recovery must behave as DESIGN.md says:

* log segments: a torn tail of the last segment is cut; a bad record that durable records
  follow, or any bad record in an earlier segment, stops recovery there, and the rest is
  moved to quarantine and reported with the segment and the offset. Nothing before the
  damage is lost, nothing after it is silently dropped (it is in quarantine), nothing is
  invented, and views whose checkpoint is now past the log are rebuilt;
* views.db: a damaged file is rebuilt from the log; the views afterwards equal a rebuild;
* spool files: the records before the damage are ingested; a file with a bad record that
  valid records follow is moved to quarantine with an ERROR naming it.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability_support import EventMaker, dump_views, record_figure

from trackd.eventlog.events import decode_event
from trackd.eventlog.log import EventLog
from trackd.eventlog.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    record_durable_before,
    scan_records,
)
from trackd.eventlog.segment import parse_segment_name
from trackd.eventlog.spool import SpoolWriter, read_spool
from trackd.views import VIEWS_FILE, open_views, rebuild

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
from rawclient import RawClient, log_identities, wait_for

SECTOR = 512


# -- damage --------------------------------------------------------------------------------


def truncate(data: bytearray, rng: random.Random) -> str:
    """Cut the file at a random length."""
    n = rng.randrange(0, len(data))
    del data[n:]
    return f"truncate to {n}"


def flip_bits(data: bytearray, rng: random.Random) -> str:
    """Flip 1 to 3 random bits."""
    where = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 3)))
    for pos in where:
        data[pos] ^= 1 << rng.randrange(8)
    return f"flip bits at {where}"


def zero_sector(data: bytearray, rng: random.Random) -> str:
    """Zero one 512-byte sector."""
    s = rng.randrange((len(data) + SECTOR - 1) // SECTOR) * SECTOR
    end = min(s + SECTOR, len(data))
    data[s:end] = bytes(end - s)
    return f"zero sector at {s}"


def garbage_sector(data: bytearray, rng: random.Random) -> str:
    """Overwrite one 512-byte sector with random bytes."""
    s = rng.randrange((len(data) + SECTOR - 1) // SECTOR) * SECTOR
    end = min(s + SECTOR, len(data))
    data[s:end] = rng.randbytes(end - s)
    return f"garbage sector at {s}"


DAMAGE: dict[str, Callable[[bytearray, random.Random], str]] = {
    "truncate": truncate,
    "bitflip": flip_bits,
    "zero-sector": zero_sector,
    "garbage-sector": garbage_sector,
}


def first_difference(a: bytes, b: bytes) -> int | None:
    """The first position where two byte strings differ (a length difference counts)."""
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i : i + 4096] != b[i : i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return j
    return None if len(a) == len(b) else n


# -- log segments --------------------------------------------------------------------------


@dataclass
class LogRecordInfo:
    """One record of the pristine log: where it is and what its writer knew was durable."""

    offset: int
    end: int
    durable_before: int
    payload: bytes


def _build_log(d: Path) -> list[LogRecordInfo]:
    """A log of three segments with singly and group-synced records of several kinds."""
    m = EventMaker()
    groups = [[m.created()], [m.params("lr", 0.1)]]
    groups += [[m.points(20 + 7 * i)] for i in range(12)]
    groups += [[m.points(30), m.points(5), m.props(name="x")] for _ in range(4)]
    groups += [[m.points(200)], [m.finished()]]
    with EventLog.open(d, segment_size=6000) as log:
        for g in groups:
            log.append(g)
            log.sync()
    out: list[LogRecordInfo] = []
    for seg in sorted(d.glob("*.seg")):
        base = parse_segment_name(seg.name)
        assert base is not None
        data = seg.read_bytes()
        scan = scan_records(data, SEGMENT_HEADER_SIZE)
        assert scan.clean
        for s, e in scan.spans:
            out.append(
                LogRecordInfo(
                    base + s,
                    base + e,
                    record_durable_before(data, s),
                    data[s + RECORD_HEADER_SIZE : e],
                )
            )
    return out


def _segment_files(d: Path) -> list[tuple[int, Path]]:
    found = [(parse_segment_name(p.name), p) for p in d.iterdir()]
    return sorted((b, p) for b, p in found if b is not None)


LOG_CASES = [(kind, seed) for kind in sorted(DAMAGE) for seed in range(12)]


@pytest.fixture(scope="module")
def pristine_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LogRecordInfo]]:
    """A pristine three-segment log (with its views) built once for every damage case."""
    root = tmp_path_factory.mktemp("pristine") / ".trackd"
    records = _build_log(root / "log")
    with EventLog.open(root / "log", segment_size=6000) as log:
        open_views(root, log).close()
    assert len(_segment_files(root / "log")) >= 3
    return root, records


@pytest.mark.parametrize(("kind", "seed"), LOG_CASES)
def test_damaged_segment_is_cut_or_quarantined_and_reported(
    pristine_log: tuple[Path, list[LogRecordInfo]], tmp_path: Path, kind: str, seed: int
) -> None:
    """Damage in a segment: what precedes it survives, the rest is cut or quarantined."""
    src, records = pristine_log
    dot = tmp_path / ".trackd"
    shutil.copytree(src, dot)
    logdir = dot / "log"
    segs = _segment_files(logdir)
    rng = random.Random(f"{kind}-{seed}")
    index = rng.randrange(len(segs))
    base, victim = segs[index]
    last = index == len(segs) - 1
    before = victim.read_bytes()
    data = bytearray(before)
    what = DAMAGE[kind](data, rng)
    victim.write_bytes(bytes(data))
    diff = first_difference(before, bytes(data))
    if diff is None:
        pytest.skip(f"{what} changed nothing")
    bad_at = base + diff
    seg_end = base + len(before)
    if diff < SEGMENT_HEADER_SIZE:
        lost_from = base  # the header: the whole segment goes
    else:
        lost_from = next((r.offset for r in records if r.end > bad_at), seg_end)
    survivors = [r for r in records if r.end <= lost_from]
    lost = [r for r in records if r.end > lost_from]
    in_victim = [r for r in lost if r.offset < seg_end]
    after_victim = [r for r in lost if r.offset >= seg_end]
    # Records of the damaged segment after the damage that are still there, intact.
    intact = [
        r
        for r in in_victim
        if r.offset > lost_from
        and r.end - base <= len(data)
        and data[r.offset - base : r.end - base] == before[r.offset - base : r.end - base]
    ]
    # DESIGN.md: corruption unless the damage is a torn tail of the last segment, i.e. no
    # intact record after it was written once the damaged bytes were durable.
    truncated_at_boundary = kind == "truncate" and lost_from == bad_at
    if not last:
        expect = "corruption"
    elif diff < SEGMENT_HEADER_SIZE:
        expect = "corruption" if intact else "torn"
    else:
        expect = "corruption" if any(r.durable_before > lost_from for r in intact) else "torn"
    if last and truncated_at_boundary:
        expect = "clean"

    with EventLog.open(logdir, segment_size=6000, strict=False) as log:
        rep = log.recovery
        got = [r.payload for r in log.read()]
        views = open_views(dot, log)
        live = dump_views(views, views)
        views.close()
        rebuild(dot, log)
        views = open_views(dot, log)
        rebuilt = dump_views(views, views)
        views.close()
    label = f"{kind} seed {seed}: {what} in {victim.name} (segment {index + 1}/{len(segs)})"
    assert got == [r.payload for r in survivors], label
    for p in got:
        decode_event(p)
    assert live == rebuilt, f"{label}: views differ from a rebuild"
    if expect == "clean":
        assert rep.corruption is None, label
        assert rep.torn_tail is None, label
    elif expect == "torn":
        assert rep.corruption is None, f"{label}: {rep.corruption}"
        assert rep.torn_tail is not None, label
        assert rep.torn_tail.segment == str(victim), label
        assert rep.torn_tail.offset == lost_from, label
        assert not (dot / "quarantine").exists(), label
    else:
        c = rep.corruption
        assert c is not None, f"{label}: expected corruption, got {rep}"
        assert c.offset == lost_from, label
        named = str(victim) if not (kind == "truncate" and truncated_at_boundary) else None
        if named is not None:
            assert c.segment == named, label
        assert f"at offset {lost_from} in segment {c.segment}" in c.message, label
        # Nothing is silently dropped: every lost record that the damage did not touch is
        # in quarantine, byte for byte.
        qbytes = b"".join(Path(p).read_bytes() for p in c.moved)
        for r in in_victim + after_victim:
            if r.offset > bad_at + len(before):  # safely after the damaged bytes
                assert r.payload in qbytes, f"{label}: record at {r.offset} not in quarantine"
        note = Path(c.quarantine_dir) / "QUARANTINE.txt"
        assert note.read_text().strip() == c.message
    with EventLog.open(logdir, segment_size=6000, strict=False) as log:
        assert log.recovery.clean, f"{label}: second open changed {log.recovery.actions}"
    record_figure("corruption cases: log segments", 1)


# -- views.db ------------------------------------------------------------------------------

VIEWS_CASES = [(kind, seed) for kind in sorted(DAMAGE) for seed in range(8)]


def _views_after(dot: Path, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open the (damaged) views of ``dot`` on its log; also build fresh views elsewhere."""
    with EventLog.open(dot / "log", segment_size=6000) as log:
        views = open_views(dot, log)
        live = dump_views(views, views)
        views.close()
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        rebuild(fresh, log)
        views = open_views(fresh, log)
        rebuilt = dump_views(views, views)
        views.close()
    return live, rebuilt


def _sqlite_sees_damage(path: Path) -> bool:
    """True when SQLite's own ``PRAGMA integrity_check`` finds anything wrong."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error:
        return True
    return check != ["ok"]


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(("kind", "seed"), VIEWS_CASES)
def test_damaged_views_file_is_rebuilt_from_the_log(
    pristine_log: tuple[Path, list[LogRecordInfo]], tmp_path: Path, kind: str, seed: int
) -> None:
    """Any of these damages to views.db makes open_views rebuild it: what SQLite sees, a
    truncated file, and row content SQLite never checks (chunks, container, sequence and
    client-mark rows carry checksums). The views then equal a rebuild."""
    src, _records = pristine_log
    dot = tmp_path / ".trackd"
    shutil.copytree(src, dot)
    views_path = dot / VIEWS_FILE
    rng = random.Random(f"views-{kind}-{seed}")
    data = bytearray(views_path.read_bytes())
    what = DAMAGE[kind](data, rng)
    views_path.write_bytes(bytes(data))
    live, rebuilt = _views_after(dot, tmp_path)
    record_figure("corruption cases: views.db", 1)
    assert live == rebuilt, f"{kind} seed {seed}: {what}: the damaged views were kept"


def _chunk_blob_position(path: Path) -> int:
    """Where the packed values of steps 100..107 of the pristine log's loss sequence lie in
    views.db (values are stored as packed float64; steps as a compact column)."""
    pattern = (np.arange(100, 108, dtype="<i8") * 0.25).tobytes()
    pos = path.read_bytes().find(pattern)
    assert pos > 0, "the values BLOB of a chunk must be stored in the file as they are"
    return pos


def test_flipped_bit_in_a_chunk_blob_is_detected(
    pristine_log: tuple[Path, list[LogRecordInfo]], tmp_path: Path
) -> None:
    """A flipped bit inside a chunk's values BLOB makes the views be rebuilt (equal a
    rebuild)."""
    src, _records = pristine_log
    dot = tmp_path / ".trackd"
    shutil.copytree(src, dot)
    views_path = dot / VIEWS_FILE
    data = bytearray(views_path.read_bytes())
    data[_chunk_blob_position(views_path) + 14] ^= 0x04  # the value at step 101 changes
    views_path.write_bytes(bytes(data))
    live, rebuilt = _views_after(dot, tmp_path)
    assert live == rebuilt


def test_truncated_views_file_is_detected(tmp_path: Path) -> None:
    """A views.db cut short by half a page makes the views be rebuilt (equal a rebuild).

    The log holds one long metric, so that the file ends in pages of a chunk's values: SQLite
    reads the missing half as zeros and its own check passes, only the chunk checksum sees it.
    """
    dot = tmp_path / ".trackd"
    m = EventMaker()
    with EventLog.open(dot / "log", segment_size=6000) as log:
        for g in [[m.created()], [m.points(6000)], [m.finished()]]:
            log.append(g)
            log.sync()
        open_views(dot, log).close()
    views_path = dot / VIEWS_FILE
    size = views_path.stat().st_size
    with open(views_path, "r+b") as f:
        f.truncate(size - _page_size(views_path) // 2)
    assert not _sqlite_sees_damage(views_path), "precondition: SQLite's own check passes"
    live, rebuilt = _views_after(dot, tmp_path)
    assert live == rebuilt


# -- spool files ---------------------------------------------------------------------------


def _spool_payloads(m: EventMaker, n: int) -> list[bytes]:
    out = [m.created()]
    out += [m.points(1 + i % 40) for i in range(n - 1)]
    return out


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_damaged_spool_files_ingest_the_prefix_and_are_quarantined(
    daemon_factory: Any, repo_path: Path
) -> None:
    """Damaged spool files: the events before the damage are ingested, the rest reported."""
    spool = repo_path / ".trackd" / "spool"
    expected: dict[bytes, int] = {}
    kinds: dict[str, str] = {}
    cases = [(kind, seed) for kind in sorted(DAMAGE) for seed in range(3)]
    for i, (kind, seed) in enumerate(cases):
        cid = bytes([i + 1]) * 16
        m = EventMaker(cid, container=f"run{i}")
        payloads = _spool_payloads(m, 30)
        w = SpoolWriter(spool, cid)
        w.append(payloads)
        w.close()
        data = bytearray(w.path.read_bytes())
        rng = random.Random(f"spool-{kind}-{seed}")
        what = DAMAGE[kind](data, rng)
        w.path.write_bytes(bytes(data))
        contents = read_spool(w.path)
        assert contents.payloads == payloads[: len(contents.payloads)], what
        # The prefix the reader returns is what the daemon must ingest.
        expected[cid] = len(contents.payloads)
        kinds[w.path.name] = "quarantine" if contents.corruption else "deleted"
    daemon = daemon_factory.start()
    c = RawClient(daemon.socket)
    c.welcome(repo_path)  # opening the repository scans its spool folder
    wait_for(lambda: not list(spool.glob("*.spool")), what="every spool file to be handled")
    c.flush()
    c.close()
    assert daemon.stop() == 0
    got: dict[bytes, int] = {}
    for cid, seq in log_identities(repo_path):
        assert seq == got.get(cid, 0) + 1, "events of one client must be ingested in order"
        got[cid] = seq
    assert got == {k: v for k, v in expected.items() if v}
    quarantined = {p.name for p in (repo_path / ".trackd" / "quarantine").glob("*.spool")}
    assert quarantined == {n for n, k in kinds.items() if k == "quarantine"}
    assert quarantined, "some damage must have had valid records after it"
    log_text = daemon.log()
    for name in quarantined:
        assert f"spool file {spool / name} is damaged" in log_text
    record_figure("corruption cases: spool files", len(cases))
