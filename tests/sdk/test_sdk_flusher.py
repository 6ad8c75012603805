"""The flusher's pure part: how buffered points become columnar events (no socket)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sdk_support import offline_run

from trackd.eventlog.events import (
    ContainerCreated,
    Event,
    ParamsSet,
    SequenceAppended,
    decode_event,
)
from trackd.sdk import client as client_mod
from trackd.sdk.client import Client


def _drain(client: Client) -> list[Any]:
    out = client._drain_buffer()
    return [decode_event(x[1]) if isinstance(x, tuple) else x for x in out]


def _points(events: list[Any]) -> dict[tuple[str, str], list[tuple[int, Any]]]:
    pts: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    for ev in events:
        if isinstance(ev, SequenceAppended):
            key = (ev.name, str(sorted(ev.context.items())))
            pairs = zip(ev.steps_array().tolist(), ev.values_array().tolist(), strict=True)
            pts.setdefault(key, []).extend(pairs)
    return pts


def test_auto_steps_count_per_sequence(client: Client) -> None:
    """Auto steps number each (name, context) on its own, across drains."""
    run = offline_run(client)
    for i in range(3):
        run.track(float(i), "loss")
        run.track(float(i), "loss", context={"s": "val"})
        run.track(float(i), "acc")
    first = _points(_drain(client))
    run.track(9.0, "loss")
    second = _points(_drain(client))
    assert first[("loss", "[]")] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert first[("loss", "[('s', 'val')]")] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert first[("acc", "[]")] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert second[("loss", "[]")] == [(3, 9.0)]


def test_explicit_steps_move_the_auto_step(client: Client) -> None:
    """After an explicit step, an auto step continues after the largest step seen."""
    run = offline_run(client)
    run.track(1.0, "m", step=5)
    run.track(2.0, "m")
    run.track(3.0, "m", step=2)
    run.track(4.0, "m")
    assert _points(_drain(client))[("m", "[]")] == [(5, 1.0), (6, 2.0), (2, 3.0), (7, 4.0)]


def test_seqs_have_no_gaps_and_events_keep_their_place(client: Client) -> None:
    """client_seq runs 1, 2, 3 ... and a non-point event splits the points around it."""
    run = offline_run(client)
    client._control_item("event", ContainerCreated(container="r1"))
    run.track(1.0, "m")
    client._control_item("event", ParamsSet(container="r1", path=("p",), value=1))
    run.track(2.0, "m")
    events: list[Event] = _drain(client)
    assert [e.client_seq for e in events] == [1, 2, 3, 4]
    assert [type(e) for e in events] == [
        ContainerCreated,
        SequenceAppended,
        ParamsSet,
        SequenceAppended,
    ]
    assert all(e.client_id == client.client_id for e in events)
    run.track(3.0, "m")
    assert [e.client_seq for e in _drain(client)] == [5]


def test_value_dtypes_follow_the_values(client: Client) -> None:
    """Ints stay int64, bools bool, float32 stays float32, mixed int/float is float64."""
    run = offline_run(client)
    for i in range(3):
        run.track(i, "ints")
        run.track(i % 2 == 0, "bools")
        run.track(np.float32(i), "f32")
        run.track(i if i else 0.5, "mixed")
    dtypes = {e.name: e.value_dtype for e in _drain(client)}
    assert dtypes == {"ints": "<i8", "bools": "|b1", "f32": "<f4", "mixed": "<f8"}


def test_big_batches_split_into_bounded_events(client: Client) -> None:
    """More points than MAX_EVENT_POINTS of one sequence become several events, in order."""
    run = offline_run(client)
    n = client_mod.MAX_EVENT_POINTS * 2 + 10
    for i in range(n):
        run.track(float(i), "m")
    events = _drain(client)
    assert [e.count for e in events] == [client_mod.MAX_EVENT_POINTS] * 2 + [10]
    steps = np.concatenate([e.steps_array() for e in events])
    assert np.array_equal(steps, np.arange(n))


def test_timestamps_are_per_point(client: Client) -> None:
    """Every point carries the wall-clock time of its track() call."""
    run = offline_run(client)
    run.track(1.0, "m")
    run.track(2.0, "m")
    (ev,) = _drain(client)
    ts = ev.timestamps_array()
    assert ts is not None
    assert ts.shape == (2,)
    assert ts[0] <= ts[1]


def test_fresh_and_reused_context_dicts_share_a_sequence(client: Client) -> None:
    """A context built anew per call and a reused dict with equal content are one sequence;
    1, 1.0 and True stay different contexts."""
    run = offline_run(client)
    ctx = {"subset": "train"}
    run.track(1.0, "m", context=ctx)
    run.track(2.0, "m", context={"subset": "train"})
    run.track(3.0, "m", context={"v": 1})
    run.track(4.0, "m", context={"v": True})
    run.track(5.0, "m", context={"v": 1.0})
    pts = _points(_drain(client))
    assert pts[("m", "[('subset', 'train')]")] == [(0, 1.0), (1, 2.0)]
    contexts = sorted(repr(k[1]) for k in pts)
    assert len(contexts) == 4
