"""Pure pieces of the views: dtype lattice, merges, chunk encoding, JSON forms, record decoding."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from views_helpers import CID

from trackd.eventlog.events import ContainerCreated, encode_event
from trackd.eventlog.log import Record
from trackd.views import UndecodableRecord, decode_record
from trackd.views import _canon as canon
from trackd.views import _points as pts

DTYPES = ["|b1", "<i8", "<f4", "<f8", "msgpack"]
dtypes = st.sampled_from(DTYPES)


@given(dtypes, dtypes, dtypes)
def test_join_is_a_lattice(a: str, b: str, c: str) -> None:
    """join_dtype is commutative, associative and idempotent, so grouping never matters."""
    assert pts.join_dtype(a, b) == pts.join_dtype(b, a)
    assert pts.join_dtype(pts.join_dtype(a, b), c) == pts.join_dtype(a, pts.join_dtype(b, c))
    assert pts.join_dtype(a, a) == a
    assert pts.join_dtype(None, a) == a


def test_join_table() -> None:
    """The documented promotions: ints into floats, bool into numbers, anything into objects."""
    assert pts.join_dtype("<f8", "<i8") == "<f8"
    assert pts.join_dtype("<i8", "|b1") == "<i8"
    assert pts.join_dtype("<f4", "|b1") == "<f4"
    assert pts.join_dtype("<f4", "<i8") == "<f8"
    assert pts.join_dtype("<f4", "<f8") == "<f8"
    assert pts.join_dtype("<i8", "msgpack") == "msgpack"


@given(dtypes, dtypes, dtypes, st.lists(st.integers(-1000, 1000), max_size=5))
def test_conversion_along_the_lattice_composes(a: str, b: str, c: str, ints: list[int]) -> None:
    """Converting a -> join -> join gives what converting at once (via the last number) gives."""
    src = np.array(ints, dtype=object if a == "msgpack" else a)
    ab = pts.join_dtype(a, b)
    abc = pts.join_dtype(ab, c)
    via = ab if ab != "msgpack" else a
    step = pts.convert_values(pts.convert_values(src, a, ab), ab, abc, via)
    once = pts.convert_values(src, a, abc, via if abc == "msgpack" and ab != "msgpack" else None)
    assert [(type(x), x) for x in step.tolist()] == [(type(x), x) for x in once.tolist()]


@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(allow_nan=False)), max_size=20))
def test_last_wins_keeps_newest_per_step(points: list[tuple[int, float]]) -> None:
    """last_wins sorts by step and keeps the last value given for each step."""
    expected = dict(points)
    cols = pts.Cols(
        np.array([p[0] for p in points], dtype="<i8"), np.array([p[1] for p in points], "<f8")
    )
    out = pts.last_wins(cols)
    assert out.steps.tolist() == sorted(expected)
    assert out.values.tolist() == [expected[s] for s in sorted(expected)]


def test_chunk_round_trip_with_missing_columns() -> None:
    """A chunk decodes to what was encoded; all-NaN timestamps/axis columns are dropped."""
    cols = pts.Cols(
        np.array([1, 2, 3], "<i8"),
        pts.values_array(["a", [1], None], "msgpack"),
        np.array([math.nan, 2.0, math.nan]),
        {"epoch": np.array([0.0, 1.0, 2.0]), "gone": np.full(3, math.nan)},
    )
    c = pts.encode_chunk(cols, "msgpack")
    assert (c.first_step, c.last_step, c.n) == (1, 3, 3)
    other = pts.encode_chunk(
        pts.Cols(np.array([4], "<i8"), pts.values_array([1.5], "msgpack")), "msgpack"
    )
    assert other.timestamps is None
    assert other.axis is None
    rows: list[Any] = [
        (c.n, bytes(c.steps), bytes(c.vals), bytes(c.timestamps or b""), c.axis),
        (other.n, bytes(other.steps), bytes(other.vals), None, None),
    ]
    out = pts.decode_chunks(rows, "msgpack")
    assert out.steps.tolist() == [1, 2, 3, 4]
    assert out.values.tolist() == ["a", [1], None, 1.5]
    assert out.timestamps is not None
    assert np.isnan(out.timestamps[[0, 2, 3]]).all()
    assert out.timestamps[1] == 2.0
    assert sorted(out.axis) == ["epoch"]
    assert out.axis["epoch"][:3].tolist() == [0.0, 1.0, 2.0]
    assert np.isnan(out.axis["epoch"][3])


def test_chunks_of_a_training_loop_are_compact() -> None:
    """Consecutive steps cost a few bytes per chunk, a loop's timestamps about one byte per
    point, values eight: ~9 bytes per point where packed columns took 24."""
    n = 8192
    t = 1.7e9 + np.cumsum(np.full(n, 2e-6))
    t[1000::1000] += 0.05  # the SDK sends every 50 ms
    c = pts.encode_chunk(pts.Cols(np.arange(100, 100 + n), np.linspace(1, 0, n), t), "<f8")
    assert len(c.steps) <= 21
    assert len(c.timestamps or b"") <= 1.1 * n
    assert len(c.vals) == 8 * n
    rows: list[Any] = [(c.n, c.steps, bytes(c.vals), c.timestamps, c.axis)]
    out = pts.decode_chunks(rows, "<f8")
    assert out.steps.tolist() == list(range(100, 100 + n))
    assert out.timestamps is not None
    assert np.array_equal(out.timestamps, t)


def test_objects_keep_lists_as_elements() -> None:
    """Object values that are equal-length lists stay one element each (no 2-D broadcast)."""
    arr = pts.values_array([[1, 2], [3, 4]], "msgpack")
    assert arr.shape == (2,)
    assert arr.tolist() == [[1, 2], [3, 4]]


def test_canonical_context() -> None:
    """Context JSON is sorted and compact; unsupported values are made JSON-safe."""
    assert canon.canonical_context({"b": 1, "a": {"y": 2, "x": 1}}) == '{"a":{"x":1,"y":2},"b":1}'
    assert canon.canonical_context({b"k": math.inf, "n": "é"}) == '{"k":null,"n":"é"}'
    assert canon.canonical_context(None) == "{}"


def test_json_safe() -> None:
    """json_safe maps bytes, non-finite floats, odd keys and unknown objects to JSON types."""
    value = {"b": b"\x00", 1: (1, math.nan), "ext": msgpack.ExtType(1, b"x")}
    assert canon.json_safe(value) == {
        "b": "AA==",
        "1": [1, None],
        "ext": [1, "eA=="],  # ExtType is a namedtuple: a list of code and data
    }


def test_apply_params_paths() -> None:
    """apply_params sets, deletes and replaces at a path, tolerating odd paths."""
    p: dict[str, Any] = {}
    p = canon.apply_params(p, ("a", "b"), 1, False)
    assert p == {"a": {"b": 1}}
    p = canon.apply_params(p, ("a", "b", "c"), 2, False)
    assert p == {"a": {"b": {"c": 2}}}
    p = canon.apply_params(p, ("a", "x", "y"), None, True)
    assert p == {"a": {"b": {"c": 2}}}
    p = canon.apply_params(p, ("a", "b"), None, True)
    assert p == {"a": {}}
    assert canon.apply_params(p, (), 5, False) == {"a": {}}
    assert canon.apply_params(p, 7, {"z": 1}, False) == {"z": 1}


def test_coerce_properties_drops_bad_values() -> None:
    """Only known properties with values of an acceptable type are kept."""
    got = canon.coerce_properties(
        {"name": "n", "experiment": 3, "archived": 1, "tags": ["a", 1], "x": "y", b"name": "b"}
    )
    assert got == {"name": "n", "archived": True}
    assert canon.coerce_properties({"tags": ["a"]}) == {"tags": '["a"]'}
    assert canon.coerce_properties("nope") == {}


def test_decode_record_of_known_event() -> None:
    """A record of a known event decodes to that event, with the record's offsets."""
    payload = encode_event(ContainerCreated(container="c1").with_envelope(CID, 3, 1.0))
    le = decode_record(Record(24, 100, payload))
    assert (le.offset, le.end) == (24, 100)
    assert isinstance(le.event, ContainerCreated)


def test_decode_record_of_unknown_event_keeps_envelope() -> None:
    """An unknown event type becomes an UndecodableRecord carrying its client id and seq."""
    payload = msgpack.packb(["vc.branch", 1, CID, 12, 0.0, {}], use_bin_type=True)
    le = decode_record(Record(0, 50, payload))
    assert isinstance(le.event, UndecodableRecord)
    assert (le.event.client_id, le.event.client_seq) == (CID, 12)
    assert "vc.branch" in le.event.reason


def test_decode_record_of_garbage() -> None:
    """Bytes that are no event at all give an UndecodableRecord without identity."""
    for payload in (
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb(["params.set", 1, CID, 1, 0.0, {"path": 5}]),
    ):
        le = decode_record(Record(0, 10, payload))
        assert isinstance(le.event, UndecodableRecord)
