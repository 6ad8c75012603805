"""The ``trackd`` command (click). Thin: heavy imports happen inside command bodies.

Exit statuses, the same for every command (the root group's class maps them, see
:mod:`trackd.cli._output`): 0 ok, 1 error, 2 usage, 3 daemon unreachable.
"""

from __future__ import annotations

import click

from trackd.cli._output import TrackdGroup
from trackd.cli.daemon import daemon_group
from trackd.cli.demo import demo_command
from trackd.cli.maintenance import log_group, sync_command, views_group
from trackd.cli.repo_cmds import init_command, status_command
from trackd.cli.runs import export_command, metrics_command, runs_group
from trackd.cli.service import config_group, systemd_group

__all__ = ["main"]


@click.group(cls=TrackdGroup)
@click.version_option(package_name="trackd")
def main() -> None:
    """trackd: crash-safe experiment tracking and data versioning.

    Exit statuses: 0 ok, 1 error, 2 usage error, 3 no daemon reachable.
    """


main.add_command(init_command)
main.add_command(status_command)
main.add_command(runs_group)
main.add_command(metrics_command)
main.add_command(export_command)
main.add_command(views_group)
main.add_command(log_group)
main.add_command(sync_command)
main.add_command(daemon_group)
main.add_command(demo_command)
main.add_command(systemd_group)
main.add_command(config_group)
