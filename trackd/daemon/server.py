"""The daemon process: single-instance lock, the Unix socket, signals and lifecycle.

Owns: :func:`run_daemon` (what ``trackd daemon run`` calls) and :class:`Server` (accepts
connections as :class:`~trackd.daemon.session.Session` objects, opens each repository once
on first use, builds the status map, and stops gracefully on SIGTERM/SIGINT, or at once with
exit status 1 when a repository's log write or fsync fails (or its views cannot be written:
they are rebuilt from the log at the next start).
Imports ``trackd.wire`` (address), sibling daemon modules, uvloop.

Start-up, in order: take an exclusive ``flock`` on ``<socket>.lock`` (a second daemon exits
1 naming the first one's pid); write ``<socket>.pid`` (so whoever sees the socket answer can
read the pid); remove a stale socket file only if it *is* a socket and connecting to it is
refused; bind with a umask so the socket is 0600 from birth. Both files are removed at exit.
With socket activation none of this happens: systemd owns the socket and its folder.

Graceful stop: stop accepting, stop reading (everything read is already queued), let every
repository's writer sync and projector apply what is queued, answer pending flushes, close
connections, close logs and views, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal, cast

from trackd.daemon import spool
from trackd.daemon import systemd as sd
from trackd.daemon.repository import Repository
from trackd.daemon.session import Session
from trackd.daemon.settings import DaemonSettings
from trackd.errors import ConfigError, LogIOError
from trackd.wire.address import ensure_socket_dir, socket_path
from trackd.wire.sockfiles import lock_path, pidfile_path, read_pidfile

__all__ = ["Server", "run_daemon"]

log = logging.getLogger("trackd.daemon")

LISTEN_BACKLOG = 512


class _StartError(Exception):
    """The daemon cannot start: another one runs, or the socket path is unusable.

    Internal: :func:`run_daemon` turns it into a logged message and exit status 1; it never
    crosses the wire, so it is not part of the :mod:`trackd.errors` tree.
    """


# -- systemd -----------------------------------------------------------------------------
# None unless started by systemd with NOTIFY_SOCKET; every call below is then a no-op.
_notifier: sd.Notifier | None = None

#: Seconds between STATUS= updates, and between EXTEND_TIMEOUT_USEC= pings during a drain.
STATUS_INTERVAL = 5.0


def _notify_ready(status: str) -> None:
    """systemd: READY=1 with STATUS=``status``, once the socket accepts connections."""
    log.debug("ready: %s", status)
    if _notifier is not None:
        _notifier.ready(status)


def _notify_status(status: str) -> None:
    """systemd: STATUS=``status``."""
    log.debug("status: %s", status)
    if _notifier is not None:
        _notifier.status(status)


def _notify_stopping() -> None:
    """systemd: STOPPING=1, when a graceful stop begins."""
    log.debug("stopping")
    if _notifier is not None:
        _notifier.stopping()


def _inherited_socket() -> socket.socket | None:
    """systemd socket activation: the listening socket passed by LISTEN_FDS, if any."""
    fds = sd.listen_fds()
    if not fds:
        return None
    sock, name = fds[0]
    for extra, extra_name in fds[1:]:
        log.warning("ignoring extra inherited socket %s (fd %d)", extra_name, extra.fileno())
        extra.close()
    sock.setblocking(False)
    log.info("serving the socket inherited from systemd (%s, fd %d)", name, sock.fileno())
    return sock


# -- the server ----------------------------------------------------------------------------


class Server:
    """Accepts connections and owns the repositories this daemon serves.

    Args:
        settings: The daemon's tunables.
        path: The socket path served (for status and logs).

    Attributes:
        sessions: Every open connection.
        stopping: True once a stop began; new repositories are refused from then on.
        exit_code: 0 after a graceful stop, 1 after a fatal error.
    """

    def __init__(
        self,
        settings: DaemonSettings,
        path: Path,
        reload: Callable[[], DaemonSettings] | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload
        self.path = path
        self.sessions: set[Session] = set()
        self.stopping = False
        self.exit_code = 0
        self._fatal: BaseException | None = None
        self._repos: dict[str, asyncio.Task[Repository]] = {}
        #: Repositories being closed for idleness, by key, until their drain ends.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._no_sessions = asyncio.Event()
        self._started = time.monotonic()
        self._version = _version()

    async def serve(self, sock: socket.socket) -> int:
        """Serve on the bound, listening ``sock`` until a signal or a fatal error.

        Returns:
            The process exit status: 0 after a graceful stop, 1 after a fatal error.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        if _early_signals:
            self.request_stop(_early_signals[0])
        server = await loop.create_unix_server(lambda: Session(self), sock=sock)
        log.info("trackd daemon %s (pid %d) serving %s", self._version, os.getpid(), self.path)
        _notify_ready(f"serving {self.path}")
        chores = [
            loop.create_task(self._report_status(), name="sd status"),
            loop.create_task(self._close_idle(), name="close idle repositories"),
        ]
        interval = _notifier.watchdog_interval() if _notifier is not None else None
        if interval:
            chores.append(loop.create_task(self._watchdog(interval / 2), name="sd watchdog"))
        await self._stop.wait()
        _notify_stopping()
        for c in chores:
            c.cancel()
        chores = [loop.create_task(self._extend_stop_timeout(), name="sd extend")]
        server.close()
        if self._fatal is not None:
            await self._abort()
        else:
            try:
                await asyncio.wait_for(self._drain(), self.settings.shutdown_timeout)
            except TimeoutError:
                log.error(
                    "graceful stop took longer than %.0fs; stopping without draining",
                    self.settings.shutdown_timeout,
                )
                self.exit_code = 1
                await self._abort()
            if self._fatal is not None:  # the log failed while draining
                await self._abort()
        for c in chores:
            c.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("trackd daemon stopped (exit status %d)", self.exit_code)
        return self.exit_code

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop (signal handler)."""
        if not self.stopping:
            log.info("%s received: draining and stopping", reason)
        self.stopping = True
        self._stop.set()

    def fatal(self, exc: BaseException) -> None:
        """A repository's log (or views) failed: stop acking and exit with status 1.

        After a failed fsync the kernel may have dropped the dirty pages, so nothing after
        the last good sync can be trusted; the next start recovers from the log.
        """
        if self._fatal is not None:
            return
        self._fatal = exc
        self.exit_code = 1
        self.stopping = True
        # Stop acking now: no session may hear of durability any more.
        for s in list(self.sessions):
            s.abort()
        what = "log write or fsync" if isinstance(exc, (LogIOError, OSError)) else "projection"
        log.critical(
            "%s failed (%s): %s: %s; stopping without acknowledging more; "
            "the next start recovers from the log",
            what,
            _root_cause(exc),
            type(exc).__name__,
            exc,
        )
        self._stop.set()

    def forget(self, session: Session) -> None:
        """A connection is gone."""
        self.sessions.discard(session)
        if not self.sessions:
            self._no_sessions.set()

    def _reload(self) -> None:
        """SIGHUP: re-read the settings; apply what can change at runtime, log the rest."""
        if _notifier is not None:
            _notifier.reloading()
        try:
            if self._reload_settings is None:
                log.info("SIGHUP received; settings were given in code, nothing to reload")
                return
            try:
                new = self._reload_settings()
            except ConfigError as e:
                log.error("SIGHUP: keeping the current settings: %s", e)
                return
            old = self.settings
            restart = [
                n for n in ("segment_size", "max_frame") if getattr(old, n) != getattr(new, n)
            ]
            if new.socket not in (None, old.socket, self.path):
                restart.append("socket")
            runtime = replace(
                old,
                group_commit_max_wait=new.group_commit_max_wait,
                max_pending_bytes=new.max_pending_bytes,
                resume_pending_bytes=new.resume_pending_bytes,
                log_level=new.log_level,
                log_format=new.log_format,
            )
            changed = [
                f.name for f in fields(old) if getattr(old, f.name) != getattr(runtime, f.name)
            ]
            self.settings = runtime
            sd.configure_logging(runtime.log_level, _log_format(runtime.log_format))
            for repo in self._open_repositories():
                repo.update_settings(runtime)
            log.info("SIGHUP: settings reloaded; changed: %s", ", ".join(changed) or "nothing")
            if restart:
                log.warning(
                    "SIGHUP: %s changed but takes effect only after a restart", ", ".join(restart)
                )
        finally:
            if _notifier is not None:
                _notifier.ready(f"serving {self.path}")

    async def _report_status(self) -> None:
        """systemd: a STATUS= line every few seconds (clients, events/s, projection lag)."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            st = self.status()
            lag = sum(int(r.get("lag_bytes", 0)) for r in st["repositories"])
            _notify_status(
                f"{st['clients']} clients, {st['events_per_s']} events/s, "
                f"{len(st['repositories'])} repositories, projection lag {lag} B"
            )

    async def _watchdog(self, period: float) -> None:
        """systemd: WATCHDOG=1 only while every repository's writer task is alive."""
        assert _notifier is not None
        while self._fatal is None:
            if all(r.writer_alive() for r in self._open_repositories()):
                _notifier.watchdog()
            else:
                log.error("a writer task is dead; withholding the watchdog ping")
            await asyncio.sleep(period)

    async def _extend_stop_timeout(self) -> None:
        """systemd: keep extending the stop timeout while a long drain makes progress."""
        if _notifier is None:
            return
        while True:
            _notifier.extend_timeout(int(STATUS_INTERVAL * 2 * 1_000_000))
            await asyncio.sleep(STATUS_INTERVAL)

    async def repository(self, root: Path) -> Repository:
        """The repository at ``root``, opened on first use (concurrent callers share it).

        ``root`` must be absolute with symlinks resolved, so one folder has one key.

        Raises:
            DaemonUnavailableError: the daemon is stopping.
            TrackdError: the repository cannot be opened (the next Hello retries).
        """
        key = str(root)
        closing = self._closing.get(key)
        if closing is not None:  # closed for idleness just now: let it finish, then reopen
            await asyncio.shield(closing)
        task = self._repos.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                Repository.open(Path(key), self.settings, self.fatal), name=f"open {key}"
            )
            self._repos[key] = task
            task.add_done_callback(lambda t: self._opened(key, t))
        repo = await asyncio.shield(task)
        # Handed to a session that attaches in a callback: not idle meanwhile.
        repo.used_at = time.monotonic()
        return repo

    def _opened(self, key: str, task: asyncio.Task[Repository]) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._repos.get(key) is task:
                del self._repos[key]
            if not task.cancelled():
                log.error("cannot open repository %s: %s", key, task.exception())
        else:
            _notify_status(f"serving {len(self._repos)} repositories")

    def _open_repositories(self) -> list[Repository]:
        return [
            t.result()
            for t in self._repos.values()
            if t.done() and not t.cancelled() and t.exception() is None
        ]

    def status(self) -> dict[str, Any]:
        """The status map (see :mod:`trackd.daemon.status`)."""
        repos = [r.status() for r in self._open_repositories()]
        return {
            "pid": os.getpid(),
            "version": self._version,
            "socket": str(self.path),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "clients": sum(1 for s in self.sessions if s.repo is not None),
            "connections": len(self.sessions),
            "events_per_s": round(sum(float(r["events_per_s"]) for r in repos), 1),
            "repositories": repos,
        }

    async def _close_idle(self) -> None:
        """Close repositories idle for ``idle_close`` seconds (see :class:`DaemonSettings`)."""
        while True:
            limit = self.settings.idle_close  # SIGHUP may change it
            await asyncio.sleep(min(5.0, limit / 4) if limit > 0 else 5.0)
            if limit <= 0 or self.stopping:
                continue
            now = time.monotonic()
            for repo in self._open_repositories():
                key = str(repo.layout.root)
                if repo.idle_for(now) >= limit and self._repos.get(key) is not None:
                    del self._repos[key]
                    task = asyncio.get_running_loop().create_task(
                        self._retire(key, repo), name=f"close {key}"
                    )
                    self._closing[key] = task

    async def _retire(self, key: str, repo: Repository) -> None:
        log.info("closing repository %s: no client for %.0fs", key, self.settings.idle_close)
        try:
            await repo.drain()
        finally:
            del self._closing[key]
            _notify_status(f"serving {len(self._repos)} repositories")

    async def _drain(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing.values(), return_exceptions=True)
        for s in list(self.sessions):
            s.stop_reading()
        pending = [t for t in self._repos.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)
        repos = self._open_repositories()
        await asyncio.gather(*(r.drain() for r in repos))
        if self._fatal is not None:
            return
        for s in list(self.sessions):
            s.close()
        # Let the transports write the last acks and flush replies before the loop ends.
        if self.sessions:
            self._no_sessions.clear()
            try:
                await asyncio.wait_for(self._no_sessions.wait(), 2.0)
            except TimeoutError:
                log.warning("%d connections did not close in time", len(self.sessions))
        for s in list(self.sessions):
            s.abort()

    async def _abort(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing.values(), return_exceptions=True)
        for s in list(self.sessions):
            s.abort()
        for t in self._repos.values():
            if not t.done():
                t.cancel()
        await asyncio.gather(*(r.abort() for r in self._open_repositories()))


