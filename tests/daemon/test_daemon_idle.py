"""A real daemon closes a repository nobody uses and reopens it for the next client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import trackd
from trackd.sdk.client import shutdown_clients

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "trackd", "daemon", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def _track(repo: Path, name: str, n: int) -> str:
    run = trackd.Run(repo=repo)
    for i in range(n):
        run.track(float(i), name, step=i)
    run.close()
    shutdown_clients()  # the process's connection goes too: the repository has no client
    return run.hash


def test_an_idle_repository_is_closed_and_reopened_by_the_next_client(
    daemon_factory: DaemonProc, repo_path: Path
) -> None:
    """With idle_close_s = 0.5, a repository whose last client left is closed (drained, its
    log and views closed, gone from status); the next client reopens it and both runs'
    points are there."""
    daemon_factory.env["TRACKD_DAEMON_IDLE_CLOSE_S"] = "0.5"
    daemon_factory.start()
    first = _track(repo_path, "loss", 500)
    deadline = time.monotonic() + 20
    while _status(daemon_factory.env)["repositories"]:
        assert time.monotonic() < deadline, "the idle repository was never closed"
        time.sleep(0.1)
    assert f"closing repository {repo_path.resolve()}: no client for" in daemon_factory.log()

    second = _track(repo_path, "acc", 300)
    (served,) = _status(daemon_factory.env)["repositories"]
    assert served["path"] == str(repo_path.resolve())
    repo = trackd.Repo(repo_path)
    assert list(repo.get_container(first).sequences["loss"].values()) == [
        float(i) for i in range(500)
    ]
    assert list(repo.get_container(second).sequences["acc"].values()) == [
        float(i) for i in range(300)
    ]
    assert daemon_factory.stop() == 0


def test_a_repository_with_a_client_is_never_closed(
    daemon_factory: DaemonProc, repo_path: Path
) -> None:
    """A connected client keeps its repository open however long it stays quiet."""
    daemon_factory.env["TRACKD_DAEMON_IDLE_CLOSE_S"] = "0.3"
    daemon_factory.start()
    run = trackd.Run(repo=repo_path)
    run.track(1.0, "loss", step=0)
    trackd.Repo(repo_path).flush()
    time.sleep(1.5)
    assert len(_status(daemon_factory.env)["repositories"]) == 1
    run.track(2.0, "loss", step=1)
    run.close()
    values = trackd.Repo(repo_path).get_container(run.hash).sequences["loss"].values()
    assert list(values) == [1.0, 2.0]
    assert "closing repository" not in daemon_factory.log()
