"""The SDK's settings: the ``[client]`` section of :mod:`trackd.config`.

``TRACKD_MODE`` (``disabled`` makes every write a no-op), ``TRACKD_AUTOSTART``,
``TRACKD_FLUSH_TIMEOUT``, ``TRACKD_REPO`` and the flush interval, from the environment, the
repository's ``.trackd/config.toml`` or the user file, with the precedence and the error
messages :func:`trackd.config.load_settings` defines. Imports ``trackd.config``.
"""

from __future__ import annotations

from pathlib import Path

from trackd.config import ClientSettings, load_settings

__all__ = ["client_settings", "default_repo", "disabled"]


def client_settings(repo: Path | None = None) -> ClientSettings:
    """The effective client settings, reading ``repo``'s own file when given.

    Raises:
        ConfigError: a bad value or an unknown key in the environment or a file.
    """
    return load_settings(repo=repo).client


def disabled(repo: Path | None = None) -> bool:
    """True when ``TRACKD_MODE=disabled`` (or ``mode = "disabled"`` in a file)."""
    return client_settings(repo).mode == "disabled"


def default_repo() -> Path:
    """The repository used when code names none: ``TRACKD_REPO``, else the current folder."""
    return client_settings().repo
