"""open_views / rebuild / open_reader against a real EventLog: crashes, damage, atomic swap."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from views_helpers import CID, OTHER_CID, appended, dump

from trackd.errors import LogError, NotFoundError, ViewsCorruptedError, ViewsError
from trackd.eventlog.columns import encode_i64
from trackd.eventlog.events import (
    ContainerCreated,
    Event,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
    encode_event,
)
from trackd.eventlog.log import EventLog, Record
from trackd.eventlog.record import RECORD_HEADER_SIZE
from trackd.views import (
    SQLiteReader,
    SQLiteViews,
    _schema,
    open_reader,
    open_views,
    projection,
    rebuild,
)
from trackd.views._points import chunk_crc, row_crc
from trackd.views._schema import LATEST_VERSION
from trackd.views.sqlite import _ROW_CHECKED


class Writer:
    """Appends events to a log with consecutive client_seq."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.seq = 0

    def write(self, *events: Event) -> int:
        """Append and sync; return the synced offset."""
        payloads = []
        for ev in events:
            self.seq += 1
            payloads.append(encode_event(ev.with_envelope(CID, self.seq, 0.0)))
        self.log.append(payloads)
        return self.log.sync()


@pytest.fixture
def dot(tmp_path: Path) -> Path:
    """An empty ``.trackd`` folder."""
    d = tmp_path / ".trackd"
    d.mkdir()
    return d


@pytest.fixture
def log(dot: Path) -> Iterator[EventLog]:
    """An open event log in ``dot/log``."""
    lg = EventLog.open(dot / "log")
    yield lg
    lg.close()


def run_events(n: int, start: int = 0) -> list[Event]:
    """A container and ``n`` single-point batches of one metric."""
    return [
        ContainerCreated(container="c1", created_at=1.0),
        *(appended("c1", "m", [i], [float(i)]) for i in range(start, start + n)),
    ]


def steps_of(views: SQLiteViews) -> list[int]:
    """Steps of metric m of c1."""
    s = views.sequence("c1", "m", {})
    assert s is not None
    return views.points(s.id).steps.tolist()  # type: ignore[no-any-return]


def test_open_views_builds_missing_views(dot: Path, log: EventLog) -> None:
    """With no views.db, open_views builds it from the whole log."""
    synced = Writer(log).write(*run_events(5))
    v = open_views(dot, log)
    try:
        assert v.checkpoint == synced
        assert steps_of(v) == [0, 1, 2, 3, 4]
        assert v.client_marks() == {CID: 6}
    finally:
        v.close()
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_open_views_on_empty_log(dot: Path, log: EventLog) -> None:
    """An empty log gives empty views with checkpoint 0."""
    v = open_views(dot, log)
    assert (v.checkpoint, v.containers()) == (0, [])
    v.close()
    assert (dot / "views.db").exists()


def test_catch_up_after_crash_between_append_and_apply(dot: Path, log: EventLog) -> None:
    """Events synced to the log but not applied are applied at open, without a rebuild."""
    w = Writer(log)
    w.write(*run_events(3))
    open_views(dot, log).close()
    inode = os.stat(dot / "views.db").st_ino
    synced = w.write(*(appended("c1", "m", [i], [float(i)]) for i in range(3, 6)))
    v = open_views(dot, log)
    try:
        assert v.checkpoint == synced
        assert steps_of(v) == [0, 1, 2, 3, 4, 5]
    finally:
        v.close()
    assert os.stat(dot / "views.db").st_ino == inode


def test_deleted_views_are_rebuilt(dot: Path, log: EventLog) -> None:
    """Deleting views.db (and its WAL) loses nothing: open_views rebuilds it from the log."""
    Writer(log).write(*run_events(4))
    v = open_views(dot, log)
    before = dump(v, v)
    v.close()
    for p in dot.glob("views.db*"):
        p.unlink()
    v = open_views(dot, log)
    try:
        assert dump(v, v) == before
    finally:
        v.close()


