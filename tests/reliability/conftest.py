"""Reliability tests: long-mode timeouts, and the figures they measured, printed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import FIGURES, STARTED

HERE = Path(__file__).resolve().parent
LONG_TIMEOUT = 4 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--long``, give the reliability tests hours instead of their CI timeouts."""
    if not config.getoption("--long"):
        return
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT), append=False)


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """Kill (and reap) every daemon a test started, also when the test failed."""
    yield
    while STARTED:
        STARTED.pop().kill()


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True when the session runs with ``--long`` (bigger iteration counts)."""
    return bool(request.config.getoption("--long"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every figure recorded with ``record_figure``."""
    if not FIGURES:
        return
    terminalreporter.section("trackd reliability figures")
    for name, value in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{name}: {value}")
