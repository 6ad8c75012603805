"""SQLite specifics: chunk layout, one transaction per apply, schema, migrations, JSON queries."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from views_helpers import Events, appended, check_chunks

from trackd.errors import ViewsError
from trackd.eventlog.events import ContainerCreated, ParamsSet, PropertiesSet
from trackd.views import ChunkPolicy, RebuildRequiredError, SQLiteViews, _schema
from trackd.views import _points as pts


def chunk_rows(path: Path) -> list[tuple[int, int, int, int]]:
    """(id, first_step, last_step, n) of every chunk, in step order."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, first_step, last_step, n FROM sequence_chunks ORDER BY first_step"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the views file goes."""
    return tmp_path / "views.db"


@pytest.fixture
def ev() -> Events:
    """An event builder."""
    return Events()


@pytest.fixture
def views(path: Path, ev: Events) -> Iterator[SQLiteViews]:
    """Views with default chunk sizes holding container c1."""
    v = SQLiteViews.open(path)
    v.apply(ev.log(ContainerCreated(container="c1")))
    yield v
    v.close()


def steps_batch(start: int, n: int) -> list[int]:
    """``n`` consecutive steps from ``start``."""
    return list(range(start, start + n))


def test_appends_in_one_apply_coalesce_into_large_chunks(
    views: SQLiteViews, ev: Events, path: Path
) -> None:
    """100 batches of 1,000 points in one apply become 2 chunks (64k + rest), not 100 rows."""
    views.apply(
        ev.log(
            *(appended("c1", "m", steps_batch(i * 1000, 1000), [1.0] * 1000) for i in range(100))
        )
    )
    assert [r[3] for r in chunk_rows(path)] == [65_536, 100_000 - 65_536]
    check_chunks(path, 65_536)


def test_small_applies_top_up_the_last_chunk(views: SQLiteViews, ev: Events, path: Path) -> None:
    """Many small applies grow the last chunk instead of adding a row each."""
    for i in range(50):
        views.apply(ev.log(appended("c1", "m", steps_batch(i * 100, 100), [float(i)] * 100)))
    assert [r[3] for r in chunk_rows(path)] == [5000]
    s = views.sequence("c1", "m", {})
    assert s is not None
    assert views.points(s.id).values.tolist() == [float(i) for i in range(50) for _ in range(100)]


def test_many_small_applies_give_chunks_of_at_least_top_up_size(
    views: SQLiteViews, ev: Events, path: Path
) -> None:
    """A sequence fed by 1,000-point applies has chunks of top_up_below points or more, but
    for at most tail_chunks - 1 small ones at its end (not yet merged)."""
    policy = ChunkPolicy()
    for i in range(40):
        views.apply(ev.log(appended("c1", "m", steps_batch(i * 1000, 1000), [0.0] * 1000)))
    sizes = [r[3] for r in chunk_rows(path)]
    assert sum(sizes) == 40_000
    small_tail = len(list(itertools.takewhile(lambda n: n < 8192, reversed(sizes))))
    assert small_tail <= policy.tail_chunks - 1
    assert all(n >= 8192 for n in sizes[: len(sizes) - small_tail])
    assert len(sizes) <= 40_000 // 8192 + policy.tail_chunks - 1


def test_small_applies_encode_each_point_a_few_times_not_once_per_apply(
    views: SQLiteViews, ev: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending never re-encodes the whole growing tail chunk on every apply: over 40
    applies of 1,000 points, at most 3 encodings per point (merging on every apply took ~5)."""
    encoded = 0
    real = pts.encode_chunk

    def counting(points: pts.Cols, dtype: str) -> pts.EncodedChunk:
        nonlocal encoded
        encoded += len(points)
        return real(points, dtype)

    monkeypatch.setattr(pts, "encode_chunk", counting)
    for i in range(40):
        views.apply(ev.log(appended("c1", "m", steps_batch(i * 1000, 1000), [0.0] * 1000)))
    assert 40_000 <= encoded <= 3 * 40_000


