"""The ``trackd`` command (click). Thin: heavy imports happen inside command bodies."""

from __future__ import annotations

import click

from trackd.cli.daemon import daemon_group
from trackd.cli.demo import demo_command
from trackd.cli.service import config_group, systemd_group

__all__ = ["main"]


@click.group()
@click.version_option(package_name="trackd")
def main() -> None:
    """trackd: crash-safe experiment tracking and data versioning."""


main.add_command(daemon_group)
main.add_command(demo_command)
main.add_command(systemd_group)
main.add_command(config_group)
