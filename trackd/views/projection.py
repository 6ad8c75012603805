"""Following the log: decode records and apply them to any :class:`ViewStore` in large batches.

Owns: :func:`decode_record` (a record the codec cannot read becomes a placeholder event, so
the checkpoint still moves past it and the projection never wedges on it) and
:func:`catch_up` (apply every synced record past the store's checkpoint). Backend-agnostic.
Imports: ``trackd.eventlog`` (events), msgpack, stdlib.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import msgpack

from trackd.eventlog.events import CLIENT_ID_BYTES, Event, LoggedEvent, decode_event
from trackd.views.base import LogRecord, LogSource, ViewStore

__all__ = ["BATCH_BYTES", "Progress", "UndecodableRecord", "catch_up", "decode_record"]

_log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done_offset, total_offset)``, called after each transaction."""

BATCH_BYTES = 64 << 20
"""Payload bytes per transaction while catching up: large enough that per-commit costs vanish
(about 4 M points), small enough to bound memory."""

_BATCH_EVENTS = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class UndecodableRecord(Event):
    """Stands in for a log record this build cannot decode (e.g. a newer event type).

    Not registered with the codec and ignored by every store; it only carries the
    record's envelope, when readable, so that client marks stay right.

    Attributes:
        reason: Why decoding failed.
    """

    TYPE: ClassVar[str] = "views.undecodable"

    reason: str = ""


def decode_record(record: LogRecord) -> LoggedEvent:
    """Decode one log record into a :class:`LoggedEvent`; never raises.

    A record the codec rejects (an event type or version of a newer build, or bytes that do
    not form an event) becomes an :class:`UndecodableRecord` and a warning is logged: the
    views then lack it until a build that knows it rebuilds them.
    """
    try:
        event = decode_event(record.payload)
    except Exception as e:  # the codec may raise TypeError/ValueError for odd bodies too
        _log.warning("log record at offset %d cannot be projected: %s", record.offset, e)
        event = _placeholder(record.payload, f"{type(e).__name__}: {e}")
    return LoggedEvent(record.offset, record.end, event)


def _placeholder(payload: bytes, reason: str) -> UndecodableRecord:
    client_id, client_seq = b"\0" * CLIENT_ID_BYTES, 0
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if isinstance(obj, list) and len(obj) == 6:
            cid, seq = obj[2], obj[3]
            if isinstance(cid, bytes) and len(cid) == CLIENT_ID_BYTES and type(seq) is int:
                client_id, client_seq = cid, max(seq, 0)
    except Exception:  # best effort only: the envelope is unreadable too
        pass
    return UndecodableRecord(client_id=client_id, client_seq=client_seq, reason=reason)


def catch_up(
    store: ViewStore,
    log: LogSource,
    *,
    progress: Progress | None = None,
    batch_bytes: int | None = None,
) -> int:
    """Apply every synced record past ``store.checkpoint``, in large transactions.

    Args:
        store: The views to bring up to date.
        log: The event log.
        progress: Called with ``(checkpoint, target)`` after each transaction, where target
            is the log's synced offset when the call started.
        batch_bytes: Payload bytes per transaction (default :data:`BATCH_BYTES`).

    Returns:
        The store's checkpoint afterwards.

    Raises:
        ViewsError: the store failed (what was committed before stays committed).
        LogError: reading the log failed.
    """
    limit = BATCH_BYTES if batch_bytes is None else batch_bytes
    start = store.checkpoint
    target = log.synced_offset
    batch: list[LoggedEvent] = []
    size = 0
    for record in log.read(start if start > 0 else None):
        if record.end <= start:
            continue
        batch.append(decode_record(record))
        size += len(record.payload)
        if size >= limit or len(batch) >= _BATCH_EVENTS:
            store.apply(batch)
            batch, size = [], 0
            if progress is not None:
                progress(store.checkpoint, max(target, store.checkpoint))
    if batch:
        store.apply(batch)
    if progress is not None:
        progress(store.checkpoint, max(target, store.checkpoint))
    return store.checkpoint
