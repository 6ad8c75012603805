"""Helpers for the views tests: event builders, a canonical dump, a chunk checker, a model.

The model (:class:`Model`) is a deliberately naive pure-Python fold of the events, one point
per dict entry, used as the oracle in the property test.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from trackd.eventlog.columns import decode_i64
from trackd.eventlog.events import (
    ContainerCreated,
    ContainerDeleted,
    ContainerFinished,
    Event,
    LoggedEvent,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
)
from trackd.views import ViewReader, ViewStore

CID = b"\x01" * 16
OTHER_CID = b"\x02" * 16
NUMERIC = ("|b1", "<i8", "<f4", "<f8")


class Events:
    """Builds LoggedEvents with consecutive offsets and client sequence numbers."""

    def __init__(self, record_size: int = 100) -> None:
        self.offset = 24
        self.size = record_size
        self.seq = 0

    def log(self, *events: Event) -> list[LoggedEvent]:
        """Give each event the next offset and (unless set) the next client_seq."""
        out = []
        for ev in events:
            if ev.client_seq == 0:
                self.seq += 1
                ev = ev.with_envelope(CID, self.seq, 0.0)
            out.append(LoggedEvent(self.offset, self.offset + self.size, ev))
            self.offset += self.size
        return out


def appended(
    container: str,
    name: str,
    steps: Sequence[int],
    values: Sequence[Any],
    *,
    dtype: str | None = None,
    context: dict[str, Any] | None = None,
    timestamps: Sequence[float] | None = None,
    axis: dict[str, Sequence[float]] | None = None,
) -> SequenceAppended:
    """A SequenceAppended batch; ``dtype`` forces the value dtype (else chosen from values)."""
    ctx = {} if context is None else context
    if dtype is None:
        return SequenceAppended.from_arrays(
            container=container,
            name=name,
            context=ctx,
            steps=np.asarray(steps, dtype="<i8"),
            values=list(values),
            timestamps=None if timestamps is None else np.asarray(timestamps, dtype="<f8"),
            axis=None if axis is None else {k: np.asarray(v, "<f8") for k, v in axis.items()},
        )
    if dtype == "msgpack":
        vbytes = msgpack.packb(list(values), use_bin_type=True)
    else:
        vbytes = np.asarray(values, dtype=dtype).tobytes()
    return SequenceAppended(
        container=container,
        name=name,
        context=ctx,
        steps=np.asarray(steps, dtype="<i8").tobytes(),
        values=vbytes,
        value_dtype=dtype,
        timestamps=None if timestamps is None else np.asarray(timestamps, "<f8").tobytes(),
        axis=None if axis is None else {k: np.asarray(v, "<f8").tobytes() for k, v in axis.items()},
    )


# -- canonical dump ------------------------------------------------------------------------


def canon(v: Any) -> Any:
    """A comparable form of a value that keeps its type (True != 1 != 1.0) and NaN == NaN."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return None
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, float):
        return ("f", "nan" if math.isnan(v) else v)
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, bytes):
        return ("y", v)
    if isinstance(v, (list, tuple)):
        return ("l", tuple(canon(x) for x in v))
    if isinstance(v, dict):
        return ("d", tuple(sorted((repr(k), canon(x)) for k, x in v.items())))
    return ("o", repr(v))


def _float_list(a: Iterable[float]) -> list[Any]:
    return [canon(float(x)) for x in a]


def dump(reader: ViewReader, store: ViewStore | None = None) -> dict[str, Any]:
    """Everything a reader can see, in a canonical form; also checks the summary columns."""
    out: dict[str, Any] = {"checkpoint": reader.checkpoint, "containers": {}, "sequences": {}}
    for c in reader.containers():
        out["containers"][c.hash] = {
            "type": c.type,
            "name": c.name,
            "experiment": c.experiment,
            "description": c.description,
            "archived": c.archived,
            "tags": list(c.tags),
            "created_at": c.created_at,
            "ended_at": c.ended_at,
            "state": c.state,
            "params": canon(c.params),
        }
    for s in reader.sequences():
        p = reader.points(s.id)
        steps = p.steps.tolist()
        values = [canon(v) for v in p.values.tolist()]
        assert steps == sorted(set(steps)), "steps must be strictly increasing"
        assert s.count == len(steps)
        if steps:
            assert (s.first_step, s.last_step) == (steps[0], steps[-1])
            assert canon(s.last_value) == values[-1]
        else:
            assert (s.first_step, s.last_step) == (None, None)
        key = (s.container, s.name, json.dumps(s.context, sort_keys=True))
        found = reader.sequence(s.container, s.name, s.context)
        assert found is not None
        assert found.id == s.id
        out["sequences"][key] = {
            "dtype": s.value_dtype,
            "steps": steps,
            "values": values,
            "timestamps": None if p.timestamps is None else _float_list(p.timestamps),
            "axis": {k: _float_list(v) for k, v in sorted(p.axis.items())},
        }
    if store is not None:
        out["marks"] = store.client_marks()
    return out