def test_a_transaction_merges_each_add_at_once_and_commit_only_finishes(
    views: SQLiteViews, ev: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of begin()/add(): each add encodes its points into chunks right away, so
    that the daemon does that work while a group's fdatasync runs, and the commit a flush
    waits for encodes nothing more. (A transaction that kept the events and applied them at
    commit, as ViewStore's default does, gives the same views and fails here.)"""
    encoded: list[int] = []
    real = pts.encode_chunk

    def counting(points: pts.Cols, dtype: str) -> pts.EncodedChunk:
        encoded.append(len(points))
        return real(points, dtype)

    monkeypatch.setattr(pts, "encode_chunk", counting)
    les = ev.log(
        ContainerCreated(container="c1"),
        appended("c1", "m", steps_batch(0, 3000), [0.0] * 3000),
        appended("c1", "m", steps_batch(3000, 3000), [1.0] * 3000),
    )
    txn = views.begin()
    txn.add(les[:2])
    assert sum(encoded) == 3000
    txn.add(les[2:])
    assert sum(encoded) == 6000
    txn.commit()
    assert sum(encoded) == 6000
    s = views.sequence("c1", "m", {})
    assert s is not None
    assert s.count == 6000


def test_overwrite_rewrites_only_overlapping_chunks(path: Path, ev: Events) -> None:
    """An overwrite replaces the chunk holding its step and leaves every other chunk row alone."""
    v = SQLiteViews.open(path, policy=ChunkPolicy(max_points=4, top_up_below=0))
    try:
        v.apply(
            ev.log(
                ContainerCreated(container="c1"),
                appended("c1", "m", steps_batch(0, 20), [0.0] * 20),
            )
        )
        before = chunk_rows(path)
        assert [(r[1], r[2]) for r in before] == [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]
        v.apply(ev.log(appended("c1", "m", [9], [9.0])))
        after = chunk_rows(path)
        assert [r for r in after if r[1] != 8] == [r for r in before if r[1] != 8]
        assert [r[0] for r in after if r[1] == 8] != [r[0] for r in before if r[1] == 8]
        s = v.sequence("c1", "m", {})
        assert s is not None
        assert v.points(s.id).values.tolist() == [0.0] * 9 + [9.0] + [0.0] * 10
    finally:
        v.close()


def test_dtype_change_rewrites_stored_chunks(views: SQLiteViews, ev: Events, path: Path) -> None:
    """Promoting int to float rewrites every stored chunk's values in the new dtype."""
    views.apply(ev.log(appended("c1", "m", steps_batch(0, 100_000), list(range(100_000)))))
    views.apply(ev.log(appended("c1", "m", [100_000], [0.5])))
    conn = sqlite3.connect(path)
    blobs = conn.execute("SELECT n, vals FROM sequence_chunks ORDER BY first_step").fetchall()
    conn.close()
    assert all(len(vals) == 8 * n for n, vals in blobs)
    values = np.concatenate([np.frombuffer(v, "<f8") for _, v in blobs])
    assert values[:100_000].tolist() == [float(i) for i in range(100_000)]


def test_apply_is_one_transaction(views: SQLiteViews, ev: Events, path: Path) -> None:
    """When a statement fails mid-apply, nothing of that apply (nor the checkpoint) is kept."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON sequences WHEN NEW.name = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    conn.commit()
    conn.close()
    cp = views.checkpoint
    bad = ev.log(
        ContainerCreated(container="c2"),
        ParamsSet(container="c1", path=("a",), value=1),
        appended("c1", "ok", [0], [1.0]),
        appended("c1", "boom", [0], [1.0]),
    )
    with pytest.raises(ViewsError, match="boom") as info:
        views.apply(bad)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert views.checkpoint == cp
    assert views.container("c2") is None
    assert views.container("c1").params == {}  # type: ignore[union-attr]
    assert views.sequences() == []
    reopened = SQLiteViews.open(path)
    assert reopened.checkpoint == cp
    reopened.close()
    views.apply(ev.log(appended("c1", "fine", [0], [1.0])))
    assert [s.name for s in views.sequences()] == ["fine"]


def test_closed_views_raise(path: Path) -> None:
    """Using closed views raises ViewsError; close() twice is fine."""
    v = SQLiteViews.open(path)
    v.close()
    v.close()
    with pytest.raises(ViewsError, match="closed"):
        v.containers()
    with pytest.raises(ViewsError, match="closed"):
        v.apply(Events().log(ContainerCreated(container="c1")))


def test_params_are_queryable_with_json_extract(views: SQLiteViews, ev: Events, path: Path) -> None:
    """params is JSON text that json_extract can query, also after NaN values were set."""
    views.apply(
        ev.log(
            ParamsSet(container="c1", path=("hp",), value={"lr": 0.01, "layers": [64, 32]}),
            ParamsSet(container="c1", path=("bad",), value=float("nan")),
            PropertiesSet(container="c1", props={"tags": ["x", "y"]}),
        )
    )
    conn = sqlite3.connect(path)
    row = conn.execute(
        "SELECT json_extract(params, '$.hp.lr'), json_extract(params, '$.hp.layers[1]'), "
        "json_extract(params, '$.bad'), json_array_length(tags) FROM containers"
    ).fetchone()
    conn.close()
    assert row == (0.01, 32, None, 2)


def test_schema_tables(path: Path) -> None:
    """A new file has the documented tables, WAL mode and the latest user_version."""
    SQLiteViews.open(path).close()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"containers", "sequences", "sequence_chunks", "client_marks", "checkpoint"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == _schema.LATEST_VERSION
    conn.close()


def test_migrate_applies_pending_steps(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of an older version gets the newer SQL steps, in order, in place."""
    SQLiteViews.open(path).close()
    nxt = _schema.LATEST_VERSION + 1
    step = _schema.Migration(nxt, "CREATE TABLE extra (x INTEGER);")
    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, step))
    monkeypatch.setattr(_schema, "LATEST_VERSION", nxt)
    conn = sqlite3.connect(path, isolation_level=None)
    assert _schema.migrate(conn) is True
    assert conn.execute("PRAGMA user_version").fetchone()[0] == nxt
    conn.execute("SELECT x FROM extra")
    conn.close()


