"""Fixtures of the SDK tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trackd.sdk.client import Client, shutdown_clients


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """Each test starts without SDK clients and leaves none running behind it, so that no
    client of an earlier test reconnects to (or auto-starts) a daemon of a later one."""
    shutdown_clients()
    yield
    shutdown_clients()


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """A client that is never started (no thread, no socket)."""
    return Client(tmp_path, sock=tmp_path / "none.sock")
