"""The ``trackd`` command (click). Thin: heavy imports happen inside command bodies."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group()
@click.version_option(package_name="trackd")
def main() -> None:
    """trackd: crash-safe experiment tracking and data versioning."""
