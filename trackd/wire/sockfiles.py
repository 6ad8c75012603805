"""The files beside the socket: ``<socket>.pid``, ``<socket>.lock`` and ``<socket>.log``.

Owns: their names and reading the pid back, shared by the daemon (which writes them) and the
CLI (which stops the daemon by pid) and the SDK (which auto-starts one): it lives in ``wire``
so all three use the same names.
Stdlib only, so ``trackd daemon stop`` stays light.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["lock_path", "log_path", "pid_alive", "pidfile_path", "read_pidfile"]


def pidfile_path(sock: Path) -> Path:
    """``<socket>.pid``: the daemon's pid, written once the socket is bound."""
    return Path(f"{sock}.pid")


def lock_path(sock: Path) -> Path:
    """``<socket>.lock``: flocked by the one daemon serving ``sock``."""
    return Path(f"{sock}.lock")


def log_path(sock: Path) -> Path:
    """``<socket>.log``: where a started daemon (CLI or SDK auto-start) sends its output."""
    return Path(f"{sock}.log")


def read_pidfile(sock: Path) -> int | None:
    """The pid recorded beside the socket ``sock``, or None when there is none."""
    try:
        return int(pidfile_path(sock).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
