"""``trackd systemd install`` and ``trackd config show``: running trackd as a service.

Owns: the click groups :data:`systemd_group` (``systemd``) and :data:`config_group`
(``config``), registered by :mod:`trackd.cli`. Thin: settings come from
:mod:`trackd.config`, unit text from :mod:`trackd.daemon.systemd` (imported inside the
command body, so ``trackd --help`` stays light). Errors exit with status 1, usage errors 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import click

from trackd.config import Settings, load_settings
from trackd.errors import ConfigError

__all__ = ["config_group", "systemd_group"]


@click.group("config")
def config_group() -> None:
    """Show trackd's settings and where each value comes from."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository whose .trackd/config.toml to include (default: client.repo).",
)
def config_show(as_json: bool, repo: Path | None) -> None:
    """Print every effective setting, its value and its source.

    Sources, highest precedence first: flag, env TRACKD_*, the repository's
    .trackd/config.toml, the user file ($TRACKD_CONFIG or
    $XDG_CONFIG_HOME/trackd/config.toml), default. APPLIES tells when a change takes
    effect: runtime (daemon SIGHUP), restart (daemon restart) or client (next open).
    """
    try:
        settings = _load_for_show(repo)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    rows = settings.explain()
    if as_json:
        doc: dict[str, Any] = {
            "files": [str(f) for f in settings.files],
            "settings": {
                r.name: {
                    "value": _jsonable(r.value),
                    "source": r.source,
                    "applies": r.applies.value,
                    "env": r.env_var,
                    "doc": r.doc,
                }
                for r in rows
            },
        }
        click.echo(json.dumps(doc, indent=2))
        return
    table = [("KEY", "VALUE", "SOURCE", "APPLIES")]
    table += [(r.name, _text(r.value), r.source, r.applies.value) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[3]]))
    files = ", ".join(str(f) for f in settings.files) or "none"
    click.echo(f"\nfiles read: {files}")


def _load_for_show(repo: Path | None) -> Settings:
    if repo is None:
        # Which repository's file to read is itself a setting (TRACKD_REPO, user file).
        repo = load_settings().client.repo
        return load_settings(repo=repo)
    return load_settings(flags={"client.repo": str(repo)}, repo=repo)


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@click.group("systemd")
def systemd_group() -> None:
    """Run the trackd daemon under systemd."""


@systemd_group.command("install")
@click.option(
    "--user/--system",
    "user",
    default=True,
    help="A per-user service (default) or a hardened system-wide one.",
)
@click.option("--print", "print_only", is_flag=True, help="Print the units; write nothing.")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the units into this folder instead of systemd's.",
)
def systemd_install(user: bool, print_only: bool, prefix: Path | None) -> None:
    """Write trackd.socket and trackd.service for this Python installation.

    ExecStart runs `<this interpreter> -m trackd daemon run`. Units go to
    ~/.config/systemd/user/ (--user) or /etc/systemd/system/ (--system). The commands
    that enable them are printed; nothing is started.
    """
    from trackd.daemon.systemd import SYSTEM_SOCKET_PATH, SYSTEM_STATE_DIR, render_units

    scope: Literal["user", "system"] = "user" if user else "system"
    python = sys.executable
    if not python:
        raise click.ClickException("cannot tell which interpreter runs trackd (sys.executable)")
    units = render_units(scope, python)
    target = prefix if prefix is not None else _unit_dir(scope)
    if scope == "system" and _under_protected_home(python):
        click.echo(
            f"warning: {python} is under a home folder, which the system service cannot "
            "see (ProtectHome=yes); install trackd outside /home, /root and /run/user",
            err=True,
        )

    if print_only:
        for name, text in units.items():
            click.echo(f"# {target / name}")
            click.echo(text)
    else:
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, text in units.items():
                _write_file(target / name, text)
                click.echo(f"wrote {target / name}")
        except OSError as e:
            raise click.ClickException(
                f"cannot write units to {target}: {e.strerror or e}"
                + ("; run as root, or use --print" if scope == "system" else "")
            ) from e

    # With --print, stdout carries only the unit text, so it can be redirected.
    for line in _enable_instructions(scope, SYSTEM_SOCKET_PATH, SYSTEM_STATE_DIR):
        click.echo(line, err=print_only)


def _enable_instructions(
    scope: Literal["user", "system"], socket_path: str, state_dir: str
) -> list[str]:
    if scope == "user":
        return [
            "",
            "To enable trackd, run:",
            "  systemctl --user daemon-reload && systemctl --user enable --now trackd.socket",
        ]
    return [
        "",
        "To enable trackd, run as root:",
        f"  systemd-sysusers --inline 'u trackd - \"trackd tracking daemon\" {state_dir}'",
        "  systemctl daemon-reload && systemctl enable --now trackd.socket",
        "Then add users to group trackd (usermod -aG trackd USER) and have them set",
        f"  export TRACKD_SOCKET={socket_path}",
        f"Repositories of the system daemon live under {state_dir}.",
    ]


def _unit_dir(scope: Literal["user", "system"]) -> Path:
    if scope == "system":
        return Path("/etc/systemd/system")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config_home) / "systemd" / "user"


def _under_protected_home(path: str) -> bool:
    parts = Path(path).parts
    return len(parts) > 1 and (parts[1] in ("home", "root") or parts[1:3] == ("run", "user"))


def _write_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
