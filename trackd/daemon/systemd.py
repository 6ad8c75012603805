"""systemd integration without libsystemd: sd_notify, socket activation, journal logging, units.

Owns: the sd_notify protocol (:class:`Notifier`: one AF_UNIX datagram per message to
``$NOTIFY_SOCKET``), socket activation (:func:`listen_fds`: ``LISTEN_FDS``/``LISTEN_PID``/
``LISTEN_FDNAMES``), logging to stderr with ``<N>`` syslog priority prefixes when stderr is
the journal (:func:`configure_logging`), and the text of the unit files
(:func:`render_units`; ``systemd/`` in the repository holds the same text with the
``@PYTHON@`` placeholder). Standard library only.

Every function here works, and does nothing harmful, when not run under systemd: no
``NOTIFY_SOCKET`` means no notifier, no ``LISTEN_FDS`` means no inherited sockets.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import IO, Literal

__all__ = [
    "PYTHON_PLACEHOLDER",
    "SYSTEM_SOCKET_PATH",
    "SYSTEM_STATE_DIR",
    "JournalFormatter",
    "Notifier",
    "configure_logging",
    "journal_stream_active",
    "listen_fds",
    "render_units",
]

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
"""The first inherited file descriptor (``SD_LISTEN_FDS_START`` in sd-daemon.h)."""


class Notifier:
    """Sends sd_notify messages to the service manager.

    Each call sends one datagram of ``KEY=value`` lines. Sending never raises into the
    caller: a failure is logged at debug level and reported by the return value, because a
    daemon must keep serving even if the manager went away.
    """

    def __init__(self, address: str) -> None:
        """Create a notifier for ``address``.

        Args:
            address: A socket path, or an abstract socket name starting with ``@``
                (as ``NOTIFY_SOCKET`` spells it).
        """
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier | None:
        """The notifier for ``$NOTIFY_SOCKET``, or None when not started by systemd.

        Also reads ``WATCHDOG_USEC``/``WATCHDOG_PID`` for :meth:`watchdog_interval`.

        Args:
            env: The environment; ``os.environ`` when None.

        Returns:
            A notifier, or None if ``NOTIFY_SOCKET`` is unset, empty or not a Unix socket
            address (a path or ``@abstract``).
        """
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")):
            if address:
                log.warning("NOTIFY_SOCKET=%r is not a Unix socket address; ignored", address)
            return None
        notifier = cls(address)
        notifier._watchdog_usec = _watchdog_usec(env)
        return notifier

    def notify(self, raw: str | None = None, /, **fields: str | int) -> bool:
        """Send one message.

        Args:
            raw: A preformatted message (``"READY=1\\nSTATUS=up"``), sent before ``fields``.
            **fields: Assignments, sent as ``KEY=value`` lines in the order given.

        Returns:
            True if the datagram was sent.
        """
        lines = [raw] if raw else []
        lines += [f"{k}={v}" for k, v in fields.items()]
        data = "\n".join(lines).encode()
        try:
            # A socket per message, as libsystemd does: nothing to leak or reopen after
            # a fork, and messages are rare (the watchdog ping is the most frequent).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(data, self._target)
        except OSError as e:
            log.debug("sd_notify to %s failed: %s", self.address, e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (after recovery and catch-up), or a reload did."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=_one_line(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status``."""
        return self.notify(STATUS=_one_line(text))

    def stopping(self) -> bool:
        """``STOPPING=1``: a graceful shutdown began."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload began; send :meth:`ready` after.

        systemd matches the reload to the request by the CLOCK_MONOTONIC timestamp.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is healthy; resets the watchdog timer."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, usec: int) -> bool:
        """``EXTEND_TIMEOUT_USEC``: the current start, stop or reload needs ``usec`` more.

        Send it again before each extension runs out (e.g. every few seconds of a replay).
        """
        return self.notify(EXTEND_TIMEOUT_USEC=int(usec))

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when the watchdog is off for us.

        Ping with :meth:`watchdog` at half this interval (systemd's recommendation).
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec if usec > 0 else None


def listen_fds(
    env: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[tuple[socket.socket, str]]:
    """The sockets systemd passed to this process, with their names.

    Reads ``LISTEN_FDS`` (how many descriptors, starting at fd 3), ``LISTEN_PID`` (must be
    this process, otherwise the variables were inherited by mistake and are ignored) and
    ``LISTEN_FDNAMES`` (``:``-separated; ``unknown`` where missing, as systemd does).
    Each descriptor gets ``FD_CLOEXEC``. The caller owns the sockets; it must never unlink
    their paths (systemd does, with ``RemoveOnStop=``).

    Args:
        env: The environment; ``os.environ`` when None.
        unset: Remove the three variables so child processes do not see them.

    Returns:
        ``(socket, name)`` pairs in descriptor order; empty when not socket-activated.
        Descriptors that are not sockets are logged and left alone.
    """
    env = os.environ if env is None else env
    count_text = env.get("LISTEN_FDS")
    pid_text = env.get("LISTEN_PID")
    names_text = env.get("LISTEN_FDNAMES")
    if unset:
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(var, None)
    if not count_text or not pid_text:
        return []
    try:
        count = int(count_text)
        pid = int(pid_text)
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%r LISTEN_PID=%r: not numbers", count_text, pid_text)
        return []
    if pid != os.getpid():
        log.debug("LISTEN_PID=%d is not this process (%d); ignored", pid, os.getpid())
        return []
    names = names_text.split(":") if names_text else []
    out: list[tuple[socket.socket, str]] = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else "unknown"
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warning("inherited fd %d (%s) is not a usable socket: %s", fd, name, e)
            continue
        out.append((sock, name))
    return out


# -- logging ------------------------------------------------------------------------------

_SYSLOG_PRIORITY = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def journal_stream_active(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` (stderr) is connected to the journal.

    systemd sets ``JOURNAL_STREAM=<st_dev>:<st_ino>`` of the stream it connected; a
    redirected stderr (``2>file``) no longer matches and gets the text format.

    Args:
        env: The environment; ``os.environ`` when None.
        fd: The descriptor the log is written to.
    """
    env = os.environ if env is None else env
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` with the syslog priority N on every line.

    The journal stamps time and pid itself and splits entries at newlines, so each line of
    a multi-line message (a traceback) carries the priority too.
    """

    def __init__(self) -> None:
        """Create the formatter (``name: message``)."""
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` with a ``<N>`` prefix on each line."""
        prefix = f"<{self.priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))

    @staticmethod
    def priority(levelno: int) -> int:
        """The syslog priority of a logging level (ERROR -> 3, INFO -> 6, DEBUG -> 7)."""
        for level, prio in _SYSLOG_PRIORITY:
            if levelno >= level:
                return prio
        return 7


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_handler: logging.Handler | None = None


def configure_logging(
    level: str | int,
    fmt: Literal["auto", "journal", "text"] = "auto",
    *,
    stream: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send the root logger's records to stderr, in the journal or the text format.

    Calling it again (on SIGHUP) replaces the level and format of the same handler.

    Args:
        level: A level name (``"info"``, any case) or number.
        fmt: ``journal`` (``<N>`` prefixes), ``text`` (``time level name: message``), or
            ``auto``: journal when :func:`journal_stream_active` for ``stream``.
        stream: Where to write; ``sys.stderr`` when None.
        env: The environment for ``auto``; ``os.environ`` when None.

    Returns:
        The handler installed on the root logger.

    Raises:
        ValueError: an unknown level name or format.
    """
    global _handler
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        fmt = "journal" if fd >= 0 and journal_stream_active(env, fd) else "text"
    if fmt == "journal":
        formatter: logging.Formatter = JournalFormatter()
    elif fmt == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected auto, journal or text")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(formatter)
    root.addHandler(_handler)
    root.setLevel(numeric)
    return _handler


