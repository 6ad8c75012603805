"""The SQLite backend: :class:`SQLiteViews` (writer and reader) and :class:`SQLiteReader`.

Owns: the projection of events into the tables of :mod:`trackd.views._schema` (one
transaction per :meth:`SQLiteViews.apply`, checkpoint included), chunk maintenance for
sequences, and the read queries. ``sqlite3.Error`` is translated to ``ViewsError`` here, once,
at each public method.
Imports: ``trackd.eventlog`` (events), ``trackd.errors``, stdlib sqlite3, numpy.

Synchronous: the daemon runs a :class:`SQLiteViews` on one worker thread. Readers open their
own read-only connection (``mode=ro``) and see committed states while the writer works (WAL).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trackd.errors import NotFoundError, ViewsCorruptedError, ViewsError
from trackd.eventlog.events import (
    ContainerCreated,
    ContainerDeleted,
    ContainerFinished,
    Event,
    LoggedEvent,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
    is_text,
)
from trackd.views import _points as pts
from trackd.views._canon import (
    apply_params,
    canonical_context,
    coerce_properties,
    coerce_time,
    dump_json,
)
from trackd.views._schema import LATEST_VERSION, migrate, user_version
from trackd.views.base import (
    ContainerRow,
    Points,
    SequenceRow,
    Transaction,
    ViewReader,
    ViewStore,
)

__all__ = [
    "ChunkPolicy",
    "RebuildRequiredError",
    "SQLiteReader",
    "SQLiteViews",
    "WalCheckpointer",
    "scan_views",
]

# SQLite keeps a 64-bit signed integer; msgpack allows client_seq up to 2**64 - 1.
_MAX_SQL_INT = 2**63 - 1
_BUSY_TIMEOUT_MS = 10_000
# Every view transaction writes each page it touches to the WAL in full: the checkpoint row,
# client marks, sequence summaries, the leaf pages of rewritten chunks. The daemon commits one
# per log group (hundreds a second under load), so small pages halve what it writes per
# point (8 processes: 27-35 -> 14 bytes of views per point) at the price of slower bulk applies
# (bench/views_bench.py: 12.8 -> 8.6 M points/s); reads of a metric are no slower.
_PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """How points are grouped into chunks.

    Attributes:
        max_points: Largest chunk. 64k points is 1 MiB of steps+values: few rows per
            sequence, and a rewrite of one overlapping chunk stays cheap.
        top_up_below: A chunk with fewer points than this is *small*. Small chunks just
            before new points are merged with them once there are ``tail_chunks - 1`` of
            them in a row, so a sequence fed by many small applies (a daemon projecting
            after every group commit) still ends up in chunks of at least this size; a
            small chunk just after new points is merged with them at once.
        tail_chunks: How many small chunks may pile up at a sequence's end before they are
            merged. Merging on every apply instead re-encoded the whole growing tail chunk
            each time, ~8x the points an apply brought under the 8-process benchmark; this
            re-encodes each point two or three times in all, and a read meets at most this
            many extra chunks.
        flush_points: Points buffered for one sequence within one apply before they are
            written; bounds memory for very large applies.
    """

    max_points: int = 65_536
    top_up_below: int = 8_192
    tail_chunks: int = 8
    flush_points: int = 1 << 20


class RebuildRequiredError(ViewsError):
    """The views file is readable but of a schema this build cannot migrate in place.

    Unlike a plain :class:`ViewsError`, nothing is wrong with the machine: rebuilding the
    views from the log (which :func:`trackd.views.open_views` does by itself) resolves it.
    """


# The columns of a chunk that its checksum covers, in chunk_crc's order after the id.
_CHUNK_COLUMNS = "id, sequence_id, crc, first_step, last_step, n, steps, vals, timestamps, axis"
ChunkRow = tuple[int, int, int, int, int, int, bytes, bytes, bytes | None, bytes | None]


def _corrupted(path: Path, r: ChunkRow, computed: int) -> ViewsCorruptedError:
    return ViewsCorruptedError(
        f"views at {path} are damaged: chunk {r[0]} of sequence {r[1]} (steps {r[3]}..{r[4]}) "
        f"fails its checksum (stored {r[2]:#010x}, computed {computed:#010x}); the daemon "
        "rebuilds the views from the event log when it next opens the repository, or run "
        "`trackd views rebuild`"
    )


def _checked(rows: Sequence[ChunkRow], path: Path) -> list[pts.ChunkData]:
    """The ``(n, steps, vals, timestamps, axis)`` of chunk rows whose checksums hold.

    Raises:
        ViewsCorruptedError: a row's content does not match its ``crc``.
    """
    out: list[pts.ChunkData] = []
    for r in rows:
        computed = pts.chunk_crc(*r[3:])
        if computed != r[2]:
            raise _corrupted(path, r, computed)
        out.append(r[5:])
    return out


def scan_views(conn: sqlite3.Connection, path: Path) -> str:
    """Check every chunk, container and sequence row against its checksum and every
    sequence's summary against its chunks; the first problem found, or "" when the views
    hold together.

    Reads the whole table once (the cost of reading every point, a fraction of a rebuild).
    """
    cur = conn.execute(f"SELECT {_CHUNK_COLUMNS} FROM sequence_chunks")
    while rows := cur.fetchmany(256):
        try:
            _checked(rows, path)
        except ViewsCorruptedError as e:
            return str(e)
    for table, (_key, cols) in _ROW_CHECKED.items():
        for r in conn.execute(f"SELECT {cols}, crc FROM {table}"):
            if pts.row_crc(r[:-1]) != r[-1]:
                return (
                    f"views at {path} are damaged: the row {r[0]!r} of {table} fails its checksum"
                )
    bad = conn.execute(
        "SELECT s.id, s.count, s.chunk_count, total, chunks FROM sequences AS s LEFT JOIN "
        "(SELECT sequence_id, sum(n) AS total, count(*) AS chunks, min(first_step) AS lo, "
        "max(last_step) AS hi FROM sequence_chunks GROUP BY sequence_id) AS c "
        "ON c.sequence_id = s.id WHERE s.count IS NOT coalesce(total, 0) "
        "OR s.chunk_count IS NOT coalesce(chunks, 0) "
        "OR (chunks > 0 AND (s.first_step IS NOT lo OR s.last_step IS NOT hi)) LIMIT 1"
    ).fetchone()
    if bad is not None:
        return (
            f"views at {path} are damaged: sequence {bad[0]} claims {bad[1]} points in "
            f"{bad[2]} chunks but its chunks hold {bad[3] or 0} in {bad[4] or 0}"
        )
    return ""


def _storable(*keys: str) -> bool:
    """False when a lookup key cannot be bound as UTF-8 text (a lone surrogate): nothing with
    such a name was ever stored, so the lookup finds nothing instead of raising."""
    return all(map(is_text, keys))


def _views_error(action: str, path: Path, e: sqlite3.Error) -> ViewsError:
    return ViewsError(f"cannot {action} views at {path}: {e}")


@contextlib.contextmanager
def _translated(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise _views_error(action, path, e) from e


def _configure(conn: sqlite3.Connection, *, readonly: bool) -> None:
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    if readonly:
        # Readers fetch whole sequences: read BLOB pages straight from the mapping.
        conn.execute("PRAGMA cache_size = -65536")  # KiB: 64 MiB of page cache
        conn.execute("PRAGMA mmap_size = 1073741824")
    else:
        # The writer touches the sequences' last chunks and the b-tree pages above them.
        # Mapped pages it has touched count in the daemon's resident memory, and over a
        # long load they grew it by ~90 MB; a 16 MiB cache holds what it rereads.
        conn.execute("PRAGMA cache_size = -16384")
        conn.execute("PRAGMA temp_store = MEMORY")


def remove_sidecars(db: Path) -> None:
    """Remove the ``-wal``, ``-shm`` and ``-journal`` files of a database path, if any.

    Needed before a new file takes that path: SQLite would replay an old WAL into it.
    """
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


def connect_writer(path: Path, *, building: bool = False) -> sqlite3.Connection:
    """Open (creating if missing) a writer connection and migrate the schema.

    Args:
        path: The database file.
        building: A fresh file being rebuilt: no journal and no syncs (the file is fsynced
            once and renamed into place when complete, or thrown away).

    Raises:
        sqlite3.Error: from SQLite, including ``DatabaseError`` for a damaged file.
        RebuildRequiredError: the file is of a schema this build cannot migrate in place.
    """
    if not path.exists():
        remove_sidecars(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _configure(conn, readonly=False)
        if building:
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        else:
            if user_version(conn) == 0:
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
            # The log is the durable copy; views only need to be consistent, not durable.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
        if not migrate(conn):
            raise RebuildRequiredError(
                f"views at {path} have schema version {user_version(conn)}, which this build "
                f"(version {LATEST_VERSION}) cannot migrate in place"
            )
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass(slots=True)
class _Seq:
    """A sequence touched by the current apply: its row, and points not yet written."""

    id: int
    container: str
    dtype: str
    first: int | None
    last: int | None
    count: int
    chunk_count: int
    last_value: Any
    pending: list[tuple[str, pts.Cols]] = field(default_factory=list)
    pending_points: int = 0


class _Apply:
    """The state of one :meth:`SQLiteViews.apply` transaction."""

    def __init__(self, conn: sqlite3.Connection, policy: ChunkPolicy, path: Path) -> None:
        self.conn = conn
        self.policy = policy
        self.path = path
        self.exists: dict[str, bool] = {}
        self.seqs: dict[tuple[str, str, str], _Seq] = {}
        self.marks: dict[bytes, int] = {}
        # Rows written by this transaction, whose crc finish() stamps: table -> keys.
        self.dirty: dict[str, set[Any]] = {t: set() for t in _ROW_CHECKED}

    # -- dispatch ----------------------------------------------------------------------

    def event(self, ev: Event) -> None:
        if ev.client_seq > 0 and isinstance(ev.client_id, bytes):
            seq = min(int(ev.client_seq), _MAX_SQL_INT)
            if seq > self.marks.get(ev.client_id, -1):
                self.marks[ev.client_id] = seq
        # Exact types: a future subclass with its own TYPE is an unknown event, ignored.
        handler = _HANDLERS.get(type(ev))
        if handler is not None:
            handler(self, ev)

    def container_exists(self, h: str) -> bool:
        known = self.exists.get(h)
        if known is None:
            row = self.conn.execute("SELECT 1 FROM containers WHERE hash = ?", (h,)).fetchone()
            known = self.exists[h] = row is not None
        return known

    # -- containers --------------------------------------------------------------------

    def container_created(self, ev: ContainerCreated) -> None:
        h = ev.container
        self.dirty["containers"].add(h)
        if self.container_exists(h):
            self.conn.execute(
                "UPDATE containers SET state = 'active', ended_at = NULL WHERE hash = ?", (h,)
            )
            return
        ctype = ev.container_type if isinstance(ev.container_type, str) else "run"
        self.conn.execute(
            "INSERT INTO containers (hash, type, created_at) VALUES (?, ?, ?)",
            (h, ctype, coerce_time(ev.created_at)),
        )
        self.exists[h] = True

    def params_set(self, ev: ParamsSet) -> None:
        if not self.container_exists(ev.container):
            return
        (text,) = self.conn.execute(
            "SELECT params FROM containers WHERE hash = ?", (ev.container,)
        ).fetchone()
        params = apply_params(json.loads(text), ev.path, ev.value, bool(ev.delete))
        self.conn.execute(
            "UPDATE containers SET params = ? WHERE hash = ?", (dump_json(params), ev.container)
        )
        self.dirty["containers"].add(ev.container)

    def properties_set(self, ev: PropertiesSet) -> None:
        if not self.container_exists(ev.container):
            return
        props = coerce_properties(ev.props)
        if not props:
            return
        # Column names come from coerce_properties' fixed list, never from the event.
        sets = ", ".join(f"{k} = ?" for k in props)
        self.conn.execute(
            f"UPDATE containers SET {sets} WHERE hash = ?", (*props.values(), ev.container)
        )
        self.dirty["containers"].add(ev.container)

    def container_finished(self, ev: ContainerFinished) -> None:
        if not self.container_exists(ev.container):
            return
        self.conn.execute(
            "UPDATE containers SET state = 'finished', ended_at = ? WHERE hash = ?",
            (coerce_time(ev.ended_at), ev.container),
        )
        self.dirty["containers"].add(ev.container)

    def container_deleted(self, ev: ContainerDeleted) -> None:
        h = ev.container
        if not self.container_exists(h):
            return
        # Buffered points of its sequences would be deleted anyway: drop them unwritten.
        for key in [k for k in self.seqs if k[0] == h]:
            del self.seqs[key]
        self.conn.execute(
            "DELETE FROM sequence_chunks WHERE sequence_id IN "
            "(SELECT id FROM sequences WHERE container = ?)",
            (h,),
        )
        self.conn.execute("DELETE FROM sequences WHERE container = ?", (h,))
        self.conn.execute("DELETE FROM containers WHERE hash = ?", (h,))
        self.exists[h] = False

    # -- sequences ---------------------------------------------------------------------

    def sequence_appended(self, ev: SequenceAppended) -> None:
        if not isinstance(ev.name, str) or not self.container_exists(ev.container):
            return
        cols = pts.cols_from_event(ev)
        if cols is None:
            return
        key = (ev.container, ev.name, canonical_context(ev.context))
        seq = self.seqs.get(key)
        if seq is None:
            seq = self.seqs[key] = self.load_sequence(key, ev.value_dtype)
        seq.pending.append((ev.value_dtype, cols))
        seq.pending_points += len(cols)
        if seq.pending_points >= self.policy.flush_points:
            self.flush(seq)

    def load_sequence(self, key: tuple[str, str, str], dtype: str) -> _Seq:
        row = self.conn.execute(
            "SELECT id, value_dtype, first_step, last_step, count, chunk_count, last_value "
            "FROM sequences WHERE container = ? AND name = ? AND context = ?",
            key,
        ).fetchone()
        if row is not None:
            sid, stored, first, last, count, nchunks, raw = row
            value = _py_value(raw, stored, count)
            return _Seq(sid, key[0], stored, first, last, count, nchunks, value)
        cur = self.conn.execute(
            "INSERT INTO sequences (container, name, context, value_dtype) VALUES (?, ?, ?, ?)",
            (*key, dtype),
        )
        assert cur.lastrowid is not None
        self.dirty["sequences"].add(cur.lastrowid)
        return _Seq(cur.lastrowid, key[0], dtype, None, None, 0, 0, None)

    def finish(self) -> None:
        for seq in self.seqs.values():
            self.flush(seq)
        if self.marks:
            self.conn.executemany(
                "INSERT INTO client_marks (client_id, seq) VALUES (?, ?) "
                "ON CONFLICT (client_id) DO UPDATE SET seq = max(seq, excluded.seq)",
                list(self.marks.items()),
            )
            self.dirty["client_marks"].update(self.marks)
        self.stamp()

    def flush(self, seq: _Seq) -> None:
        """Write a sequence's buffered batches: promote its dtype, then merge the points."""
        if not seq.pending:
            return
        self.dirty["sequences"].add(seq.id)
        pending, seq.pending, seq.pending_points = seq.pending, [], 0
        # Fold the dtype over the batches in order; remember the numeric dtype the sequence
        # had when it turned into objects, so numbers convert as a step-by-step fold would.
        current = seq.dtype
        before_objects: str | None = None
        arrived: list[str] = []
        for dtype, _ in pending:
            joined = pts.join_dtype(current, dtype)
            if joined == pts.OBJECT_VALUE_DTYPE and current != pts.OBJECT_VALUE_DTYPE:
                before_objects = current
            current = joined
            arrived.append(joined)
        final = current
        if final != seq.dtype:
            self.convert_stored(seq, final, before_objects)
        parts: list[pts.Cols] = []
        for (dtype, cols), joined in zip(pending, arrived, strict=True):
            # A batch that arrived while the sequence was still numeric was cast to the
            # numeric dtype of that time before the sequence turned into objects.
            via = dtype if joined == pts.OBJECT_VALUE_DTYPE else before_objects
            parts.append(cols.with_values(pts.convert_values(cols.values, dtype, final, via)))
        batch = pts.last_wins(pts.concat(parts))
        if len(batch):
            self.merge(seq, batch)
        self.conn.execute(
            "UPDATE sequences SET value_dtype = ?, first_step = ?, last_step = ?, count = ?, "
            "chunk_count = ?, last_value = ? WHERE id = ?",
            (
                seq.dtype,
                seq.first,
                seq.last,
                seq.count,
                seq.chunk_count,
                _sql_value(seq.last_value, seq.dtype),
                seq.id,
            ),
        )

    def stamp(self) -> None:
        """Write the crc of every row this transaction wrote (deleted ones are skipped)."""
        for table, keys in self.dirty.items():
            key, cols = _ROW_CHECKED[table]
            todo = sorted(keys)
            keys.clear()
            for i in range(0, len(todo), 500):
                part = todo[i : i + 500]
                rows = self.conn.execute(
                    f"SELECT {cols} FROM {table} WHERE {key} IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                self.conn.executemany(
                    f"UPDATE {table} SET crc = ? WHERE {key} = ?",
                    [(pts.row_crc(r), r[0]) for r in rows],
                )

    def convert_stored(self, seq: _Seq, final: str, via: str | None) -> None:
        """Rewrite the values of every stored chunk of ``seq`` in dtype ``final``."""
        rows = self.conn.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM sequence_chunks WHERE sequence_id = ?", (seq.id,)
        ).fetchall()
        updates = []
        for r, (n, steps, vals, ts, axis) in zip(rows, _checked(rows, self.path), strict=True):
            values = pts.decode_values([vals], seq.dtype)
            new = pts.encode_values(pts.convert_values(values, seq.dtype, final, via), final)
            crc = pts.chunk_crc(r[3], r[4], n, steps, new, ts, axis)
            updates.append((new, crc, r[0]))
        self.conn.executemany("UPDATE sequence_chunks SET vals = ?, crc = ? WHERE id = ?", updates)
        if seq.count:
            one = pts.values_array([seq.last_value], seq.dtype)
            seq.last_value = pts.convert_values(one, seq.dtype, final, via)[0]
        seq.dtype = final

    def merge(self, seq: _Seq, batch: pts.Cols) -> None:
        """Merge sorted, step-unique points into the sequence's chunks (the batch wins).

        Rewrites only the chunks whose step range meets the batch's, plus small neighbours
        so that chunks stay large (see :class:`ChunkPolicy`); every other chunk is left
        alone, which keeps the chunks sorted and disjoint.
        """
        lo, hi = int(batch.steps[0]), int(batch.steps[-1])
        q = self.conn.execute
        rows: list[tuple[int, int, int, int]] = []
        if seq.chunk_count:
            # The chunk holding `lo` (if any) is the last one starting at or before it.
            (start,) = q(
                "SELECT coalesce(max(first_step), ?) FROM sequence_chunks "
                "WHERE sequence_id = ? AND first_step <= ?",
                (lo, seq.id, lo),
            ).fetchone()
            rows = q(
                "SELECT id, first_step, last_step, n FROM sequence_chunks "
                "WHERE sequence_id = ? AND first_step BETWEEN ? AND ? AND last_step >= ? "
                "ORDER BY first_step",
                (seq.id, start, hi, lo),
            ).fetchall()
            span_lo = min(lo, rows[0][1]) if rows else lo
            span_hi = max(hi, rows[-1][2]) if rows else hi
            small, tail = self.policy.top_up_below, self.policy.tail_chunks
            before = q(
                "SELECT id, first_step, last_step, n FROM sequence_chunks "
                "WHERE sequence_id = ? AND first_step < ? ORDER BY first_step DESC LIMIT ?",
                (seq.id, span_lo, tail - 1),
            ).fetchall()
            after = q(
                "SELECT id, first_step, last_step, n FROM sequence_chunks "
                "WHERE sequence_id = ? AND first_step > ? ORDER BY first_step LIMIT 1",
                (seq.id, span_hi),
            ).fetchone()
            run = list(itertools.takewhile(lambda r: r[3] < small, before))
            if len(run) >= tail - 1:
                rows[:0] = reversed(run)
            if after is not None and after[3] < small:
                rows.append(after)
        old_n = 0
        merged = batch
        if rows:
            old = self.load_chunks(seq, [r[0] for r in rows])
            old_n = len(old)
            merged = pts.last_wins(pts.concat([old, batch]))
            self.conn.executemany(
                "DELETE FROM sequence_chunks WHERE id = ?", [(r[0],) for r in rows]
            )
        chunks = [pts.encode_chunk(c, seq.dtype) for c in pts.split(merged, self.policy.max_points)]
        self.conn.executemany(
            "INSERT INTO sequence_chunks "
            "(sequence_id, first_step, last_step, n, crc, steps, vals, timestamps, axis) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    seq.id,
                    c.first_step,
                    c.last_step,
                    c.n,
                    c.crc,
                    c.steps,
                    c.vals,
                    c.timestamps,
                    c.axis,
                )
                for c in chunks
            ],
        )
        seq.chunk_count += len(chunks) - len(rows)
        seq.count += len(merged) - old_n
        first, last = int(merged.steps[0]), int(merged.steps[-1])
        seq.first = first if seq.first is None else min(seq.first, first)
        if seq.last is None or last >= seq.last:
            seq.last = last
            seq.last_value = merged.values[-1]

    def load_chunks(self, seq: _Seq, ids: list[int]) -> pts.Cols:
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM sequence_chunks "
            f"WHERE id IN ({marks}) ORDER BY first_step",
            ids,
        ).fetchall()
        return pts.decode_chunks(_checked(rows, self.path), seq.dtype)


