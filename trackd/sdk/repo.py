"""A repository as the Aim face sees it: where containers live, how to list and delete them.

Owns: :class:`Repo`. Reads go through a read-only views reader (:func:`trackd.views.open_reader`)
on ``<repo>/.trackd/views.db`` (WAL, so it reads while the daemon writes); writes go through
the process's :class:`trackd.sdk.client.Client`. Imports ``trackd.views``, ``trackd.eventlog``
(layout, events) and the SDK's own modules.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from trackd.errors import NotFoundError
from trackd.eventlog.events import ContainerDeleted
from trackd.eventlog.layout import RepoLayout
from trackd.sdk import _settings
from trackd.sdk.container import Container

if TYPE_CHECKING:
    from trackd.views.base import ContainerRow, ViewReader

__all__ = ["Repo"]

_T = TypeVar("_T")


class Repo:
    """A trackd repository: the folder that holds ``.trackd/``.

    Reading needs no daemon; writes (runs, deletes) go through the daemon.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = True) -> None:
        """Open the repository at ``path`` (its root or its ``.trackd`` folder).

        Args:
            path: Repository path; made absolute.
            read_only: Informational for now: reads never write, and writes always go
                through the daemon.

        Raises:
            InvalidNameError: the path is empty or not a path.
        """
        self._layout = RepoLayout.at(path)
        self.read_only = read_only
        self._reader: ViewReader | None = None
        self._reader_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Repo {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Repo) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def path(self) -> Path:
        """The absolute repository root."""
        return self._layout.root

    @property
    def layout(self) -> RepoLayout:
        """Where the repository keeps its files."""
        return self._layout

    # -- management --------------------------------------------------------------------

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` holds a trackd repository (a ``.trackd`` folder)."""
        return RepoLayout.at(path).exists()

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Repo:
        """Create a repository at ``path`` if there is none, and return it."""
        RepoLayout.at(path).ensure()
        return cls(path, read_only=False)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], read_only: bool = True, init: bool = False
    ) -> Repo:
        """The repository at ``path``, created first when ``init`` is true.

        Raises:
            NotFoundError: there is no repository at ``path`` and ``init`` is false.
        """
        if init:
            return cls.init(path)
        if not cls.exists(path):
            raise NotFoundError(
                f"no trackd repository at {RepoLayout.at(path).root}; "
                "create one with Repo.init(path)"
            )
        return cls(path, read_only=read_only)

    @classmethod
    def default(cls) -> Repo:
        """The repository named by ``TRACKD_REPO`` (or ``client.repo`` in the user config
        file), else the current folder.

        Raises:
            ConfigError: a bad setting in the environment or the user config file.
        """
        return cls(_settings.default_repo())

    # -- reading -----------------------------------------------------------------------

    def _read(self, fn: Callable[[ViewReader], _T]) -> _T:
        """Run ``fn`` on the views reader (serialised: the reader is not thread-safe).

        Raises:
            NotFoundError: the daemon has not built views for this repository yet.
        """
        with self._reader_lock:
            if self._reader is None:
                from trackd.views import open_reader

                self._reader = open_reader(self._layout.dot)
            return fn(self._reader)

    def _read_or(self, fn: Callable[[ViewReader], _T], empty: _T) -> _T:
        if self._reader is None and not self._layout.views_db.exists():
            return empty
        return self._read(fn)

    def close(self) -> None:
        """Close the views connection (reopened on the next read)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def container_hashes(self) -> list[str]:
        """The hashes of every container, oldest first."""
        rows: list[ContainerRow] = self._read_or(lambda r: r.containers(), [])
        return [row.hash for row in rows]

    def get_container(self, hash_: str) -> Container:
        """The container with hash ``hash_`` (read-only).

        Raises:
            NotFoundError: no container has that hash.
        """
        row = self._read_or(lambda r: r.container(hash_), None)
        if row is None:
            raise NotFoundError(f"no container {hash_!r} in {self.path}")
        return Container(hash_, repo=self)

    def containers(self) -> Iterator[Container]:
        """Every container, oldest first (read-only)."""
        return iter([Container(h, repo=self) for h in self.container_hashes])

    # -- writing -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Barrier: return once everything this process sent to this repository is durable
        and applied to the views.

        Asks the daemon even when this process sent nothing, so a daemon that did not serve
        this repository yet opens it (and ingests spool files left in it). With no daemon
        reachable, this process's unsent events go to a spool file, with a warning.

        Raises:
            FlushTimeoutError: a daemon is connected but did not confirm in time.
        """
        if _settings.disabled(self.path):
            return
        from trackd.sdk.client import get_client

        get_client(self.path).flush(timeout, force=True)

    def delete_container(self, hash_: str) -> bool:
        """Delete a container and all its sequences, for good.

        Returns:
            True once the deletion is durable and applied; False when no such container
            exists.
        """
        if _settings.disabled(self.path):
            return False
        if self._read_or(lambda r: r.container(hash_), None) is None:
            return False
        from trackd.sdk.client import get_client

        client = get_client(self.path)
        client.enqueue_event(ContainerDeleted(container=hash_))
        client.flush()
        return True

    def delete_containers(self, hashes: list[str]) -> tuple[bool, list[str]]:
        """Delete several containers; returns ``(all deleted, the ones that were not)``."""
        remaining = [h for h in hashes if not self.delete_container(h)]
        return not remaining, remaining


def resolve_repo(repo: str | os.PathLike[str] | Repo | None) -> Repo:
    """A Repo from what a Run was given: a Repo, a path, or None (the default repository)."""
    if isinstance(repo, Repo):
        return repo
    if repo is None:
        return Repo.default()
    return Repo(repo)
