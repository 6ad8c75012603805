"""``trackd views rebuild|verify``, ``trackd log verify`` and ``trackd sync``: repository upkeep.

Owns: the click groups :data:`views_group` and :data:`log_group` and the command
:data:`sync_command`, registered by :mod:`trackd.cli`, plus the thin pieces they need over
the library: comparing two views (:func:`diff_views`), opening the log exclusively with a
message that names the daemon, and copying spool files into a repository atomically.
Imports ``trackd.views``, ``trackd.eventlog``, ``trackd.daemon.client`` and numpy inside the
command bodies.

``views rebuild`` and ``views verify`` open the event log themselves, so they need its lock:
while a daemon serves the repository they stop with exit 1 and say to stop the daemon.
``log verify`` only reads and runs next to a live daemon. Its progress bar follows the bytes
this process has read (``rchar`` in ``/proc/self/io``) because :func:`verify_log` takes no
progress callback yet; elsewhere the bar jumps to the end when the check is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trackd.cli._output import (
    EXIT_ERROR,
    CliError,
    confirm_or_refuse,
    echo_json,
    format_context,
    format_size,
    format_table,
    json_option,
    repo_option,
    yes_option,
)
from trackd.errors import InvalidInputError, NotFoundError, ViewsCorruptedError

if TYPE_CHECKING:
    from trackd.eventlog.layout import RepoLayout
    from trackd.eventlog.log import EventLog, VerifyReport
    from trackd.eventlog.spool import SpoolContents
    from trackd.views import Progress, ViewReader

__all__ = ["diff_views", "log_group", "sync_command", "views_group"]


# -- views -------------------------------------------------------------------------------


@click.group("views")
def views_group() -> None:
    """Rebuild the SQLite views from the event log, or verify them."""


@contextlib.contextmanager
def _exclusive_log(layout: RepoLayout, command: str) -> Iterator[EventLog]:
    """Open the repository's event log (locked, recovered); explain a daemon holding it."""
    from trackd.errors import LogLockedError
    from trackd.eventlog.log import EventLog

    try:
        log = EventLog.open(layout.log_dir)
    except LogLockedError as e:
        raise CliError(
            f"{e}\nA trackd daemon serves {layout.root} and owns its event log: stop it "
            f"first (`trackd daemon stop`), then run `trackd {command}` again."
        ) from e
    try:
        for action in log.recovery.actions:
            click.echo(f"log recovery: {action}", err=True)
        yield log
    finally:
        log.close()


@contextlib.contextmanager
def _offset_bar(label: str, start: int, end: int) -> Iterator[Progress]:
    """A progress bar on stderr over log offsets, and the callback that advances it."""
    with click.progressbar(
        length=max(1, end - start), label=label, file=sys.stderr, show_pos=False
    ) as bar:

        def progress(done: int, _total: int) -> None:
            target = min(max(done - start, 0), bar.length or 0)
            if target > bar.pos:
                bar.update(target - bar.pos)

        yield progress
        bar.update(max(0, (bar.length or 0) - bar.pos))


def _counts(reader: ViewReader) -> tuple[int, int, int]:
    seqs = reader.sequences()
    return len(reader.containers()), len(seqs), sum(s.count for s in seqs)


@views_group.command("rebuild")
@repo_option
@yes_option
def views_rebuild(repo: Path | None, yes: bool) -> None:
    """Rebuild views.db from the whole event log and swap it in atomically.

    The daemon owns the log while it serves the repository: stop it first. Asks first,
    unless -y.
    """
    from trackd.cli._repo import require_layout
    from trackd.views import open_reader, rebuild

    layout = require_layout(repo)
    confirm_or_refuse(
        f"Rebuild the views of {layout.root} from its event log (replacing views.db)?", yes
    )
    t0 = time.monotonic()
    with _exclusive_log(layout, "views rebuild") as log:
        start, end = log.start_offset, log.synced_offset
        with _offset_bar("rebuilding views", start, end) as progress:
            rebuild(layout.dot, log, progress=progress)
    reader = open_reader(layout.dot)
    try:
        runs, seqs, points = _counts(reader)
    finally:
        reader.close()
    click.echo(
        f"rebuilt {layout.views_db} from {format_size(max(0, end - start))} of log in "
        f"{time.monotonic() - t0:.2f}s: {runs:,} runs, {seqs:,} sequences, {points:,} points"
    )


