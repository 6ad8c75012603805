"""Projections of the event log into queryable views (SQLite today), and reads from them.

Owns: the views contract (:class:`ViewStore`, :class:`ViewReader`, the row types), the SQLite
backend, following the log (:func:`catch_up`), and the life cycle of ``.trackd/views.db``
(:func:`open_views`, :func:`rebuild`, :func:`open_reader`). The views are disposable: the log
is the source of truth and any views file can be rebuilt from it.
Imports: ``trackd.eventlog`` and ``trackd.errors`` only (plus stdlib sqlite3, numpy, msgpack).

The modules behind this facade (``base``, ``sqlite``, ``repo``, ``projection`` and the
private ``_points``, ``_canon``, ``_schema``) may change freely; import from here.
"""

from __future__ import annotations

from trackd.views._canon import canonical_context
from trackd.views.base import (
    ContainerRow,
    LogRecord,
    LogSource,
    Points,
    SequenceRow,
    Transaction,
    ViewReader,
    ViewStore,
)
from trackd.views.projection import Progress, UndecodableRecord, catch_up, decode_record
from trackd.views.repo import VIEWS_FILE, open_reader, open_views, rebuild
from trackd.views.sqlite import (
    ChunkPolicy,
    RebuildRequiredError,
    SQLiteReader,
    SQLiteViews,
    WalCheckpointer,
)

__all__ = [
    "VIEWS_FILE",
    "ChunkPolicy",
    "ContainerRow",
    "LogRecord",
    "LogSource",
    "Points",
    "Progress",
    "RebuildRequiredError",
    "SQLiteReader",
    "SQLiteViews",
    "SequenceRow",
    "Transaction",
    "UndecodableRecord",
    "ViewReader",
    "ViewStore",
    "WalCheckpointer",
    "canonical_context",
    "catch_up",
    "decode_record",
    "open_reader",
    "open_views",
    "rebuild",
]
