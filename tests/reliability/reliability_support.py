"""Helpers shared by the reliability tests: event builders, a canonical views dump, figures.

Imported by the tests next to it (pytest puts this folder on ``sys.path``); the name is
unique across the test folders.

Figures: every test that measures something records it with :func:`record_figure`; the
session prints them at the end (see ``conftest.py``) and ``bench/reliability.py`` collects
them from a JSON file when ``TRACKD_RELIABILITY_FIGURES`` names one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from trackd.eventlog.events import (
    ContainerCreated,
    ContainerFinished,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
    encode_event,
)
from trackd.views import ViewReader, ViewStore

FIGURES: dict[str, Any] = {}
"""Figures measured in this session, by name."""


def record_figure(name: str, value: Any) -> None:
    """Remember a figure for the end-of-session summary (and the figures file, if any).

    Counters (ints under the same name from several tests) add up.
    """
    old = FIGURES.get(name)
    if isinstance(old, int) and isinstance(value, int) and not isinstance(value, bool):
        FIGURES[name] = old + value
    else:
        FIGURES[name] = value
    path = os.environ.get("TRACKD_RELIABILITY_FIGURES")
    if path:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=2, sort_keys=True, default=str)


@contextmanager
def fast_tmp(prefix: str) -> Iterator[Path]:
    """A scratch folder on tmpfs when there is one (fsync is free there), else in /tmp."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class EventMaker:
    """Encoded events of one client with consecutive client_seq, of several kinds and sizes."""

    def __init__(self, client_id: bytes = b"\x07" * 16, container: str = "c0ffee") -> None:
        self.cid = client_id
        self.container = container
        self.seq = 0
        self.step = 0

    def _env(self) -> dict[str, Any]:
        self.seq += 1
        return {"client_id": self.cid, "client_seq": self.seq, "client_time": float(self.seq)}

    def created(self) -> bytes:
        """A ContainerCreated."""
        return encode_event(ContainerCreated(container=self.container, **self._env()))

    def params(self, key: str, value: Any) -> bytes:
        """A ParamsSet of one key."""
        return encode_event(
            ParamsSet(container=self.container, path=(key,), value=value, **self._env())
        )

    def props(self, **props: Any) -> bytes:
        """A PropertiesSet."""
        return encode_event(PropertiesSet(container=self.container, props=props, **self._env()))

    def points(self, n: int, name: str = "loss", subset: str = "train") -> bytes:
        """A SequenceAppended of ``n`` float points at the next steps."""
        steps = np.arange(self.step, self.step + n, dtype="<i8")
        self.step += n
        return encode_event(
            SequenceAppended.from_arrays(
                container=self.container,
                name=name,
                context={"subset": subset},
                steps=steps,
                values=steps * 0.25,
                **self._env(),
            )
        )

    def finished(self) -> bytes:
        """A ContainerFinished."""
        return encode_event(ContainerFinished(container=self.container, **self._env()))


def _canon(v: Any) -> Any:
    """A comparable form: NaN made equal, tuples as lists, numpy scalars as Python ones."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, np.generic):
        return _canon(v.item())
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


def dump_views(reader: ViewReader, store: ViewStore | None = None) -> dict[str, Any]:
    """Everything a reader sees, canonical (sequence ids left out: a rebuild renumbers)."""
    out: dict[str, Any] = {"checkpoint": reader.checkpoint, "containers": {}, "sequences": {}}
    for c in reader.containers():
        out["containers"][c.hash] = _canon(
            [
                c.type,
                c.name,
                c.experiment,
                c.description,
                c.archived,
                list(c.tags),
                c.created_at,
                c.ended_at,
                c.state,
                c.params,
            ]
        )
    for s in reader.sequences():
        p = reader.points(s.id)
        key = f"{s.container}/{s.name}/{json.dumps(s.context, sort_keys=True)}"
        out["sequences"][key] = _canon(
            [
                s.value_dtype,
                s.first_step,
                s.last_step,
                s.count,
                s.last_value,
                p.steps.tolist(),
                p.values.tolist(),
                None if p.timestamps is None else p.timestamps.tolist(),
                {k: v.tolist() for k, v in p.axis.items()},
            ]
        )
    if store is not None:
        out["marks"] = {k.hex(): v for k, v in sorted(store.client_marks().items())}
    return out


def unpack(payload: bytes) -> Any:
    """The msgpack structure of an encoded event (for messages)."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


# -- daemon processes ----------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
PRODUCER = HERE / "producer.py"


