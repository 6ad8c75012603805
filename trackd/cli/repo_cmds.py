"""``trackd init`` and ``trackd status``: create a repository, and see how it and the daemon are.

Owns: the click commands :data:`init_command` and :data:`status_command`, registered by
:mod:`trackd.cli`. Thin: :meth:`trackd.Repo.init` creates, the views reader and the daemon's
status map inform; imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trackd.cli._output import (
    echo_json,
    format_duration,
    format_size,
    json_option,
    repo_option,
    resolve_repo_root,
)

__all__ = ["init_command", "status_command"]


@click.command("init")
@repo_option
def init_command(repo: Path | None) -> None:
    """Create a trackd repository (a .trackd folder) if there is none.

    Idempotent: on an existing repository it says so and changes nothing.
    """
    from trackd.sdk.repo import Repo

    root = resolve_repo_root(repo)
    existed = Repo.exists(root)
    created = Repo.init(root)
    dot = created.layout.dot
    if existed:
        click.echo(f"trackd repository already exists at {created.path} ({dot})")
        return
    click.echo(f"created the trackd repository {dot}")
    click.echo(f"  spool folder: {created.layout.spool_dir}")
    click.echo("  the event log and views appear when the daemon first serves it")


@click.command("status")
@repo_option
@json_option
def status_command(repo: Path | None, as_json: bool) -> None:
    """Show the daemon and the repository at a glance.

    The daemon: pid, uptime, socket, or "not running". The repository: runs, active runs,
    sequences, points, log size and end offset, views checkpoint and lag, spool files
    waiting. Never fails because no daemon runs; the numbers about the repository then come from its
    files alone.
    """
    from trackd.cli._repo import daemon_status, served_entry
    from trackd.wire.address import socket_path

    root = resolve_repo_root(repo)
    sock = socket_path()
    st = daemon_status(sock)
    entry = served_entry(st, root)
    doc: dict[str, Any] = {
        "daemon": _daemon_part(st, sock, entry is not None),
        "repository": _repository_part(root, entry),
    }
    if as_json:
        echo_json(doc)
        return
    for line in _status_lines(doc):
        click.echo(line)


def _daemon_part(st: dict[str, Any] | None, sock: Path, serves: bool) -> dict[str, Any]:
    if st is None:
        return {"running": False, "socket": str(sock)}
    return {
        "running": True,
        "pid": st.get("pid"),
        "version": st.get("version"),
        "uptime_s": st.get("uptime_s"),
        "socket": st.get("socket", str(sock)),
        "clients": st.get("clients"),
        "serves_repository": serves,
    }


def _repository_part(root: Path, entry: dict[str, Any] | None) -> dict[str, Any]:
    from trackd.cli._repo import log_extent, reading, spool_files
    from trackd.eventlog.layout import RepoLayout

    layout = RepoLayout.at(root)
    if not layout.exists():
        return {"path": str(root), "exists": False}
    with reading(layout) as reader:
        rows = reader.containers() if reader is not None else []
        seqs = reader.sequences() if reader is not None else []
        checkpoint = reader.checkpoint if reader is not None else None
    extent = log_extent(layout)
    waiting = spool_files(layout)
    if entry is not None:
        # The daemon knows better: it holds the log open and sees what is not synced yet.
        end = int(entry["end_offset"])
        applied = int(entry["applied_offset"])
        lag_bytes = int(entry["lag_bytes"])
    else:
        end = extent.end_offset
        applied = checkpoint or 0
        lag_bytes = max(0, end - max(applied, extent.start_offset)) if extent.segments else 0
    return {
        "path": str(root),
        "exists": True,
        "runs": len(rows),
        "active_runs": sum(1 for r in rows if r.active),
        "sequences": len(seqs),
        "points": sum(s.count for s in seqs),
        "log": {"segments": extent.segments, "bytes": extent.bytes, "end_offset": end},
        "views": {
            "built": checkpoint is not None,
            "checkpoint": checkpoint,
            "applied_offset": applied,
            "lag_bytes": lag_bytes,
            "lag_events": int(entry["lag_events"]) if entry is not None else None,
        },
        "spool": {
            "files": len(waiting),
            "bytes": sum(_size(p) for p in waiting),
        },
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _status_lines(doc: dict[str, Any]) -> list[str]:
    d, r = doc["daemon"], doc["repository"]
    if d["running"]:
        serves = "serves this repository" if d["serves_repository"] else "not serving it yet"
        daemon = (
            f"running, pid {d['pid']}, up {format_duration(d['uptime_s'])}, "
            f"socket {d['socket']} ({serves})"
        )
    else:
        daemon = f"not running (socket {d['socket']})"
    lines = [f"daemon:      {daemon}", f"repository:  {r['path']}"]
    if not r["exists"]:
        lines.append("             no .trackd here; create one with `trackd init`")
        return lines
    log, views, spool = r["log"], r["views"], r["spool"]
    lines += [
        f"runs:        {r['runs']:,} ({r['active_runs']:,} active)",
        f"sequences:   {r['sequences']:,} with {r['points']:,} points",
        f"log:         {log['segments']} segment(s), {format_size(log['bytes'])}, "
        f"end offset {log['end_offset']:,}",
    ]
    if views["built"]:
        events = "" if views["lag_events"] is None else f", {views['lag_events']:,} events"
        lines.append(
            f"views:       checkpoint {views['checkpoint']:,}, lag "
            f"{format_size(views['lag_bytes'])}{events}"
        )
    else:
        lines.append("views:       not built yet (the daemon builds them when it serves the repo)")
    lines.append(
        f"spool:       {spool['files']} file(s) waiting ({format_size(spool['bytes'])})"
        + ("; `trackd sync` ingests them" if spool["files"] else "")
    )
    return lines