# -- unit files ---------------------------------------------------------------------------

PYTHON_PLACEHOLDER = "@PYTHON@"
"""Stands for the interpreter in the unit files checked into ``systemd/``."""
SYSTEM_SOCKET_PATH = "/run/trackd/trackd.sock"
"""Where the system-wide socket unit listens; clients set ``TRACKD_SOCKET`` to it."""
SYSTEM_STATE_DIR = "/var/lib/trackd"
"""The only tree the system service may write: its repositories live below it."""

_USER_SOCKET = """\
# trackd socket for one user; systemd listens and starts trackd.service on first use.
# %t is $XDG_RUNTIME_DIR, the folder the SDK looks in when TRACKD_SOCKET is unset.
[Unit]
Description=trackd tracking daemon socket (per user)

[Socket]
ListenStream=%t/trackd.sock
SocketMode=0600
FileDescriptorName=trackd
# The daemon never unlinks an inherited socket; systemd removes it when the unit stops.
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

_USER_SERVICE = """\
# trackd daemon for one user, started by trackd.socket. Installed by `trackd systemd install`.
[Unit]
Description=trackd tracking daemon (per user)
Requires=trackd.socket
After=trackd.socket

[Service]
# READY=1 after log recovery and view catch-up; STATUS= lines; STOPPING=1; RELOADING=1.
Type=notify
NotifyAccess=main
ExecStart=@PYTHON@ -m trackd daemon run
# SIGHUP reloads the settings that can change at runtime (see `trackd config show`).
ExecReload=/bin/kill -HUP $MAINPID
# WATCHDOG=1 is sent while the writer task is alive; a stuck writer gets restarted.
WatchdogSec=30s
# Long log replays extend this with EXTEND_TIMEOUT_USEC.
TimeoutStartSec=90s
# SIGTERM drains: pending events are synced and acknowledged before exit.
KillSignal=SIGTERM
TimeoutStopSec=60s
Restart=on-failure
RestartSec=1s
UMask=0077
NoNewPrivileges=yes