def test_migrate_refuses_rebuild_steps_and_newer_files(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending step marked rebuild, or a newer file, makes migrate() change nothing."""
    SQLiteViews.open(path).close()
    latest = _schema.LATEST_VERSION
    step = _schema.Migration(latest + 1, "CREATE TABLE extra (x INTEGER);", rebuild=True)
    monkeypatch.setattr(_schema, "MIGRATIONS", (*_schema.MIGRATIONS, step))
    monkeypatch.setattr(_schema, "LATEST_VERSION", latest + 1)
    conn = sqlite3.connect(path, isolation_level=None)
    assert _schema.migrate(conn) is False
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest
    conn.execute(f"PRAGMA user_version = {latest + 2}")
    assert _schema.migrate(conn) is False
    conn.close()


def test_open_of_newer_file_raises_rebuild_required(path: Path) -> None:
    """SQLiteViews.open of a newer-schema file raises RebuildRequiredError (a ViewsError)."""
    SQLiteViews.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 42")
    conn.close()
    with pytest.raises(RebuildRequiredError, match="schema version 42"):
        SQLiteViews.open(path)


def test_client_seq_beyond_sqlite_integers_is_clamped(views: SQLiteViews) -> None:
    """A client_seq above 2**63-1 (msgpack allows it) is stored clamped, not raising."""
    les = Events().log(
        ContainerCreated(container="c9", client_id=b"\x05" * 16, client_seq=2**64 - 1)
    )
    views.apply([type(le)(le.offset + 10_000, le.end + 10_000, le.event) for le in les])
    assert views.client_marks()[b"\x05" * 16] == 2**63 - 1