def _sql_value(value: Any, dtype: str) -> Any:
    """A sequence's last value as an SQL value: a number, or msgpack bytes for objects."""
    if value is None:
        return None
    if dtype == pts.OBJECT_VALUE_DTYPE:
        return pts.pack_value(value)
    if isinstance(value, np.generic):
        return value.item()  # NaN becomes NULL in SQLite; read back as NaN for floats
    return value


def _py_value(raw: Any, dtype: str, count: int) -> Any:
    if count == 0:
        return None
    if dtype == pts.OBJECT_VALUE_DTYPE:
        return None if raw is None else pts.unpack_value(raw)
    if dtype in ("<f8", "<f4"):
        return float("nan") if raw is None else float(raw)
    if dtype == "|b1":
        return bool(raw)
    return raw


_SEQ_COLUMNS = "id, container, name, context, value_dtype, first_step, last_step, count, last_value"
_CONTAINER_COLUMNS = (
    "hash, type, name, experiment, description, archived, tags, created_at, ended_at, state, params"
)
# Per table: the key column and the columns a row's ``crc`` covers (all but the crc).
_ROW_CHECKED = {
    "containers": ("hash", _CONTAINER_COLUMNS),
    "sequences": (
        "id",
        "id, container, name, context, value_dtype, first_step, last_step, count, "
        "chunk_count, last_value",
    ),
    "client_marks": ("client_id", "client_id, seq"),
}


