"""The contract of a views backend: a writer that projects events, a reader that queries.

Owns: :class:`ViewStore` (apply events with the checkpoint in the same transaction),
:class:`ViewReader` (read-only queries returning plain frozen rows), the row types, and the
small protocols a backend needs from the event log. SQLite implements these today; a second
backend (PostgreSQL) implements the same classes and runs the same contract tests.
Imports: ``trackd.eventlog`` (events) and numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from trackd.eventlog.events import LoggedEvent

__all__ = [
    "ContainerRow",
    "LogRecord",
    "LogSource",
    "Points",
    "SequenceRow",
    "Transaction",
    "ViewReader",
    "ViewStore",
]


@dataclass(frozen=True, slots=True)
class ContainerRow:
    """One container (a run, for the Aim face) as the views know it.

    Attributes:
        hash: The container hash.
        type: The container type, ``"run"`` for runs.
        name: Display name, or None.
        experiment: Experiment name, or None.
        description: Free text, or None.
        archived: Hidden from default listings.
        tags: Tag names.
        created_at: Wall-clock creation time, or None when the event had none.
        ended_at: Wall-clock end time while finished, else None.
        state: ``"active"`` or ``"finished"``.
        params: The nested params dict (JSON types only).
    """

    hash: str
    type: str
    name: str | None
    experiment: str | None
    description: str | None
    archived: bool
    tags: tuple[str, ...]
    created_at: float | None
    ended_at: float | None
    state: Literal["active", "finished"]
    params: dict[str, Any] = field(hash=False, compare=True)

    @property
    def active(self) -> bool:
        """True until the container's writer finishes it."""
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class SequenceRow:
    """Summary of one sequence (metric) of a container.

    Attributes:
        id: Backend id, valid for :meth:`ViewReader.points` until the views are rebuilt.
        container: The container hash.
        name: Sequence name.
        context: The context dict.
        value_dtype: ``<f8``, ``<f4``, ``<i8``, ``|b1`` or ``"msgpack"`` (objects).
        first_step: Smallest step, or None while the sequence has no point.
        last_step: Largest step, or None while the sequence has no point.
        count: Number of distinct steps.
        last_value: The value at ``last_step`` (None while empty).
    """

    id: int
    container: str
    name: str
    context: dict[str, Any] = field(hash=False)
    value_dtype: str = "<f8"
    first_step: int | None = None
    last_step: int | None = None
    count: int = 0
    last_value: Any = None


@dataclass(frozen=True, slots=True, eq=False)
class Points:
    """All points of one sequence, sorted by step, one value per step.

    Attributes:
        steps: int64 steps, strictly increasing.
        values: Values (dtype object for ``"msgpack"`` sequences).
        timestamps: float64 times (NaN where a point had none), or None when no point had one.
        axis: Extra float64 columns by name (NaN where a point had none).
    """

    steps: npt.NDArray[np.int64]
    values: npt.NDArray[Any]
    timestamps: npt.NDArray[np.float64] | None = None
    axis: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.steps.shape[0])


class Transaction(ABC):
    """An open transaction of a :class:`ViewStore` (see :meth:`ViewStore.begin`).

    Used from the store's thread only; ends with exactly one :meth:`commit` or
    :meth:`rollback`. After an error from either method, or from :meth:`add`, it is rolled
    back and must not be used again.
    """

    @abstractmethod
    def add(self, events: Sequence[LoggedEvent]) -> None:
        """Project more events (consecutive, in log order, after those added before).

        Raises:
            ViewsError: the backend failed; the transaction is rolled back.
        """

    @abstractmethod
    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        """Commit everything added, with the checkpoint, as one :meth:`ViewStore.apply` of
        the same events would (``before_commit`` as there).

        Raises:
            ViewsError: the backend failed; nothing of the transaction was applied.
        """

    @abstractmethod
    def rollback(self) -> None:
        """Discard everything added. Idempotent; never raises."""


