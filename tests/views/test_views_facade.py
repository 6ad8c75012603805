"""The public names of trackd.views, pinned: changing them is an API change."""

from __future__ import annotations

import trackd.views


def test_views_facade_is_pinned() -> None:
    """trackd.views exports exactly these names, each defined."""
    expected = [
        "VIEWS_FILE",
        "ChunkPolicy",
        "ContainerRow",
        "LogRecord",
        "LogSource",
        "Points",
        "Progress",
        "RebuildRequiredError",
        "SQLiteReader",
        "SQLiteViews",
        "SequenceRow",
        "Transaction",
        "UndecodableRecord",
        "ViewReader",
        "ViewStore",
        "WalCheckpointer",
        "canonical_context",
        "catch_up",
        "decode_record",
        "open_reader",
        "open_views",
        "rebuild",
    ]
    assert trackd.views.__all__ == expected
    for name in expected:
        assert getattr(trackd.views, name) is not None
