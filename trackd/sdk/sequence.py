"""Sequences read back from the views: :class:`Sequence` and its numeric kind :class:`Metric`.

Owns: the Aim-style read API of one sequence (name, context, steps, values) over
:class:`trackd.views.base.ViewReader`. Imports ``trackd.views`` (read side) and numpy.
Writing points goes through :meth:`trackd.sdk.run.Run.track`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from trackd.errors import NotFoundError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from trackd.sdk.container import Container
    from trackd.views.base import Points, SequenceRow

__all__ = ["Metric", "Sequence"]

_TYPE_NAMES = {"<f8": "float", "<f4": "float", "<i8": "int", "|b1": "bool", "msgpack": "object"}


class Sequence:
    """One named sequence of a container, with a context: steps and the value at each step.

    Reads see what the daemon has applied to the views; after ``run.close()`` or
    ``repo.flush()`` that is everything tracked before.
    """

    def __init__(self, container: Container, *, name: str, context: dict[str, Any]) -> None:
        """Refer to the sequence ``name`` with ``context`` of ``container``.

        Args:
            container: The enclosing container.
            name: The sequence name.
            context: The context dict (``{}`` for none).
        """
        self._container = container
        self._name = name
        self._context = dict(context)

    @classmethod
    def _from_row(cls, container: Container, row: SequenceRow) -> Sequence:
        numeric = row.value_dtype != "msgpack"
        klass = Metric if numeric and cls is Sequence else cls
        return klass(container, name=row.name, context=row.context)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name!r} context={self._context!r} "
            f"of {self._container.hash}>"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Sequence)
            and other._container.hash == self._container.hash
            and other._name == self._name
            and other._context == self._context
        )

    def __hash__(self) -> int:
        return hash((self._container.hash, self._name))

    @property
    def container(self) -> Container:
        """The enclosing container."""
        return self._container

    @property
    def name(self) -> str:
        """The sequence name."""
        return self._name

    @property
    def context(self) -> dict[str, Any]:
        """The context dict (a copy)."""
        return dict(self._context)

    def _row(self) -> SequenceRow:
        row = self._container._repo._read(
            lambda r: r.sequence(self._container.hash, self._name, self._context)
        )
        if row is None:
            raise NotFoundError(
                f"container {self._container.hash} has no sequence {self._name!r} "
                f"with context {self._context!r}"
            )
        return row

    def _points(self) -> Points:
        row = self._row()
        return self._container._repo._read(lambda r: r.points(row.id))

    @property
    def type(self) -> str:
        """The type of the values: ``"float"``, ``"int"``, ``"bool"`` or ``"object"``."""
        return _TYPE_NAMES.get(self._row().value_dtype, "object")

    @property
    def is_empty(self) -> bool:
        """True while the sequence has no point."""
        return self._row().count == 0

    @property
    def start(self) -> int | None:
        """The first step (None while empty)."""
        return self._row().first_step

    @property
    def stop(self) -> int | None:
        """The last step (None while empty)."""
        return self._row().last_step

    @property
    def next_step(self) -> int:
        """The step an auto-stepped ``track`` would use next."""
        last = self._row().last_step
        return 0 if last is None else last + 1

    def __len__(self) -> int:
        """Number of steps with a value."""
        return self._row().count

    def numpy(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
        """All points at once: ``(steps, values)`` as numpy arrays, sorted by step."""
        p = self._points()
        return p.steps, p.values

    def timestamps(self) -> npt.NDArray[np.float64] | None:
        """Wall-clock time of each point (NaN where unknown), or None when none had one."""
        return self._points().timestamps

    def items(self) -> Iterator[tuple[int, Any]]:
        """Iterate ``(step, value)`` pairs in step order, as plain Python scalars."""
        steps, values = self.numpy()
        return zip(steps.tolist(), values.tolist(), strict=True)

    def values(self) -> Iterator[Any]:
        """Iterate the values in step order, as plain Python scalars."""
        _steps, values = self.numpy()
        return iter(values.tolist())

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """Same as :meth:`items`."""
        return self.items()


class Metric(Sequence):
    """A sequence of numbers (floats, ints or bools): what ``run.track(number, ...)`` makes."""
