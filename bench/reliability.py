"""Reliability figures: run the reliability tests and print what they measured.

Runs ``pytest tests/reliability`` (CI mode by default, ``--long`` for the long mode), with
``TRACKD_RELIABILITY_FIGURES`` pointing at a temporary JSON file that the tests fill in (see
``tests/reliability/reliability_support.py``), then prints the figures: crash states
checked, kill -9 iterations and acknowledged events lost, frames fuzzed, load points/s and
the daemon's peak RSS. The exit status is pytest's.

Usage::

    .venv/bin/python bench/reliability.py            # CI mode, a few minutes
    .venv/bin/python bench/reliability.py --long     # long mode (500 kill -9 loops, ...)
    .venv/bin/python bench/reliability.py --json     # the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the tests, print the figures, return pytest's exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--long", action="store_true", help="long mode (pytest --long)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="trackd-reliability-") as tmp:
        figures_file = Path(tmp) / "figures.json"
        env = dict(os.environ, TRACKD_RELIABILITY_FIGURES=str(figures_file))
        cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-rxXs"]
        if args.long:
            cmd.append("--long")
        cmd += args.pytest_args
        t0 = time.monotonic()
        status = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        elapsed = time.monotonic() - t0
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    figures["mode"] = "long" if args.long else "ci"
    figures["wall time s"] = round(elapsed)
    figures["pytest exit status"] = status
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in figures)
        print(f"\ntrackd reliability figures ({' '.join(cmd[2:])})")
        for k in sorted(figures):
            v = figures[k]
            shown = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v
            print(f"  {k:<{width}}  {shown}")
    return status


if __name__ == "__main__":
    sys.exit(main())
