"""The buffer's two point forms (packed float rows, tuples keeping other values) and how the
flusher turns mixed drains into events (no socket)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from sdk_support import offline_run

from trackd.errors import InvalidValueError
from trackd.eventlog.events import ContainerCreated, SequenceAppended, decode_event
from trackd.sdk import client as client_mod
from trackd.sdk._values import INT64_MAX
from trackd.sdk.client import Client


def _drain(client: Client) -> list[Any]:
    return [decode_event(x[1]) if isinstance(x, tuple) else x for x in client._drain_buffer()]


def _series(events: list[Any]) -> dict[str, tuple[list[int], list[Any], str]]:
    out: dict[str, tuple[list[int], list[Any], str]] = {}
    for ev in events:
        if isinstance(ev, SequenceAppended):
            steps, values, dtype = out.setdefault(ev.name, ([], [], ev.value_dtype))
            steps.extend(ev.steps_array().tolist())
            values.extend(ev.values_array().tolist())
            assert dtype == ev.value_dtype
    return out


@pytest.mark.parametrize("value", [1.0, 1, np.float32(1.0)])
@pytest.mark.parametrize("step", [INT64_MAX + 1, 1 << 70, np.uint64(INT64_MAX) + np.uint64(1)])
def test_step_beyond_int64_is_refused_and_nothing_buffered(
    client: Client, value: Any, step: Any
) -> None:
    """A step that does not fit the log's int64 raises at track(), whatever the value."""
    run = offline_run(client)
    with pytest.raises(InvalidValueError, match="largest step"):
        run.track(value, "m", step=step)
    assert not client.buf
    run.track(value, "m", step=INT64_MAX)
    assert _series(_drain(client))["m"][0] == [INT64_MAX]


def test_float_points_are_packed_rows_and_others_keep_their_value(client: Client) -> None:
    """The hot path buffers floats as 32-byte rows; ints, bools, numpy scalars as tuples."""
    run = offline_run(client)
    run.track(0.5, "f", 3)
    run.track(7, "i")
    run.track(np.float32(0.25), "f32", 1)
    row, ints, f32 = client.buf
    assert isinstance(row, bytes)
    assert len(row) == 32
    assert isinstance(ints, tuple)
    assert ints[2] == 7
    assert ints[0] < 0
    assert isinstance(f32, tuple)
    assert type(f32[2]) is np.float32


def test_mixed_drain_keeps_order_dtypes_and_values(client: Client) -> None:
    """Floats, ints, bools, float32 and control items in one drain: each sequence keeps its
    points in order with the dtype numpy infers from its values; events keep their place."""
    run = offline_run(client)
    for i in range(5):
        run.track(float(i), "floats")
        run.track(i, "ints", step=10 + i)
        run.track(i % 2 == 0, "bools")
        run.track(np.float32(i) / 2, "f32")
        run.track(i if i % 2 else i + 0.5, "mixed")
        if i == 2:
            client._control_item("event", ContainerCreated(container="r1"))
    events = _drain(client)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ContainerCreated") == 5  # after the five sequences of i <= 2
    assert [e.client_seq for e in events] == list(range(1, len(events) + 1))
    s = _series(events)
    assert s["floats"] == ([0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, 4.0], "<f8")
    assert s["ints"] == ([10, 11, 12, 13, 14], [0, 1, 2, 3, 4], "<i8")
    assert s["bools"] == ([0, 1, 2, 3, 4], [True, False, True, False, True], "|b1")
    assert s["f32"] == ([0, 1, 2, 3, 4], [0.0, 0.5, 1.0, 1.5, 2.0], "<f4")
    assert s["mixed"] == ([0, 1, 2, 3, 4], [0.5, 1.0, 2.5, 3.0, 4.5], "<f8")


@pytest.mark.parametrize(
    "before",
    [
        [],
        [1.5],
        [1.5, 2.5, 3.5],
        [1.5, 7, 2.5],  # a point keeping its value object: not the packed-rows shape
        [1.5, "event", 2.5],  # a control item before the last one
    ],
)
def test_a_drain_ending_in_a_request_keeps_it_behind_every_point(
    client: Client, before: list[Any]
) -> None:
    """A flush queues its barrier behind the points tracked before it: whatever precedes
    it, the drain returns the events in order with the request last, nothing dropped."""
    run = offline_run(client)
    for i, v in enumerate(before):
        if v == "event":
            client._control_item("event", ContainerCreated(container="r1"))
        else:
            run.track(v, "m", step=i)
    marker = object()
    client._control_item("req", marker)
    out = client._drain_buffer()
    assert out[-1] is marker
    assert not client.buf
    events = [decode_event(x[1]) for x in out[:-1]]
    points = [(i, v) for i, v in enumerate(before) if v != "event"]
    if points:
        steps, values, _dtype = _series(events)["m"]
        assert list(zip(steps, values, strict=True)) == points
    else:
        assert events == []
    assert ("ContainerCreated" in [type(e).__name__ for e in events]) == ("event" in before)


