"""The README's code runs: its Python block against a real daemon, its commands exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.integration
def test_readme_training_loop_runs_and_reads_back(socket_env: Path, tmp_path: Path) -> None:
    """The first-screen loop logs 1,000 points that read back exactly, auto-starting a daemon."""
    (block,) = _python_blocks()
    probe = (
        "\nimport json\n"
        "print(json.dumps({'n': len(steps), 'steps': steps[:3].tolist(),"
        " 'values': values[:3].tolist(), 'lr': trackd.Repo('exp').get_container(run.hash)"
        "['hparams']['lr']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", block + probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == 1000
    assert got["steps"] == [0, 1, 2]
    assert got["values"] == [1.0, 0.5, 1.0 / 3.0]
    assert got["lr"] == 1e-3


def test_readme_commands_exist_in_the_cli() -> None:
    """Every `trackd ...` command named in the README is a real command path."""
    import click

    from trackd.cli import main

    named = set(re.findall(r"`trackd ([a-z]+(?: [a-z]+)?)", README.read_text()))
    assert named, "the README names no commands"
    ctx = click.Context(main)
    for path in sorted(named):
        cmd: click.Command | None = main
        for word in path.split():
            if not isinstance(cmd, click.Group):
                break
            cmd = cmd.get_command(ctx, word)
            assert cmd is not None, f"README names `trackd {path}`, which does not exist"
