"""Fixtures of the command-line tests: a repository populated through the SDK with a real
daemon, and a helper that runs ``trackd`` in-process with click's runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from trackd.cli import main
from trackd.sdk.client import shutdown_clients

#: Hashes chosen so that "aa" is an ambiguous prefix and "aa1", "aa2", "bb" are unique.
ALPHA = "aa11" + "0" * 20
BETA = "aa22" + "0" * 20
GAMMA = "bb33" + "0" * 20


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """No SDK client of one test outlives it (and reconnects to another test's daemon)."""
    shutdown_clients()
    yield
    shutdown_clients()


def trackd(*args: str | Path) -> Result:
    """Run ``trackd ARGS`` in this process and return click's result (stdout, stderr, code)."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="trackd")


@dataclass
class Populated:
    """A repository holding three runs made through the SDK.

    alpha (finished): loss[train] 100 points, loss[val] 10 points, epoch (ints) 100 points.
    beta (finished): loss[train] 50 points. gamma: still active, loss[train] 5 points.
    """

    root: Path
    runs: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def populated(daemon: Any, repo_path: Path) -> Iterator[Populated]:
    """``repo_path`` with the runs of :class:`Populated`, everything applied to the views."""
    import trackd as td

    alpha = td.Run(ALPHA, repo=repo_path, experiment="exp1")
    alpha.name = "alpha"
    alpha["hparams"] = {"lr": 0.001, "opt": "sgd"}
    alpha["layers"] = [64, 64]
    alpha["flag"] = True
    for i in range(100):
        alpha.track(1.0 / (i + 1), name="loss", step=i, context={"subset": "train"})
        alpha.track(i, name="epoch", step=i)
        if i % 10 == 0:
            alpha.track(2.0 / (i + 1), name="loss", step=i, context={"subset": "val"})
    alpha.close()

    beta = td.Run(BETA, repo=repo_path, experiment="exp2")
    beta.name = "beta"
    beta["hparams"] = {"lr": 0.01, "opt": "adam"}
    for i in range(50):
        beta.track(0.5 + i, name="loss", step=i, context={"subset": "train"})
    beta.close()

    gamma = td.Run(GAMMA, repo=repo_path, experiment="exp1")
    gamma.name = "gamma"
    gamma["hparams"] = {"lr": 0.001, "opt": "sgd"}
    for i in range(5):
        gamma.track(float(i), name="loss", step=i, context={"subset": "train"})
    td.Repo(repo_path).flush()
    try:
        yield Populated(repo_path, {"alpha": alpha, "beta": beta, "gamma": gamma})
    finally:
        gamma.close()


def write_offline_spool(root: Path, sock: Path, points: int) -> Path:
    """Track a run into ``root`` in a process that finds no daemon; return its spool file."""
    code = (
        "import trackd\n"
        f"r = trackd.Run(repo={str(root)!r}, experiment='offline')\n"
        "r.name = 'offline'\n"
        f"for i in range({points}): r.track(i * 0.5, name='loss', step=i)\n"
        "r.close()\n"
    )
    env = {**os.environ, "TRACKD_AUTOSTART": "0", "TRACKD_SOCKET": str(sock)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    (spool,) = sorted((root / ".trackd" / "spool").glob("*.spool"))
    return spool
