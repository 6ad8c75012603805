"""trackd: crash-safe experiment tracking and data versioning for machine learning.

The public names are imported on first use, so ``import trackd`` stays light (no numpy, no
SQLite, no threads) until a run or a repository is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trackd.sdk.container import Container
    from trackd.sdk.repo import Repo
    from trackd.sdk.run import Run
    from trackd.sdk.sequence import Metric, Sequence

__all__ = ["Container", "Metric", "Repo", "Run", "Sequence"]

_WHERE = {
    "Container": "trackd.sdk.container",
    "Metric": "trackd.sdk.sequence",
    "Repo": "trackd.sdk.repo",
    "Run": "trackd.sdk.run",
    "Sequence": "trackd.sdk.sequence",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trackd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
