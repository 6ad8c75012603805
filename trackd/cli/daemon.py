"""``trackd daemon run|start|stop|status``: run and control the daemon.

Owns: the click group :data:`daemon_group`, registered by :mod:`trackd.cli`. Thin: the work
is in :mod:`trackd.daemon`, imported inside the command bodies so ``trackd --help`` stays
light. Exit statuses: 0 ok, 1 error, 3 no daemon (``stop``, ``status``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

__all__ = ["daemon_group"]

EXIT_NO_DAEMON = 3

_socket_option = click.option(
    "--socket",
    "socket_",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Socket path (default: $TRACKD_SOCKET, else $XDG_RUNTIME_DIR/trackd.sock, "
    "else /tmp/trackd-<uid>/trackd.sock).",
)


def _resolve(socket_: Path | None) -> Path:
    from trackd.wire.address import socket_path

    return socket_ if socket_ is not None else socket_path()


@click.group("daemon")
def daemon_group() -> None:
    """Run, start, stop and inspect the trackd daemon."""


@daemon_group.command("run")
@_socket_option
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Level of the log written to stderr (default: daemon.log_level, 'info').",
)
def run_cmd(socket_: Path | None, log_level: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT (exit 0), or an error (1).

    Settings come from flags, then TRACKD_* variables, then config.toml, then defaults
    (`trackd config show` lists them). SIGHUP re-reads them and applies what can change
    at runtime; under systemd it speaks sd_notify and accepts socket activation.
    """
    from trackd.config import load_settings
    from trackd.daemon.server import run_daemon
    from trackd.daemon.settings import DaemonSettings
    from trackd.errors import ConfigError

    flags: dict[str, object] = {}
    if socket_ is not None:
        flags["daemon.socket"] = socket_
    if log_level is not None:
        flags["daemon.log_level"] = log_level.lower()

    def load() -> DaemonSettings:
        return DaemonSettings.from_config(load_settings(flags=flags))

    try:
        settings = load()
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    sys.exit(run_daemon(settings, reload=load))


@daemon_group.command("start")
@_socket_option
@click.option(
    "--timeout", type=float, default=20.0, show_default=True, help="Seconds to wait for it."
)
def start_cmd(socket_: Path | None, timeout: float) -> None:
    """Start the daemon in the background and wait until it answers.

    Its output goes to <socket>.log. When a daemon already answers on the socket, says so
    and exits 0.
    """
    from trackd.errors import ConfigError
    from trackd.sdk._connect import autostart, socket_answers
    from trackd.wire.sockfiles import log_path, read_pidfile

    path = _resolve(socket_)
    if socket_answers(path):
        click.echo(f"trackd daemon already running (pid {read_pidfile(path)}) on {path}")
        return
    try:
        started = autostart(path, wait=timeout)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    logfile = log_path(path)
    if not started:
        raise click.ClickException(
            f"the daemon did not come up on {path} within {timeout:g}s:\n{_tail(logfile)}"
        )
    click.echo(f"trackd daemon started (pid {read_pidfile(path)}) on {path}; log: {logfile}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@daemon_group.command("stop")
@_socket_option
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for it."
)
def stop_cmd(socket_: Path | None, timeout: float) -> None:
    """Stop the daemon gracefully (SIGTERM) and wait until it exits; exit 3 if none runs."""
    from trackd.wire.sockfiles import pid_alive, read_pidfile

    path = _resolve(socket_)
    pid = read_pidfile(path)
    if pid is None or not pid_alive(pid):
        click.echo(f"no trackd daemon running on {path}", err=True)
        sys.exit(EXIT_NO_DAEMON)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        click.echo(f"no trackd daemon running on {path}", err=True)
        sys.exit(EXIT_NO_DAEMON)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise click.ClickException(f"the daemon (pid {pid}) did not exit within {timeout:g}s")
        time.sleep(0.02)
    click.echo(f"trackd daemon (pid {pid}) stopped")


@daemon_group.command("status")
@_socket_option
@click.option("--json", "as_json", is_flag=True, help="Print the status map as JSON.")
def status_cmd(socket_: Path | None, as_json: bool) -> None:
    """Show pid, uptime, repositories served, events/s and projection lag; exit 3 if none."""
    from trackd.daemon.client import DaemonClient
    from trackd.daemon.status import format_status
    from trackd.errors import DaemonUnavailableError, TrackdError

    path = _resolve(socket_)
    try:
        with DaemonClient(path, timeout=10.0) as client:
            client.hello("")
            status = client.request("status")
    except DaemonUnavailableError:
        click.echo(f"daemon unreachable at {path}", err=True)
        sys.exit(EXIT_NO_DAEMON)
    except (TrackdError, OSError) as e:
        raise click.ClickException(f"status request failed: {e}") from e
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo(format_status(status))
