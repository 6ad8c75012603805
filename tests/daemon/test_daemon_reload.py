"""Signals during and after start-up: SIGHUP reloads settings, early signals are safe."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = pytest.mark.integration


def _wait_for(daemon: DaemonProc, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = daemon.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon log:\n{daemon.log()}")


def test_sighup_applies_runtime_settings_and_reports_restart_ones(
    daemon_factory: DaemonProc, tmp_path: Path
) -> None:
    """A changed log level applies on SIGHUP; a changed segment size is reported as restart."""
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_level = "info"\nsegment_size_mb = 64\n')
    daemon_factory.env["TRACKD_CONFIG"] = str(config)
    daemon = daemon_factory.start()
    _wait_for(daemon, "serving")  # signal handlers are installed from here on
    config.write_text('[daemon]\nlog_level = "debug"\nsegment_size_mb = 8\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    log = _wait_for(daemon, "SIGHUP: settings reloaded")
    assert "changed: log_level" in log
    _wait_for(daemon, "segment_size changed but takes effect only after a restart")
    assert daemon.proc.poll() is None, "SIGHUP must not stop the daemon"


def test_sighup_with_a_broken_config_keeps_the_old_settings(
    daemon_factory: DaemonProc, tmp_path: Path
) -> None:
    """An unknown key on reload is logged by name and the daemon keeps serving."""
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_level = "info"\n')
    daemon_factory.env["TRACKD_CONFIG"] = str(config)
    daemon = daemon_factory.start()
    _wait_for(daemon, "serving")
    config.write_text('[daemon]\nlog_levle = "debug"\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    log = _wait_for(daemon, "keeping the current settings")
    assert "log_levle" in log
    assert daemon.proc.poll() is None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=20) == 0


def test_sighup_as_soon_as_the_socket_answers_does_not_kill(daemon_factory: DaemonProc) -> None:
    """A reload request racing the start-up is ignored, never fatal (default SIGHUP action)."""
    for _ in range(5):
        daemon = daemon_factory.start()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert daemon.proc.poll() is None, f"SIGHUP killed the daemon:\n{daemon.log()}"
        assert daemon.stop() == 0


def test_sigterm_as_soon_as_the_socket_answers_still_exits_0(daemon_factory: DaemonProc) -> None:
    """A stop request racing the start-up is honoured gracefully: exit status 0."""
    for _ in range(5):
        daemon = daemon_factory.start()
        assert daemon.stop() == 0, daemon.log()
