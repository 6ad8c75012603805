"""Where a repository keeps its files: ``<repo>/.trackd/{log,views.db,spool,config.toml}``.

Owns: path conventions only (no I/O beyond ``mkdir``). Imports ``trackd.errors``.
Every layer (daemon, SDK, CLI) finds files through :class:`RepoLayout`, so the on-disk
layout is written down once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trackd.errors import InvalidNameError

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
            InvalidNameError: the path is empty or not a string/path.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidNameError(
                f"repository path must be a str or path, got {type(path).__name__}"
            )
        text = os.fspath(path)
        if not text or "\0" in str(text):
            raise InvalidNameError(f"repository path {text!r} is empty or contains NUL")
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
        """Create ``.trackd`` and its spool folder if missing (mode 0700); return self."""
        self.dot.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool_dir.mkdir(mode=0o700, exist_ok=True)
        return self