@views_group.command("verify")
@repo_option
@json_option
def views_verify(repo: Path | None, as_json: bool) -> None:
    """Compare views.db with a fresh rebuild from the log; exit 1 on any difference.

    The rebuild goes into a temporary folder inside .trackd and is removed afterwards;
    views.db is only read. Needs the log's lock, like `views rebuild`: stop the daemon first.
    """
    from trackd.cli._repo import require_layout
    from trackd.views import open_reader, rebuild

    layout = require_layout(repo)
    if not layout.views_db.exists():
        raise NotFoundError(
            f"no views at {layout.views_db} to verify; `trackd views rebuild` builds them"
        )
    with (
        _exclusive_log(layout, "views verify") as log,
        tempfile.TemporaryDirectory(prefix=".views-verify-", dir=layout.dot) as tmp,
    ):
        with _offset_bar("rebuilding for comparison", log.start_offset, log.synced_offset) as p:
            rebuild(tmp, log, progress=p)
        current, fresh = open_reader(layout.dot), open_reader(tmp)
        try:
            differences = diff_views(current, fresh)
            runs, seqs, points = _counts(fresh)
            checkpoints = (current.checkpoint, fresh.checkpoint)
        finally:
            current.close()
            fresh.close()
    if as_json:
        echo_json(
            {
                "equal": not differences,
                "checkpoint": checkpoints[0],
                "rebuilt_checkpoint": checkpoints[1],
                "runs": runs,
                "sequences": seqs,
                "points": points,
                "differences": differences,
            }
        )
    elif not differences:
        click.echo(
            f"views match a rebuild from the log: {runs:,} runs, {seqs:,} sequences, "
            f"{points:,} points (checkpoint {checkpoints[1]:,})"
        )
    else:
        click.echo(f"views differ from a rebuild from the log in {len(differences)} place(s):")
        for d in differences:
            click.echo(f"  - {d}")
        click.echo("`trackd views rebuild` replaces them with the rebuild")
    if differences:
        click.get_current_context().exit(EXIT_ERROR)


_CONTAINER_FIELDS = (
    "type",
    "name",
    "experiment",
    "description",
    "archived",
    "tags",
    "created_at",
    "ended_at",
    "state",
    "params",
)
_SEQUENCE_FIELDS = ("value_dtype", "first_step", "last_step", "count", "last_value")


