"""The daemon process: crash and graceful stop, single instance, socket file, peer uid."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rawclient import (
    CLOSED,
    ClientFactory,
    RawClient,
    log_identities,
    point_stream,
    read_points,
    sequence_count,
    wait_for,
)

from trackd.wire import ErrorReply, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_kill_9_loses_nothing_acked(
    daemon_factory, connect: ClientFactory, repo_path: Path
) -> None:
    """After kill -9 of the daemon, a restart serves every acked event, none twice."""
    daemon_factory.start()
    cid = os.urandom(16)
    c = connect()
    c.welcome(repo_path, cid)
    stream = point_stream(cid, "r", "loss", 4000, per_event=4)
    for i in range(0, len(stream), 50):
        c.append(stream[i : i + 50])
    c.wait_ack(len(stream))
    daemon_factory.kill()
    c.close()

    daemon_factory.start()
    again = connect()
    assert again.welcome(repo_path, cid).hwm == len(stream)
    again.append(stream)  # a client that did not see the acks resends everything
    again.wait_ack(len(stream))
    again.flush()
    assert read_points(repo_path, "r", "loss") == [(s, s * 0.5) for s in range(4000)]
    assert daemon_factory.stop() == 0
    assert log_identities(repo_path) == [(cid, s) for s in range(1, len(stream) + 1)]


def test_sigterm_drains_received_events_and_exits_0(
    daemon_factory, connect: ClientFactory, repo_path: Path
) -> None:
    """SIGTERM: everything read is synced and applied, a pending flush is answered, exit 0."""
    d = daemon_factory.start()
    c = connect()
    c.welcome(repo_path)
    stream = point_stream(c.client_id, "r", "loss", 20000, per_event=1)
    for i in range(0, len(stream), 2000):
        c.append(stream[i : i + 2000])
    c.send_obj({"k": "req", "id": 1, "op": "flush", "args": {}})
    pong = c.request("ping")  # answered at once: the daemon has read everything before it
    assert isinstance(pong, Reply)
    d.proc.send_signal(signal.SIGTERM)
    flush_reply = None
    while (msg := c.recv()) != CLOSED:
        if isinstance(msg, Reply) and msg.id == 1:
            flush_reply = msg
    assert flush_reply is not None, "the pending flush was not answered"
    assert c.acked == len(stream)
    assert d.proc.wait(timeout=30) == 0
    assert not d.socket.exists()
    assert not Path(f"{d.socket}.pid").exists()
    assert sequence_count(repo_path, "r", "loss") == 20000
    assert len(log_identities(repo_path)) == len(stream)


def test_second_daemon_on_same_socket_exits_1_naming_the_first(daemon, socket_env: Path) -> None:
    """A second daemon on the same socket exits 1 and names the running one's pid."""
    proc = subprocess.run(
        [sys.executable, "-m", "trackd", "daemon", "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert f"pid {daemon.pid}" in proc.stderr
    assert "already running" in proc.stderr
    assert daemon.proc.poll() is None


def test_stale_socket_file_is_removed_at_start(
    daemon_factory, connect: ClientFactory, socket_env: Path, repo_path: Path
) -> None:
    """A socket file nobody listens on (a crashed daemon's) is replaced at start."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(socket_env))
    s.close()
    assert stat.S_ISSOCK(os.lstat(socket_env).st_mode)
    daemon_factory.start()
    connect().welcome(repo_path)
    assert "removed stale socket" in daemon_factory.log()
    assert stat.S_IMODE(os.stat(socket_env).st_mode) == 0o600


def test_non_socket_file_at_socket_path_is_refused(daemon_factory, socket_env: Path) -> None:
    """A regular file at the socket path is left alone and the daemon exits 1."""
    socket_env.write_text("precious")
    with pytest.raises(RuntimeError, match="exited with 1"):
        daemon_factory.start()
    assert "is not a socket" in daemon_factory.log()
    assert socket_env.read_text() == "precious"


def _connect_as_nobody(path: Path, repo: Path) -> str:
    """Fork a child that drops to uid 65534, connects, and reports what the daemon sent.

    The daemon refuses such a peer as soon as it connects, before any Hello, so the child
    only listens (a Hello sent into the closing socket could turn the reply into a reset).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            c = RawClient(path, timeout=10)
            msg = c.recv()
            closed = c.recv() == CLOSED
            text = f"{type(msg).__name__}|{getattr(msg, 'id', '')}|{getattr(msg, 'code', '')}"
            text += f"|{getattr(msg, 'message', '')}|{closed}"
        except BaseException as e:
            text = f"exception|{e!r}"
        os.write(w, text.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to another uid")
def test_peer_of_another_uid_is_refused(
    daemon, connect: ClientFactory, socket_env: Path, repo_path: Path
) -> None:
    """A peer of another uid that can reach the socket is refused by its SO_PEERCRED uid."""
    # Open the folder and the socket to everyone, so that only the daemon's check refuses.
    os.chmod(socket_env.parent, 0o755)
    os.chmod(socket_env, 0o777)
    os.chmod(repo_path.parent, 0o755)
    os.chmod(repo_path, 0o777)
    out = _connect_as_nobody(socket_env, repo_path)
    kind, rid, code, message, closed = out.split("|")
    assert (kind, rid, code, closed) == ("ErrorReply", "None", "access_denied", "True"), out
    assert "uid 65534" in message
    assert not (repo_path / ".trackd").exists()
    good = connect()
    good.welcome(repo_path)
    good.flush()


def test_socket_is_private_and_pidfile_names_the_daemon(daemon, socket_env: Path) -> None:
    """The socket is mode 0600 and <socket>.pid holds the daemon's pid."""
    assert stat.S_IMODE(os.stat(socket_env).st_mode) == 0o600
    assert int(Path(f"{socket_env}.pid").read_text()) == daemon.pid


def test_repository_locked_by_another_process_is_refused(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A repository whose log another process holds gets a log_locked error, then works later."""
    from trackd.eventlog.log import EventLog

    holder = EventLog.open(repo_path / ".trackd" / "log")
    try:
        c = connect()
        err = c.hello(repo_path)
    finally:
        holder.close()
    assert isinstance(err, ErrorReply)
    assert (err.id, err.code) == (None, "log_locked")
    assert str(repo_path) in err.message
    retry = connect()
    retry.welcome(repo_path)
    retry.flush()
    wait_for(lambda: "cannot open repository" in daemon.log(), what="the error to be logged")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def test_log_write_failure_is_fatal_and_acked_events_survive(
    daemon_factory, connect: ClientFactory, repo_path: Path
) -> None:
    """A failed log write (disk full) stops acking and exits 1; a restart keeps what was acked."""
    log_dir = repo_path / ".trackd" / "log"
    if os.getuid() != 0 or not _mount_tmpfs(log_dir, "384k"):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        d = daemon_factory.start()
        cid = os.urandom(16)
        c = connect()
        c.welcome(repo_path, cid)
        stream = point_stream(cid, "r", "loss", 60000, per_event=1000)  # ~16 KiB per event
        # Some events are durable before the disk fills: otherwise, on a busy machine, the
        # daemon may read more than the disk holds before its first group is written.
        c.append(stream[:2])
        c.wait_ack(2)
        try:
            for ev in stream[2:]:
                c.append([ev])
        except OSError:
            pass  # the daemon went away while we were still sending
        c.expect_closed()
        assert d.proc.wait(timeout=30) == 1
        log = d.log()
        assert "CRITICAL" in log
        assert "errno 28 ENOSPC" in log
        assert 0 < c.acked < len(stream)

        d.start()
        again = connect()
        hwm = again.welcome(repo_path, cid).hwm
        assert hwm >= c.acked  # nothing acknowledged was lost
        again.flush()
        assert sequence_count(repo_path, "r", "loss") == (hwm - 1) * 1000
        assert d.stop() == 0
    finally:
        daemon_factory.kill()
        subprocess.run(["umount", str(log_dir)], check=False)