def _container_row(r: tuple[Any, ...]) -> ContainerRow:
    state: Literal["active", "finished"] = "finished" if r[9] == "finished" else "active"
    return ContainerRow(
        hash=r[0],
        type=r[1],
        name=r[2],
        experiment=r[3],
        description=r[4],
        archived=bool(r[5]),
        tags=tuple(json.loads(r[6])),
        created_at=r[7],
        ended_at=r[8],
        state=state,
        params=json.loads(r[10]),
    )


def _sequence_row(r: tuple[Any, ...]) -> SequenceRow:
    return SequenceRow(
        id=r[0],
        container=r[1],
        name=r[2],
        context=json.loads(r[3]),
        value_dtype=r[4],
        first_step=r[5],
        last_step=r[6],
        count=r[7],
        last_value=_py_value(r[8], r[4], r[7]),
    )


class _Queries(ViewReader):
    """The read queries, shared by the writer and the read-only reader."""

    _conn: sqlite3.Connection | None
    _path: Path

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ViewsError(f"views at {self._path} are closed")
        return self._conn

    @contextlib.contextmanager
    def _snapshot(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed state."""
        conn = self._db()
        with _translated(action, self._path):
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if own and conn.in_transaction:
                    conn.execute("COMMIT")

    def containers(self) -> list[ContainerRow]:
        with self._snapshot("list containers in") as c:
            rows = c.execute(
                f"SELECT {_CONTAINER_COLUMNS} FROM containers ORDER BY created_at, hash"
            ).fetchall()
        return [_container_row(r) for r in rows]

    def container(self, hash: str) -> ContainerRow | None:
        if not _storable(hash):
            return None
        with self._snapshot("read a container from") as c:
            r = c.execute(
                f"SELECT {_CONTAINER_COLUMNS} FROM containers WHERE hash = ?", (hash,)
            ).fetchone()
        return None if r is None else _container_row(r)

    def sequences(self, container: str | None = None) -> list[SequenceRow]:
        if container is not None and not _storable(container):
            return []
        where, args = ("WHERE container = ?", (container,)) if container is not None else ("", ())
        with self._snapshot("list sequences in") as c:
            rows = c.execute(
                f"SELECT {_SEQ_COLUMNS} FROM sequences {where} ORDER BY container, name, context",
                args,
            ).fetchall()
        return [_sequence_row(r) for r in rows]

    def sequence(self, container: str, name: str, context: dict[str, Any]) -> SequenceRow | None:
        ctx = canonical_context(context)
        if not _storable(container, name, ctx):
            return None
        with self._snapshot("read a sequence from") as c:
            r = c.execute(
                f"SELECT {_SEQ_COLUMNS} FROM sequences "
                "WHERE container = ? AND name = ? AND context = ?",
                (container, name, ctx),
            ).fetchone()
        return None if r is None else _sequence_row(r)

    def points(self, sequence_id: int) -> Points:
        with self._snapshot("read points from") as c:
            head = c.execute(
                "SELECT value_dtype FROM sequences WHERE id = ?", (sequence_id,)
            ).fetchone()
            if head is None:
                raise NotFoundError(f"no sequence with id {sequence_id} in {self._path}")
            rows = c.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM sequence_chunks "
                "WHERE sequence_id = ? ORDER BY first_step",
                (sequence_id,),
            ).fetchall()
        cols = pts.decode_chunks(_checked(rows, self._path), head[0])
        return Points(cols.steps, cols.values, cols.timestamps, cols.axis)

    @property
    def checkpoint(self) -> int:
        with self._snapshot("read the checkpoint of") as c:
            (end,) = c.execute("SELECT end_offset FROM checkpoint WHERE id = 1").fetchone()
        return int(end)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with _translated("close", self._path):
                conn.close()


#: The projection of each event type (exact types; anything else only advances the marks).
_HANDLERS: dict[type[Event], Callable[[_Apply, Any], None]] = {
    SequenceAppended: _Apply.sequence_appended,
    ContainerCreated: _Apply.container_created,
    ParamsSet: _Apply.params_set,
    PropertiesSet: _Apply.properties_set,
    ContainerFinished: _Apply.container_finished,
    ContainerDeleted: _Apply.container_deleted,
}


class WalCheckpointer:
    """Copies a views file's WAL into the main file from a connection of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, and its
    fsync of the main file then stalls that commit (and, through the file system's journal,
    the log's fdatasync) for ~100 ms. The daemon turns the automatic checkpoint off on its
    writer (:meth:`SQLiteViews.set_autocheckpoint`) and runs this on another thread instead.
    A PASSIVE checkpoint never blocks the writer; the WAL restarts at the writer's next
    transaction once a checkpoint has copied everything.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open a connection to ``path`` used only for checkpoints (any thread, one at a time)."""
        self._path = Path(path)
        try:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as e:
            raise _views_error("open for checkpoints", self._path, e) from e

    def run(self) -> tuple[int, int]:
        """Checkpoint what it can without waiting; return (WAL frames, frames copied)."""
        with _translated("checkpoint", self._path):
            _busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)

    def close(self) -> None:
        """Close the checkpoint connection."""
        self._conn.close()


class SQLiteViews(_Queries, ViewStore):
    """SQLite views of one repository: the projection writer, also readable.

    Use :func:`trackd.views.open_views` to open a repository's views (it rebuilds and catches
    up from the log); :meth:`open` is the file-level constructor.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, policy: ChunkPolicy | None = None
    ) -> None:
        """Wrap an open, migrated writer connection (see :meth:`open`)."""
        self._conn = conn
        self._path = path
        self._policy = policy or ChunkPolicy()
        with _translated("read the checkpoint of", path):
            row = conn.execute("SELECT end_offset, last_offset FROM checkpoint").fetchone()
        self._checkpoint = int(row[0])
        self._last_offset: int | None = row[1]

    def set_autocheckpoint(self, pages: int) -> None:
        """Set SQLite's automatic WAL checkpoint threshold; 0 turns it off.

        With 0, someone must run a :class:`WalCheckpointer`, or the WAL grows without end.
        """
        with _translated("configure", self._path):
            self._db().execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, policy: ChunkPolicy | None = None
    ) -> SQLiteViews:
        """Open a views file for writing, creating and migrating it as needed.

        Args:
            path: The ``views.db`` file.
            policy: Chunk sizes (defaults suit the daemon).

        Raises:
            RebuildRequiredError: the file has a schema this build cannot migrate.
            ViewsError: the file cannot be opened or is damaged.
        """
        p = Path(path)
        try:
            conn = connect_writer(p)
        except sqlite3.Error as e:
            raise _views_error("open", p, e) from e
        return cls(conn, p, policy)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def checkpoint(self) -> int:
        """Log offset just past the last applied record; 0 for empty views."""
        return self._checkpoint

    @property
    def last_offset(self) -> int | None:
        """Offset of the last applied record (None for empty views)."""
        return self._last_offset

    def apply(
        self,
        events: Sequence[LoggedEvent],
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Project events in one transaction with the checkpoint; see :meth:`ViewStore.apply`.

        Batches of the same sequence within one call are merged into large chunks, so
        passing many events per call is much faster than one call per event.
        """
        txn = self.begin()
        txn.add(events)
        txn.commit(before_commit)

    def begin(self) -> _SQLiteTransaction:
        """Open a transaction that does the work of each :meth:`~Transaction.add` at once:
        the batches added are merged into the sequences' chunks there, so that a commit
        only writes the summaries, the checkpoint and the pages."""
        return _SQLiteTransaction(self)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def client_marks(self) -> dict[bytes, int]:
        """The highest ``client_seq`` applied per ``client_id``."""
        with self._snapshot("read client marks from") as c:
            rows = c.execute("SELECT client_id, seq FROM client_marks").fetchall()
        return {bytes(k): int(v) for k, v in rows}


class _SQLiteTransaction(Transaction):
    """One write transaction of :class:`SQLiteViews`, begun at the first event it takes."""

    def __init__(self, views: SQLiteViews) -> None:
        self._views = views
        self._txn: _Apply | None = None
        self._last: LoggedEvent | None = None
        self._done = False

    def add(self, events: Sequence[LoggedEvent]) -> None:
        if self._done:
            raise ViewsError("this views transaction has ended")
        v = self._views
        after = v._checkpoint if self._last is None else self._last.end
        todo = [le for le in events if le.end > after]
        if not todo:
            return
        with self._or_rollback():
            if self._txn is None:
                conn = v._db()
                conn.execute("BEGIN IMMEDIATE")
                self._txn = _Apply(conn, v._policy, v._path)
            txn = self._txn
            for le in todo:
                txn.event(le.event)
            # Merge now what was added: the work happens while events arrive.
            for seq in txn.seqs.values():
                txn.flush(seq)
        last = max(todo, key=lambda le: le.end)
        if self._last is None or last.end > self._last.end:
            self._last = last

    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        if self._done:
            raise ViewsError("this views transaction has ended")
        txn, last, v = self._txn, self._last, self._views
        if txn is None or last is None:
            self._done = True
            return
        with self._or_rollback():
            txn.finish()
            txn.conn.execute(
                "UPDATE checkpoint SET end_offset = ?, last_offset = ? WHERE id = 1",
                (last.end, last.offset),
            )
            if before_commit is not None:
                before_commit()
            txn.conn.execute("COMMIT")
        self._done = True
        v._checkpoint = last.end
        v._last_offset = last.offset

    def rollback(self) -> None:
        self._done = True
        if self._txn is not None:
            self._txn = None
            self._views._rollback()

    @contextlib.contextmanager
    def _or_rollback(self) -> Iterator[None]:
        """Roll back on any error, raising SQLite's as :class:`ViewsError`."""
        try:
            yield
        except sqlite3.Error as e:
            self.rollback()
            raise _views_error("apply events to", self._views._path, e) from e
        except BaseException:
            self.rollback()
            raise


class SQLiteReader(_Queries):
    """A read-only connection to a repository's ``views.db``, usable while the daemon writes.

    When the views are rebuilt (a new file renamed over the old one), the reader notices at
    its next call and reopens, so it never keeps answering from the discarded file.
    Thread-compatible: use one reader per thread, or serialise calls.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open ``path`` read-only.

        Raises:
            NotFoundError: the file does not exist (the views were never built there).
            ViewsError: it cannot be read, or its schema is not the one this build reads.
        """
        self._path = Path(path)
        self._conn = None
        self._conn, self._inode = self._connect()

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        try:
            inode = os.stat(self._path).st_ino
        except FileNotFoundError:
            raise NotFoundError(
                f"no views database at {self._path}: the repository has not been opened by "
                "a trackd daemon yet (or the path is wrong)"
            ) from None
        except OSError as e:
            raise ViewsError(f"cannot open views at {self._path}: {e}") from e
        uri = f"{self._path.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise _views_error("open", self._path, e) from e
        try:
            _configure(conn, readonly=True)
            version = user_version(conn)
        except sqlite3.Error as e:
            conn.close()
            raise _views_error("open", self._path, e) from e
        if version != LATEST_VERSION:
            conn.close()
            raise ViewsError(
                f"views at {self._path} have schema version {version}, this build reads "
                f"{LATEST_VERSION}; let the daemon of this version open the repository"
            )
        return conn, inode

    def _db(self) -> sqlite3.Connection:
        conn = super()._db()
        if conn.in_transaction:
            return conn
        try:
            replaced = os.stat(self._path).st_ino != self._inode
        except OSError:
            replaced = False  # mid-swap (or gone): keep answering from the file we have
        if replaced:
            self._conn = None
            conn.close()
            self._conn, self._inode = self._connect()
            return self._conn
        return conn

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path