def diff_views(current: ViewReader, rebuilt: ViewReader) -> list[str]:
    """Every way ``current`` differs from ``rebuilt``, in words (empty when equal).

    Compares the checkpoint, each container's fields, each sequence's summary and all its
    points (steps, values and timestamps; NaN equals NaN). Sequence ids are not compared:
    they are backend-internal.
    """
    from trackd.views import canonical_context

    out: list[str] = []
    if current.checkpoint != rebuilt.checkpoint:
        out.append(
            f"checkpoint: views {current.checkpoint}, log {rebuilt.checkpoint}"
            + (
                " (the views lag the log; a daemon catches up when it serves the repository)"
                if current.checkpoint < rebuilt.checkpoint
                else ""
            )
        )
    a = {r.hash: r for r in current.containers()}
    b = {r.hash: r for r in rebuilt.containers()}
    for h in sorted(a.keys() - b.keys()):
        out.append(f"run {h}: in the views, not in the log")
    for h in sorted(b.keys() - a.keys()):
        out.append(f"run {h}: in the log, missing from the views")
    for h in sorted(a.keys() & b.keys()):
        for f in _CONTAINER_FIELDS:
            x, y = getattr(a[h], f), getattr(b[h], f)
            if not _same(x, y):
                out.append(f"run {h}: {f} is {x!r} in the views, {y!r} in the log")
    sa = {(s.container, s.name, canonical_context(s.context)): s for s in current.sequences()}
    sb = {(s.container, s.name, canonical_context(s.context)): s for s in rebuilt.sequences()}
    for key in sorted(sa.keys() - sb.keys()):
        out.append(f"{_seq_name(key)}: in the views, not in the log")
    for key in sorted(sb.keys() - sa.keys()):
        out.append(f"{_seq_name(key)}: in the log, missing from the views")
    for key in sorted(sa.keys() & sb.keys()):
        x, y = sa[key], sb[key]
        summary = [
            f"{f} is {getattr(x, f)!r} in the views, {getattr(y, f)!r} in the log"
            for f in _SEQUENCE_FIELDS
            if not _same(getattr(x, f), getattr(y, f))
        ]
        out.extend(f"{_seq_name(key)}: {s}" for s in summary)
        try:
            mine = current.points(x.id)
        except ViewsCorruptedError as e:
            out.append(f"{_seq_name(key)}: {e}")
            continue
        out.extend(f"{_seq_name(key)}: {s}" for s in _diff_points(mine, rebuilt.points(y.id)))
    return out


def _seq_name(key: tuple[str, str, str]) -> str:
    import json

    container, name, ctx = key
    return f"run {container} metric {name!r} [{format_context(json.loads(ctx))}]"


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True  # NaN
    return bool(type(x) is type(y) and x == y)


def _diff_points(x: Any, y: Any) -> list[str]:
    import numpy as np

    if len(x) != len(y):
        return [f"{len(x)} points in the views, {len(y)} in the log"]
    out = []
    if not np.array_equal(x.steps, y.steps):
        out.append("the steps differ")
    if x.values.dtype != y.values.dtype:
        out.append(f"values are {x.values.dtype} in the views, {y.values.dtype} in the log")
    elif x.values.dtype.kind == "O":
        if x.values.tolist() != y.values.tolist():
            out.append("the values differ")
    elif not np.array_equal(x.values, y.values, equal_nan=x.values.dtype.kind == "f"):
        out.append(f"the values differ at {int(np.sum(~_eq(x.values, y.values)))} point(s)")
    tx, ty = x.timestamps, y.timestamps
    if (tx is None) != (ty is None) or (
        tx is not None and ty is not None and not np.array_equal(tx, ty, equal_nan=True)
    ):
        out.append("the timestamps differ")
    return out


def _eq(a: Any, b: Any) -> Any:
    import numpy as np

    if a.dtype.kind == "f":
        return (a == b) | (np.isnan(a) & np.isnan(b))
    return a == b


# -- log ---------------------------------------------------------------------------------


@click.group("log")
def log_group() -> None:
    """Check the event log, the repository's source of truth."""


@log_group.command("verify")
@repo_option
@json_option
def log_verify(repo: Path | None, as_json: bool) -> None:
    """Check every record's checksum in every log segment; exit 1 when corrupt.

    Only reads, so it may run while a daemon serves the repository (the live end of the
    last segment may then show as a torn tail, which is not corruption). Reports per
    segment: records, bytes, and the first bad offset with the reason.
    """
    from trackd.cli._repo import log_extent, require_layout

    layout = require_layout(repo)
    extent = log_extent(layout)
    if not layout.log_dir.is_dir():
        report_doc: dict[str, Any] = {
            "directory": str(layout.log_dir),
            "ok": True,
            "corrupt": False,
            "records": 0,
            "bytes": 0,
            "segments": [],
        }
        if as_json:
            echo_json(report_doc)
        else:
            click.echo(f"no event log yet at {layout.log_dir}: nothing to verify")
        return
    report = _verify_with_progress(layout.log_dir, extent.bytes)
    if as_json:
        echo_json(
            {
                "directory": report.directory,
                "ok": report.ok,
                "corrupt": report.corrupt,
                "records": report.records,
                "bytes": sum(s.bytes for s in report.segments),
                "segments": [asdict(s) for s in report.segments],
            }
        )
    else:
        _print_verify(report)
    if report.corrupt:
        click.get_current_context().exit(EXIT_ERROR)


