"""Where the daemon listens: the one rule both the daemon and the SDK follow.

``TRACKD_SOCKET`` if set; else ``$XDG_RUNTIME_DIR/trackd.sock``; else
``/tmp/trackd-<uid>/trackd.sock`` (that folder is created with mode 0700 by whoever needs it
first, and refused if another user owns it or others can write into it).
The rule itself is written once, in :func:`trackd.config.default_socket_path`.
Imports ``trackd.config`` and ``trackd.errors``; no sockets.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from trackd.config import default_socket_path
from trackd.errors import ConfigError

__all__ = ["ensure_socket_dir", "socket_path"]


def socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The socket path the daemon serves and the SDK connects to (see module docstring)."""
    return default_socket_path(env)


def ensure_socket_dir(path: Path) -> Path:
    """Create the socket's folder (0700) if missing and check nobody else can use it.

    Raises:
        ConfigError: the folder belongs to another user or is writable by others.
    """
    d = path.parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"socket folder {d} belongs to uid {st.st_uid}, not {os.getuid()}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"socket folder {d} is writable by others; make it 0700")
    return d
