"""Socket activation: LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES with real inherited sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trackd.daemon.systemd import listen_fds

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed (package systemd)"
)


def listener(path: Path) -> socket.socket:
    """A listening Unix stream socket at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(8)
    return s


def in_forked_child(setup: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``setup`` in a forked child and return the JSON-able dict it produced."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        code = 0
        try:
            os.close(r)
            payload = json.dumps(setup()).encode()
        except BaseException as e:
            payload = json.dumps({"error": repr(e)}).encode()
            code = 1
        os.write(w, payload)
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


def test_inherited_sockets_from_fd_3(tmp_path: Path) -> None:
    """Sockets dup'ed to fds 3 and 4 come back named, close-on-exec, and accepting."""
    a, b = listener(tmp_path / "a.sock"), listener(tmp_path / "b.sock")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "a.sock"))

    def child() -> dict[str, Any]:
        os.dup2(a.fileno(), 3)  # inheritable, as systemd hands them over
        os.dup2(b.fileno(), 4)
        env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "api:ctl"}
        got = listen_fds(env)
        conn, _ = got[0][0].accept()
        conn.sendall(b"hi from fd 3")
        conn.close()
        return {
            "names": [name for _, name in got],
            "fds": [s.fileno() for s, _ in got],
            "family": [int(s.family) for s, _ in got],
            "type": [int(s.type) for s, _ in got],
            "addr": [s.getsockname() for s, _ in got],
            "inheritable": [os.get_inheritable(s.fileno()) for s, _ in got],
            "env_left": sorted(env),
        }

    try:
        got = in_forked_child(child)
        assert client.recv(100) == b"hi from fd 3"
    finally:
        client.close()
        a.close()
        b.close()
    assert got == {
        "names": ["api", "ctl"],
        "fds": [3, 4],
        "family": [int(socket.AF_UNIX)] * 2,
        "type": [int(socket.SOCK_STREAM)] * 2,
        "addr": [str(tmp_path / "a.sock"), str(tmp_path / "b.sock")],
        "inheritable": [False, False],
        "env_left": [],
    }


def test_missing_names_are_unknown(tmp_path: Path) -> None:
    """Without LISTEN_FDNAMES each socket is named 'unknown', as systemd does."""
    a = listener(tmp_path / "a.sock")

    def child() -> dict[str, Any]:
        os.dup2(a.fileno(), 3)
        got = listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
        return {"names": [n for _, n in got]}

    try:
        assert in_forked_child(child) == {"names": ["unknown"]}
    finally:
        a.close()


def test_other_pid_is_ignored_and_unset() -> None:
    """Variables meant for another process (LISTEN_PID) give nothing and are still removed."""
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "x", "K": "v"}
    assert listen_fds(env) == []
    assert env == {"K": "v"}


def test_not_activated_and_unset_false() -> None:
    """No LISTEN_FDS gives nothing; unset=False leaves the variables in place."""
    assert listen_fds({}) == []
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert listen_fds(env, unset=False) == []
    assert env == {"LISTEN_FDS": "1", "LISTEN_PID": "1"}


CHILD = textwrap.dedent(
    """
    import json, os
    from trackd.daemon.systemd import listen_fds
    before = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
    got = listen_fds()
    sock, name = got[0]
    conn, _ = sock.accept()
    conn.sendall(json.dumps({
        "pid": os.getpid(),
        "before": before,
        "after": [k for k in before if k in os.environ],
        "count": len(got),
        "name": name,
        "fd": sock.fileno(),
        "addr": sock.getsockname(),
        "inheritable": os.get_inheritable(sock.fileno()),
    }).encode())
    conn.close()
    """
)


@needs_socket_activate
@pytest.mark.timeout(60)
def test_systemd_socket_activate(tmp_path: Path) -> None:
    """A child started by systemd-socket-activate finds the socket, its name, and accepts on it."""
    assert SOCKET_ACTIVATE is not None
    path = tmp_path / "t.sock"
    proc = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", str(path), "--fdname=trackd", sys.executable, "-c", CHILD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.connect(str(path))  # the first connection starts the child
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    got = json.loads(data)
    assert got["before"] == {"LISTEN_FDS": "1", "LISTEN_PID": str(got["pid"])} | {
        "LISTEN_FDNAMES": "trackd"
    }, stderr
    assert got["after"] == []
    assert (got["count"], got["name"], got["fd"]) == (1, "trackd", 3)
    assert got["addr"] == str(path)
    assert got["inheritable"] is False
