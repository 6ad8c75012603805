"""Fixtures of the SDK tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackd.sdk.client import Client


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """A client that is never started (no thread, no socket)."""
    return Client(tmp_path, sock=tmp_path / "none.sock")
