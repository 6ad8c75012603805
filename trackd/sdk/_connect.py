"""Reaching the daemon: connect and handshake on its Unix socket, and start one when none runs.

Owns: the blocking connect + Hello/Welcome exchange, and auto-start. Auto-start takes an
exclusive ``flock`` on ``<socket dir>/autostart.lock``, checks the socket again (another
process may have started the daemon meanwhile), spawns ``python -m trackd daemon run``
detached (its own session, stdin from /dev/null, output appended to ``<socket dir>/
trackd.log``, the environment inherited so ``TRACKD_SOCKET`` carries over), waits until the
socket answers and releases the lock. So many processes starting at once start one daemon.
Imports ``trackd.wire``, ``trackd.errors``; subprocess only when spawning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

from trackd.errors import DaemonUnavailableError, ProtocolError, TrackdError, error_from_code
from trackd.wire.address import ensure_socket_dir
from trackd.wire.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    ErrorReply,
    FrameDecoder,
    Hello,
    Welcome,
    decode_message,
    encode_message,
)
from trackd.wire.sockfiles import log_path

__all__ = ["Unreachable", "autostart", "handshake", "socket_answers"]

log = logging.getLogger("trackd.sdk")

HANDSHAKE_TIMEOUT = 10.0
AUTOSTART_WAIT = 10.0
_LOCK_NAME = "autostart.lock"
#: Files beside the socket are never opened through a symbolic link: in a shared sticky
#: folder (which the socket folder may be) another user could plant one.
_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
#: Pids of the daemons this process started (tests count them).
spawned: list[int] = []

#: errno values that mean "nobody listens on that path".
_NOBODY = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOTDIR})


class Unreachable(DaemonUnavailableError):
    """Nothing accepts connections on the socket (no file, or nobody listening)."""


def _connect(path: Path, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        if e.errno in _NOBODY:
            raise Unreachable(f"no trackd daemon listens on {path} ({e.strerror})") from e
        raise DaemonUnavailableError(f"cannot connect to the trackd daemon at {path}: {e}") from e
    return s


def socket_answers(path: Path) -> bool:
    """True when something accepts a connection on ``path``."""
    try:
        s = _connect(path, 2.0)
    except DaemonUnavailableError:
        return False
    s.close()
    return True


def handshake(
    path: Path, hello: Hello, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[socket.socket, Welcome]:
    """Connect to ``path`` and exchange Hello/Welcome.

    Returns:
        The connected socket (blocking, with ``timeout`` set) and the daemon's Welcome.

    Raises:
        Unreachable: nobody listens on the path.
        DaemonUnavailableError: the daemon did not answer the Hello in time.
        ProtocolError: the answer was not a Welcome of our protocol version.
        TrackdError: the daemon refused us (mapped from its error code, e.g. AccessDenied).
    """
    s = _connect(path, timeout)
    try:
        s.sendall(encode_message(hello))
        dec = FrameDecoder(DEFAULT_MAX_FRAME)
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise DaemonUnavailableError(
                    f"the trackd daemon at {path} did not answer the handshake in {timeout:g}s"
                )
            try:
                data = s.recv(1 << 16)
            except TimeoutError as e:
                raise DaemonUnavailableError(
                    f"the trackd daemon at {path} did not answer the handshake in {timeout:g}s"
                ) from e
            if not data:
                raise DaemonUnavailableError(
                    f"the trackd daemon at {path} closed the connection during the handshake"
                )
            frames = dec.feed(data)
            if frames:
                break
        msg = decode_message(frames[0])
        if isinstance(msg, ErrorReply):
            raise error_from_code(msg.code, msg.message)
        if not isinstance(msg, Welcome):
            raise ProtocolError(f"expected a welcome from the daemon, got {type(msg).__name__}")
        if msg.proto != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the daemon speaks protocol {msg.proto}, this SDK speaks {PROTOCOL_VERSION}"
            )
        if len(frames) > 1 or dec.buffered:
            raise ProtocolError("the daemon sent more than a welcome before any request")
    except BaseException:
        s.close()
        raise
    return s, msg


def autostart(path: Path, wait: float = AUTOSTART_WAIT) -> bool:
    """Start a daemon serving ``path`` unless one answers; return True once one answers.

    Serialised across processes by a lock file next to the socket, so a crowd of clients
    starts exactly one daemon.

    Raises:
        ConfigError: the socket folder belongs to someone else or is open to others.
        OSError: the lock or log file beside the socket cannot be opened, e.g. because it
            is a symbolic link (``ELOOP``).
    """
    d = ensure_socket_dir(path)
    fd = os.open(d / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait + 5.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return socket_answers(path)
                time.sleep(0.02)
        if socket_answers(path):
            return True
        pid = _spawn(path)
        spawned.append(pid)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if socket_answers(path):
                return True
            code = _exit_code(pid)
            if code is not None:
                log.warning(
                    "trackd: the daemon started for %s exited with code %s; see %s",
                    path,
                    code,
                    log_path(path),
                )
                return False
            time.sleep(0.02)
        log.warning("trackd: the daemon started for %s did not answer within %gs", path, wait)
        return False
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_EXEC_SHIM = (
    "import os, sys; os.closerange(3, os.sysconf('SC_OPEN_MAX')); "
    "os.execv(sys.executable, [sys.executable, '-m', 'trackd', 'daemon', 'run', *sys.argv[1:]])"
)


def _spawn(path: Path) -> int:
    """Start ``python -m trackd daemon run`` in its own session; return its pid.

    ``posix_spawn`` rather than ``subprocess``: the daemon is meant to outlive this process,
    and a ``Popen`` object would warn about it at exit. ``posix_spawn`` cannot close the
    descriptors this process made inheritable (a multiprocessing worker's pipes, say), and a
    daemon holding them would keep the parent's pipes open for ever (``trackd demo | tail``
    never ended), so a two-line shim closes everything above stderr before the exec.
    """
    env = dict(os.environ)
    # Run the same trackd as this process, even when it is importable only via sys.path.
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", _EXEC_SHIM, "--socket", str(path)],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path(path)), _LOG_FLAGS, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    log.info("trackd: started a daemon (pid %d) for %s", pid, path)
    return pid


def _exit_code(pid: int) -> int | None:
    """The exit code of our child ``pid`` once it exited (reaping it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def refused(exc: BaseException) -> bool:
    """True for a handshake error that a retry will not fix (refused peer, bad protocol)."""
    return isinstance(exc, TrackdError) and not isinstance(exc, DaemonUnavailableError)
