"""The shape of the ``trackd`` command: help everywhere, documented commands, exit codes,
a light import, and the commands that need no daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import trackd

from trackd.cli import main
from trackd.cli._output import TrackdGroup
from trackd.errors import DaemonUnavailableError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]


def _walk(
    cmd: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))


COMMANDS = [p for p, _ in _walk(main) if p]


def test_command_tree_is_complete() -> None:
    """The commands of the day-to-day command line are all registered."""
    paths = {" ".join(p) for p in COMMANDS}
    expected = {
        "init", "status", "demo", "daemon run", "daemon start", "daemon stop", "daemon status",
        "runs ls", "runs show", "runs rm", "metrics", "views rebuild", "views verify",
        "log verify", "sync", "export", "systemd install", "config show",
    }  # fmt: skip
    assert expected <= paths


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    """Every command and group has help text, and --help prints it and exits 0."""
    ctx_cmd = dict(_walk(main))[path]
    assert (ctx_cmd.help or "").strip(), f"`trackd {' '.join(path)}` has no help text"
    out = trackd(*path, "--help")
    assert out.exit_code == 0, out.output
    assert f"Usage: trackd {' '.join(path)}" in out.stdout


def test_every_command_is_documented() -> None:
    """Every command path appears as `trackd <path>` in README.md or docs/CLI.md."""
    text = ""
    for doc in (ROOT / "README.md", ROOT / "docs" / "CLI.md"):
        if doc.exists():
            text += doc.read_text()
    missing = [" ".join(p) for p in COMMANDS if f"trackd {' '.join(p)}" not in text]
    assert not missing, f"undocumented commands: {missing}"


def test_import_stays_light() -> None:
    """`import trackd.cli` loads no numpy, daemon stack, SDK or views (so --help is fast)."""
    code = "import json, sys, trackd.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    heavy = {
        "numpy", "uvloop", "aiosqlite", "watchfiles", "msgpack", "sqlite3",
        "trackd.daemon", "trackd.sdk", "trackd.views", "trackd.eventlog",
    }  # fmt: skip
    assert not loaded & heavy


def test_exit_codes_are_mapped_once() -> None:
    """The root group class turns DaemonUnavailableError into 3 and TrackdError into 1,
    with the message and no traceback; usage errors stay 2."""

    @click.group(cls=TrackdGroup)
    def root() -> None:
        """Root."""

    @root.command()
    def nodaemon() -> None:
        """Raise DaemonUnavailableError."""
        raise DaemonUnavailableError("nobody on /x.sock")

    @root.command()
    def missing() -> None:
        """Raise NotFoundError."""
        raise NotFoundError("no run 'zz'")

    runner = CliRunner()
    r3 = runner.invoke(root, ["nodaemon"])
    assert (r3.exit_code, r3.stderr.strip()) == (3, "Error: nobody on /x.sock")
    r1 = runner.invoke(root, ["missing"])
    assert (r1.exit_code, r1.stderr.strip()) == (1, "Error: no run 'zz'")
    assert "Traceback" not in r1.output
    assert runner.invoke(root, ["nosuchcommand"]).exit_code == 2


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """Bad choices, KEY=VALUE without '=', and --csv with --json are usage errors (2)."""
    assert trackd("runs", "ls", "--repo", tmp_path, "--state", "bogus").exit_code == 2
    bad = trackd("runs", "ls", "--repo", tmp_path, "-p", "noequals")
    assert bad.exit_code == 2
    assert "expected KEY=VALUE" in bad.stderr
    both = trackd("metrics", "abc", "loss", "--repo", tmp_path, "--csv", "--json")
    assert both.exit_code == 2
    assert "exclude each other" in both.stderr
    assert trackd("runs", "rm", "--repo", tmp_path).exit_code == 2  # RUN is required


def test_init_is_idempotent_and_others_need_a_repo(tmp_path: Path) -> None:
    """init creates .trackd and says so, a second init changes nothing; commands on a folder
    without a repository exit 1 pointing at `trackd init`."""
    root = tmp_path / "proj"
    missing = trackd("runs", "ls", "--repo", root)
    assert missing.exit_code == 1
    assert f"no trackd repository at {root}" in missing.stderr
    assert "trackd init" in missing.stderr

    first = trackd("init", "--repo", root)
    assert first.exit_code == 0
    assert f"created the trackd repository {root / '.trackd'}" in first.stdout
    assert (root / ".trackd" / "spool").is_dir()
    second = trackd("init", "--repo", root)
    assert second.exit_code == 0
    assert "already exists" in second.stdout

    empty = trackd("runs", "ls", "--repo", root, "--json")
    assert (empty.exit_code, json.loads(empty.stdout)) == (0, [])
    nolog = trackd("log", "verify", "--repo", root)
    assert nolog.exit_code == 0
    assert "no event log yet" in nolog.stdout


def test_repo_defaults_to_trackd_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --repo, commands use $TRACKD_REPO (the SDK's rule), else the current folder."""
    monkeypatch.setenv("TRACKD_REPO", str(tmp_path / "viaenv"))
    assert trackd("init").exit_code == 0
    assert (tmp_path / "viaenv" / ".trackd").is_dir()
    monkeypatch.delenv("TRACKD_REPO")
    monkeypatch.chdir(tmp_path)
    assert trackd("init").exit_code == 0
    assert (tmp_path / ".trackd").is_dir()


def test_status_without_daemon(socket_env: Path, tmp_path: Path) -> None:
    """status reports "not running" and the repository's files, and exits 0."""
    assert trackd("init", "--repo", tmp_path).exit_code == 0
    out = trackd("status", "--repo", tmp_path, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["daemon"] == {"running": False, "socket": str(socket_env)}
    repo = doc["repository"]
    assert (repo["exists"], repo["runs"], repo["points"]) == (True, 0, 0)
    assert repo["views"]["built"] is False
    text = trackd("status", "--repo", tmp_path)
    assert text.exit_code == 0
    assert "daemon:      not running" in text.stdout


def test_sync_without_daemon_exits_3(
    socket_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync exits 3 when no daemon answers and auto-start is off, and copies nothing."""
    monkeypatch.setenv("TRACKD_AUTOSTART", "0")
    assert trackd("init", "--repo", tmp_path).exit_code == 0
    out = trackd("sync", "--repo", tmp_path)
    assert out.exit_code == 3
    assert f"no trackd daemon answers on {socket_env}" in out.stderr
    assert not socket_env.exists()
