"""``trackd runs ls|show|rm``, ``trackd metrics`` and ``trackd export``: the runs of a repository.

Owns: the click group :data:`runs_group` and the commands :data:`metrics_command` and
:data:`export_command`, registered by :mod:`trackd.cli`. Reads go through the read-only views
reader (:func:`trackd.views.open_reader`, the one the SDK's :class:`trackd.Repo` reads
through), so a listing is one consistent snapshot taken in a few queries; deletes go through
the SDK (:meth:`trackd.Repo.delete_container`, a ``ContainerDeleted`` event via the daemon).
Heavy imports happen inside the command bodies.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from trackd.cli._output import (
    confirm_or_refuse,
    echo_json,
    format_context,
    format_duration,
    format_table,
    format_time,
    format_value,
    json_option,
    jsonable,
    parse_assignments,
    repo_option,
    yes_option,
)
from trackd.errors import NotFoundError

if TYPE_CHECKING:
    from trackd.views import ContainerRow, Points, SequenceRow, ViewReader

__all__ = ["export_command", "metrics_command", "runs_group"]

#: How ``metrics`` names the value dtypes of the views (as :attr:`trackd.Sequence.type` does).
_TYPE_NAMES = {"<f8": "float", "<f4": "float", "<i8": "int", "|b1": "bool", "msgpack": "object"}


@click.group("runs")
def runs_group() -> None:
    """List, inspect and delete the runs of a repository."""


# -- runs ls -----------------------------------------------------------------------------


@runs_group.command("ls")
@repo_option
@json_option
@click.option(
    "--state", type=click.Choice(["active", "finished"]), default=None, help="Only these runs."
)
@click.option("--experiment", default=None, help="Only runs of this experiment.")
@click.option("--all", "show_all", is_flag=True, help="Include archived runs.")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only runs whose param KEY equals VALUE; dotted keys reach nested params "
    "(hparams.lr=0.001); VALUE is read as JSON when it parses, else as text. Repeatable.",
)
def runs_ls(
    repo: Path | None,
    as_json: bool,
    state: str | None,
    experiment: str | None,
    show_all: bool,
    params: tuple[str, ...],
) -> None:
    """List runs, oldest first, with their state and number of metrics.

    Columns: hash, name, experiment, state, creation time, metrics. Filters combine.
    Archived runs are left out unless --all.
    """
    from trackd.cli._repo import reading, require_layout

    wanted = parse_assignments(params, "-p/--param")
    layout = require_layout(repo)
    with reading(layout) as reader:
        rows = reader.containers() if reader is not None else []
        counts: dict[str, int] = {}
        for s in reader.sequences() if reader is not None else []:
            counts[s.container] = counts.get(s.container, 0) + 1
    rows = [
        r
        for r in rows
        if (show_all or not r.archived)
        and (state is None or r.state == state)
        and (experiment is None or r.experiment == experiment)
        and all(_param_matches(r.params, k, v) for k, v in wanted.items())
    ]
    if as_json:
        echo_json([{**_run_doc(r), "metrics": counts.get(r.hash, 0)} for r in rows])
        return
    if not rows:
        click.echo(f"no runs{' match' if params or state or experiment else ''} in {layout.root}")
        return
    table = [
        (
            r.hash,
            r.name or "-",
            r.experiment or "-",
            r.state,
            format_time(r.created_at),
            str(counts.get(r.hash, 0)),
        )
        for r in rows
    ]
    for line in format_table(
        ("HASH", "NAME", "EXPERIMENT", "STATE", "CREATED", "METRICS"), table, right=(5,)
    ):
        click.echo(line)


def _param_matches(params: Mapping[str, Any], dotted: str, expected: Any) -> bool:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    if isinstance(node, bool) or isinstance(expected, bool):
        return type(node) is type(expected) and node == expected
    return bool(node == expected)


def _run_doc(r: ContainerRow) -> dict[str, Any]:
    duration = (
        r.ended_at - r.created_at if r.ended_at is not None and r.created_at is not None else None
    )
    return {
        "hash": r.hash,
        "type": r.type,
        "name": r.name,
        "experiment": r.experiment,
        "description": r.description,
        "tags": list(r.tags),
        "archived": r.archived,
        "state": r.state,
        "created_at": r.created_at,
        "ended_at": r.ended_at,
        "duration_s": duration,
        "params": r.params,
    }


def _sequence_doc(s: SequenceRow) -> dict[str, Any]:
    return {
        "name": s.name,
        "context": s.context,
        "dtype": s.value_dtype,
        "count": s.count,
        "first_step": s.first_step,
        "last_step": s.last_step,
        "last_value": jsonable(s.last_value),
    }


# -- runs show ---------------------------------------------------------------------------


@runs_group.command("show")
@click.argument("run")
@repo_option
@json_option
def runs_show(run: str, repo: Path | None, as_json: bool) -> None:
    """Show one run: properties, times, params and its sequences.

    Each sequence is shown with its context, points, first and last step and last value.

    RUN is a run hash or a prefix of exactly one run's hash.
    """
    from trackd.cli._repo import find_run, reading, require_layout

    layout = require_layout(repo)
    with reading(layout) as reader:
        row = find_run(reader, run, layout.root)
        assert reader is not None  # find_run found a row
        seqs = reader.sequences(row.hash)
    doc = {**_run_doc(row), "sequences": [_sequence_doc(s) for s in seqs]}
    if as_json:
        echo_json(doc)
        return
    fields = [
        ("run", row.hash),
        ("name", row.name or "-"),
        ("experiment", row.experiment or "-"),
        ("description", row.description or "-"),
        ("tags", ", ".join(row.tags) or "-"),
        ("archived", "yes" if row.archived else "no"),
        ("state", row.state),
        ("created", format_time(row.created_at)),
        ("ended", format_time(row.ended_at)),
        ("duration", format_duration(doc["duration_s"])),
    ]
    for key, value in fields:
        click.echo(f"{key + ':':<13}{value}")
    click.echo("")
    click.echo("params:" if row.params else "params: none")
    for line in _param_lines(row.params, 1):
        click.echo(line)
    click.echo("")
    if not seqs:
        click.echo("sequences: none")
        return
    click.echo(f"sequences ({len(seqs)}):")
    table = [
        (
            s.name,
            format_context(s.context),
            f"{s.count:,}",
            _step(s.first_step),
            _step(s.last_step),
            format_value(s.last_value),
        )
        for s in seqs
    ]
    for line in format_table(
        ("NAME", "CONTEXT", "POINTS", "FIRST", "LAST", "LAST VALUE"), table, right=(2, 3, 4, 5)
    ):
        click.echo("  " + line)


def _step(step: int | None) -> str:
    return "-" if step is None else str(step)


def _param_lines(params: Mapping[str, Any], depth: int) -> Iterator[str]:
    pad = "  " * depth
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            yield f"{pad}{key}:"
            yield from _param_lines(value, depth + 1)
        else:
            yield f"{pad}{key}: {json.dumps(value)}"


# -- runs rm -----------------------------------------------------------------------------


@runs_group.command("rm")
@click.argument("runs", nargs=-1, required=True)
@repo_option
@yes_option
def runs_rm(runs: tuple[str, ...], repo: Path | None, yes: bool) -> None:
    """Delete runs and all their sequences, for good.

    Each RUN is a hash or a unique hash prefix; all are checked before anything is deleted.
    The deletions go through the daemon (started if the settings allow); the command returns
    once they are durable and applied to the views. Asks first, unless -y; without a terminal
    and without -y it refuses (exit 2).
    """
    from trackd.cli._repo import ensure_daemon, find_run, reading, require_layout

    layout = require_layout(repo)
    with reading(layout) as reader:
        rows = {r.hash: r for r in (find_run(reader, ref, layout.root) for ref in runs)}
    listing = "\n".join(f"  {h}  {r.name or '-'}" for h, r in rows.items())
    confirm_or_refuse(
        f"Delete {len(rows)} run(s) from {layout.root}? This cannot be undone.\n{listing}\n",
        yes,
    )
    ensure_daemon(layout.root)
    from trackd.sdk.repo import Repo

    sdk_repo = Repo(layout.root)
    try:
        for h, r in rows.items():
            if sdk_repo.delete_container(h):
                click.echo(f"deleted {h} ({r.name or 'no name'})")
            else:
                click.echo(f"{h} was already gone")
    finally:
        sdk_repo.close()


# -- metrics -----------------------------------------------------------------------------


@click.command("metrics")
@click.argument("run")
@click.argument("name", required=False)
@repo_option
@click.option(
    "--context",
    "context",
    multiple=True,
    metavar="KEY=VALUE",
    help="Context of the metric NAME (values read as JSON when they parse). Repeatable; "
    "needed when NAME has several contexts.",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (all points, streamed).")
@json_option
def metrics_command(
    run: str,
    name: str | None,
    repo: Path | None,
    context: tuple[str, ...],
    as_csv: bool,
    as_json: bool,
) -> None:
    """Print one metric of RUN (step, value, time), or list its metrics.

    Without NAME, lists the run's sequences: name, context, type, points, first and last
    step, last value. RUN is a run hash or a unique prefix of one.
    """
    from trackd.cli._repo import find_run, reading, require_layout

    if as_csv and as_json:
        raise click.UsageError("--csv and --json exclude each other")
    ctx = parse_assignments(context, "--context")
    if name is None and context:
        raise click.UsageError("--context needs a metric NAME")
    layout = require_layout(repo)
    with reading(layout) as reader:
        row = find_run(reader, run, layout.root)
        assert reader is not None  # find_run found a row
        seqs = reader.sequences(row.hash)
        if name is None:
            _print_sequence_list(row, seqs, as_csv, as_json)
            return
        seq = _pick_sequence(row.hash, seqs, name, ctx if context else None)
        points = reader.points(seq.id)
    if as_json:
        echo_json(
            {
                "run": row.hash,
                "name": seq.name,
                "context": seq.context,
                "points": list(_point_dicts(points)),
            }
        )
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(("step", "value", "timestamp"))
        for step, value, ts in _point_rows(points):
            out.writerow((step, _csv_value(value), "" if ts is None else repr(ts)))
    else:
        table = [
            (str(step), format_value(value), format_time(ts))
            for step, value, ts in _point_rows(points)
        ]
        for line in format_table(("STEP", "VALUE", "TIME"), table, right=(0, 1)):
            click.echo(line)


def _print_sequence_list(
    row: ContainerRow, seqs: list[SequenceRow], as_csv: bool, as_json: bool
) -> None:
    if as_json:
        echo_json([_sequence_doc(s) for s in seqs])
        return
    if as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(("name", "context", "dtype", "count", "first_step", "last_step", "last_value"))
        for s in seqs:
            out.writerow(
                (
                    s.name,
                    _context_json(s.context),
                    s.value_dtype,
                    s.count,
                    "" if s.first_step is None else s.first_step,
                    "" if s.last_step is None else s.last_step,
                    _csv_value(jsonable(s.last_value)),
                )
            )
        return
    if not seqs:
        click.echo(f"run {row.hash} has no metrics")
        return
    table = [
        (
            s.name,
            format_context(s.context),
            _TYPE_NAMES.get(s.value_dtype, "object"),
            f"{s.count:,}",
            _step(s.first_step),
            _step(s.last_step),
            format_value(s.last_value),
        )
        for s in seqs
    ]
    for line in format_table(
        ("NAME", "CONTEXT", "TYPE", "POINTS", "FIRST", "LAST", "LAST VALUE"),
        table,
        right=(3, 4, 5, 6),
    ):
        click.echo(line)


def _pick_sequence(
    run: str, seqs: list[SequenceRow], name: str, context: dict[str, Any] | None
) -> SequenceRow:
    """The sequence ``name`` (with ``context`` when given) among ``seqs``."""
    named = [s for s in seqs if s.name == name]
    if not named:
        names = ", ".join(sorted({s.name for s in seqs})) or "none"
        raise NotFoundError(f"run {run} has no metric {name!r}; its metrics: {names}")
    if context is not None:
        chosen = [s for s in named if s.context == jsonable(context)]
        if not chosen:
            have = "; ".join(format_context(s.context) for s in named)
            raise NotFoundError(
                f"run {run} has no metric {name!r} with context "
                f"{format_context(context)}; its contexts: {have}"
            )
        return chosen[0]
    if len(named) > 1:
        have = "; ".join(format_context(s.context) for s in named)
        raise NotFoundError(
            f"metric {name!r} of run {run} has {len(named)} contexts ({have}); "
            "pick one with --context KEY=VALUE"
        )
    return named[0]


def _point_rows(points: Points) -> Iterator[tuple[int, Any, float | None]]:
    """``(step, value, timestamp or None)`` per point, as plain Python values."""
    steps = points.steps.tolist()
    values = points.values.tolist()
    stamps = points.timestamps.tolist() if points.timestamps is not None else None
    for i, step in enumerate(steps):
        ts = stamps[i] if stamps is not None else None
        yield step, values[i], ts if ts is not None and math.isfinite(ts) else None


def _point_dicts(points: Points) -> Iterator[dict[str, Any]]:
    for step, value, ts in _point_rows(points):
        yield {"step": step, "value": jsonable(value), "timestamp": ts}


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (str, int)):
        return str(value)
    return json.dumps(jsonable(value))


def _context_json(context: Mapping[str, Any]) -> str:
    return json.dumps(jsonable(context), sort_keys=True, separators=(",", ":"))


# -- export ------------------------------------------------------------------------------


@click.command("export")
@click.argument("run")
@repo_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: a header line with params and properties, then one object per point; "
    "csv: name,context,step,value,timestamp rows.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of stdout.",
)
def export_command(run: str, repo: Path | None, fmt: str, output: Path | None) -> None:
    """Export every point of every metric of RUN as JSON lines or CSV.

    JSON lines: first {"run", "params", "properties"}, then one {"name", "context", "step",
    "value", "timestamp"} per point, metric by metric in step order (non-finite floats are
    written as NaN/Infinity, as Python's json reads them). RUN is a hash or a unique prefix.
    """
    from trackd.cli._repo import find_run, reading, require_layout

    layout = require_layout(repo)
    with reading(layout) as reader:
        row = find_run(reader, run, layout.root)
        assert reader is not None  # find_run found a row
        if output is None:
            n, m = _write_export(reader, row, fmt, sys.stdout)
            return
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                n, m = _write_export(reader, row, fmt, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    click.echo(f"wrote {n:,} points of {m} metric(s) of run {row.hash} to {output}", err=True)


def _write_export(reader: ViewReader, row: ContainerRow, fmt: str, out: IO[str]) -> tuple[int, int]:
    """Write the export of ``row`` to ``out``; return (points, sequences)."""
    seqs = reader.sequences(row.hash)
    total = 0
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(("name", "context", "step", "value", "timestamp"))
    else:
        doc = _run_doc(row)
        header = {
            "run": row.hash,
            "params": doc.pop("params"),
            "properties": {k: v for k, v in doc.items() if k != "hash"},
        }
        out.write(json.dumps(jsonable(header)) + "\n")
    for s in seqs:
        points = reader.points(s.id)
        total += len(points)
        if writer is not None:
            ctx = _context_json(s.context)
            writer.writerows(
                (s.name, ctx, step, _csv_value(value), "" if ts is None else repr(ts))
                for step, value, ts in _point_rows(points)
            )
            continue
        prefix = f'{{"name": {json.dumps(s.name)}, "context": {json.dumps(jsonable(s.context))}, '
        out.writelines(
            prefix
            + f'"step": {step}, "value": {json.dumps(jsonable(value))}, '
            + f'"timestamp": {json.dumps(ts)}}}\n'
            for step, value, ts in _point_rows(points)
        )
    return total, len(seqs)
