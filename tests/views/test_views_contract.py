"""The views contract: what every backend's apply() and reader must do.

:class:`ViewsContract` holds the tests; each backend subclasses it and implements
:meth:`ViewsContract.open_backend`. A PostgreSQL backend gets the same tests by adding one
subclass.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from views_helpers import CID, OTHER_CID, Events, appended, dump

from trackd.errors import NotFoundError
from trackd.eventlog.events import (
    ContainerCreated,
    ContainerDeleted,
    ContainerFinished,
    Event,
    LoggedEvent,
    ParamsSet,
    PropertiesSet,
)
from trackd.views import ChunkPolicy, Points, SequenceRow, SQLiteReader, SQLiteViews
from trackd.views.base import ViewReader, ViewStore


@dataclass(frozen=True, slots=True, kw_only=True)
class FutureEvent(Event):
    """An event type this build's views do not know (like the coming ``vc.*`` events)."""

    TYPE: ClassVar[str] = "vc.commit"

    container: str = "c1"


@dataclass
class Harness:
    """A store and a reader of the same views, plus an event builder."""

    store: ViewStore
    reader: ViewReader
    events: Events = field(default_factory=Events)

    def apply(self, *evs: Event) -> list[LoggedEvent]:
        """Apply events, in one call, at the next log offsets."""
        les = self.events.log(*evs)
        self.store.apply(les)
        return les

    def seq(self, container: str, name: str, context: dict[str, Any] | None = None) -> SequenceRow:
        """The sequence, which must exist."""
        s = self.reader.sequence(container, name, context or {})
        assert s is not None
        return s

    def points(self, container: str, name: str, context: dict[str, Any] | None = None) -> Points:
        """All points of the sequence."""
        return self.reader.points(self.seq(container, name, context).id)

    def close(self) -> None:
        """Close both."""
        self.reader.close()
        self.store.close()


def created(h: str = "c1", at: float = 10.0) -> ContainerCreated:
    """A ContainerCreated of a run."""
    return ContainerCreated(container=h, created_at=at)