def _print_verify(report: VerifyReport) -> None:
    def status(ok: bool, torn: bool) -> str:
        return "ok" if ok else ("torn tail" if torn else "CORRUPT")

    rows = [
        (
            os.path.basename(s.path),
            f"{s.base_offset:,}",
            f"{s.records:,}",
            format_size(s.bytes),
            status(s.ok, s.torn_tail),
        )
        for s in report.segments
    ]
    for line in format_table(
        ("SEGMENT", "BASE", "RECORDS", "BYTES", "STATUS"), rows, right=(1, 2, 3)
    ):
        click.echo(line)
    for s in report.errors:
        kind = "torn tail" if s.torn_tail else "corrupt"
        click.echo(f"{os.path.basename(s.path)}: {kind} at offset {s.error_offset}: {s.error}")
    total = sum(s.bytes for s in report.segments)
    verdict = (
        "CORRUPT (the daemon quarantines from the first bad record when it opens the log)"
        if report.corrupt
        else "ok"
        if report.ok
        else "ok but for a torn tail (the next open cuts it)"
    )
    click.echo(
        f"{len(report.segments)} segment(s), {report.records:,} records, "
        f"{format_size(total)}: {verdict}"
    )


def _verify_with_progress(log_dir: Path, total: int) -> VerifyReport:
    """:func:`verify_log` in a worker thread, with a progress bar over the bytes it reads."""
    from trackd.eventlog.log import verify_log

    result: list[VerifyReport] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(verify_log(log_dir))
        except BaseException as e:  # re-raised in the calling thread
            failure.append(e)

    worker = threading.Thread(target=work, name="trackd-log-verify", daemon=True)
    with click.progressbar(
        length=max(1, total), label="verifying the log", file=sys.stderr, show_pos=False
    ) as bar:
        base = _bytes_read()
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            now = _bytes_read()
            if base is not None and now is not None:
                target = min(now - base, bar.length or 0)
                if target > bar.pos:
                    bar.update(target - bar.pos)
        bar.update(max(0, (bar.length or 0) - bar.pos))
    if failure:
        raise failure[0]
    return result[0]


