"""The Aim-style face against a real daemon: what is written reads back exactly."""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sdk_support import (
    assert_exactly_once,
    child_env,
    finish,
    read_hash,
    start_script,
    wait_for,
)

import trackd
from trackd.errors import LockedError, NotFoundError

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_params_properties_and_metrics_read_back_exactly(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """Params, properties and every point of several metrics (contexts, auto and explicit
    steps, int/float/bool/numpy values) read back exactly after close()."""
    t0 = time.time()
    run = trackd.Run(repo=repo_path, experiment="exp-1")
    run["hparams"] = {"lr": 0.001, "layers": [64, 32], "opt": {"name": "adam", "eps": 1e-8}}
    run["seed"] = 7
    run["nested", "deep"] = "x"
    run.name = "baseline"
    run.description = "first try"
    run.add_tag("a")
    run.add_tag("b")
    run.remove_tag("a")
    train, val = {"subset": "train"}, {"subset": "val"}
    for i in range(1000):
        run.track(1.0 / (i + 1), "loss", context=train)
        if i % 10 == 0:
            run.track(float(i), "loss", context=val)
        run.track(i, "count")  # ints stay ints
        run.track(i % 2 == 0, "even")
        run.track(np.float32(i) / 4, "f32")
    run.track(5.5, "explicit", step=10)
    run.track(6.5, "explicit", step=20)
    run.track(7.5, "explicit")  # auto step continues after the largest step: 21
    assert run["hparams"]["opt"] == {"name": "adam", "eps": 1e-8}  # local read before close
    run.close()
    run.close()  # idempotent

    repo = trackd.Repo(repo_path)
    assert run.hash in repo.container_hashes
    c = repo.get_container(run.hash)
    assert c.type == "run"
    assert c["hparams"] == {"lr": 0.001, "layers": [64, 32], "opt": {"name": "adam", "eps": 1e-8}}
    assert c["seed"] == 7
    assert c["nested", "deep"] == "x"
    assert c.get("missing", 3) == 3
    with pytest.raises(KeyError, match="missing"):
        c["missing"]
    props = c.collect_properties()
    assert props["name"] == "baseline"
    assert props["experiment"] == "exp-1"
    assert props["description"] == "first try"
    assert props["tags"] == ["b"]
    assert props["archived"] is False
    assert c.active is False
    assert c.creation_time is not None
    assert c.end_time is not None
    assert t0 - 1 <= c.creation_time <= c.end_time <= time.time() + 1

    seqs = {(s.name, tuple(sorted(s.context.items()))) for s in c.sequences}
    assert seqs == {
        ("loss", (("subset", "train"),)),
        ("loss", (("subset", "val"),)),
        ("count", ()),
        ("even", ()),
        ("f32", ()),
        ("explicit", ()),
    }
    loss = c.sequences[("loss", train)]
    assert isinstance(loss, trackd.Metric)
    assert list(loss.items()) == [(i, 1.0 / (i + 1)) for i in range(1000)]
    assert (loss.start, loss.stop, loss.next_step, len(loss)) == (0, 999, 1000, 1000)
    assert loss.type == "float"
    val_pts = list(c.sequences[("loss", val)].items())
    assert val_pts == [(k, float(i)) for k, i in enumerate(range(0, 1000, 10))]
    count = list(c.sequences["count"].values())
    assert count == list(range(1000))
    assert all(type(v) is int for v in count)
    assert c.sequences["count"].type == "int"
    even = list(c.sequences["even"].values())
    assert even == [i % 2 == 0 for i in range(1000)]
    assert c.sequences["even"].type == "bool"
    steps, values = c.sequences["f32"].numpy()
    assert steps.tolist() == list(range(1000))
    assert values.tolist() == [float(np.float32(i) / 4) for i in range(1000)]
    assert list(c.sequences["explicit"].items()) == [(10, 5.5), (20, 6.5), (21, 7.5)]
    ts = loss.timestamps()
    assert ts is not None
    assert len(ts) == 1000
    assert np.all(np.diff(ts) >= 0)
    assert t0 - 1 <= ts[0] <= ts[-1] <= time.time() + 1
    with pytest.raises(KeyError, match="nope"):
        c.sequences["nope"]
    with pytest.raises(NotFoundError, match=re.escape("'loss' with context {'subset': 'test'}")):
        c.sequences[("loss", {"subset": "test"})]


def test_issue_example_loop_100k_steps(daemon: DaemonProc, repo_path: Path) -> None:
    """The everyday loop (params, 100,000 steps of train loss/accuracy, a val metric every
    1,000 steps) is fully readable right after close(), each point logged exactly once."""
    run = trackd.Run(repo=repo_path, experiment="baseline")
    run["hparams"] = {"learning_rate": 0.001, "batch_size": 32}
    for step in range(100_000):
        loss = 1.0 / (step + 1)
        run.track(loss, name="loss", step=step, context={"subset": "train"})
        run.track(1.0 - loss, name="accuracy", step=step, context={"subset": "train"})
        if step % 1000 == 0:
            run.track(loss * 2, name="loss", step=step // 1000, context={"subset": "val"})
    run.close()

    c = trackd.Repo(repo_path).get_container(run.hash)
    assert c["hparams"] == {"learning_rate": 0.001, "batch_size": 32}
    steps, values = c.sequences[("loss", {"subset": "train"})].numpy()
    assert np.array_equal(steps, np.arange(100_000))
    assert np.array_equal(values, 1.0 / (np.arange(100_000) + 1))
    acc = c.sequences[("accuracy", {"subset": "train"})]
    assert len(acc) == 100_000
    assert acc.stop == 99_999
    assert len(c.sequences[("loss", {"subset": "val"})]) == 100
    assert_exactly_once(
        repo_path,
        run.hash,
        {
            ("loss", '{"subset":"train"}'): 100_000,
            ("accuracy", '{"subset":"train"}'): 100_000,
            ("loss", '{"subset":"val"}'): 100,
        },
    )


def test_repo_listing_and_delete(daemon: DaemonProc, repo_path: Path) -> None:
    """Repo lists containers, raises NotFoundError naming a missing hash, and deletes."""
    with trackd.Run(repo=repo_path) as a:
        a.track(1.0, "m")
    with trackd.Run(repo=repo_path) as b:
        b.track(2.0, "m")
    repo = trackd.Repo(repo_path)
    assert trackd.Repo.exists(repo_path)
    assert set(repo.container_hashes) == {a.hash, b.hash}
    assert {c.hash for c in repo.containers()} == {a.hash, b.hash}
    with pytest.raises(NotFoundError, match="deadbeef"):
        repo.get_container("deadbeef")
    assert repo.delete_container(a.hash) is True
    assert repo.container_hashes == [b.hash]
    assert repo.delete_container(a.hash) is False
    with pytest.raises(KeyError):
        repo.get_container(a.hash)


def test_resume_continues_steps_and_keeps_params(daemon: DaemonProc, repo_path: Path) -> None:
    """Run(hash) reopens a closed run: params read back, auto steps continue after the last
    stored step, and the run is active until closed again."""
    with trackd.Run(repo=repo_path) as run:
        run["hparams"] = {"lr": 0.1}
        run.name = "r1"
        for i in range(50):
            run.track(float(i), "loss", context={"subset": "train"})
    resumed = trackd.Run(run.hash, repo=repo_path)
    assert resumed["hparams"] == {"lr": 0.1}
    assert resumed.name == "r1"
    repo = trackd.Repo(repo_path)
    repo.flush()
    assert repo.get_container(run.hash).active is True
    for i in range(50, 60):
        resumed.track(float(i), "loss", context={"subset": "train"})
    resumed.close()
    c = repo.get_container(run.hash)
    assert list(c.sequences[("loss", {"subset": "train"})].items()) == [
        (i, float(i)) for i in range(60)
    ]
    assert c.active is False


HOLDER = """
    import sys, trackd
    run = trackd.Run(repo={repo!r})
    run.track(1.0, "m")
    run.close()
    held = trackd.Run(run.hash, repo={repo!r})
    print("hash", run.hash, flush=True)
    sys.stdin.readline()
"""


def test_resume_of_a_run_held_by_a_live_process_is_locked(
    daemon: DaemonProc, repo_path: Path
) -> None:
    """Resuming a run another live process holds raises LockedError; once that process is
    killed, the resume succeeds."""
    holder = start_script(HOLDER.format(repo=str(repo_path)), env=child_env())
    try:
        h = read_hash(holder)
        with pytest.raises(LockedError, match=h):
            trackd.Run(h, repo=repo_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)

    got: list[trackd.Run] = []

    def resumed() -> bool:
        try:
            got.append(trackd.Run(h, repo=repo_path))
        except LockedError:
            return False
        return True

    wait_for(resumed, timeout=10, what="the dead holder's lock to be released")
    got[0].track(2.0, "m")
    got[0].close()
    c = trackd.Repo(repo_path).get_container(h)
    assert list(c.sequences["m"].items()) == [(0, 1.0), (1, 2.0)]


def test_read_only_run_and_missing_run(daemon: DaemonProc, repo_path: Path) -> None:
    """Run(hash, read_only=True) reads a stored run; an unknown hash raises NotFoundError."""
    with trackd.Run(repo=repo_path) as run:
        run["p"] = 1
        run.track(math.pi, "m")
    ro = trackd.Run(run.hash, repo=repo_path, read_only=True)
    assert ro["p"] == 1
    assert list(ro.sequences["m"].values()) == [math.pi]
    with pytest.raises(NotFoundError, match="abc123"):
        trackd.Run("abc123", repo=repo_path, read_only=True)


def test_producer_exit_without_close_finishes_run(daemon: DaemonProc, repo_path: Path) -> None:
    """A process that never calls close() has its run finished and flushed at exit."""
    proc = start_script(
        f"""
        import trackd
        run = trackd.Run(repo={str(repo_path)!r})
        print("hash", run.hash, flush=True)
        for i in range(5000):
            run.track(float(i), "m")
        """,
        env=child_env(),
    )
    h = read_hash(proc)
    finish(proc)
    c = trackd.Repo(repo_path).get_container(h)
    assert c.active is False
    assert len(c.sequences["m"]) == 5000
