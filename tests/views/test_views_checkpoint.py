"""The daemon's WAL checkpoint runs off the writer's commits, from a connection of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trackd.eventlog.events import ContainerCreated, LoggedEvent, SequenceAppended
from trackd.views import SQLiteViews, WalCheckpointer


def _batches(n: int) -> list[LoggedEvent]:
    out: list[LoggedEvent] = [LoggedEvent(0, 100, ContainerCreated(container="c"))]
    for i in range(n):
        ev = SequenceAppended.from_arrays(
            container="c",
            name="loss",
            context={},
            steps=np.arange(i * 1000, (i + 1) * 1000),
            values=np.random.default_rng(i).random(1000),
        )
        out.append(LoggedEvent(100 + i * 100, 200 + i * 100, ev))
    return out


def test_autocheckpoint_off_leaves_frames_for_the_checkpointer(tmp_path: Path) -> None:
    """With auto-checkpoint off the WAL keeps every frame until a WalCheckpointer copies them."""
    db = tmp_path / "views.db"
    views = SQLiteViews.open(db)
    views.set_autocheckpoint(0)
    for ev in _batches(200):  # ~3 MB of chunks: far past SQLite's default 1000-page threshold
        views.apply([ev])
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 4 << 20, "the writer must not have checkpointed by itself"
    ck = WalCheckpointer(db)
    frames, copied = ck.run()
    assert frames > 1000
    assert copied == frames, "an idle writer lets a passive checkpoint copy every frame"
    views.apply(_batches(201)[-1:])  # the writer restarts the WAL after a full checkpoint
    frames_after, _ = ck.run()
    assert frames_after < frames
    ck.close()
    assert views.points(views.sequences("c")[0].id).steps.size == 201_000
    views.close()
