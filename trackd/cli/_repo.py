"""The repository and the daemon as the commands see them: thin functions over the library.

Owns: finding the repository a command works on (:func:`require_layout`), reading its views
(:func:`reading`), finding a run by a hash prefix (:func:`find_run`), the on-disk extent of the
log and the spool files waiting (:func:`log_extent`, :func:`spool_files`), and reaching the
daemon (:func:`daemon_status`, :func:`ensure_daemon`, :func:`served_entry`).
Imports at module level only stdlib, ``trackd.errors`` and :mod:`trackd.cli._output`; the
views, event log, SDK and daemon client are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackd.cli._output import resolve_repo_root
from trackd.errors import DaemonUnavailableError, NotFoundError

if TYPE_CHECKING:
    from trackd.eventlog.layout import RepoLayout
    from trackd.views import ContainerRow, ViewReader

__all__ = [
    "LogExtent",
    "daemon_status",
    "ensure_daemon",
    "find_run",
    "log_extent",
    "reading",
    "require_layout",
    "served_entry",
    "spool_files",
]


def require_layout(repo: Path | None) -> RepoLayout:
    """The layout of the repository named by ``--repo`` (or the default one).

    Raises:
        NotFoundError: the folder holds no ``.trackd`` (exit 1, suggesting ``trackd init``).
        AccessDeniedError: a symbolic link leads out of the repository's files.
        ConfigError: a bad setting decides the default repository.
    """
    from trackd.eventlog.layout import RepoLayout

    layout = RepoLayout.at(resolve_repo_root(repo))
    if not layout.exists():
        raise NotFoundError(
            f"no trackd repository at {layout.root}; create one with "
            f"`trackd init --repo {layout.root}`, or name another with --repo"
        )
    return layout.check_contained()


@contextlib.contextmanager
def reading(layout: RepoLayout) -> Iterator[ViewReader | None]:
    """A read-only views reader, or None while the daemon has not built the views yet."""
    if not layout.views_db.exists():
        yield None
        return
    from trackd.views import open_reader

    reader = open_reader(layout.dot)
    try:
        yield reader
    finally:
        reader.close()


def find_run(reader: ViewReader | None, ref: str, root: Path) -> ContainerRow:
    """The run whose hash is ``ref`` or, failing that, the one run whose hash starts so.

    Raises:
        NotFoundError: no run matches, or several do (the message lists them).
    """
    rows = [] if reader is None else reader.containers()
    exact = [r for r in rows if r.hash == ref]
    if exact:
        return exact[0]
    matches = [r for r in rows if ref and r.hash.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = "\n".join(f"  {r.hash}  {r.name or '-'}" for r in matches[:20])
        more = f"\n  ... and {len(matches) - 20} more" if len(matches) > 20 else ""
        raise NotFoundError(
            f"run prefix {ref!r} is ambiguous in {root}; it matches {len(matches)} runs:\n"
            f"{listed}{more}"
        )
    if not rows:
        raise NotFoundError(f"no run {ref!r} in {root}: the repository has no runs")
    listed = "\n".join(f"  {r.hash}  {r.name or '-'}" for r in rows[-5:])
    raise NotFoundError(
        f"no run {ref!r} in {root}; the latest runs are:\n{listed}\n(see `trackd runs ls`)"
    )


@dataclass(frozen=True, slots=True)
class LogExtent:
    """The event log's files as found on disk (no lock, no reading of records).

    Attributes:
        segments: Segment files.
        bytes: Their total size.
        start_offset: Offset of the first record position (0 without segments).
        end_offset: Global offset just past the last byte of the last segment (0 if none).
    """

    segments: int
    bytes: int
    start_offset: int
    end_offset: int


def log_extent(layout: RepoLayout) -> LogExtent:
    """Count the log's segment files and bytes; cheap enough for ``trackd status``."""
    from trackd.eventlog.record import SEGMENT_HEADER_SIZE
    from trackd.eventlog.segment import parse_segment_name

    try:
        names = os.listdir(layout.log_dir)
    except FileNotFoundError:
        return LogExtent(0, 0, 0, 0)
    segs = sorted((b, n) for n in names if (b := parse_segment_name(n)) is not None)
    sizes = []
    for _base, name in segs:
        try:
            sizes.append(os.stat(layout.log_dir / name).st_size)
        except FileNotFoundError:
            sizes.append(0)
    if not segs:
        return LogExtent(0, 0, 0, 0)
    start = segs[0][0] + SEGMENT_HEADER_SIZE
    return LogExtent(len(segs), sum(sizes), start, segs[-1][0] + sizes[-1])


def spool_files(layout: RepoLayout) -> list[Path]:
    """The spool files waiting in the repository, in the order a daemon ingests them."""
    from trackd.eventlog.spool import list_spool

    try:
        return list_spool(layout.spool_dir)[0]
    except FileNotFoundError:
        return []


def daemon_status(sock: Path) -> dict[str, Any] | None:
    """The daemon's status map (see :mod:`trackd.daemon.status`), or None when none answers.

    Raises:
        TrackdError: the daemon answered but refused.
    """
    from trackd.daemon.client import DaemonClient

    try:
        with DaemonClient(sock, timeout=10.0) as client:
            client.hello("")
            status: dict[str, Any] = client.request("status")
    except DaemonUnavailableError:
        return None
    except OSError:
        return None  # e.g. timed out or reset mid-handshake: as good as unreachable
    return status


def served_entry(status: Mapping[str, Any] | None, root: Path) -> dict[str, Any] | None:
    """This repository's entry in a daemon status map, or None when it is not served."""
    if status is None:
        return None
    names = {str(root), os.path.realpath(root)}
    for entry in status.get("repositories", []):
        if entry.get("path") in names:
            return dict(entry)
    return None


def ensure_daemon(root: Path) -> Path:
    """Return the socket of a daemon that answers, starting one if the settings allow.

    Follows the SDK: ``client.autostart`` (``TRACKD_AUTOSTART``, the repository's or the user
    config file) decides whether a daemon may be started.

    Raises:
        DaemonUnavailableError: none answers and none could be started (exit 3).
        ConfigError: a bad setting, or a socket folder that is not private.
    """
    from trackd.config import load_settings
    from trackd.sdk._connect import autostart, socket_answers
    from trackd.wire.address import socket_path
    from trackd.wire.sockfiles import log_path

    sock = socket_path()
    if socket_answers(sock):
        return sock
    if not load_settings(repo=root).client.autostart:
        raise DaemonUnavailableError(
            f"no trackd daemon answers on {sock} and auto-start is off (TRACKD_AUTOSTART); "
            "start one with `trackd daemon start`"
        )
    if not autostart(sock):
        raise DaemonUnavailableError(
            f"no trackd daemon answers on {sock} and starting one failed; see {log_path(sock)}"
        )
    return sock
