"""The real daemon under systemd's protocols: socket activation plus a NOTIFY_SOCKET we bind.

``systemd-socket-activate`` listens, starts ``python -m trackd daemon run`` on the first
connection with ``LISTEN_FDS``, and we play the service manager on a datagram socket: READY
after start-up, WATCHDOG pings at half of ``WATCHDOG_USEC``, RELOADING/READY around SIGHUP,
STOPPING and exit status 0 on SIGTERM, the inherited socket file left in place, and
``<N>``-prefixed log lines because ``JOURNAL_STREAM`` names the daemon's stderr.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trackd.wire import FrameDecoder, Hello, Reply, Request, Welcome, decode_message, encode_message

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def daemon_command_exists() -> bool:
    """True once `trackd daemon run` is registered on the command line."""
    from trackd.cli import main

    daemon = getattr(main, "commands", {}).get("daemon")
    return daemon is not None and "run" in getattr(daemon, "commands", {})


pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        SOCKET_ACTIVATE is None,
        reason="systemd-socket-activate is not installed (package systemd)",
    ),
    pytest.mark.skipif(
        not daemon_command_exists(), reason="`trackd daemon run` is not registered yet"
    ),
]


@dataclass
class Manager:
    """Plays systemd's side of sd_notify: collects every datagram the daemon sends."""

    sock: socket.socket
    path: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def wait_for(
        self, pred: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> dict[str, str]:
        """Receive until a message satisfies ``pred``; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if pred(msg):
                return msg


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private folder (AF_UNIX paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="td-sd-", dir="/tmp"))
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def manager(short_dir: Path) -> Iterator[Manager]:
    """A bound NOTIFY_SOCKET."""
    path = str(short_dir / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield Manager(s, path)
    s.close()


def handshake(sock_path: Path, repo: Path) -> socket.socket:
    """Connect (which starts the daemon), say Hello and check the Welcome; return the socket."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(60)
    deadline = time.monotonic() + 20
    while True:
        try:
            conn.connect(str(sock_path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        hello = Hello(client_id=uuid.uuid4().bytes, pid=os.getpid(), repo=str(repo))
        conn.sendall(encode_message(hello))
        assert isinstance(receive(conn), Welcome)
    except BaseException:
        conn.close()
        raise
    return conn


def receive(conn: socket.socket) -> object:
    """One message from ``conn``."""
    decoder = FrameDecoder()
    while True:
        data = conn.recv(65536)
        assert data, "daemon closed the connection"
        frames = decoder.feed(data)
        if frames:
            return decode_message(frames[0])


def test_daemon_under_socket_activation_and_notify(
    short_dir: Path, manager: Manager, tmp_path: Path
) -> None:
    """READY after start-up, WATCHDOG pings, RELOADING on SIGHUP, STOPPING and exit 0 on TERM."""
    assert SOCKET_ACTIVATE is not None
    sock_path = short_dir / "trackd.sock"
    repo = tmp_path / "repo"
    repo.mkdir()
    log = tmp_path / "daemon.log"
    log.touch()
    st = log.stat()  # stderr goes to this file; tell the daemon it is "the journal"
    env = {
        "NOTIFY_SOCKET": manager.path,
        "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        "WATCHDOG_USEC": "400000",
        "TRACKD_SOCKET": str(sock_path),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    cmd = [SOCKET_ACTIVATE, "-l", str(sock_path), "--fdname=trackd"]
    cmd += [f"--setenv={k}={v}" for k, v in env.items()]
    cmd += [sys.executable, "-m", "trackd", "daemon", "run"]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    try:
        try:
            conn = handshake(sock_path, repo)
        except OSError as e:
            pytest.fail(f"no Welcome on the activated socket ({e}):\n{log.read_text()}")
        manager.wait_for(lambda m: m.get("READY") == "1", 30, "READY=1")
        pings = 0
        t0 = time.monotonic()
        while pings < 3:
            manager.wait_for(lambda m: m.get("WATCHDOG") == "1", 2.0, "WATCHDOG=1")
            pings += 1
        # 3 pings at 0.2 s (half of WATCHDOG_USEC) take ~0.6 s; a ping per message would be 0.
        assert time.monotonic() - t0 > 0.2

        conn.sendall(encode_message(Request(id=1, op="ping")))
        assert receive(conn) == Reply(id=1, result={"pong": True})

        proc.send_signal(signal.SIGHUP)
        reloading = manager.wait_for(lambda m: m.get("RELOADING") == "1", 10, "RELOADING=1")
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= now_usec
        manager.wait_for(lambda m: m.get("READY") == "1", 10, "READY=1 after reload")

        conn.close()
        proc.send_signal(signal.SIGTERM)
        manager.wait_for(lambda m: m.get("STOPPING") == "1", 30, "STOPPING=1")
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sock_path.is_socket(), "the daemon unlinked the socket systemd owns"
    assert any("STATUS" in m for m in manager.messages), manager.messages
    lines = log.read_text(errors="replace").splitlines()
    assert any(line.startswith("<6>trackd") for line in lines), lines