class ViewsContract(ABC):
    """Tests every views backend must pass."""

    @abstractmethod
    def open_backend(self, tmp_path: Path) -> tuple[ViewStore, ViewReader]:
        """A fresh, empty store and a reader of it."""

    @pytest.fixture
    def h(self, tmp_path: Path) -> Iterator[Harness]:
        """A harness over fresh views."""
        store, reader = self.open_backend(tmp_path)
        harness = Harness(store, reader)
        yield harness
        harness.close()

    # -- containers ------------------------------------------------------------------------

    def test_empty_views(self, h: Harness) -> None:
        """Fresh views have checkpoint 0 and no rows."""
        assert h.store.checkpoint == 0
        assert h.reader.checkpoint == 0
        assert h.reader.containers() == []
        assert h.reader.sequences() == []
        assert h.store.client_marks() == {}

    def test_container_created(self, h: Harness) -> None:
        """ContainerCreated inserts an active container with its type and creation time."""
        h.apply(ContainerCreated(container="c1", container_type="run", created_at=12.5))
        c = h.reader.container("c1")
        assert c is not None
        assert (c.hash, c.type, c.created_at, c.state, c.ended_at) == (
            "c1",
            "run",
            12.5,
            "active",
            None,
        )
        assert (c.name, c.experiment, c.description, c.archived, c.tags, c.params) == (
            None,
            None,
            None,
            False,
            (),
            {},
        )
        assert c.active
        assert h.reader.container("nope") is None

    def test_created_again_reactivates_and_keeps_data(self, h: Harness) -> None:
        """A second ContainerCreated reactivates a finished container and keeps its data."""
        h.apply(
            created("c1", 1.0),
            ParamsSet(container="c1", path=("lr",), value=0.1),
            PropertiesSet(container="c1", props={"name": "first"}),
            ContainerFinished(container="c1", ended_at=5.0),
        )
        assert h.reader.container("c1").state == "finished"  # type: ignore[union-attr]
        h.apply(ContainerCreated(container="c1", created_at=99.0, container_type="other"))
        c = h.reader.container("c1")
        assert c is not None
        assert (c.state, c.ended_at, c.created_at, c.type) == ("active", None, 1.0, "run")
        assert (c.name, c.params) == ("first", {"lr": 0.1})

    def test_containers_listed_oldest_first(self, h: Harness) -> None:
        """containers() orders by creation time, then hash."""
        h.apply(created("b", 2.0), created("a", 3.0), created("c", 2.0))
        assert [c.hash for c in h.reader.containers()] == ["b", "c", "a"]

    def test_params_set_nested_creates_intermediate_dicts(self, h: Harness) -> None:
        """ParamsSet sets a nested path, creating (or replacing non-dict) intermediates."""
        h.apply(
            created(),
            ParamsSet(container="c1", path=("hp", "opt", "lr"), value=0.01),
            ParamsSet(container="c1", path=("hp", "bs"), value=32),
            ParamsSet(container="c1", path=("x",), value=1),
            ParamsSet(container="c1", path=("x", "y"), value=[1, {"z": None}]),
        )
        assert h.reader.container("c1").params == {  # type: ignore[union-attr]
            "hp": {"opt": {"lr": 0.01}, "bs": 32},
            "x": {"y": [1, {"z": None}]},
        }

    def test_params_delete(self, h: Harness) -> None:
        """ParamsSet with delete removes the key; deleting a missing path does nothing."""
        h.apply(
            created(),
            ParamsSet(container="c1", path=(), value={"a": {"b": 1, "c": 2}, "d": 3}),
            ParamsSet(container="c1", path=("a", "b"), delete=True),
            ParamsSet(container="c1", path=("nope", "deeper"), delete=True),
            ParamsSet(container="c1", path=("d", "x"), delete=True),
        )
        assert h.reader.container("c1").params == {"a": {"c": 2}, "d": 3}  # type: ignore[union-attr]

    def test_params_root_path(self, h: Harness) -> None:
        """path () replaces the whole dict with a dict, ignores a non-dict, clears on delete."""
        h.apply(created(), ParamsSet(container="c1", path=("a",), value=1))
        h.apply(ParamsSet(container="c1", path=(), value={"b": 2}))
        assert h.reader.container("c1").params == {"b": 2}  # type: ignore[union-attr]
        h.apply(ParamsSet(container="c1", path=(), value=[1, 2]))
        assert h.reader.container("c1").params == {"b": 2}  # type: ignore[union-attr]
        h.apply(ParamsSet(container="c1", path=(), delete=True))
        assert h.reader.container("c1").params == {}  # type: ignore[union-attr]

    def test_params_values_json_cannot_hold(self, h: Harness) -> None:
        """Non-finite floats become null and bytes base64 text, so params stay valid JSON."""
        h.apply(
            created(),
            ParamsSet(container="c1", path=("a",), value=[math.nan, math.inf, 1.5]),
            ParamsSet(container="c1", path=("b",), value=b"\x00\xff"),
        )
        assert h.reader.container("c1").params == {"a": [None, None, 1.5], "b": "AP8="}  # type: ignore[union-attr]

    def test_properties_set(self, h: Harness) -> None:
        """PropertiesSet updates known props, ignores unknown keys and values of a bad type."""
        h.apply(
            created(),
            PropertiesSet(
                container="c1",
                props={
                    "name": "run-1",
                    "experiment": "exp",
                    "description": "d",
                    "archived": True,
                    "tags": ["a", "b"],
                    "color": "red",
                },
            ),
            PropertiesSet(
                container="c1", props={"name": 5, "tags": "notalist", "description": None}
            ),
        )
        c = h.reader.container("c1")
        assert c is not None
        assert (c.name, c.experiment, c.description, c.archived, c.tags) == (
            "run-1",
            "exp",
            None,
            True,
            ("a", "b"),
        )

    def test_container_finished(self, h: Harness) -> None:
        """ContainerFinished marks the container finished with its end time."""
        h.apply(created(), ContainerFinished(container="c1", ended_at=7.5))
        c = h.reader.container("c1")
        assert c is not None
        assert (c.state, c.ended_at, c.active) == ("finished", 7.5, False)

    def test_odd_field_types_are_tolerated(self, h: Harness) -> None:
        """Times and types of the wrong type are stored as NULL / default, never raising."""
        h.apply(
            ContainerCreated(container="c1", created_at="yesterday", container_type=3),  # type: ignore[arg-type]
            ContainerFinished(container="c1", ended_at=[1]),  # type: ignore[arg-type]
            PropertiesSet(container="c1", props=[1, 2]),  # type: ignore[arg-type]
        )
        c = h.reader.container("c1")
        assert c is not None
        assert (c.type, c.created_at, c.ended_at, c.state) == ("run", None, None, "finished")

    def test_container_deleted(self, h: Harness) -> None:
        """ContainerDeleted removes the container, its sequences and their points."""
        h.apply(
            created("c1"),
            created("c2"),
            appended("c1", "loss", [1, 2], [0.5, 0.4]),
            appended("c2", "loss", [1], [9.0]),
        )
        h.apply(ContainerDeleted(container="c1"))
        assert h.reader.container("c1") is None
        assert [s.container for s in h.reader.sequences()] == ["c2"]
        assert h.reader.sequence("c1", "loss", {}) is None

    def test_delete_and_recreate_in_one_apply(self, h: Harness) -> None:
        """Points buffered before a delete in the same apply are dropped; later ones stay."""
        h.apply(
            created("c1"),
            appended("c1", "loss", [1, 2], [1.0, 2.0]),
            ContainerDeleted(container="c1"),
            created("c1", 20.0),
            appended("c1", "loss", [5], [5.0]),
        )
        assert h.points("c1", "loss").steps.tolist() == [5]
        assert h.reader.container("c1").created_at == 20.0  # type: ignore[union-attr]

    def test_events_for_missing_container_are_ignored(self, h: Harness) -> None:
        """Events about a container that does not exist change nothing but the checkpoint."""
        les = h.apply(
            ParamsSet(container="ghost", path=("a",), value=1),
            PropertiesSet(container="ghost", props={"name": "x"}),
            appended("ghost", "loss", [1], [1.0]),
            ContainerFinished(container="ghost"),
            ContainerDeleted(container="ghost"),
        )
        assert h.reader.containers() == []
        assert h.reader.sequences() == []
        assert h.store.checkpoint == les[-1].end

    # -- checkpoint and client marks ---------------------------------------------------------

    def test_checkpoint_is_end_of_last_event(self, h: Harness) -> None:
        """apply() moves the checkpoint to the end of the last applied record."""
        les = h.apply(created(), appended("c1", "m", [0], [1.0]))
        assert h.store.checkpoint == les[-1].end
        assert h.reader.checkpoint == les[-1].end

    def test_reapply_is_noop(self, h: Harness) -> None:
        """Re-applying events at or before the checkpoint changes nothing."""
        les = h.events.log(
            created(),
            ParamsSet(container="c1", path=("n",), value=1),
            appended("c1", "m", [0, 1], [1.0, 2.0]),
        )
        h.store.apply(les)
        before = dump(h.reader, h.store)
        h.store.apply(les)
        h.store.apply(les[1:])
        assert dump(h.reader, h.store) == before

    def test_partial_reapply_applies_only_new_events(self, h: Harness) -> None:
        """Of a list overlapping the checkpoint, only the events past it are applied."""
        les = h.events.log(
            created(),
            appended("c1", "m", [0], [1.0]),
            appended("c1", "m", [0], [7.0]),
        )
        h.store.apply(les[:2])
        h.store.apply(les)  # the first two are skipped: m@0 is 7.0, not re-overwritten
        assert h.points("c1", "m").values.tolist() == [7.0]
        assert h.store.checkpoint == les[-1].end

    def test_unknown_event_type_advances_checkpoint(self, h: Harness) -> None:
        """An event type the views do not know is ignored but advances the checkpoint."""
        h.apply(created())
        before = dump(h.reader)
        les = h.apply(FutureEvent(container="c1"))
        after = dump(h.reader)
        assert h.store.checkpoint == les[-1].end
        assert after.pop("checkpoint") == les[-1].end
        before.pop("checkpoint")
        assert after == before

    def test_client_marks(self, h: Harness) -> None:
        """client_marks() holds the highest client_seq per client over all applied events."""
        h.store.apply(
            h.events.log(
                ContainerCreated(container="c1", client_id=CID, client_seq=3),
                ParamsSet(container="ghost", path=("a",), value=1, client_id=CID, client_seq=9),
                FutureEvent(client_id=OTHER_CID, client_seq=4),
                ContainerFinished(container="c1", client_id=CID, client_seq=5),
            )
        )
        assert h.store.client_marks() == {CID: 9, OTHER_CID: 4}
        h.store.apply(
            h.events.log(ContainerCreated(container="c2", client_id=OTHER_CID, client_seq=2))
        )
        assert h.store.client_marks() == {CID: 9, OTHER_CID: 4}

    # -- sequences -------------------------------------------------------------------------

    def test_sequence_created_on_first_append(self, h: Harness) -> None:
        """The first batch creates the sequence with its summary columns."""
        h.apply(
            created(),
            appended("c1", "loss", [0, 1, 2], [3.0, 2.0, 1.0], context={"subset": "train"}),
        )
        s = h.seq("c1", "loss", {"subset": "train"})
        assert (s.container, s.name, s.context, s.value_dtype) == (
            "c1",
            "loss",
            {"subset": "train"},
            "<f8",
        )
        assert (s.first_step, s.last_step, s.count, s.last_value) == (0, 2, 3, 1.0)
        p = h.reader.points(s.id)
        assert p.steps.dtype == np.int64
        assert p.steps.tolist() == [0, 1, 2]
        assert p.values.tolist() == [3.0, 2.0, 1.0]
        assert p.timestamps is None
        assert p.axis == {}
        assert len(p) == 3

    def test_context_identity_is_canonical(self, h: Harness) -> None:
        """Contexts equal as dicts name one sequence, whatever their key order."""
        h.apply(
            created(),
            appended("c1", "m", [0], [1.0], context={"a": 1, "b": {"y": 2, "x": 1}}),
            appended("c1", "m", [1], [2.0], context={"b": {"x": 1, "y": 2}, "a": 1}),
            appended("c1", "m", [2], [3.0], context={}),
        )
        assert len(h.reader.sequences("c1")) == 2
        assert h.points("c1", "m", {"b": {"y": 2, "x": 1}, "a": 1}).steps.tolist() == [0, 1]

    def test_sequences_filter_and_order(self, h: Harness) -> None:
        """sequences(container) filters; the order is container, name, canonical context JSON."""
        h.apply(
            created("c2"),
            created("c1"),
            appended("c2", "b", [0], [1.0]),
            appended("c1", "b", [0], [1.0]),
            appended("c1", "a", [0], [1.0], context={"s": "z"}),
            appended("c1", "a", [0], [1.0]),
        )
        assert [(s.container, s.name, s.context) for s in h.reader.sequences()] == [
            ("c1", "a", {"s": "z"}),  # '{"s":"z"}' < '{}' as canonical JSON text
            ("c1", "a", {}),
            ("c1", "b", {}),
            ("c2", "b", {}),
        ]
        assert [s.name for s in h.reader.sequences("c2")] == ["b"]

    def test_empty_batch_creates_empty_sequence(self, h: Harness) -> None:
        """A batch of no points creates the sequence with count 0 and no steps."""
        h.apply(created(), appended("c1", "m", [], [], dtype="<f8"))
        s = h.seq("c1", "m")
        assert (s.count, s.first_step, s.last_step, s.last_value) == (0, None, None, None)
        assert len(h.reader.points(s.id)) == 0

    def test_appends_in_order(self, h: Harness) -> None:
        """Batches after the last step extend the sequence, within one apply and across."""
        h.apply(
            created(),
            appended("c1", "m", [0, 1], [0.0, 1.0]),
            appended("c1", "m", [2, 3], [2.0, 3.0]),
        )
        h.apply(appended("c1", "m", [10], [10.0]))
        p = h.points("c1", "m")
        assert p.steps.tolist() == [0, 1, 2, 3, 10]
        assert p.values.tolist() == [0.0, 1.0, 2.0, 3.0, 10.0]
        s = h.seq("c1", "m")
        assert (s.count, s.last_step, s.last_value) == (5, 10, 10.0)

    def test_duplicate_steps_within_batch_last_wins(self, h: Harness) -> None:
        """Within one batch, the last point of a repeated step wins."""
        h.apply(created(), appended("c1", "m", [1, 2, 1, 3, 2], [1.0, 2.0, 10.0, 3.0, 20.0]))
        p = h.points("c1", "m")
        assert p.steps.tolist() == [1, 2, 3]
        assert p.values.tolist() == [10.0, 20.0, 3.0]
        assert h.seq("c1", "m").count == 3

    def test_overwrite_within_one_apply(self, h: Harness) -> None:
        """Across batches of one apply, the later batch's value wins."""
        h.apply(
            created(),
            appended("c1", "m", [1, 2, 3], [1.0, 2.0, 3.0]),
            appended("c1", "m", [2, 4], [20.0, 4.0]),
            appended("c1", "m", [3], [30.0]),
        )
        p = h.points("c1", "m")
        assert p.steps.tolist() == [1, 2, 3, 4]
        assert p.values.tolist() == [1.0, 20.0, 30.0, 4.0]

    def test_overwrite_across_applies(self, h: Harness) -> None:
        """A later apply's value for an existing step replaces the stored one."""
        h.apply(created(), appended("c1", "m", [1, 2, 3], [1.0, 2.0, 3.0]))
        h.apply(appended("c1", "m", [2], [20.0]))
        h.apply(appended("c1", "m", [3, 4], [30.0, 40.0]))
        p = h.points("c1", "m")
        assert p.steps.tolist() == [1, 2, 3, 4]
        assert p.values.tolist() == [1.0, 20.0, 30.0, 40.0]
        s = h.seq("c1", "m")
        assert (s.count, s.last_value) == (4, 40.0)

    def test_backwards_steps(self, h: Harness) -> None:
        """Steps before the first one, and in gaps, are merged in step order."""
        h.apply(created(), appended("c1", "m", [10, 20, 30], [1.0, 2.0, 3.0]))
        h.apply(appended("c1", "m", [5, 15, 25], [0.5, 1.5, 2.5]))
        h.apply(appended("c1", "m", [0], [0.0]))
        p = h.points("c1", "m")
        assert p.steps.tolist() == [0, 5, 10, 15, 20, 25, 30]
        assert p.values.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        s = h.seq("c1", "m")
        assert (s.first_step, s.last_step, s.count, s.last_value) == (0, 30, 7, 3.0)

    def test_overwrite_of_last_step_updates_last_value(self, h: Harness) -> None:
        """Overwriting the largest step changes last_value; an earlier step does not."""
        h.apply(created(), appended("c1", "m", [1, 2], [1.0, 2.0]))
        h.apply(appended("c1", "m", [2], [5.0]))
        assert h.seq("c1", "m").last_value == 5.0
        h.apply(appended("c1", "m", [1], [9.0]))
        assert h.seq("c1", "m").last_value == 5.0

    def test_overlapping_ranges_over_many_chunks(self, h: Harness) -> None:
        """A batch spanning many stored chunks overwrites exactly its steps."""
        h.apply(created())
        expected: dict[int, float] = {}
        rng = np.random.default_rng(7)
        for _ in range(30):
            start = int(rng.integers(0, 2000))
            steps = list(range(start, start + 100))
            h.apply(appended("c1", "m", steps, [float(s) for s in steps]))
            expected.update({s: float(s) for s in steps})
        over = sorted({int(x) for x in rng.integers(0, 2200, 300)})
        h.apply(appended("c1", "m", over, [-1.0] * len(over)))
        expected.update(dict.fromkeys(over, -1.0))
        p = h.points("c1", "m")
        assert p.steps.tolist() == sorted(expected)
        assert p.values.tolist() == [expected[s] for s in sorted(expected)]

    def test_negative_and_huge_steps(self, h: Harness) -> None:
        """Any int64 step works, including negative ones and the extremes."""
        lo, hi = -(2**63), 2**63 - 1
        h.apply(created(), appended("c1", "m", [0, hi, lo, -5], [1.0, 2.0, 3.0, 4.0]))
        assert h.points("c1", "m").steps.tolist() == [lo, -5, 0, hi]

    # -- dtypes ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("dtype", "values"),
        [
            ("<f8", [1.5, -2.25]),
            ("<f4", [1.5, -2.25]),
            ("<i8", [2**62, -3]),
            ("|b1", [True, False]),
            ("msgpack", ["a", {"k": [1, 2]}]),
        ],
    )
    def test_each_dtype_round_trips(self, h: Harness, dtype: str, values: list[Any]) -> None:
        """Values of every value dtype come back with that dtype and value."""
        h.apply(created(), appended("c1", "m", [0, 1], values, dtype=dtype))
        s = h.seq("c1", "m")
        p = h.reader.points(s.id)
        assert s.value_dtype == dtype
        assert p.values.dtype == (np.dtype(object) if dtype == "msgpack" else np.dtype(dtype))
        assert p.values.tolist() == values
        assert s.last_value == values[-1]
        assert type(s.last_value) is type(values[-1])

    def test_nan_last_value(self, h: Harness) -> None:
        """A NaN last value reads back as NaN (not None)."""
        h.apply(created(), appended("c1", "m", [0], [math.nan]))
        assert math.isnan(h.seq("c1", "m").last_value)

    def test_int_into_float_sequence_is_cast(self, h: Harness) -> None:
        """Ints appended to a float sequence become floats."""
        h.apply(created(), appended("c1", "m", [0], [0.5]))
        h.apply(appended("c1", "m", [1], [2]))
        p = h.points("c1", "m")
        assert h.seq("c1", "m").value_dtype == "<f8"
        assert p.values.dtype == np.float64
        assert p.values.tolist() == [0.5, 2.0]

    def test_float_into_int_sequence_converts_it(self, h: Harness) -> None:
        """A float batch turns an int sequence (stored and new points) into floats."""
        h.apply(created(), appended("c1", "m", [0, 1], [1, 2]))
        h.apply(appended("c1", "m", [2], [2.5]))
        s = h.seq("c1", "m")
        p = h.reader.points(s.id)
        assert (s.value_dtype, p.values.dtype) == ("<f8", np.dtype("<f8"))
        assert p.values.tolist() == [1.0, 2.0, 2.5]
        assert s.last_value == 2.5

    def test_bool_and_f4_promotion(self, h: Harness) -> None:
        """bool + f4 gives f4; f4 + int gives f8."""
        h.apply(
            created(),
            appended("c1", "m", [0], [True]),
            appended("c1", "m", [1], [0.5], dtype="<f4"),
        )
        s = h.seq("c1", "m")
        assert (s.value_dtype, h.reader.points(s.id).values.tolist()) == ("<f4", [1.0, 0.5])
        h.apply(appended("c1", "m", [2], [3]))
        s = h.seq("c1", "m")
        assert (s.value_dtype, h.reader.points(s.id).values.tolist()) == ("<f8", [1.0, 0.5, 3.0])

    def test_numbers_and_objects_mix_into_objects(self, h: Harness) -> None:
        """An object batch turns a numeric sequence into objects, keeping the numbers."""
        h.apply(created(), appended("c1", "m", [0, 1], [1, 2]))
        h.apply(appended("c1", "m", [1, 2], ["two", None], dtype="msgpack"))
        h.apply(appended("c1", "m", [3], [4]))
        s = h.seq("c1", "m")
        p = h.reader.points(s.id)
        assert (s.value_dtype, p.values.dtype) == ("msgpack", np.dtype(object))
        assert p.values.tolist() == [1, "two", None, 4]
        assert s.last_value == 4

    def test_object_conversion_goes_through_the_numeric_dtype(self, h: Harness) -> None:
        """Ints that a float batch promoted stay floats when objects arrive, in one apply too."""
        h.apply(
            created(),
            appended("c1", "m", [0], [1]),
            appended("c1", "m", [1], [1.5]),
            appended("c1", "m", [2], ["x"], dtype="msgpack"),
        )
        values = h.points("c1", "m").values.tolist()
        assert values == [1.0, 1.5, "x"]
        assert type(values[0]) is float

    def test_stored_numbers_go_through_the_numeric_dtype(self, h: Harness) -> None:
        """Stored ints promoted by a float batch become float objects in the same apply."""
        h.apply(created(), appended("c1", "m", [0], [1]))
        h.apply(appended("c1", "m", [1], [1.5]), appended("c1", "m", [2], ["x"], dtype="msgpack"))
        values = h.points("c1", "m").values.tolist()
        assert values == [1.0, 1.5, "x"]
        assert type(values[0]) is float

    # -- timestamps and axis ---------------------------------------------------------------

    def test_timestamps_and_axis(self, h: Harness) -> None:
        """Timestamps and axis columns come back per point, NaN where a batch had none."""
        h.apply(
            created(),
            appended(
                "c1", "m", [0, 1], [1.0, 2.0], timestamps=[100.0, 101.0], axis={"epoch": [0.0, 0.0]}
            ),
            appended("c1", "m", [2], [3.0]),
        )
        h.apply(appended("c1", "m", [3], [4.0], axis={"epoch": [1.0], "lr": [0.1]}))
        p = h.points("c1", "m")
        assert p.timestamps is not None
        assert p.timestamps[:2].tolist() == [100.0, 101.0]
        assert np.isnan(p.timestamps[2:]).all()
        assert sorted(p.axis) == ["epoch", "lr"]
        assert p.axis["epoch"][[0, 1, 3]].tolist() == [0.0, 0.0, 1.0]
        assert np.isnan(p.axis["epoch"][2])
        assert np.isnan(p.axis["lr"][:3]).all()
        assert p.axis["lr"][3] == 0.1

    def test_overwritten_timestamps_disappear(self, h: Harness) -> None:
        """When every point with a timestamp is overwritten by one without, timestamps is None."""
        h.apply(created(), appended("c1", "m", [0], [1.0], timestamps=[5.0]))
        h.apply(appended("c1", "m", [0], [2.0]))
        assert h.points("c1", "m").timestamps is None

    # -- reads -----------------------------------------------------------------------------

    def test_points_of_unknown_sequence_raise_not_found(self, h: Harness) -> None:
        """points() of an id that does not exist raises NotFoundError."""
        with pytest.raises(NotFoundError, match="no sequence with id 12345"):
            h.reader.points(12345)

    def test_reader_sees_each_commit(self, h: Harness) -> None:
        """A reader opened before a write sees the committed result of each apply."""
        h.apply(created())
        assert h.reader.sequences() == []
        h.apply(appended("c1", "m", [0], [1.0]))
        assert h.points("c1", "m").values.tolist() == [1.0]

    # -- transactions ----------------------------------------------------------------------

    def test_transaction_of_several_adds_commits_like_one_apply(self, h: Harness) -> None:
        """Events added over several calls commit together: nothing shows before, all of
        it after, as one apply of the same events would give."""
        les = h.events.log(
            created(),
            appended("c1", "m", [0, 1], [1.0, 2.0]),
            ParamsSet(container="c1", path=("lr",), value=0.1),
            appended("c1", "m", [1, 2], [5, 6], dtype="<i8"),
            ContainerDeleted(container="c1"),
            created(at=11.0),
            appended("c1", "m", [7], [7.0]),
        )
        txn = h.store.begin()
        for part in (les[:2], les[2:4], les[4:]):
            txn.add(part)
            assert h.reader.containers() == []
            assert h.reader.checkpoint == 0
        txn.commit()
        assert h.store.checkpoint == h.reader.checkpoint == les[-1].end
        assert h.points("c1", "m").steps.tolist() == [7]
        assert h.points("c1", "m").values.tolist() == [7.0]
        assert h.reader.container("c1").params == {}  # type: ignore[union-attr]
        assert h.reader.container("c1").created_at == 11.0  # type: ignore[union-attr]

    def test_transaction_skips_what_it_or_the_views_hold_already(self, h: Harness) -> None:
        """An add overlapping what was committed or added before applies only the rest."""
        les = h.events.log(created(), *(appended("c1", "m", [i], [float(i)]) for i in range(4)))
        h.store.apply(les[:2])
        txn = h.store.begin()
        txn.add(les[:3])
        txn.add(les[2:])
        txn.commit()
        assert h.points("c1", "m").values.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert h.store.checkpoint == les[-1].end

    def test_rolled_back_transaction_leaves_the_views_as_they_were(self, h: Harness) -> None:
        les = h.events.log(created(), appended("c1", "m", [0], [1.0]))
        h.store.apply(les[:1])
        txn = h.store.begin()
        txn.add(les[1:])
        txn.rollback()
        txn.rollback()  # idempotent
        assert h.reader.sequences() == []
        assert h.store.checkpoint == les[0].end
        h.store.apply(les)  # and the same events apply afterwards
        assert h.points("c1", "m").values.tolist() == [1.0]

    def test_failing_before_commit_rolls_the_transaction_back(self, h: Harness) -> None:
        les = h.events.log(created(), appended("c1", "m", [0], [1.0]))
        txn = h.store.begin()
        txn.add(les)

        def refuse() -> None:
            raise OSError("the log's fdatasync failed")

        with pytest.raises(OSError, match="fdatasync failed"):
            txn.commit(before_commit=refuse)
        assert h.reader.containers() == []
        assert h.store.checkpoint == 0
        h.store.apply(les)
        assert h.points("c1", "m").values.tolist() == [1.0]

    def test_empty_transaction_commits_nothing(self, h: Harness) -> None:
        called: list[bool] = []
        txn = h.store.begin()
        txn.add([])
        txn.commit(before_commit=lambda: called.append(True))
        assert h.store.checkpoint == 0
        assert h.reader.containers() == []