[Install]
Also=trackd.socket
"""

_SYSTEM_SOCKET = """\
# trackd socket for the whole machine. Members of group "trackd" may connect; they set
# TRACKD_SOCKET=/run/trackd/trackd.sock. Not in the service's RuntimeDirectory=, which
# systemd would remove whenever the service stops.
[Unit]
Description=trackd tracking daemon socket (system)

[Socket]
ListenStream=/run/trackd/trackd.sock
SocketUser=root
SocketGroup=trackd
SocketMode=0660
DirectoryMode=0755
FileDescriptorName=trackd
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

_SYSTEM_SERVICE = """\
# trackd daemon for the whole machine, hardened; started by trackd.socket.
# It runs as user "trackd" (create it first: systemd-sysusers, see `trackd systemd install`)
# and may write only below /var/lib/trackd (StateDirectory=), so repositories served by
# the system daemon live there. To serve another tree, add a drop-in with
# ReadWritePaths=/that/tree (and ProtectHome=read-only or tmpfs if it is under /home).
[Unit]
Description=trackd tracking daemon (system)
Requires=trackd.socket
After=trackd.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=@PYTHON@ -m trackd daemon run
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=30s
TimeoutStartSec=90s
KillSignal=SIGTERM
TimeoutStopSec=60s
Restart=on-failure
RestartSec=1s
User=trackd
Group=trackd
StateDirectory=trackd
StateDirectoryMode=0750
WorkingDirectory=/var/lib/trackd
# Settings: /etc/trackd/config.toml (XDG_CONFIG_HOME=/etc), read-only to the service.
ConfigurationDirectory=trackd
Environment=XDG_CONFIG_HOME=/etc
Environment=TRACKD_SOCKET=/run/trackd/trackd.sock
UMask=0077

# Sandbox. `systemd-analyze security --offline=true` rates this SAFE.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
PrivateIPC=yes
PrivateMounts=yes
# No PrivateUsers=: in a user namespace SO_PEERCRED would report every client as
# "nobody", and the daemon needs real peer uids to refuse or attribute connections.
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
NoNewPrivileges=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
DevicePolicy=closed
RestrictAddressFamilies=AF_UNIX
IPAddressDeny=any
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
Also=trackd.socket
"""

_TEMPLATES: dict[str, dict[str, str]] = {
    "user": {"trackd.socket": _USER_SOCKET, "trackd.service": _USER_SERVICE},
    "system": {"trackd.socket": _SYSTEM_SOCKET, "trackd.service": _SYSTEM_SERVICE},
}


def render_units(scope: Literal["user", "system"], python: str) -> dict[str, str]:
    """The unit files for ``scope`` with ``python`` in ``ExecStart=``.

    Args:
        scope: ``user`` (a per-user manager, socket in ``$XDG_RUNTIME_DIR``) or ``system``
            (hardened, socket in ``/run/trackd``).
        python: The interpreter path; pass :data:`PYTHON_PLACEHOLDER` for the templates
            themselves. Quoted for systemd when it holds spaces, ``%``, ``$`` or quotes.

    Returns:
        File name -> file text, for ``trackd.socket`` and ``trackd.service``.

    Raises:
        ValueError: an unknown scope, or a relative interpreter path.
    """
    if scope not in _TEMPLATES:
        raise ValueError(f"unknown scope {scope!r}; expected user or system")
    if python != PYTHON_PLACEHOLDER and not os.path.isabs(python):
        raise ValueError(f"interpreter path must be absolute, got {python!r}")
    exe = python if python == PYTHON_PLACEHOLDER else _exec_quote(python)
    return {
        name: text.replace(f"ExecStart={PYTHON_PLACEHOLDER} ", f"ExecStart={exe} ")
        for name, text in _TEMPLATES[scope].items()
    }


def _exec_quote(path: str) -> str:
    # systemd expands %specifiers and $VARIABLES in ExecStart=, and splits at spaces.
    escaped = path.replace("%", "%%").replace("$", "$$")
    if any(c in escaped for c in " \t\"'\\"):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped
