"""Containers read back from the views: params, properties, times and their sequences.

Owns: :class:`Container` (the read side every container shares; :class:`trackd.sdk.run.Run`
adds writing) and :class:`ContainerSequenceMap`. Imports ``trackd.views`` (read side) through
:class:`trackd.sdk.repo.Repo`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from trackd.errors import InvalidNameError, NotFoundError
from trackd.sdk._values import check_param_key
from trackd.sdk.sequence import Sequence

if TYPE_CHECKING:
    from trackd.sdk.repo import Repo
    from trackd.views.base import ContainerRow

__all__ = ["Container", "ContainerSequenceMap"]

_MISSING: Any = object()


class Container:
    """A container (for the Aim face, usually a run) as stored: read-only.

    Get one with :meth:`trackd.Repo.get_container`. Every attribute reads the views, so it
    reflects what the daemon has applied so far.
    """

    def __init__(self, hash_: str, *, repo: Repo) -> None:
        """Refer to the container ``hash_`` of ``repo`` (no check that it exists)."""
        self._hash = hash_
        self._repo = repo

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._hash} in {self._repo.path}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Container)
            and other._hash == self._hash
            and other._repo.path == self._repo.path
        )

    def __hash__(self) -> int:
        return hash(self._hash)

    @property
    def hash(self) -> str:
        """The container's hash (its unique id)."""
        return self._hash

    @property
    def repo(self) -> Repo:
        """The repository holding the container."""
        return self._repo

    def _row(self) -> ContainerRow:
        row = self._repo._read(lambda r: r.container(self._hash))
        if row is None:
            raise NotFoundError(f"no container {self._hash!r} in {self._repo.path}")
        return row

    # -- params ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return self._row().params

    def __getitem__(self, key: str | tuple[str, ...]) -> Any:
        """The param at ``key`` (a name, or a tuple path into nested dicts).

        Raises:
            NotFoundError: no param at that key (a KeyError).
            InvalidNameError: the key is not a str or a tuple of str.
        """
        path = check_param_key(key)
        node: Any = self._params()
        for i, k in enumerate(path):
            if not isinstance(node, dict) or k not in node:
                where = "".join(f"[{p!r}]" for p in path[: i + 1])
                raise NotFoundError(f"container {self._hash} has no param {where}")
            node = node[k]
        return copy.deepcopy(node)

    def get(self, key: str | tuple[str, ...], default: Any = None) -> Any:
        """The param at ``key``, or ``default`` when there is none."""
        try:
            return self[key]
        except NotFoundError:
            return default

    # -- properties --------------------------------------------------------------------

    @property
    def type(self) -> str:
        """The container type: ``"run"`` for runs."""
        return self._row().type

    @property
    def name(self) -> str | None:
        """Display name."""
        return self._row().name

    @property
    def experiment(self) -> str | None:
        """Experiment name."""
        return self._row().experiment

    @property
    def description(self) -> str | None:
        """Free-text description."""
        return self._row().description

    @property
    def archived(self) -> bool:
        """Hidden from default listings."""
        return self._row().archived

    @property
    def tags(self) -> list[str]:
        """Tag names."""
        return list(self._row().tags)

    @property
    def creation_time(self) -> float | None:
        """Wall-clock creation time (seconds since the epoch)."""
        return self._row().created_at

    @property
    def end_time(self) -> float | None:
        """Wall-clock time the writer finished it, or None while active."""
        return self._row().ended_at

    @property
    def active(self) -> bool:
        """True until the container's writer closed it."""
        return self._row().active

    def collect_properties(self) -> dict[str, Any]:
        """All properties as a dict: name, experiment, description, archived, tags, times."""
        row = self._row()
        return {
            "name": row.name,
            "experiment": row.experiment,
            "description": row.description,
            "archived": row.archived,
            "tags": list(row.tags),
            "creation_time": row.created_at,
            "end_time": row.ended_at,
            "active": row.active,
        }

    # -- sequences ---------------------------------------------------------------------

    @property
    def sequences(self) -> ContainerSequenceMap:
        """The container's sequences, by name or ``(name, context)``."""
        return ContainerSequenceMap(self)


class ContainerSequenceMap:
    """The sequences of one container: iterate them, or look one up by name and context."""

    def __init__(self, container: Container) -> None:
        """Wrap ``container``."""
        self._container = container

    def __iter__(self) -> Iterator[Sequence]:
        """Every sequence of the container, by name then context."""
        c = self._container
        rows = c._repo._read(lambda r: r.sequences(c.hash))
        return iter([Sequence._from_row(c, row) for row in rows])

    def __len__(self) -> int:
        c = self._container
        return len(c._repo._read(lambda r: r.sequences(c.hash)))

    def __getitem__(self, item: str | tuple[str, dict[str, Any]]) -> Sequence:
        """The sequence ``name`` (context ``{}``) or ``(name, context)``.

        Raises:
            NotFoundError: the container has no such sequence (a KeyError).
            InvalidNameError: ``item`` is not a name or a ``(name, dict)`` pair.
        """
        context: dict[str, Any]
        if isinstance(item, str):
            name, context = item, {}
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            name, context = item
        else:
            raise InvalidNameError(
                f"look a sequence up by name or (name, context dict), got {item!r}"
            )
        c = self._container
        row = c._repo._read(lambda r: r.sequence(c.hash, name, context))
        if row is None:
            raise NotFoundError(
                f"container {c.hash} has no sequence {name!r} with context {context!r}"
            )
        return Sequence._from_row(c, row)

    def __contains__(self, item: object) -> bool:
        try:
            self[item]  # type: ignore[index]
        except (NotFoundError, InvalidNameError):
            return False
        return True

    def typed_sequence(
        self, sequence_type: type[Sequence], name: str, context: dict[str, Any]
    ) -> Sequence:
        """The sequence ``(name, context)`` as an instance of ``sequence_type``."""
        self[(name, context)]
        return sequence_type(self._container, name=name, context=context)
