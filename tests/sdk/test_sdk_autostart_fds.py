"""An auto-started daemon inherits none of the starting process's descriptors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from trackd.sdk._connect import autostart
from trackd.wire.sockfiles import read_pidfile

pytestmark = pytest.mark.integration


def _open_files(pid: int) -> set[str]:
    """What the descriptors of ``pid`` point at (one closed while listing is skipped)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def test_autostarted_daemon_holds_no_inherited_pipe(socket_env: Path) -> None:
    """A pipe the trainer made inheritable is not open in the daemon it starts."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        assert autostart(socket_env)
        pid = read_pidfile(socket_env)
        assert pid is not None
        pipe = os.readlink(f"/proc/self/fd/{w}")
        held = _open_files(pid)
        assert pipe not in held, f"the daemon holds the trainer's pipe {pipe}"
    finally:
        os.close(r)
        os.close(w)
