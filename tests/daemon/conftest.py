"""Fixtures of the daemon tests: raw clients that are closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import ClientFactory, RawClient


@pytest.fixture
def connect(socket_env: Path) -> Iterator[ClientFactory]:
    """Open raw connections to the daemon on ``socket_env``; all are closed afterwards."""
    opened: list[RawClient] = []

    def make() -> RawClient:
        c = RawClient(socket_env)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
