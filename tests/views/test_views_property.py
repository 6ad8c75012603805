"""Property: live projection in random slices == rebuild from the log == a naive model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from views_helpers import CID, OTHER_CID, Model, appended, check_chunks, dump

from trackd.eventlog.events import (
    ContainerCreated,
    ContainerDeleted,
    ContainerFinished,
    Event,
    ParamsSet,
    PropertiesSet,
    encode_event,
)
from trackd.eventlog.log import EventLog
from trackd.views import ChunkPolicy, SQLiteViews, decode_record, rebuild

HASHES = ["c0", "c1"]
CONTEXTS: list[dict[str, Any]] = [{}, {"subset": "train"}, {"subset": "val", "k": 1}]
DTYPES = ["<f8", "<f4", "<i8", "|b1", "msgpack"]
POLICIES = [
    ChunkPolicy(max_points=3, top_up_below=2, flush_points=5),
    ChunkPolicy(max_points=4, top_up_below=0, flush_points=6),  # never merges neighbours
    ChunkPolicy(max_points=5, top_up_below=4, flush_points=1000),
    ChunkPolicy(),
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=6,
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "<f8": st.floats(),
    "<f4": st.floats(width=32),
    "<i8": st.integers(-(2**63), 2**63 - 1),
    "|b1": st.booleans(),
    "msgpack": st.one_of(
        json_scalars, st.floats(), st.binary(max_size=3), st.lists(st.integers(0, 3), max_size=2)
    ),
}
maybe_nan = st.one_of(st.floats(0, 100), st.just(math.nan))


@st.composite
def sequence_events(draw: st.DrawFn) -> Event:
    """A batch with random steps (overlaps and duplicates likely), dtype, times and axis."""
    n = draw(st.integers(1, 8) | st.just(0))
    dtype = draw(st.sampled_from(DTYPES))
    axis_names = draw(st.lists(st.sampled_from(["epoch", "x"]), unique=True, max_size=2))
    return appended(
        draw(st.sampled_from(HASHES)),
        draw(st.sampled_from(["loss", "acc"])),
        draw(st.lists(st.integers(-3, 25), min_size=n, max_size=n)),
        draw(st.lists(VALUES[dtype], min_size=n, max_size=n)),
        dtype=dtype,
        context=draw(st.sampled_from(CONTEXTS)),
        timestamps=draw(st.none() | st.lists(maybe_nan, min_size=n, max_size=n)),
        axis={k: draw(st.lists(maybe_nan, min_size=n, max_size=n)) for k in axis_names} or None,
    )


hashes = st.sampled_from(HASHES)
props = st.dictionaries(
    st.sampled_from(["name", "experiment", "description", "archived", "tags", "color"]),
    st.one_of(
        st.none(), st.text(max_size=3), st.booleans(), st.lists(st.text(max_size=2), max_size=2)
    ),
    max_size=3,
)
creations = st.builds(ContainerCreated, container=hashes, created_at=st.floats(0, 1e9))
others: list[st.SearchStrategy[Event | bytes]] = [
    creations,
    st.builds(ContainerFinished, container=hashes, ended_at=st.floats(0, 1e9)),
    st.builds(ContainerDeleted, container=hashes),
    st.builds(
        ParamsSet,
        container=hashes,
        path=st.lists(st.sampled_from("abc"), max_size=3).map(tuple),
        value=json_values,
        delete=st.booleans(),
    ),
    st.builds(PropertiesSet, container=hashes, props=props),
    st.just(b"unknown"),
]
# Half of the events are point batches: they are what the chunk code has to get right.
# (one_of would merge repeated equal strategies, so weight by drawing an index.)
events: st.SearchStrategy[Event | bytes] = st.integers(0, 2 * len(others) - 1).flatmap(
    lambda i: others[i] if i < len(others) else sequence_events()
)


def payload(item: Event | bytes, client: bytes, seq: int) -> bytes:
    """The log record of a generated item; b"unknown" stands for a newer build's event."""
    if isinstance(item, bytes):
        raw: bytes = msgpack.packb(["vc.commit", 1, client, seq, 0.0, {"x": 1}], use_bin_type=True)
        return raw
    return encode_event(item.with_envelope(client, seq, 0.0))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=st.tuples(
        st.lists(creations, min_size=1, max_size=2), st.lists(events, min_size=8, max_size=40)
    ).map(lambda t: [*t[0], *t[1]]),
    clients=st.lists(st.sampled_from([CID, OTHER_CID]), min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    reapply=st.booleans(),
    adds_per_commit=st.integers(1, 4),
    policy=st.sampled_from(POLICIES),
)
def test_live_equals_rebuild_equals_model(
    items: list[Event | bytes],
    clients: list[bytes],
    cuts: list[int],
    reapply: bool,
    adds_per_commit: int,
    policy: ChunkPolicy,
) -> None:
    """Random event streams give the same views live (in slices, added to transactions
    that commit every few slices, as the daemon does), rebuilt, and in the model."""
    seqs = {CID: 0, OTHER_CID: 0}
    payloads = []
    for i, item in enumerate(items):
        client = clients[i % len(clients)]
        seqs[client] += 1
        payloads.append(payload(item, client, seqs[client]))
    with tempfile.TemporaryDirectory() as d:
        dot = Path(d)
        log = EventLog.open(dot / "log")
        live = rb = None
        try:
            if payloads:
                log.append(payloads)
                log.sync()
            records = list(log.read())
            live = SQLiteViews.open(dot / "live.db", policy=policy)
            pos = k = 0
            txn = None
            while pos < len(records):
                n = cuts[k % len(cuts)]
                k += 1
                txn = txn or live.begin()
                txn.add([decode_record(r) for r in records[pos : pos + n]])
                if reapply:  # overlapping a slice already added must change nothing
                    txn.add([decode_record(r) for r in records[max(0, pos - 2) : pos + n]])
                pos += n
                if k % adds_per_commit == 0:
                    txn.commit()
                    txn = None
                    if reapply:  # nor one already committed
                        live.apply([decode_record(r) for r in records[max(0, pos - 2) : pos]])
            if txn is not None:
                txn.commit()
            rebuild(dot, log, policy=policy)
            rb = SQLiteViews.open(dot / "views.db", policy=policy)
            model = Model()
            for r in records:
                model.apply(decode_record(r))
            expected = model.dump()
            assert dump(live, live) == expected
            assert dump(rb, rb) == expected
            check_chunks(dot / "live.db", policy.max_points)
            check_chunks(dot / "views.db", policy.max_points)
        finally:
            for v in (live, rb):
                if v is not None:
                    v.close()
            log.close()