def _root_cause(exc: BaseException) -> str:
    """Name the OS or SQLite error under ``exc`` (``errno 28 ENOSPC``, ``SQLITE_FULL``)."""
    seen: BaseException | None = exc
    while seen is not None:
        err = getattr(seen, "errno", None)
        if isinstance(err, int):
            return f"errno {err} {errno.errorcode.get(err, '?')}"
        name = getattr(seen, "sqlite_errorname", None)  # sqlite3.Error, Python >= 3.11
        if isinstance(name, str):
            return name
        seen = seen.__cause__ or seen.__context__
    return "no OS or SQLite error code"


_early_signals: list[str] = []


def _remember_early_signal(signum: int, _frame: object) -> None:
    _early_signals.append(signal.Signals(signum).name)


# -- process set-up ----------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trackd")
    except PackageNotFoundError:
        return "unknown"


def _log_format(fmt: str) -> Literal["auto", "journal", "text"]:
    if fmt not in ("auto", "journal", "text"):
        raise ConfigError(f"log format must be auto, journal or text, got {fmt!r}")
    return cast('Literal["auto", "journal", "text"]', fmt)


def _lock_instance(path: Path) -> int:
    """Take ``<socket>.lock``; the descriptor holds it for the life of the process.

    Never through a symbolic link: in a shared sticky folder another user could plant one.

    Raises:
        _StartError: another daemon holds it (the message names its pid), or it cannot be
            opened (e.g. it is a symbolic link).
    """
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise _StartError(f"cannot open the lock file {lock_path(path)}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pidfile(path)
        who = f"pid {pid}" if pid else "pid unknown"
        raise _StartError(
            f"a trackd daemon is already running ({who}) on {path}; stop it with "
            "`trackd daemon stop`"
        ) from None
    return fd


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse anything else at the path.

    Raises:
        _StartError: the path is not a socket, or something answers on it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise _StartError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale socket %s (nobody listened on it)", path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise _StartError(f"cannot check the existing socket {path}: {e}") from e
    finally:
        probe.close()
    raise _StartError(f"another process answers on {path}; refusing to replace it")


def _bind(path: Path) -> socket.socket:
    """Bind and listen on ``path`` with mode 0600 from birth."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise _StartError(f"cannot bind {path}: {e}") from e
    finally:
        os.umask(old)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _write_pidfile(path: Path) -> None:
    """Write ``<socket>.pid`` atomically, never through a link planted at its temporary name.

    Raises:
        _StartError: the file cannot be written.
    """
    pf = pidfile_path(path)
    tmp = pf.with_name(pf.name + ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a crash, or a link someone planted: never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, pf)
    except OSError as e:
        raise _StartError(f"cannot write the pidfile {pf}: {e}") from e


def _remove_own_files(path: Path, bound: bool) -> None:
    if read_pidfile(path) == os.getpid():
        with contextlib.suppress(OSError):
            pidfile_path(path).unlink()
    if bound:
        with contextlib.suppress(OSError):
            path.unlink()


def run_daemon(
    settings: DaemonSettings | None = None,
    *,
    reload: Callable[[], DaemonSettings] | None = None,
) -> int:
    """Run the daemon in the foreground until it is stopped.

    Under systemd it speaks sd_notify (READY, STATUS, RELOADING, STOPPING, WATCHDOG,
    EXTEND_TIMEOUT_USEC) and serves a socket passed by LISTEN_FDS, which it never unlinks.

    Args:
        settings: Tunables; defaults for everything not given.
        reload: Called on SIGHUP for fresh settings (the CLI re-reads config files and
            environment with the same flags); None disables reloading.

    Returns:
        The exit status: 0 after a graceful stop, 1 when it cannot start or a log failed.
    """
    import uvloop

    global _notifier
    # The socket accepts connections before the loop installs its SIGHUP handler; until
    # then a reload request must not kill the daemon with the default action.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Likewise a stop request then is remembered and honoured once the loop runs, so it
    # still drains and exits 0 rather than dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_early_signal)
    settings = settings or DaemonSettings()
    spool.warm_up()
    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise walk it on the event loop's thread.
    gc.freeze()
    path = settings.socket or socket_path()
    bound = False
    lock_fd = -1
    try:
        try:
            sd.configure_logging(settings.log_level, _log_format(settings.log_format))
        except ValueError as e:
            raise ConfigError(str(e)) from e
        _notifier = sd.Notifier.from_env()
        sock = _inherited_socket()
        if sock is None:
            # Only a socket we bind ourselves needs the instance lock, stale-file check and
            # pidfile; with socket activation systemd owns the socket and its folder.
            ensure_socket_dir(path)
            lock_fd = _lock_instance(path)
            # Before binding: whoever sees the socket answer can read the pid at once.
            _write_pidfile(path)
            _clear_stale_socket(path)
            sock = _bind(path)
            bound = True
        server = Server(settings, path, reload)
        return uvloop.run(server.serve(sock))
    except (_StartError, ConfigError) as e:
        log.error("cannot start: %s", e)
        return 1
    finally:
        if lock_fd >= 0:  # we own the pidfile (and the socket if we bound it)
            _remove_own_files(path, bound)
        if lock_fd >= 0:
            os.close(lock_fd)