def test_many_sequences_in_one_drain_each_keep_their_order(client: Client) -> None:
    """More sequences than the flusher groups by masks: grouped by sorting, same result."""
    run = offline_run(client)
    n_seq = client_mod._GROUP_BY_MASK_MAX * 3
    for i in range(50):
        for k in range(n_seq):
            run.track(float(i * 1000 + k), f"m{k}")
    s = _series(_drain(client))
    assert len(s) == n_seq
    for k in range(n_seq):
        steps, values, _dtype = s[f"m{k}"]
        assert steps == list(range(50))
        assert values == [float(i * 1000 + k) for i in range(50)]


def test_auto_steps_continue_across_packed_and_tuple_points(client: Client) -> None:
    """Auto steps count per sequence whatever form its points were buffered in."""
    run = offline_run(client)
    run.track(1.0, "m")
    run.track(2, "m")
    run.track(3.0, "m", step=10)
    run.track(4, "m")
    steps, values, dtype = _series(_drain(client))["m"]
    assert steps == [0, 1, 10, 11]
    assert values == [1.0, 2.0, 3.0, 4.0]
    assert dtype == "<f8"


def test_a_reused_context_dict_changed_in_place_names_another_sequence(client: Client) -> None:
    """The last context is recognised by identity *and* content: changing the dict in place
    (even deep inside) moves the next points to the sequence of the new content."""
    run = offline_run(client)
    ctx: dict[str, Any] = {"subset": "train", "tags": ["a"]}
    other = {"subset": "val"}
    run.track(1.0, "m", 0, ctx)
    run.track(2.0, "m", 0, other)
    run.track(3.0, "m", 1, ctx)
    ctx["tags"].append("b")
    run.track(4.0, "m", 2, ctx)
    ctx["subset"] = "val"
    ctx["tags"] = ["a"]
    run.track(5.0, "m", 3, ctx)
    del ctx["tags"]
    run.track(6.0, "m", 4, ctx)
    run.track(7.0, "m", 5)
    by_ctx: dict[str, list[tuple[int, float]]] = {}
    for ev in _drain(client):
        key = repr(sorted(ev.context.items()))
        pairs = zip(ev.steps_array().tolist(), ev.values_array().tolist(), strict=True)
        by_ctx.setdefault(key, []).extend(pairs)
    assert by_ctx == {
        "[('subset', 'train'), ('tags', ['a'])]": [(0, 1.0), (1, 3.0)],
        "[('subset', 'val')]": [(0, 2.0), (4, 6.0)],
        "[('subset', 'train'), ('tags', ['a', 'b'])]": [(2, 4.0)],
        "[('subset', 'val'), ('tags', ['a'])]": [(3, 5.0)],
        "[]": [(5, 7.0)],
    }


def test_numpy_float64_values_take_the_packed_path(client: Client) -> None:
    """numpy.float64 (a float subclass, what np.mean returns) is buffered as a float."""
    run = offline_run(client)
    run.track(np.float64(0.5), "m", 0)
    run.track(np.mean([1.0, 2.0]), "m", 1)
    assert all(isinstance(item, bytes) for item in client.buf)
    assert _series(_drain(client))["m"] == ([0, 1], [0.5, 1.5], "<f8")


def test_contexts_recognised_by_equality_keep_numbers_apart(client: Client) -> None:
    """Dicts built afresh per call are recognised by content only when their values are
    text; 1, 1.0 and True stay three contexts however the calls interleave, and a mapping
    that is not a dict is still refused."""
    run = offline_run(client)
    run._ctx_lookup = client.contexts.lookup
    for i in range(3):
        run.track(float(i), "m", i, {"subset": "train"})
        run.track(float(i), "m", i, {"v": 1})
        run.track(float(i), "m", i, {"v": 1.0})
        run.track(float(i), "m", i, {"v": True})
        run.track(float(i), "m", i, {"subset": "train", "fold": None})
    counts: dict[str, int] = {}
    for ev in _drain(client):
        key = repr(sorted((k, (type(v).__name__, v)) for k, v in ev.context.items()))
        counts[key] = counts.get(key, 0) + ev.count
    assert sorted(counts.values()) == [3, 3, 3, 3, 3]
    with pytest.raises(InvalidValueError, match="context must be a dict"):
        run.track(1.0, "m", 9, MappingProxyType({"subset": "train"}))  # type: ignore[arg-type]