def strace_available() -> str | None:
    """Why strace fault injection cannot be used here, or None when it can."""
    exe = shutil.which("strace")
    if exe is None:
        return "strace is not installed (apt-get install strace)"
    code = "import os, sys; sys.exit(0 if os.getppid() == 4242 else 3)"
    cmd = [exe, "-f", "-qq", "-o", "/dev/null", "-e", "trace=getppid"]
    cmd += ["-e", "inject=getppid:retval=4242", sys.executable, "-c", code]
    probe = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"strace cannot inject faults here (ptrace refused?): {probe.stderr!r}"
    return None


STARTED: list[Daemon] = []
"""Every daemon started in this test; ``conftest.py`` kills what is left after each test."""


@dataclass
class Daemon:
    """A trackd daemon process, optionally under strace with fault injection.

    ``stop``/``kill`` act on the whole process group, so strace and the daemon go together.
    """

    socket: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    trace_path: Path | None = None
    starts: int = 0

    def start(
        self, strace: list[str] | None = None, timeout: float = 30.0, must_serve: bool = True
    ) -> bool:
        """Start ``python -m trackd daemon run``; wait until it answers or exits.

        Args:
            strace: strace arguments (``-e inject=...``); the daemon runs under strace.
            timeout: Seconds to wait for the socket to answer.
            must_serve: Raise when the daemon exits before answering.

        Returns:
            True when the daemon answers on its socket, False when it exited first.
        """
        # TRACKD_TEST_DAEMON_LOG_LEVEL=info shows, e.g., when reads pause for memory.
        level = os.environ.get("TRACKD_TEST_DAEMON_LOG_LEVEL", "warning")
        cmd = [sys.executable, "-m", "trackd", "daemon", "run", "--log-level", level]
        self.trace_path = None
        if strace is not None:
            self.trace_path = self.log_path.with_name(f"strace-{self.starts}.txt")
            cmd = ["strace", "-f", "-qq", "-y", "-o", str(self.trace_path), *strace, *cmd]
        self.starts += 1
        STARTED.append(self)
        with open(self.log_path, "ab") as logf:
            logf.write(f"---- start {self.starts}: {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if must_serve:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                return False
            if socket_answers(self.socket):
                return True
            time.sleep(0.01)
        raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.log()}")

    @property
    def daemon_pid(self) -> int | None:
        """The daemon's own pid (under strace: strace's child), or None when it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        if self.trace_path is None:
            return self.proc.pid
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        return int(kids.split()[0]) if kids.split() else None

    def alive(self) -> bool:
        """True while the started process (or strace) runs."""
        return self.proc is not None and self.proc.poll() is None

    def _reap_group(self) -> None:
        """SIGKILL what is left of the process group and wait until all of it is gone."""
        assert self.proc is not None
        pgid = self.proc.pid  # start_new_session: the group is ours alone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.01)
        raise RuntimeError(f"process group {pgid} of the daemon did not go away")

    def kill(self) -> None:
        """SIGKILL the daemon (and strace) and wait until they are gone."""
        if self.proc is not None:
            self._reap_group()

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit status, or None on timeout.

        Under strace the status is the daemon's as strace reports it (128 + signal when it
        was killed). Whatever is left of the process group is reaped before returning.
        """
        assert self.proc is not None
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reap_group()
        return status

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the daemon and return its exit status."""
        assert self.proc is not None
        pid = self.daemon_pid
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        status = self.proc.wait(timeout=timeout)
        self._reap_group()
        return status

    def log(self) -> str:
        """Everything the daemon printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies, which hold no files, excluded)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def killed_call(trace: Path, syscall: str) -> str | None:
    """The injected call that killed the daemon, as strace printed it (with the fd's path)."""
    try:
        lines = trace.read_text(errors="replace").splitlines()
    except OSError:
        return None
    pending: dict[str, str] = {}
    for line in lines:
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith(f"{syscall}(") and rest.endswith("= ?"):
            return rest
        if rest.startswith(f"{syscall}(") and rest.endswith("<unfinished ...>"):
            pending[pid] = rest
        elif rest.startswith(f"<... {syscall} resumed>") and rest.endswith("= ?"):
            return pending.get(pid, rest)
    return None


def classify_fd(call: str | None) -> str:
    """What a traced call touched: log segment, views, socket (an ack), stderr, other."""
    if call is None:
        return "not reached"
    if ".seg>" in call:
        return "log segment"
    if "views.db" in call:
        return "views.db"
    if "socket:[" in call:
        return "socket (ack/reply)"
    if call.split("(", 1)[1].startswith("2<"):
        return "stderr"
    return "other"


def start_producer(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``producer.py`` with ``args`` in ``env``, output to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, str(PRODUCER), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
