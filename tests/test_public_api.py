"""The public facade: exactly the names that exist, and an import that stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import trackd

PUBLIC = ["Container", "Metric", "Repo", "Run", "Sequence"]


def test_all_is_pinned_and_sorted() -> None:
    """``trackd.__all__`` lists exactly the public names, sorted."""
    assert trackd.__all__ == PUBLIC
    assert sorted(trackd.__all__) == trackd.__all__


def test_every_public_name_resolves_to_a_documented_class() -> None:
    """Each name in ``__all__`` is importable from ``trackd`` and has a docstring."""
    for name in trackd.__all__:
        obj = getattr(trackd, name)
        assert isinstance(obj, type), name
        assert obj.__doc__, name
        assert obj.__name__ == name
    assert issubclass(trackd.Run, trackd.Container)
    assert issubclass(trackd.Metric, trackd.Sequence)


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A name outside the facade raises AttributeError, not something stranger."""
    with pytest.raises(AttributeError, match="Nope"):
        trackd.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_light_and_never_loads_the_daemon_stack() -> None:
    """``import trackd`` (and touching every public name) loads no daemon, uvloop, aiosqlite
    or watchfiles; the bare import loads neither numpy nor sqlite3."""
    code = """
import json, sys
import trackd
bare = sorted(m for m in ("numpy", "sqlite3", "msgpack") if m in sys.modules)
for name in trackd.__all__:
    getattr(trackd, name)
heavy = sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("uvloop", "aiosqlite", "watchfiles") or m.startswith("trackd.daemon")
)
print(json.dumps({"bare": bare, "heavy": heavy}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out) == {"bare": [], "heavy": []}
