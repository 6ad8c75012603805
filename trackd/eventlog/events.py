"""Typed events, each with a version, and the msgpack codec that upcasts old versions on read.

Owns: the event classes, the envelope (type, version, client id, client seq, client time),
the encoding of one event to the bytes of one log record, and upcaster registration.
Imports: ``trackd.errors``, msgpack, numpy. Pure functions; no I/O.

Encoding of one event (the payload of one log record)::

    msgpack array [type: str, version: int, client_id: bin(16), client_seq: int,
                   client_time: float, body: map]

The log assigns offsets; events do not carry them. Point batches are columnar. In memory
``steps`` is a packed little-endian int64 array, ``values`` a packed array of ``value_dtype``
(``<f8``, ``<i8``) or, for ``value_dtype == "msgpack"``, a msgpack array of arbitrary values.
Encoded (``sequence.appended`` version 2), ``steps``, ``timestamps`` and the ``axis`` columns
are compact columns of :mod:`trackd.eventlog.columns`: a training loop's steps take a few
bytes per batch and its timestamps one or two bytes per point instead of eight, which halves
what the log and the wire carry. Version 1 bodies (packed columns) are upcast on read.

Versioning events (tensor blobs, staging, commits, branches) will register their own
``type`` strings under the ``"vc."`` prefix; the codec and the views dispatch on ``TYPE``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np
import numpy.typing as npt

from trackd.errors import EventError, UnknownEventError
from trackd.eventlog.columns import (
    ColumnError,
    column_count,
    decode_f64,
    decode_i64,
    encode_f64,
    encode_i64,
    frame_raw,
)

__all__ = [
    "CLIENT_ID_BYTES",
    "ContainerCreated",
    "ContainerDeleted",
    "ContainerFinished",
    "Event",
    "LoggedEvent",
    "ParamsSet",
    "PropertiesSet",
    "SequenceAppended",
    "decode_event",
    "encode_event",
    "event_types",
    "is_text",
    "register_event_type",
    "register_upcaster",
]

CLIENT_ID_BYTES = 16
STEP_DTYPE = np.dtype("<i8")
TIME_DTYPE = np.dtype("<f8")
NUMERIC_VALUE_DTYPES = frozenset({"<f8", "<i8", "<f4", "|b1"})
OBJECT_VALUE_DTYPE = "msgpack"


def is_text(text: str) -> bool:
    """True when ``text`` can travel and be stored as a name: it encodes as UTF-8, so it
    holds no lone surrogate (``"\\ud800"``, or what ``os.fsdecode`` makes of bytes that are
    not UTF-8). msgpack and SQLite both refuse such a str."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. Subclasses set ``TYPE`` and ``VERSION`` and add body fields.

    Attributes:
        client_id: 16 random bytes naming the client (process connection) that made it.
        client_seq: Position of this event in its client's stream, from 1, without gaps.
            With ``client_id`` it makes the event's identity for exactly-once ingest.
        client_time: Wall-clock seconds when the client made the event.
    """

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    client_id: bytes = b"\0" * CLIENT_ID_BYTES
    client_seq: int = 0
    client_time: float = 0.0

    def body(self) -> dict[str, Any]:
        """Return the body fields as a msgpack-ready map (envelope fields excluded)."""
        return {name: getattr(self, name) for name in _body_fields(type(self))}

    def with_envelope(self: _E, client_id: bytes, client_seq: int, client_time: float) -> _E:
        """Return a copy with the envelope fields set."""
        return dataclasses.replace(
            self, client_id=client_id, client_seq=client_seq, client_time=client_time
        )


_E = TypeVar("_E", bound=Event)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event together with where the log stored it.

    Attributes:
        offset: Log offset of the record holding the event.
        end: Offset just past that record; a projection's checkpoint after applying it.
        event: The decoded (and upcast) event.
    """

    offset: int
    end: int
    event: Event


_ENVELOPE_FIELDS = frozenset({"client_id", "client_seq", "client_time"})


_BODY_FIELDS: dict[type, tuple[str, ...]] = {}


