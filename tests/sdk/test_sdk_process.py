"""Process-level behaviour: fork safety and TRACKD_MODE=disabled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sdk_support import child_env, log_events, run_script

import trackd
from trackd.eventlog.events import SequenceAppended

if TYPE_CHECKING:
    from conftest import DaemonProc

FORKING = """
    import os, trackd
    repo = {repo!r}
    run = trackd.Run(repo=repo)
    for i in range(100):
        run.track(float(i), "parent")
    pid = os.fork()
    if pid == 0:
        child = trackd.Run(repo=repo)
        for i in range(200):
            child.track(i * 2.0, "child")
        child.close()
        print("child", child.hash, flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    for i in range(100, 150):
        run.track(float(i), "parent")
    run.close()
    print("parent", run.hash, os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_forked_child_tracks_its_own_run(daemon: DaemonProc, repo_path: Path) -> None:
    """A child forked while the parent has buffered points gets its own client: both runs
    hold exactly their own points, each written by one client id."""
    out = run_script(FORKING.format(repo=str(repo_path)), env=child_env()).stdout.split()
    child_hash = out[out.index("child") + 1]
    parent_hash = out[out.index("parent") + 1]
    assert out[out.index("parent") + 2] == "0"
    repo = trackd.Repo(repo_path)
    parent = repo.get_container(parent_hash)
    child = repo.get_container(child_hash)
    assert [s.name for s in parent.sequences] == ["parent"]
    assert [s.name for s in child.sequences] == ["child"]
    assert list(parent.sequences["parent"].items()) == [(i, float(i)) for i in range(150)]
    assert list(child.sequences["child"].items()) == [(i, i * 2.0) for i in range(200)]
    assert parent.active is False
    assert child.active is False
    writers = {}
    for ev in log_events(repo_path):
        if isinstance(ev, SequenceAppended):
            writers.setdefault(ev.container, set()).add(ev.client_id)
    assert len(writers[parent_hash]) == 1
    assert len(writers[child_hash]) == 1
    assert writers[parent_hash] != writers[child_hash]
    parent_points = sum(
        e.count
        for e in log_events(repo_path)
        if getattr(e, "container", "") == parent_hash and isinstance(e, SequenceAppended)
    )
    assert parent_points == 150  # the child did not send the parent's buffered points


DISABLED = """
    import os, threading, trackd
    repo = {repo!r}
    run = trackd.Run(repo=repo, experiment="e")
    run["hparams"] = {{"lr": 0.1}}
    run.name = "n"
    for i in range(1000):
        run.track(float(i), "loss", context={{"subset": "train"}})
    assert run["hparams"] == {{"lr": 0.1}}
    run.close()
    trackd.Repo(repo).flush()
    print(threading.active_count(), sorted(os.listdir(repo)), flush=True)
"""


def test_disabled_mode_makes_no_threads_files_or_connections(
    socket_env: Path, repo_path: Path
) -> None:
    """TRACKD_MODE=disabled: writes are no-ops; no thread, no file and no daemon appears."""
    out = run_script(
        DISABLED.format(repo=str(repo_path)), env=child_env(TRACKD_MODE="disabled")
    ).stdout.split(maxsplit=1)
    assert out == ["1", "[]\n"]
    assert os.listdir(repo_path) == []
    assert not socket_env.exists()
    assert not socket_env.parent.joinpath("trackd.log").exists()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_disabled_mode_still_reads(daemon: DaemonProc, repo_path: Path) -> None:
    """With TRACKD_MODE=disabled, an existing repository is still readable."""
    with trackd.Run(repo=repo_path) as run:
        run["p"] = 3
        run.track(2.5, "m")
    out = run_script(
        f"""
        import trackd
        c = trackd.Repo({str(repo_path)!r}).get_container({run.hash!r})
        print(c["p"], list(c.sequences["m"].values()))
        """,
        env=child_env(TRACKD_MODE="disabled"),
    ).stdout
    assert out.strip() == "3 [2.5]"