def _sqlite_backend(tmp_path: Path, policy: ChunkPolicy) -> tuple[ViewStore, ViewReader]:
    path = tmp_path / "views.db"
    store = SQLiteViews.open(path, policy=policy)
    return store, SQLiteReader(path)


class TestSQLiteViews(ViewsContract):
    """The contract against SQLite with the default chunk sizes."""

    def open_backend(self, tmp_path: Path) -> tuple[ViewStore, ViewReader]:
        """SQLite writer plus a separate read-only reader connection."""
        return _sqlite_backend(tmp_path, ChunkPolicy())


class TestSQLiteViewsTinyChunks(ViewsContract):
    """The contract against SQLite with tiny chunks, so every path splits and merges chunks."""

    def open_backend(self, tmp_path: Path) -> tuple[ViewStore, ViewReader]:
        """SQLite with chunks of at most 4 points, topped up below 3, flushed every 8."""
        return _sqlite_backend(tmp_path, ChunkPolicy(max_points=4, top_up_below=3, flush_points=8))


class _BufferingSQLiteViews(SQLiteViews):
    """SQLite views that use the default transaction of ViewStore, as a backend that only
    implements apply() would."""

    def apply(
        self, events: Sequence[LoggedEvent], *, before_commit: Callable[[], None] | None = None
    ) -> None:
        txn = SQLiteViews.begin(self)
        txn.add(events)
        txn.commit(before_commit)

    def begin(self) -> Any:
        return ViewStore.begin(self)


class TestDefaultTransaction(ViewsContract):
    """The contract through ViewStore's default transaction, which applies at commit."""

    def open_backend(self, tmp_path: Path) -> tuple[ViewStore, ViewReader]:
        path = tmp_path / "views.db"
        return _BufferingSQLiteViews.open(path), SQLiteReader(path)