def _bytes_read() -> int | None:
    """Bytes this process has read so far (Linux ``rchar``), or None where unknown."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# -- sync --------------------------------------------------------------------------------


@click.command("sync")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@repo_option
@json_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the daemon to ingest the files.",
)
def sync_command(files: tuple[Path, ...], repo: Path | None, as_json: bool, timeout: float) -> None:
    """Ingest spool files now, e.g. ones copied from an offline machine.

    FILES (spool files, keeping the names they had) are first copied atomically into the
    repository's .trackd/spool/; with no FILES, the files already there are ingested. The
    daemon (started if the settings allow; exit 3 if none can be reached) ingests every
    spool file whose writer is gone; this waits until they are ingested and reports the
    events, and the duplicates it dropped (events it already had).
    """
    from trackd.cli._repo import (
        daemon_status,
        ensure_daemon,
        require_layout,
        served_entry,
        spool_files,
    )
    from trackd.daemon.client import DaemonClient
    from trackd.eventlog.spool import parse_spool_name, read_spool, try_lock_spool

    layout = require_layout(repo)
    given: dict[str, dict[str, Any]] = {}
    for f in files:
        if parse_spool_name(f.name) is None:
            raise InvalidInputError(
                f"{f} is not named like a spool file (<client id hex>-<pid>-<time_ns>.spool); "
                "keep the name it had where it was written, which orders its records"
            )
        contents = read_spool(f)
        if contents.corruption is not None and not contents.payloads:
            raise InvalidInputError(f"{f} is not a readable spool file: {contents.corruption}")
        given[f.name] = _pending(layout.spool_dir / f.name, len(contents.payloads), contents)
    sock = ensure_daemon(layout.root)
    before = served_entry(daemon_status(sock), layout.root) or {}

    # Count what waits already (files a live writer holds are left alone), then copy.
    pending: dict[str, dict[str, Any]] = {}
    held: list[str] = []
    for path in spool_files(layout):
        lock = try_lock_spool(path)
        if lock is None:
            if path.exists():
                held.append(path.name)
            continue
        with lock:
            contents = read_spool(path)
        pending[path.name] = _pending(path, len(contents.payloads), contents)
    copied = [p for p in (_copy_into_spool(f, layout.spool_dir) for f in files) if p is not None]
    for path in copied:
        pending.setdefault(path.name, given[path.name])

    with DaemonClient(sock, timeout=max(10.0, timeout)) as client:
        client.hello(str(layout.root))  # the daemon serves the repository and scans its spool
        deadline = time.monotonic() + timeout
        while any(p["path"].exists() for p in pending.values()):
            if time.monotonic() > deadline:
                left = [n for n, p in pending.items() if p["path"].exists()]
                raise CliError(
                    f"the daemon did not ingest {len(left)} spool file(s) within {timeout:g}s: "
                    + ", ".join(left)
                )
            time.sleep(0.05)
        client.request("flush")  # what was ingested is durable and applied to the views
    after = served_entry(daemon_status(sock), layout.root) or {}

    events = sum(int(p["events"]) for p in pending.values())
    dropped = int(after.get("duplicates_dropped", 0)) - int(before.get("duplicates_dropped", 0))
    duplicates = max(0, min(events, dropped))
    for p in pending.values():
        p["quarantined"] = (layout.quarantine_dir / p["name"]).exists()
    doc = {
        "repository": str(layout.root),
        "copied": [str(p) for p in copied],
        "files": [{k: v for k, v in p.items() if k != "path"} for p in pending.values()],
        "events": events,
        "ingested": events - duplicates,
        "duplicates": duplicates,
        "held_by_live_writers": held,
    }
    if as_json:
        echo_json(doc)
        return
    if copied:
        click.echo(f"copied {len(copied)} file(s) into {layout.spool_dir}")
    if not pending:
        click.echo(f"nothing to sync: no spool files waiting in {layout.spool_dir}")
    else:
        click.echo(
            f"ingested {len(pending)} spool file(s) into {layout.root}: {events:,} events, "
            f"{events - duplicates:,} new, {duplicates:,} duplicates dropped"
        )
    for p in pending.values():
        if p["quarantined"]:
            click.echo(
                f"  {p['name']} was damaged ({p['damaged']}); the events before the damage "
                f"were ingested and the file moved to {layout.quarantine_dir}",
                err=True,
            )
    if held:
        click.echo(
            f"left {len(held)} file(s) alone: a live process is still writing them: "
            + ", ".join(held),
            err=True,
        )


def _pending(path: Path, events: int, contents: SpoolContents) -> dict[str, Any]:
    """What sync reports about one spool file (``path`` is dropped from the output)."""
    return {"path": path, "name": path.name, "events": events, "damaged": contents.corruption}


def _copy_into_spool(src: Path, spool_dir: Path) -> Path | None:
    """Copy ``src`` into ``spool_dir`` under its own name, atomically; None if already there.

    The copy is written under a hidden temporary name (which the daemon ignores), synced,
    renamed to its final name and the folder synced, so the daemon never sees half a file.
    """
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = spool_dir / src.name
    if dest.exists():
        return None  # the same file, or a copy of it already waiting
    tmp = spool_dir / f".{src.name}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o600)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return dest
