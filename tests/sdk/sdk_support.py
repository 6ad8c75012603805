"""Helpers of the SDK tests: producer processes, and reading the raw event log back."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trackd.eventlog.events import Event, SequenceAppended, decode_event
from trackd.eventlog.fs import OSFileSystem
from trackd.eventlog.layout import RepoLayout
from trackd.eventlog.record import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from trackd.eventlog.segment import RecordWalk, parse_segment_name
from trackd.sdk.client import Client
from trackd.sdk.run import Run
from trackd.views._canon import canonical_context


def script(code: str) -> list[str]:
    """The argv of a Python process running ``code`` (dedented)."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def run_script(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process and fail with its output unless it exits 0."""
    proc = subprocess.run(
        script(code),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def start_script(code: str, *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``code`` in a new Python process with piped stdin/stdout/stderr."""
    return subprocess.Popen(
        script(code),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def log_events(repo: Path) -> list[Event]:
    """Every event in the repository's log, in log order, read without taking its lock."""
    fs = OSFileSystem()
    log_dir = RepoLayout.at(repo).log_dir
    segs = sorted(
        (base, name)
        for name in os.listdir(log_dir)
        if (base := parse_segment_name(name)) is not None
    )
    out: list[Event] = []
    for _base, name in segs:
        fd = fs.open_read(str(log_dir / name))
        try:
            walk = RecordWalk(fs, fd, SEGMENT_HEADER_SIZE, fs.size(fd))
            for _pos, buf, spans in walk:
                out.extend(decode_event(buf[s + RECORD_HEADER_SIZE : e]) for s, e in spans)
        finally:
            fs.close(fd)
    return out


SeqKey = tuple[str, str, str]


def log_points(repo: Path) -> dict[SeqKey, collections.Counter[int]]:
    """How many times each step of each sequence was logged: (container, name, context) ->
    Counter(step -> times). A step counted twice means an event was ingested twice."""
    out: dict[SeqKey, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for ev in log_events(repo):
        if isinstance(ev, SequenceAppended):
            key = (ev.container, ev.name, canonical_context(ev.context))
            out[key].update(ev.steps_array().tolist())
    return dict(out)


def assert_exactly_once(repo: Path, container: str, expected: dict[tuple[str, str], int]) -> None:
    """Every step 0..n-1 of each (name, context json) of ``container`` is in the log once."""
    pts = log_points(repo)
    for (name, ctx), n in expected.items():
        counts = pts.get((container, name, ctx))
        assert counts is not None, f"{container}: no points of {name} {ctx} in the log"
        dup = {s: c for s, c in counts.items() if c != 1}
        assert not dup, f"{container}/{name}{ctx}: steps logged more than once: {dup}"
        assert sorted(counts) == list(range(n)), (
            f"{container}/{name}{ctx}: {len(counts)} distinct steps in the log, expected {n}"
        )


def producer_code(
    repo: Path, n: int, *, names: tuple[str, ...] = ("loss", "acc", "lr"), extra: str = ""
) -> str:
    """A producer: one run, ``len(names)`` metrics with value f(name, step) for ``n`` steps.

    Prints ``hash <h>`` first; ``extra`` runs after the loop, before close().
    """
    return f"""
        import trackd
        run = trackd.Run(repo={str(repo)!r})
        print("hash", run.hash, flush=True)
        names = {names!r}
        for i in range({n}):
            for k, name in enumerate(names):
                run.track(i * 0.5 + k, name, context={{"k": k}})
        {extra}
        run.close()
        print("closed", flush=True)
        """


def expected_value(name_index: int, step: int) -> float:
    """The value :func:`producer_code` tracks for its ``name_index``-th metric at ``step``."""
    return step * 0.5 + name_index


def read_hash(proc: subprocess.Popen[str]) -> str:
    """Read the ``hash <h>`` line a producer prints first."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("hash "), f"unexpected producer output {line!r}: {_rest(proc)}"
    return line.split()[1]


def _rest(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return "(still running)"
    return f"{out}\n{err}"


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Wait for a producer and fail with its output unless it exits 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment (with TRACKD_SOCKET of the test) plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env


def metric_points(container: Any, name: str, context: dict[str, Any]) -> list[tuple[int, Any]]:
    """All (step, value) pairs of one sequence of a read-only container."""
    return list(container.sequences[(name, context)].items())


def offline_run(client: Client, h: str = "r1") -> Run:
    """A Run writing into ``client``'s buffer without starting the client."""
    run = Run.__new__(Run)
    run._hash = h
    run._client = client
    run._sids = {}
    run._ctx_cache = client.contexts.by_id
    run._ctx_key = client.contexts.key
    run._append = client.buf.append
    return run