def _body_fields(cls: type[Event]) -> tuple[str, ...]:
    """The names of ``cls``'s body fields, in order (looked up once per class: encoding a
    small event is on the path of every flush)."""
    names = _BODY_FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _ENVELOPE_FIELDS)
        _BODY_FIELDS[cls] = names
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerCreated(Event):
    """A container (a run, for the Aim face) came into being.

    Attributes:
        container: The container hash (hex string chosen by the client).
        container_type: ``"run"`` for runs; other container types use their own name.
        created_at: Wall-clock creation time.
    """

    TYPE: ClassVar[str] = "container.created"

    container: str
    container_type: str = "run"
    created_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamsSet(Event):
    """A free-form param was set (``run["hparams"] = {...}``) or deleted.

    Attributes:
        container: The container hash.
        path: Key path into the nested params dict; ``()`` replaces the whole dict.
        value: Any msgpack-able value (dicts, lists, str, numbers, bool, None).
        delete: When true, the key at ``path`` is removed and ``value`` is ignored.
    """

    TYPE: ClassVar[str] = "params.set"

    container: str
    path: tuple[str, ...]
    value: Any = None
    delete: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertiesSet(Event):
    """Fixed properties of a container changed (name, description, experiment, archived, tags).

    Attributes:
        container: The container hash.
        props: Property name to new value; absent properties keep their value.
    """

    TYPE: ClassVar[str] = "properties.set"

    container: str
    props: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceAppended(Event):
    """A columnar batch of points appended to one sequence (metric).

    Attributes:
        container: The container hash.
        name: Sequence name, e.g. ``"loss"``.
        context: The sequence's context dict, e.g. ``{"subset": "train"}``.
        steps: Packed ``<i8`` steps, one per point.
        values: Packed values of ``value_dtype``, or a msgpack array when it is ``"msgpack"``.
        value_dtype: ``<f8``, ``<i8``, ``<f4``, ``|b1`` or ``"msgpack"``.
        timestamps: Optional packed ``<f8`` wall-clock time per point.
        axis: Optional extra axis (e.g. ``epoch``): name to packed ``<f8`` array, one per point.
    """

    TYPE: ClassVar[str] = "sequence.appended"
    VERSION: ClassVar[int] = 2

    container: str
    name: str
    context: Mapping[str, Any]
    steps: bytes
    values: bytes
    value_dtype: str = "<f8"
    timestamps: bytes | None = None
    axis: Mapping[str, bytes] | None = None

    def body(self) -> dict[str, Any]:
        """The body with ``steps``, ``timestamps`` and ``axis`` as compact columns."""
        out = Event.body(self)  # slots=True dataclasses break zero-argument super()
        out["steps"] = encode_i64(np.frombuffer(self.steps, dtype=STEP_DTYPE))
        if self.timestamps is not None:
            out["timestamps"] = encode_f64(np.frombuffer(self.timestamps, dtype=TIME_DTYPE))
        if self.axis is not None:
            out["axis"] = {
                k: encode_f64(np.frombuffer(v, dtype=TIME_DTYPE)) for k, v in self.axis.items()
            }
        return out

    @property
    def count(self) -> int:
        """Number of points in the batch."""
        return len(self.steps) // STEP_DTYPE.itemsize

    def steps_array(self) -> npt.NDArray[np.int64]:
        """The steps as a read-only int64 array (no copy)."""
        return np.frombuffer(self.steps, dtype=STEP_DTYPE)

    def values_array(self) -> npt.NDArray[Any]:
        """The values as an array: numeric dtypes without a copy, objects as dtype=object."""
        if self.value_dtype == OBJECT_VALUE_DTYPE:
            items = msgpack.unpackb(self.values, raw=False, strict_map_key=False)
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out
        return np.frombuffer(self.values, dtype=np.dtype(self.value_dtype))

    def timestamps_array(self) -> npt.NDArray[np.float64] | None:
        """Per-point timestamps, or None when the batch has none."""
        if self.timestamps is None:
            return None
        return np.frombuffer(self.timestamps, dtype=TIME_DTYPE)

    @classmethod
    def from_arrays(
        cls,
        *,
        container: str,
        name: str,
        context: Mapping[str, Any],
        steps: npt.ArrayLike,
        values: npt.ArrayLike | list[Any],
        timestamps: npt.ArrayLike | None = None,
        axis: Mapping[str, npt.ArrayLike] | None = None,
        **envelope: Any,
    ) -> SequenceAppended:
        """Pack arrays into a batch, choosing ``value_dtype`` from the values.

        Bools, ints and floats become packed arrays; anything else is msgpack-encoded.
        """
        steps_a = np.ascontiguousarray(steps, dtype=STEP_DTYPE)
        vals = np.asarray(values) if not isinstance(values, np.ndarray) else values
        if vals.dtype.kind == "f":
            vals = vals.astype("<f4" if vals.dtype.itemsize == 4 else "<f8", copy=False)
            dtype, vbytes = vals.dtype.str, np.ascontiguousarray(vals).tobytes()
        elif vals.dtype.kind in "iu":
            vals = vals.astype("<i8", copy=False)
            dtype, vbytes = "<i8", np.ascontiguousarray(vals).tobytes()
        elif vals.dtype.kind == "b":
            dtype, vbytes = "|b1", np.ascontiguousarray(vals).tobytes()
        else:
            seq = values.tolist() if isinstance(values, np.ndarray) else list(values)  # type: ignore[arg-type]
            dtype, vbytes = OBJECT_VALUE_DTYPE, msgpack.packb(seq, use_bin_type=True)
        ts = (
            None
            if timestamps is None
            else np.ascontiguousarray(timestamps, dtype=TIME_DTYPE).tobytes()
        )
        ax = (
            None
            if not axis
            else {k: np.ascontiguousarray(v, dtype=TIME_DTYPE).tobytes() for k, v in axis.items()}
        )
        return cls(
            container=container,
            name=name,
            context=dict(context),
            steps=steps_a.tobytes(),
            values=vbytes,
            value_dtype=dtype,
            timestamps=ts,
            axis=ax,
            **envelope,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerFinished(Event):
    """A container was closed by its writer (``run.close()``).

    Attributes:
        container: The container hash.
        ended_at: Wall-clock end time.
    """

    TYPE: ClassVar[str] = "container.finished"

    container: str
    ended_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerDeleted(Event):
    """A container and all its sequences were deleted.

    Attributes:
        container: The container hash.
    """

    TYPE: ClassVar[str] = "container.deleted"

    container: str


_TYPES: dict[str, type[Event]] = {
    c.TYPE: c
    for c in (
        ContainerCreated,
        ParamsSet,
        PropertiesSet,
        SequenceAppended,
        ContainerFinished,
        ContainerDeleted,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def event_types() -> Mapping[str, type[Event]]:
    """Every event type this build can decode, by ``TYPE``."""
    return dict(_TYPES)


def register_event_type(cls: type[Event]) -> type[Event]:
    """Register an event class with the codec (usable as a class decorator).

    Raises:
        EventError: when another class already uses the same ``TYPE``.
    """
    existing = _TYPES.get(cls.TYPE)
    if existing is not None and existing is not cls:
        raise EventError(f"event type {cls.TYPE!r} is already registered by {existing.__name__}")
    _TYPES[cls.TYPE] = cls
    return cls


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns a body of ``from_version`` into ``from_version + 1``.

    Decoding applies upcasters in a chain until the body reaches the class's ``VERSION``.
    """

    def deco(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return deco


def encode_event(event: Event) -> bytes:
    """Encode one event to the bytes of one log record.

    Raises:
        EventError: when the event's type is not registered or a field cannot be encoded.
    """
    if _TYPES.get(event.TYPE) is not type(event):
        raise EventError(f"event class {type(event).__name__} is not registered with the codec")
    try:
        payload: bytes = msgpack.packb(
            [
                event.TYPE,
                event.VERSION,
                event.client_id,
                event.client_seq,
                event.client_time,
                event.body(),
            ],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise EventError(f"cannot encode {event.TYPE} event: {e}") from e
    return payload


def decode_event(payload: bytes | memoryview) -> Event:
    """Decode one record payload, upcasting an older version to the current one.

    Raises:
        UnknownEventError: the type, or a version with no upcaster path, is unknown.
        EventError: the bytes are not a well-formed event.
    """
    try:
        obj = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated classes for bad bytes
        raise EventError(f"event payload is not valid msgpack: {e}") from e
    if not isinstance(obj, tuple) or len(obj) != 6:
        raise EventError("event payload must be a 6-element array [type, version, ...]")
    etype, version, client_id, client_seq, client_time, body = obj
    if not isinstance(etype, str):
        raise EventError(f"event type must be a string, got {type(etype).__name__}")
    cls = _TYPES.get(etype)
    if cls is None:
        raise UnknownEventError(f"unknown event type {etype!r}")
    if type(version) is not int or version < 1:
        raise EventError(f"{etype}: version must be a positive integer, got {version!r}")
    if not isinstance(client_id, bytes) or len(client_id) != CLIENT_ID_BYTES:
        raise EventError(f"{etype}: client_id must be {CLIENT_ID_BYTES} bytes")
    if type(client_seq) is not int or client_seq < 0:
        raise EventError(f"{etype}: client_seq must be a non-negative integer")
    if not isinstance(client_time, (int, float)):
        raise EventError(f"{etype}: client_time must be a number")
    if not isinstance(body, dict):
        raise EventError(f"{etype}: body must be a map")
    if version > cls.VERSION:
        raise UnknownEventError(
            f"{etype} version {version} is newer than this build reads ({cls.VERSION}); "
            "upgrade trackd"
        )
    while version < cls.VERSION:
        up = _UPCASTERS.get((etype, version))
        if up is None:
            raise UnknownEventError(f"no upcaster for {etype} from version {version}")
        body = up(dict(body))
        version += 1
    try:
        event = cls(
            client_id=client_id,
            client_seq=client_seq,
            client_time=float(client_time),
            **_thaw(cls, body),
        )
        _validate(event)
    except (TypeError, ValueError, AttributeError) as e:
        # Field checks above name the usual mistakes; anything else a hostile payload can
        # provoke is still an EventError, never a crash of whoever decodes it.
        if isinstance(e, EventError):
            raise
        raise EventError(f"{etype}: bad fields: {e}") from e
    return event


def _thaw(cls: type[Event], body: dict[str, Any]) -> dict[str, Any]:
    # msgpack decodes with use_list=False so arrays become tuples; turn maps' values back
    # into plain types where the dataclass expects dicts.
    out = dict(body)
    for key in ("context", "props", "axis"):
        if key in out and out[key] is not None:
            if not isinstance(out[key], dict):
                raise EventError(f"{cls.TYPE}: {key} must be a map")
            out[key] = {k: _lists(v) for k, v in out[key].items()}
    if "value" in out:
        out["value"] = _lists(out["value"])
    if "path" in out and isinstance(out["path"], list):
        out["path"] = tuple(out["path"])
    if cls is SequenceAppended:
        _thaw_columns(out)
    return out


def _thaw_columns(body: dict[str, Any]) -> None:
    """Expand a version 2 point batch's compact columns into packed arrays, in place.

    Every column may hold at most as many values as ``values`` has bytes (each value takes at
    least one), so hostile counts cannot make this allocate more than a few times the frame.
    """
    etype = SequenceAppended.TYPE
    values = body.get("values")
    if not isinstance(values, bytes):
        raise EventError(f"{etype}: values must be bytes")
    bound = len(values)

    def expand(what: str, col: Any, decode: Callable[..., npt.NDArray[Any]]) -> bytes:
        if not isinstance(col, bytes):
            raise EventError(f"{etype}: {what} must be an encoded column (bytes)")
        try:
            n = column_count(col)
            if n > bound:
                raise EventError(
                    f"{etype}: {what} claims {n} points but the batch has only {bound} bytes "
                    "of values"
                )
            return decode(col, bound).tobytes()
        except ColumnError as e:
            raise EventError(f"{etype}: {what}: {e}") from None

    body["steps"] = expand("steps", body.get("steps"), decode_i64)
    if body.get("timestamps") is not None:
        body["timestamps"] = expand("timestamps", body["timestamps"], decode_f64)
    if body.get("axis") is not None:
        body["axis"] = {k: expand(f"axis {k!r}", v, decode_f64) for k, v in body["axis"].items()}


@register_upcaster(SequenceAppended.TYPE, 1)
def _sequence_appended_v1(body: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried packed columns; frame them as raw columns (decoding expands them
    straight back, so compacting them here would be work thrown away)."""

    def frame(what: str, col: Any) -> Any:
        if not isinstance(col, bytes):
            return col  # the version 2 checks name the problem
        try:
            return frame_raw(col)
        except ColumnError:
            raise EventError(
                f"{SequenceAppended.TYPE}: {what} must be packed 8-byte values, got {len(col)} "
                "bytes"
            ) from None

    body["steps"] = frame("steps", body.get("steps"))
    if body.get("timestamps") is not None:
        body["timestamps"] = frame("timestamps", body["timestamps"])
    axis = body.get("axis")
    if isinstance(axis, dict):
        body["axis"] = {k: frame(f"axis {k!r}", v) for k, v in axis.items()}
    return body


def _lists(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    return v


def _validate(event: Event) -> None:
    """Check field types that the dataclass constructor does not."""
    etype = event.TYPE
    container = getattr(event, "container", None)
    if container is not None and (not isinstance(container, str) or not container):
        raise EventError(f"{etype}: container must be a non-empty string")
    if isinstance(event, ParamsSet):
        if not isinstance(event.path, tuple) or not all(isinstance(p, str) for p in event.path):
            raise EventError(f"{etype}: path must be an array of strings, got {event.path!r}")
    elif isinstance(event, SequenceAppended):
        _validate_points(event)


def _validate_points(ev: SequenceAppended) -> None:
    etype = ev.TYPE
    if not isinstance(ev.name, str) or not ev.name:
        raise EventError(f"{etype}: name must be a non-empty string")
    if not isinstance(ev.steps, bytes) or len(ev.steps) % STEP_DTYPE.itemsize:
        raise EventError(f"{etype}: steps must be packed int64 bytes")
    n = ev.count
    if not isinstance(ev.values, bytes):
        raise EventError(f"{etype}: values must be bytes")
    if ev.value_dtype == OBJECT_VALUE_DTYPE:
        try:
            items = msgpack.unpackb(ev.values, raw=False, strict_map_key=False)
        except Exception as e:
            raise EventError(f"{etype}: object values are not valid msgpack: {e}") from e
        if not isinstance(items, list) or len(items) != n:
            raise EventError(f"{etype}: expected {n} object values")
    elif not isinstance(ev.value_dtype, str):
        raise EventError(f"{etype}: value_dtype must be a string, got {ev.value_dtype!r}")
    elif ev.value_dtype in NUMERIC_VALUE_DTYPES:
        if len(ev.values) != n * np.dtype(ev.value_dtype).itemsize:
            raise EventError(
                f"{etype}: {n} steps but {len(ev.values)} bytes of {ev.value_dtype} values"
            )
    else:
        raise EventError(f"{etype}: unsupported value_dtype {ev.value_dtype!r}")
    if ev.timestamps is not None and (
        not isinstance(ev.timestamps, bytes) or len(ev.timestamps) != n * TIME_DTYPE.itemsize
    ):
        raise EventError(f"{etype}: timestamps must be {n} packed float64 values")
    if ev.axis is not None:
        for k, v in ev.axis.items():
            if not isinstance(k, str) or not isinstance(v, bytes):
                raise EventError(f"{etype}: axis must map names to packed float64 bytes")
            if len(v) != n * TIME_DTYPE.itemsize:
                raise EventError(f"{etype}: axis {k!r} must have {n} float64 values")