def test_checkpoint_past_end_of_log_rebuilds(dot: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When recovery cut the log below the views' checkpoint, the views are rebuilt."""
    lg = EventLog.open(dot / "log")
    w = Writer(lg)
    w.write(*run_events(3))
    cut_at = w.write(appended("c1", "m", [100], [1.0]))
    open_views(dot, lg).close()
    lg.close()
    seg = sorted((dot / "log").glob("*.seg"))[-1]
    with open(seg, "r+b") as f:
        f.truncate(os.path.getsize(seg) - 3)  # tear the last record: recovery cuts it
    lg = EventLog.open(dot / "log")
    try:
        assert lg.synced_offset < cut_at
        with caplog.at_level(logging.WARNING, logger="trackd.views"):
            v = open_views(dot, lg)
        assert "is past the end of the synced log" in caplog.text
        try:
            assert v.checkpoint == lg.synced_offset
            assert steps_of(v) == [0, 1, 2]
        finally:
            v.close()
    finally:
        lg.close()


def test_checkpoint_not_on_a_record_of_this_log_rebuilds(dot: Path) -> None:
    """Views of another (longer-recorded) log are rebuilt, even when the offset is in range."""
    lg = EventLog.open(dot / "log")
    Writer(lg).write(*run_events(2))
    open_views(dot, lg).close()
    lg.close()
    shutil.rmtree(dot / "log")
    lg = EventLog.open(dot / "log")
    try:
        big = [ParamsSet(container="c2", path=("x",), value="y" * 37) for _ in range(10)]
        Writer(lg).write(ContainerCreated(container="c2"), *big)
        v = open_views(dot, lg)
        try:
            assert [c.hash for c in v.containers()] == ["c2"]
            assert v.checkpoint == lg.synced_offset
        finally:
            v.close()
    finally:
        lg.close()


def _params_payload(size: int) -> bytes:
    """An encoded ParamsSet of exactly ``size`` bytes."""
    for k in range(size):
        ev = ParamsSet(container="c1", path=("a",), value="x" * k)
        p = encode_event(ev.with_envelope(OTHER_CID, 1, 0.0))
        if len(p) == size:
            return p
    raise AssertionError(f"no ParamsSet payload of {size} bytes")


def test_checkpoint_on_boundaries_of_other_records_rebuilds(dot: Path) -> None:
    """Views whose last record spans two records of the current log are rebuilt."""
    first = encode_event(ContainerCreated(container="c1").with_envelope(CID, 1, 0.0))
    half = _params_payload(100)
    lg = EventLog.open(dot / "log")
    lg.append([first, b"\x01" * (2 * len(half) + RECORD_HEADER_SIZE)])  # one big record ...
    lg.sync()
    open_views(dot, lg).close()
    lg.close()
    shutil.rmtree(dot / "log")
    lg = EventLog.open(dot / "log")
    try:
        lg.append([first, half, half])  # ... where this log has two, ending at the same offset
        lg.sync()
        v = open_views(dot, lg)
        try:
            assert v.checkpoint == lg.synced_offset
            assert v.container("c1").params == {"a": "x" * 22}  # type: ignore[union-attr]
        finally:
            v.close()
    finally:
        lg.close()


@pytest.mark.parametrize("damage", ["garbage", "torn_pages", "truncated", "empty"])
def test_damaged_views_are_rebuilt(dot: Path, log: EventLog, damage: str) -> None:
    """A views.db that is garbage, has bad pages, is cut short or empty is rebuilt."""
    Writer(log).write(
        *run_events(50), *(ParamsSet(container="c1", path=(f"k{i}",), value=i) for i in range(300))
    )
    v = open_views(dot, log)
    expected = dump(v, v)
    v.close()
    path = dot / "views.db"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if damage == "garbage":
            f.write(os.urandom(size))
        elif damage == "torn_pages":
            f.seek(16384)  # keep the header page; smash the next pages
            f.write(b"\xa5" * (size - 16384))
        elif damage == "truncated":
            f.truncate(size // 2)
        else:
            f.truncate(0)
    v = open_views(dot, log)
    try:
        assert dump(v, v) == expected
    finally:
        v.close()


def test_newer_schema_is_rebuilt(dot: Path, log: EventLog) -> None:
    """A views.db of a newer schema version than this build knows is rebuilt."""
    Writer(log).write(*run_events(2))
    open_views(dot, log).close()
    conn = sqlite3.connect(dot / "views.db")
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    v = open_views(dot, log)
    try:
        assert steps_of(v) == [0, 1]
    finally:
        v.close()
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    conn.close()


def _flip_a_step(path: Path, count: int) -> None:
    """Flip one bit of the stored steps column of the chunk holding steps 0 .. count-1
    inside views.db, as a bad sector would."""
    data = bytearray(path.read_bytes())
    column = encode_i64(np.arange(count))
    pos = data.find(column)
    assert pos > 0, "the steps column must be stored in the file as it is"
    data[pos + 5] ^= 0x10  # a bit of its first step (after the kind byte and the count)
    path.write_bytes(bytes(data))


def test_a_chunk_failing_its_checksum_is_refused_to_readers(dot: Path, log: EventLog) -> None:
    """A flipped bit in a steps BLOB (invisible to PRAGMA quick_check) makes a read raise
    ViewsCorruptedError naming the chunk, instead of returning a wrong step."""
    Writer(log).write(*run_events(40))
    open_views(dot, log).close()
    _flip_a_step(dot / "views.db", 40)
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()
    reader = open_reader(dot)
    try:
        seq = reader.sequence("c1", "m", {})
        assert seq is not None
        with pytest.raises(ViewsCorruptedError, match=r"chunk \d+ of sequence \d+ .*checksum"):
            reader.points(seq.id)
    finally:
        reader.close()


def test_a_chunk_failing_its_checksum_is_rebuilt_at_open(
    dot: Path, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """open_views scans every chunk's checksum and rebuilds views holding a damaged one."""
    Writer(log).write(*run_events(40))
    open_views(dot, log).close()
    _flip_a_step(dot / "views.db", 40)
    with caplog.at_level(logging.WARNING, logger="trackd.views.repo"):
        v = open_views(dot, log)
    try:
        assert steps_of(v) == list(range(40))
    finally:
        v.close()
    assert "fails its checksum" in caplog.text


def test_a_sequence_summary_disagreeing_with_its_chunks_is_rebuilt(
    dot: Path, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A sequence row whose count disagrees with its chunks makes open_views rebuild, even
    when the row's own checksum holds (as a projection bug, not damage, would leave it)."""
    Writer(log).write(*run_events(40))
    open_views(dot, log).close()
    conn = sqlite3.connect(dot / "views.db")
    conn.execute("UPDATE sequences SET count = count + 1")
    cols = _ROW_CHECKED["sequences"][1]
    for row in conn.execute(f"SELECT {cols} FROM sequences").fetchall():
        conn.execute("UPDATE sequences SET crc = ? WHERE id = ?", (row_crc(row), row[0]))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="trackd.views.repo"):
        v = open_views(dot, log)
    try:
        seq = v.sequence("c1", "m", {})
        assert seq is not None
        assert seq.count == 40
    finally:
        v.close()
    assert "claims 41 points" in caplog.text


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("containers", "UPDATE containers SET params = replace(params, '0.125', '0.126')"),
        ("containers", "UPDATE containers SET name = 'evil'"),
        ("sequences", "UPDATE sequences SET last_value = 7.0"),
        # A raised mark would make the daemon drop the client's next events as duplicates.
        ("client_marks", "UPDATE client_marks SET seq = seq + 1000"),
    ],
)
def test_a_row_failing_its_checksum_is_rebuilt_at_open(
    dot: Path, log: EventLog, caplog: pytest.LogCaptureFixture, table: str, change: str
) -> None:
    """A container or sequence row changed behind the views' back (as a flipped bit would,
    where SQLite's quick_check sees nothing) makes open_views rebuild it from the log."""
    Writer(log).write(
        *run_events(5),
        ParamsSet(container="c1", path=("lr",), value=0.125),
        PropertiesSet(container="c1", props={"name": "good"}),
    )
    v = open_views(dot, log)
    expected = dump(v, v)
    v.close()
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute(change).rowcount == 1
    conn.commit()
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()
    with caplog.at_level(logging.WARNING, logger="trackd.views.repo"):
        v = open_views(dot, log)
    try:
        assert dump(v, v) == expected
    finally:
        v.close()
    assert f"of {table} fails its checksum" in caplog.text


def test_views_of_schema_1_are_rebuilt_with_checksums(dot: Path, log: EventLog) -> None:
    """A views.db written before chunks had checksums (version 1) is rebuilt, not migrated
    in place: a checksum computed now would vouch for damage the old chunks already hold."""
    Writer(log).write(*run_events(5))
    conn = sqlite3.connect(dot / "views.db", isolation_level=None)
    for statement in _schema._statements(_schema.MIGRATIONS[0].sql):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    v = open_views(dot, log)
    try:
        assert steps_of(v) == [0, 1, 2, 3, 4]
    finally:
        v.close()
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    (bad,) = conn.execute("SELECT count(*) FROM sequence_chunks WHERE crc IS NULL").fetchone()
    conn.close()
    assert bad == 0


def test_a_log_of_version_1_point_events_projects_like_version_2(
    dot: Path, log: EventLog, tmp_path: Path
) -> None:
    """A log written before compact columns (sequence.appended version 1, packed columns)
    projects to the same views as the same events written today."""
    n = 300
    ev = SequenceAppended.from_arrays(
        container="c1",
        name="m",
        context={"subset": "train"},
        steps=np.arange(n) * 2,
        values=np.linspace(0, 1, n),
        timestamps=1.7e9 + np.arange(n) * 1e-3,
        axis={"epoch": np.arange(n) // 100},
    )
    # Version 1 bodies were the generic field map, with the columns packed as in memory.
    body = Event.body(ev)
    created = encode_event(
        ContainerCreated(container="c1", created_at=1.0).with_envelope(CID, 1, 0)
    )
    v1 = msgpack.packb([ev.TYPE, 1, CID, 2, 0.0, body], use_bin_type=True)
    log.append([created, v1])
    log.sync()
    with EventLog.open(tmp_path / "log2") as log2:
        log2.append([created, encode_event(ev.with_envelope(CID, 2, 0.0))])
        log2.sync()
        dot2 = tmp_path / "dot2"
        dot2.mkdir()
        fresh = open_views(dot2, log2)
        try:
            want = dump(fresh, fresh)
        finally:
            fresh.close()
    old = open_views(dot, log)
    try:
        got = dump(old, old)
        # The two logs differ in bytes, so in offsets; everything projected must not.
        got.pop("checkpoint")
        want.pop("checkpoint")
        seq = old.sequence("c1", "m", {"subset": "train"})
        assert seq is not None
        assert old.points(seq.id).steps.tolist() == list(range(0, 2 * n, 2))
    finally:
        old.close()
    assert got == want


def test_views_of_schema_3_with_packed_chunks_are_rebuilt_compact(dot: Path, log: EventLog) -> None:
    """A views.db of schema 3 (chunk columns as packed arrays) is rebuilt at open: read as
    compact columns its packed steps would decode wrongly, and reading them as packed is
    not something this build does. Afterwards every chunk's steps are compact."""
    Writer(log).write(*run_events(40))
    open_views(dot, log).close()
    conn = sqlite3.connect(dot / "views.db", isolation_level=None)
    # The chunk as schema 3 stored it: packed steps, with a checksum that matches them, so
    # that only the schema version can make the views be rebuilt.
    packed = np.arange(40, dtype="<i8").tobytes()
    (cid, first, last, n, vals, ts, axis) = conn.execute(
        "SELECT id, first_step, last_step, n, vals, timestamps, axis FROM sequence_chunks"
    ).fetchone()
    conn.execute(
        "UPDATE sequence_chunks SET steps = ?, crc = ? WHERE id = ?",
        (packed, chunk_crc(first, last, n, packed, vals, ts, axis), cid),
    )
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    v = open_views(dot, log)
    try:
        assert steps_of(v) == list(range(40))
    finally:
        v.close()
    conn = sqlite3.connect(dot / "views.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    blobs = [r[0] for r in conn.execute("SELECT steps FROM sequence_chunks")]
    conn.close()
    assert blobs == [encode_i64(np.arange(40))]


def test_unopenable_views_raise_instead_of_rebuilding(dot: Path, log: EventLog) -> None:
    """An environmental failure (views.db is a directory) raises ViewsError, no rebuild."""
    (dot / "views.db").mkdir()
    with pytest.raises(ViewsError, match=r"views\.db"):
        open_views(dot, log)
    assert (dot / "views.db").is_dir()


def test_rebuild_reports_progress(
    dot: Path, log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rebuild calls progress(done, total) after each transaction, ending at (total, total)."""
    synced = Writer(log).write(*run_events(40))
    monkeypatch.setattr(projection, "BATCH_BYTES", 500)
    calls: list[tuple[int, int]] = []
    rebuild(dot, log, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 3
    assert all(total == synced for _, total in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)
    assert calls[-1] == (synced, synced)
    v = SQLiteViews.open(dot / "views.db")
    try:
        assert v.checkpoint == synced
        assert len(steps_of(v)) == 40
    finally:
        v.close()


class FailingLog:
    """A log whose read() fails after ``after`` records, like a disk error mid-rebuild."""

    def __init__(self, log: EventLog, after: int) -> None:
        self.log = log
        self.after = after
        self.start_offset = log.start_offset
        self.synced_offset = log.synced_offset

    def read(
        self, from_offset: int | None = None, to_offset: int | None = None
    ) -> Iterator[Record]:
        """Yield ``after`` records, then raise LogError."""
        for i, r in enumerate(self.log.read(from_offset, to_offset)):
            if i == self.after:
                raise LogError("simulated read failure")
            yield r


def test_failed_rebuild_keeps_old_views(
    dot: Path, log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild that fails midway leaves the old views.db as it was and no temp file."""
    w = Writer(log)
    w.write(*run_events(10))
    v = open_views(dot, log)
    before = dump(v)
    v.close()
    w.write(*run_events(10, start=10))
    monkeypatch.setattr(projection, "BATCH_BYTES", 300)  # commit some batches before failing
    with pytest.raises(LogError, match="simulated"):
        rebuild(dot, FailingLog(log, after=15))
    assert sorted(p.name for p in dot.iterdir() if p.name.startswith("views")) == ["views.db"]
    r = open_reader(dot)
    try:
        assert dump(r) == before
    finally:
        r.close()


def test_rebuild_discards_the_old_files_wal(dot: Path, log: EventLog) -> None:
    """A leftover -wal of the old views.db is removed, never replayed into the rebuilt file."""
    Writer(log).write(*run_events(3))
    open_views(dot, log).close()
    path = dot / "views.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for i in range(50):
        conn.execute("INSERT INTO containers (hash, type) VALUES (?, 'junk')", (f"junk{i}",))
    wal = (dot / "views.db-wal").read_bytes()  # a crashed writer's WAL, full of frames
    conn.close()
    (dot / "views.db-wal").write_bytes(wal)
    rebuild(dot, log)
    assert not (dot / "views.db-wal").exists()
    v = SQLiteViews.open(path)
    try:
        assert [c.hash for c in v.containers()] == ["c1"]
        assert steps_of(v) == [0, 1, 2]
    finally:
        v.close()


def test_undecodable_records_advance_the_checkpoint(
    dot: Path, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Records of unknown types (or bad bytes) are skipped with a warning; marks still count."""
    Writer(log).write(*run_events(1))
    future = msgpack.packb(["vc.commit", 1, OTHER_CID, 7, 0.0, {"x": 1}], use_bin_type=True)
    log.append([future, b"\x93garbage"])
    synced = log.sync()
    with caplog.at_level(logging.WARNING, logger="trackd.views"):
        v = open_views(dot, log)
    try:
        assert v.checkpoint == synced
        assert v.client_marks() == {CID: 2, OTHER_CID: 7}
        assert steps_of(v) == [0]
    finally:
        v.close()
    assert "unknown event type 'vc.commit'" in caplog.text


def test_open_reader_without_views_raises_not_found(dot: Path) -> None:
    """A reader on a repository without views.db raises NotFoundError naming the file."""
    with pytest.raises(NotFoundError, match=r"no views database at .*views\.db"):
        open_reader(dot)


def test_reader_works_while_writer_is_mid_transaction(dot: Path, log: EventLog) -> None:
    """A read-only reader reads committed data while the writer holds a write transaction."""
    Writer(log).write(*run_events(2))
    v = open_views(dot, log)
    r = open_reader(dot)
    try:
        conn = sqlite3.connect(dot / "views.db", isolation_level=None, timeout=0.1)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE containers SET name = 'uncommitted'")
        c = r.container("c1")
        assert c is not None
        assert c.name is None
        assert r.points(r.sequences()[0].id).steps.tolist() == [0, 1]
        conn.execute("COMMIT")
        conn.close()
        assert r.container("c1").name == "uncommitted"  # type: ignore[union-attr]
    finally:
        r.close()
        v.close()


def test_reader_follows_a_rebuild(dot: Path, log: EventLog) -> None:
    """A reader opened before a rebuild answers from the new file afterwards."""
    w = Writer(log)
    w.write(*run_events(2))
    open_views(dot, log).close()
    r = open_reader(dot)
    try:
        assert [c.hash for c in r.containers()] == ["c1"]
        w.write(ContainerCreated(container="c2", created_at=5.0))
        rebuild(dot, log)
        assert [c.hash for c in r.containers()] == ["c1", "c2"]
        assert r.checkpoint == log.synced_offset
    finally:
        r.close()


def test_reader_rejects_other_schema_versions(dot: Path, log: EventLog) -> None:
    """A reader refuses a views.db whose schema version this build does not read."""
    open_views(dot, log).close()
    conn = sqlite3.connect(dot / "views.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ViewsError, match="schema version 99"):
        SQLiteReader(dot / "views.db")


def test_reader_is_read_only(dot: Path, log: EventLog) -> None:
    """The reader's connection cannot write."""
    open_views(dot, log).close()
    r = open_reader(dot)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            r._db().execute("DELETE FROM containers")
    finally:
        r.close()
