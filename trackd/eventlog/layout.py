"""Where a repository keeps its files: ``<repo>/.trackd/{log,views.db,spool,config.toml}``.

Owns: path conventions only (no I/O beyond ``mkdir`` and the symlink check below). Imports
``trackd.errors``. Every layer (daemon, SDK, CLI) finds files through :class:`RepoLayout`, so
the on-disk layout is written down once.

Nothing is ever written outside a repository: :meth:`RepoLayout.check_contained` refuses a
repository where ``.trackd``, one of its folders, the views file or an entry of the log folder
is a symbolic link that leads out of the repository root (a link inside it is harmless).
:meth:`RepoLayout.ensure`, which every writer calls first, runs that check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trackd.errors import AccessDeniedError, InvalidNameError
from trackd.eventlog.events import is_text

__all__ = ["DOT_DIR", "RepoLayout"]

DOT_DIR = ".trackd"


@dataclass(frozen=True, slots=True)
class RepoLayout:
    """The paths of one repository, rooted at ``root`` (the folder that holds ``.trackd``)."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> RepoLayout:
        """Layout for a repository path given by a user.

        ``path`` may name the repository root or its ``.trackd`` folder; it is made absolute
        and normalised so that every process names the same repository the same way.

        Raises:
            InvalidNameError: the path is empty, not a string/path, contains NUL, or is not
                valid UTF-8 (clients name the repository to the daemon in UTF-8 text).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidNameError(
                f"repository path must be a str or path, got {type(path).__name__}"
            )
        text = os.fspath(path)
        if not text or "\0" in str(text):
            raise InvalidNameError(f"repository path {text!r} is empty or contains NUL")
        if not is_text(str(text)):
            raise InvalidNameError(
                f"repository path {text!r} is not valid UTF-8 (a folder name holds other "
                "bytes); trackd names repositories to its daemon in UTF-8: rename the folder"
            )
        p = Path(os.path.abspath(os.path.expanduser(text)))
        if p.name == DOT_DIR:
            p = p.parent
        return cls(root=p)

    @property
    def dot(self) -> Path:
        """``<root>/.trackd``."""
        return self.root / DOT_DIR

    @property
    def log_dir(self) -> Path:
        """The event log's segment folder."""
        return self.dot / "log"

    @property
    def views_db(self) -> Path:
        """The SQLite views file (disposable, rebuilt from the log)."""
        return self.dot / "views.db"

    @property
    def spool_dir(self) -> Path:
        """Where clients write records while no daemon answers."""
        return self.dot / "spool"

    @property
    def quarantine_dir(self) -> Path:
        """Where recovery moves records found after a bad one."""
        return self.dot / "quarantine"

    @property
    def config_file(self) -> Path:
        """Per-repository settings."""
        return self.dot / "config.toml"

    def exists(self) -> bool:
        """True when ``<root>/.trackd`` is a directory."""
        return self.dot.is_dir()

    def ensure(self) -> RepoLayout:
        """Create ``.trackd`` and its spool folder if missing (mode 0700); return self.

        Raises:
            AccessDeniedError: a path of the repository leads outside it through a symbolic
                link (see :meth:`check_contained`).
            OSError: a folder cannot be created.
        """
        self.check_contained()
        self.dot.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool_dir.mkdir(mode=0o700, exist_ok=True)
        return self

    def check_contained(self) -> RepoLayout:
        """Refuse a repository whose files would be written outside it; return self.

        Checks ``.trackd``, its log, spool and quarantine folders, the views file (with its
        ``-wal`` and ``-shm`` files) and every entry of the log folder: each, with symbolic
        links resolved, must stay inside the repository root (itself resolved). Missing
        paths pass; a dangling link that leads outside does not.

        Raises:
            AccessDeniedError: a path resolves outside the repository; the message names the
                path and where it leads.
        """
        root = os.path.realpath(self.root)
        # Parents before children, so the first path found outside is itself the link.
        for p in (
            self.dot,
            self.log_dir,
            self.spool_dir,
            self.quarantine_dir,
            self.views_db,
            self.dot / "views.db-wal",
            self.dot / "views.db-shm",
        ):
            self._refuse_outside(root, p)
        try:
            with os.scandir(self.log_dir) as entries:
                # The folder is inside, so only a link among its entries can lead out.
                links = sorted(Path(e.path) for e in entries if e.is_symlink())
        except (FileNotFoundError, NotADirectoryError):
            links = []
        for p in links:
            self._refuse_outside(root, p)
        return self

    def _refuse_outside(self, real_root: str, path: Path) -> None:
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise AccessDeniedError(
                f"{path} is a symbolic link that leads outside the repository {self.root} "
                f"(to {real}); trackd writes only inside a repository: replace the link "
                "with a real folder or file"
            )