class _Buffered(Transaction):
    """The default transaction: keeps the events, applies them at commit."""

    def __init__(self, store: ViewStore) -> None:
        self._store = store
        self._events: list[LoggedEvent] = []

    def add(self, events: Sequence[LoggedEvent]) -> None:
        self._events.extend(events)

    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        events, self._events = self._events, []
        self._store.apply(events, before_commit=before_commit)

    def rollback(self) -> None:
        self._events = []


class ViewStore(ABC):
    """The writer side of the views: projects log events, remembers how far it got.

    One writer per views; not thread-safe (use it from one thread at a time).
    """

    @abstractmethod
    def apply(
        self,
        events: Sequence[LoggedEvent],
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Project events into the views in one transaction, with the checkpoint.

        Events whose ``end`` is not past :attr:`checkpoint` were applied before and are
        skipped, so re-applying after a crash is harmless. Total: every event the codec
        decoded is applied deterministically; events of unknown types (and events about
        containers that do not exist) change nothing but still advance the checkpoint.

        Args:
            events: Consecutive logged events in log order.
            before_commit: Called once the transaction holds everything and just before
                it commits; an exception from it rolls the transaction back and propagates.
                The daemon waits here until the events are durable in the log, so that
                the work of applying overlaps the fdatasync but the views never run ahead
                of the synced log.

        Raises:
            ViewsError: the backend failed; nothing of this call was applied.
        """

    def begin(self) -> Transaction:
        """Open a transaction to which events are added over time, then committed at once.

        The daemon adds each group of events as the log hands it over and commits when a
        flush waits or the apply interval ends, so the work is done while events arrive,
        not after. This default keeps the events and calls :meth:`apply` at commit; a
        backend overrides it to do the work in :meth:`Transaction.add`.
        """
        return _Buffered(self)

    @property
    @abstractmethod
    def checkpoint(self) -> int:
        """Log offset just past the last applied record; 0 for empty views."""

    @abstractmethod
    def client_marks(self) -> dict[bytes, int]:
        """The highest ``client_seq`` applied per ``client_id``."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's connection. Idempotent."""


class ViewReader(ABC):
    """Read-only queries over the views, returning plain frozen objects.

    Each call sees one committed state of the views, also while a writer is applying.
    """

    @abstractmethod
    def containers(self) -> list[ContainerRow]:
        """Every container, oldest first (by creation time, then hash)."""

    @abstractmethod
    def container(self, hash: str) -> ContainerRow | None:
        """The container with this hash, or None."""

    @abstractmethod
    def sequences(self, container: str | None = None) -> list[SequenceRow]:
        """Sequences of one container (or of all).

        Ordered by container, name, then the canonical context JSON text (sorted keys,
        compact separators), compared bytewise.
        """

    @abstractmethod
    def sequence(self, container: str, name: str, context: dict[str, Any]) -> SequenceRow | None:
        """The sequence with this container, name and context, or None."""

    @abstractmethod
    def points(self, sequence_id: int) -> Points:
        """Every point of a sequence, sorted by step.

        Raises:
            NotFoundError: no sequence has this id (deleted, or the views were rebuilt).
        """

    @property
    @abstractmethod
    def checkpoint(self) -> int:
        """Log offset up to which the views reflect the log."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""


class LogRecord(Protocol):
    """What a backend needs of one log record (``trackd.eventlog.log.Record``)."""

    @property
    def offset(self) -> int:
        """Offset of the record."""

    @property
    def end(self) -> int:
        """Offset just past the record."""

    @property
    def payload(self) -> bytes:
        """The encoded event."""


class LogSource(Protocol):
    """What projecting needs of the event log (``trackd.eventlog.log.EventLog``)."""

    @property
    def start_offset(self) -> int:
        """Offset of the first record kept."""

    @property
    def synced_offset(self) -> int:
        """Offset up to which records are durable (and readable)."""

    def read(
        self, from_offset: int | None = None, to_offset: int | None = None
    ) -> Iterator[LogRecord]:
        """Synced records from ``from_offset`` (default: the start) to ``to_offset``."""
        ...
