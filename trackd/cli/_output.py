"""What every ``trackd`` command shares: exit codes, options, parsing and printing.

Owns: the exit-code mapping (:class:`TrackdGroup`, the root group's class, turns every
:class:`~trackd.errors.TrackdError` into a one-line message and its exit status), the
``--repo``/``--json``/``-y`` options and the rule that resolves the repository, the
``key=value`` parser, confirmation of destructive commands, and the small text formatters
(tables, times, values, contexts). Imports ``click``, ``trackd.config`` and
``trackd.errors`` at module level (both stdlib-only), nothing heavy, so ``trackd --help``
stays fast.

Exit statuses, the same for every command:

====  ==========================================================================
0     success
1     an error: a TrackdError (message, no traceback), an unknown run, corruption found
2     a usage error (click's own), or a destructive command with no ``-y`` and no terminal
3     no daemon answers (:class:`~trackd.errors.DaemonUnavailableError`)
====  ==========================================================================
"""

from __future__ import annotations

import errno
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from trackd.errors import DaemonUnavailableError, TrackdError

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_DAEMON",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "NoDaemonError",
    "TrackdGroup",
    "confirm_or_refuse",
    "echo_json",
    "format_context",
    "format_duration",
    "format_size",
    "format_table",
    "format_time",
    "format_value",
    "json_option",
    "jsonable",
    "parse_assignments",
    "repo_option",
    "resolve_repo_root",
    "yes_option",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3

_F = TypeVar("_F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A failure reported as ``Error: <message>``; the process exits 1."""

    exit_code = EXIT_ERROR


class NoDaemonError(CliError):
    """No daemon could be reached; the process exits 3."""

    exit_code = EXIT_NO_DAEMON


class TrackdGroup(click.Group):
    """The root group: maps trackd's errors to exit statuses for every subcommand.

    :class:`~trackd.errors.DaemonUnavailableError` exits 3, any other
    :class:`~trackd.errors.TrackdError` and file errors exit 1, each with its message and
    no traceback. Usage errors keep click's status 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the subcommand, translating trackd's errors into :class:`CliError`."""
        try:
            return super().invoke(ctx)
        except DaemonUnavailableError as e:
            raise NoDaemonError(str(e)) from e
        except TrackdError as e:
            raise CliError(str(e) or type(e).__name__) from e
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise  # click handles a closed pipe (`trackd ... | head`) quietly
            where = f": {e.filename}" if e.filename else ""
            raise CliError(f"{e.strerror or e}{where}") from e


# -- options -----------------------------------------------------------------------------


def repo_option(f: _F) -> _F:
    """The ``--repo PATH`` option, passed to the command as ``repo``."""
    return click.option(
        "--repo",
        "repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Repository root (default: $TRACKD_REPO, else client.repo in the config file, "
        "else the current folder).",
    )(f)


def json_option(f: _F) -> _F:
    """The ``--json`` flag, passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def yes_option(f: _F) -> _F:
    """The ``-y/--yes`` flag of destructive commands, passed as ``yes``."""
    return click.option("-y", "--yes", "yes", is_flag=True, help="Do not ask for confirmation.")(f)


def resolve_repo_root(repo: Path | None) -> Path:
    """The repository a command works on: ``--repo``, else the SDK's default repository.

    The default is ``client.repo`` of :func:`trackd.config.load_settings` (``TRACKD_REPO``,
    the user config file, else the current folder), the same rule :meth:`trackd.Repo.default`
    follows. The path is made absolute; a path naming the ``.trackd`` folder means its parent.

    Raises:
        ConfigError: a bad setting in the environment or the user config file.
        InvalidNameError: the path is empty.
    """
    from trackd.config import load_settings
    from trackd.eventlog.layout import RepoLayout

    path = repo if repo is not None else load_settings().client.repo
    return RepoLayout.at(path).root


def confirm_or_refuse(question: str, yes: bool) -> None:
    """Ask ``question`` on the terminal unless ``yes``; without a terminal, refuse.

    Raises:
        click.UsageError: no ``-y`` and stdin is not a terminal (exit 2).
        click.Abort: the user said no (exit 1).
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(
            "refusing to go on without confirmation: stdin is not a terminal; pass -y"
        )
    click.confirm(question, abort=True, err=True)


# -- parsing -----------------------------------------------------------------------------


def parse_assignments(items: Iterable[str], option: str) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are JSON when they parse as JSON, else text.

    So ``lr=0.001`` gives a float, ``layers=[64,64]`` a list, ``opt=sgd`` the text ``sgd``
    and ``opt="1"`` the text ``1``.

    Raises:
        click.BadParameter: an item has no ``=`` or an empty key (exit 2).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        out[key] = value
    return out


# -- printing ----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, paths and bytes turned into JSON types."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy scalars and arrays, without importing numpy
        return jsonable(tolist())
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(jsonable(value), indent=2))


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()
) -> list[str]:
    """Lines of a plain aligned table (two spaces between columns).

    Args:
        headers: Column titles.
        rows: Cells, already text.
        right: Indexes of columns to align right (numbers).
    """
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    rset = set(right)
    lines = []
    for row in table:
        cells = [
            c.rjust(w) if i in rset else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_time(ts: float | None) -> str:
    """Local time ``YYYY-MM-DD HH:MM:SS``, or ``-``."""
    if ts is None or not math.isfinite(ts):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_duration(seconds: float | None) -> str:
    """A duration such as ``2h 3m 4s`` or ``1.52s``, or ``-``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if d or h:
        parts.append(f"{h}h")
    parts += [f"{m}m", f"{s}s"]
    return " ".join(parts)


def format_size(n: int) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``3.2 MiB`` or ``1.1 GiB``."""
    if n < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        x /= 1024
        if x < 1024 or unit == "GiB":
            return f"{x:.1f} {unit}"
    raise AssertionError("unreachable")


def format_value(value: Any) -> str:
    """A tracked value for a table: floats to 6 significant digits, others as text."""
    value = jsonable(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def format_context(context: Mapping[str, Any]) -> str:
    """A context as ``k=v,k2=v2`` (sorted; non-text values as JSON), or ``-`` when empty."""
    if not context:
        return "-"
    return ",".join(
        f"{k}={v if isinstance(v, str) else json.dumps(jsonable(v))}"
        for k, v in sorted(context.items())
    )
