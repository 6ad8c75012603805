"""The SQLite schema of ``views.db`` and its migrations, keyed on ``PRAGMA user_version``.

Owns: table definitions, the ordered migration list, and connection settings. A migration
either transforms the file in place (SQL) or, when it projects something the old views never
recorded (a new event type, a changed chunk layout), is marked ``rebuild`` so that the file
is rebuilt from the log instead: an in-place change could only leave those events out.
Imports: stdlib only.

Tables (version 1)::

    containers       one row per container; params as JSON text for json_extract queries
    sequences        one row per (container, name, canonical context JSON); summary columns
    sequence_chunks  points as packed column BLOBs; per sequence the chunks are sorted by
                     first_step, pairwise disjoint, each strictly increasing in step, so
                     reading a sequence is concatenating its chunks in first_step order
    client_marks     highest client_seq applied per client_id (exactly-once after restart)
    checkpoint       one row: end_offset (log offset past the last applied record) and
                     last_offset (that record's offset, to recognise the same log later)

Version 2 gives every chunk a ``crc`` (CRC32C of the row, see ``_points.chunk_crc``), checked
on every read and by a scan when the views are opened. Files of version 1 are rebuilt: their
chunks were never checksummed, so a checksum computed now would vouch for whatever damage
they already hold. Version 3 does the same for the rows of ``containers``, ``sequences`` and
``client_marks`` (``_points.row_crc`` over their other columns; a damaged mark would make
the daemon drop a client's new events as duplicates), checked by the scan at open; again
files of older versions are rebuilt. Version 4 stores the ``steps``, ``timestamps`` and axis
columns of chunks as compact columns (``trackd.eventlog.columns``) instead of packed arrays;
older files are rebuilt. The checkpoint row has no crc: a damaged one fails the
check that it ends a record of the log, and the views are rebuilt then.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "migrate"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema.

    Attributes:
        version: The ``user_version`` after this step (1, 2, ...).
        sql: Script run in the migration's transaction.
        rebuild: Old files cannot be migrated in place; rebuild them from the log.
    """

    version: int
    sql: str
    rebuild: bool = False


_V1 = """
CREATE TABLE containers (
    hash        TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    name        TEXT,
    experiment  TEXT,
    description TEXT,
    archived    INTEGER NOT NULL DEFAULT 0,
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  REAL,
    ended_at    REAL,
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'finished')),
    params      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX containers_by_created ON containers (created_at, hash);
CREATE INDEX containers_by_experiment ON containers (experiment);

CREATE TABLE sequences (
    id          INTEGER PRIMARY KEY,
    container   TEXT NOT NULL REFERENCES containers (hash),
    name        TEXT NOT NULL,
    context     TEXT NOT NULL,
    value_dtype TEXT NOT NULL,
    first_step  INTEGER,
    last_step   INTEGER,
    count       INTEGER NOT NULL DEFAULT 0,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    last_value,
    UNIQUE (container, name, context)
);
CREATE INDEX sequences_by_name ON sequences (name);

CREATE TABLE sequence_chunks (
    id          INTEGER PRIMARY KEY,
    sequence_id INTEGER NOT NULL REFERENCES sequences (id),
    first_step  INTEGER NOT NULL,
    last_step   INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    -- small columns first: SQLite reads the BLOBs' overflow pages only when asked for them
    steps       BLOB NOT NULL,
    vals        BLOB NOT NULL,
    timestamps  BLOB,
    axis        BLOB,
    UNIQUE (sequence_id, first_step)
);

CREATE TABLE client_marks (
    client_id   BLOB PRIMARY KEY,
    seq         INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE checkpoint (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    end_offset  INTEGER NOT NULL,
    last_offset INTEGER
);
INSERT INTO checkpoint (id, end_offset, last_offset) VALUES (1, 0, NULL);
"""

# Only ever runs on a new, empty file (it is marked rebuild), so the table is replaced.
_V2 = """
DROP TABLE sequence_chunks;
CREATE TABLE sequence_chunks (
    id          INTEGER PRIMARY KEY,
    sequence_id INTEGER NOT NULL REFERENCES sequences (id),
    first_step  INTEGER NOT NULL,
    last_step   INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    -- small columns first: SQLite reads the BLOBs' overflow pages only when asked for them
    steps       BLOB NOT NULL,
    vals        BLOB NOT NULL,
    timestamps  BLOB,
    axis        BLOB,
    UNIQUE (sequence_id, first_step)
);
"""

# Only ever runs on a new, empty file (it is marked rebuild): every row is stamped as written.
_V3 = """
ALTER TABLE containers ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sequences ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
ALTER TABLE client_marks ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1),
    Migration(2, _V2, rebuild=True),
    Migration(3, _V3, rebuild=True),
    # Chunk columns become compact columns (trackd.eventlog.columns); no table changes.
    Migration(4, "", rebuild=True),
)
LATEST_VERSION = MIGRATIONS[-1].version


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the file (0 for a new file)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection) -> bool:
    """Bring the file up to :data:`LATEST_VERSION`, in one transaction.

    Args:
        conn: A writer connection in autocommit mode (``isolation_level=None``).

    Returns:
        True when done; False when the file must be rebuilt instead (it is newer than this
        build, or a pending step is marked ``rebuild``). Nothing is changed then.

    Raises:
        sqlite3.Error: from SQLite; the caller translates it.
    """
    current = user_version(conn)
    if current > LATEST_VERSION:
        return False
    todo = [m for m in MIGRATIONS if m.version > current]
    if not todo:
        return True
    if current > 0 and any(m.rebuild for m in todo):
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        for m in todo:
            for statement in _statements(m.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(m.version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return True


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT the open transaction first; split on complete statements.
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