def check_chunks(path: Path, max_points: int) -> None:
    """Assert the chunk invariants of a SQLite views file: sorted, disjoint, summaries right."""
    conn = sqlite3.connect(path)
    try:
        seqs = conn.execute("SELECT id, count, chunk_count FROM sequences").fetchall()
        for sid, count, chunk_count in seqs:
            rows = conn.execute(
                "SELECT first_step, last_step, n, steps FROM sequence_chunks "
                "WHERE sequence_id = ? ORDER BY first_step",
                (sid,),
            ).fetchall()
            assert len(rows) == chunk_count
            assert sum(r[2] for r in rows) == count
            prev_last = None
            for first, last, n, blob in rows:
                steps = decode_i64(blob)
                assert 0 < n == len(steps) <= max_points
                assert (first, last) == (steps[0], steps[-1])
                assert np.all(np.diff(steps) > 0)
                assert prev_last is None or prev_last < first
                prev_last = last
        orphans = conn.execute(
            "SELECT count(*) FROM sequence_chunks "
            "WHERE sequence_id NOT IN (SELECT id FROM sequences)"
        ).fetchone()[0]
        assert orphans == 0
    finally:
        conn.close()


# -- the model -----------------------------------------------------------------------------


def _join(a: str | None, b: str) -> str:
    if a is None or a == b:
        return b
    if "msgpack" in (a, b):
        return "msgpack"
    if {a, b} == {"|b1", "<i8"}:
        return "<i8"
    if {a, b} == {"|b1", "<f4"}:
        return "<f4"
    return "<f8"


def _cast(v: Any, dtype: str) -> Any:
    if dtype == "|b1":
        return bool(v)
    if dtype == "<i8":
        return int(v)
    if dtype == "<f4":
        return float(np.float32(v))
    return float(v)


class Model:
    """The expected views, computed the simplest way: dicts of points per sequence."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.seqs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.marks: dict[bytes, int] = {}
        self.checkpoint = 0

    def apply(self, le: LoggedEvent) -> None:
        """Apply one logged event."""
        if le.end <= self.checkpoint:
            return
        self.checkpoint = le.end
        ev = le.event
        if ev.client_seq > 0:
            self.marks[ev.client_id] = max(self.marks.get(ev.client_id, 0), ev.client_seq)
        h: str = getattr(ev, "container", "")
        if type(ev) is ContainerCreated:
            if h in self.containers:
                self.containers[h].update(state="active", ended_at=None)
            else:
                self.containers[h] = {
                    "type": ev.container_type,
                    "name": None,
                    "experiment": None,
                    "description": None,
                    "archived": False,
                    "tags": [],
                    "created_at": ev.created_at,
                    "ended_at": None,
                    "state": "active",
                    "params": {},
                }
            return
        if h not in self.containers:
            return
        c = self.containers[h]
        if type(ev) is ParamsSet:
            c["params"] = _set_path(c["params"], list(ev.path), ev.value, ev.delete)
        elif type(ev) is PropertiesSet:
            # Values of a bad type are ignored, as documented for the views.
            for k, v in ev.props.items():
                if k in ("name", "experiment", "description") and (v is None or isinstance(v, str)):
                    c[k] = v
                elif k == "archived" and isinstance(v, (bool, int)):
                    c[k] = bool(v)
                elif k == "tags" and isinstance(v, list) and all(isinstance(t, str) for t in v):
                    c[k] = list(v)
        elif type(ev) is ContainerFinished:
            c.update(state="finished", ended_at=ev.ended_at)
        elif type(ev) is ContainerDeleted:
            del self.containers[h]
            for key in [k for k in self.seqs if k[0] == h]:
                del self.seqs[key]
        elif type(ev) is SequenceAppended:
            self._append(ev)

    def _append(self, ev: SequenceAppended) -> None:
        key = (ev.container, ev.name, json.dumps(dict(ev.context), sort_keys=True))
        s = self.seqs.setdefault(key, {"dtype": None, "points": {}})
        old, new = s["dtype"], _join(s["dtype"], ev.value_dtype)
        if old is not None and new != old and new != "msgpack":
            for step, (v, ts, ax) in s["points"].items():
                s["points"][step] = (_cast(v, new), ts, ax)
        s["dtype"] = new
        if ev.value_dtype == "msgpack":
            values = msgpack.unpackb(ev.values, raw=False, strict_map_key=False)
        else:
            values = np.frombuffer(ev.values, ev.value_dtype).tolist()
        steps = np.frombuffer(ev.steps, "<i8").tolist()
        ts = (
            np.frombuffer(ev.timestamps, "<f8").tolist()
            if ev.timestamps is not None
            else [math.nan] * len(steps)
        )
        axis = {k: np.frombuffer(v, "<f8").tolist() for k, v in (ev.axis or {}).items()}
        for i, step in enumerate(steps):
            v = values[i]
            if new != "msgpack":
                v = _cast(v, new)
            s["points"][step] = (v, ts[i], {k: a[i] for k, a in axis.items()})

    def dump(self) -> dict[str, Any]:
        """The same shape as :func:`dump` of a reader."""
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "containers": {
                h: {**c, "params": canon(c["params"])} for h, c in self.containers.items()
            },
            "sequences": {},
            "marks": self.marks,
        }
        for key, s in self.seqs.items():
            steps = sorted(s["points"])
            pts = [s["points"][st] for st in steps]
            ts = [p[1] for p in pts]
            names = sorted({k for p in pts for k, x in p[2].items() if not math.isnan(x)})
            out["sequences"][key] = {
                "dtype": s["dtype"],
                "steps": steps,
                "values": [canon(p[0]) for p in pts],
                "timestamps": None if all(math.isnan(t) for t in ts) else _float_list(ts),
                "axis": {k: _float_list(p[2].get(k, math.nan) for p in pts) for k in names},
            }
        return out


def _set_path(params: dict[str, Any], path: list[str], value: Any, delete: bool) -> Any:
    if not path:
        if delete:
            return {}
        return copy.deepcopy(value) if isinstance(value, dict) else params
    node = params
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            if delete:
                return params
            node[k] = {}
        node = node[k]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)
    return params
