"""Shared fixtures: real daemon processes on real Unix sockets in temporary folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trackd.sdk._connect import socket_answers
from trackd.sdk.client import shutdown_clients
from trackd.wire.sockfiles import pid_alive


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """Each test starts without SDK clients and leaves none running behind it, so that no
    client of an earlier test reconnects to (or auto-starts) a daemon of a later one."""
    shutdown_clients()
    yield
    shutdown_clients()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--long`` for the long reliability runs."""
    parser.addoption("--long", action="store_true", help="run long reliability modes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked slow unless --long is given."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long mode only (pass --long)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass
class DaemonProc:
    """A trackd daemon running as a separate process, serving ``socket``."""

    socket: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> DaemonProc:
        """Start ``python -m trackd daemon run`` and wait until the socket answers."""
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackd", "daemon", "run", *self.extra_args],
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if socket_answers(self.socket):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the daemon and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the daemon and return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        """Everything the daemon printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def socket_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private socket path, exported as TRACKD_SOCKET for this test and its children.

    The folder is short (AF_UNIX paths are limited to 108 bytes) and removed afterwards,
    together with any daemon that an SDK auto-started on it.
    """
    d = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))
    os.chmod(d, 0o700)
    sock = d / "trackd.sock"
    monkeypatch.setenv("TRACKD_SOCKET", str(sock))
    monkeypatch.delenv("TRACKD_MODE", raising=False)
    yield sock
    _kill_daemon_of(sock)
    shutil.rmtree(d, ignore_errors=True)


def _kill_daemon_of(sock: Path) -> None:
    pidfile = Path(str(sock) + ".pid")
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon_factory(socket_env: Path, tmp_path: Path) -> Iterator[DaemonProc]:
    """A not-yet-started daemon bound to ``socket_env``; the test calls ``.start()``."""
    d = DaemonProc(socket=socket_env, env=dict(os.environ), log_path=tmp_path / "daemon.log")
    yield d
    # Clients first: a client still holding a run (a test that failed before closing it)
    # would otherwise auto-start a daemon of its own once this one is gone, and leave it.
    shutdown_clients()
    d.kill()


@pytest.fixture
def daemon(daemon_factory: DaemonProc) -> DaemonProc:
    """A running daemon process serving ``TRACKD_SOCKET``."""
    return daemon_factory.start()


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    """An empty folder to use as a repository root."""
    p = tmp_path / "repo"
    p.mkdir()
    return p
