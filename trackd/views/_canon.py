"""JSON forms of event fields: canonical contexts, nested params, container properties.

Owns: how free-form event values (params, contexts, tags) become the JSON text the views
store, and the tolerant coercion of property values. Every function here is total: any value
the msgpack codec can produce maps to a deterministic result and nothing raises, because a
projection that raised would stop the views from following the log.
Imports: stdlib only.

JSON cannot hold everything msgpack can, and SQLite (3.40, no JSON5) rejects ``NaN`` inside
JSON text, which would break ``json_extract`` for every row. So, before storing: non-finite
floats become ``null``, bytes become base64 text, bytes map keys are decoded as UTF-8,
other keys and unknown objects (msgpack ext types) become their ``str``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PROPERTY_NAMES",
    "apply_params",
    "canonical_context",
    "coerce_properties",
    "coerce_time",
    "dump_json",
    "json_safe",
]

PROPERTY_NAMES = ("name", "experiment", "description", "archived", "tags")


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bytes):
        return k.decode("utf-8", "replace")
    return str(k)


def json_safe(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types (see the module docstring)."""
    try:
        return _safe(value)
    except RecursionError:
        return None


def _safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (list, tuple)):
        return [_safe(x) for x in v]
    if isinstance(v, Mapping):
        return {_key(k): _safe(x) for k, x in v.items()}
    return str(v)


def dump_json(value: Any, *, canonical: bool = False) -> str:
    """JSON text of an already :func:`json_safe` value.

    Args:
        value: A value made of JSON types.
        canonical: Sort keys, so equal dicts give equal text (used for contexts).
    """
    return json.dumps(
        value,
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        sort_keys=canonical,
    )


def canonical_context(context: Any) -> str:
    """The canonical JSON text of a sequence context: sorted keys, compact separators.

    Two contexts are the same sequence context exactly when their texts are equal; readers
    look a sequence up by this text.
    """
    safe = json_safe(context if isinstance(context, Mapping) else {})
    return dump_json(safe, canonical=True)


def apply_params(params: dict[str, Any], path: Any, value: Any, delete: bool) -> dict[str, Any]:
    """Set or delete the value at ``path`` in a nested params dict.

    Intermediate dicts are created on set (replacing a non-dict in the way); deleting a path
    that does not exist does nothing. ``path == ()`` replaces the whole dict when ``value`` is
    a dict (ignored otherwise) and clears it when deleting.

    Args:
        params: The current params (modified in place and returned).
        path: Key path; its items are made strings.
        value: The new value (ignored when deleting).
        delete: Remove the key instead of setting it.

    Returns:
        The new params dict.
    """
    keys = [_key(k) for k in path] if isinstance(path, (tuple, list)) else []
    if not keys:
        if delete:
            return {}
        safe = json_safe(value)
        return safe if isinstance(safe, dict) else params
    node = params
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            if delete:
                return params
            child = {}
            node[k] = child
        node = child
    if delete:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = json_safe(value)
    return params


def coerce_time(value: Any) -> float | None:
    """A wall-clock time as float, or None when ``value`` is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def coerce_properties(props: Any) -> dict[str, Any]:
    """The known properties in ``props`` as column values; bad or unknown ones are dropped.

    ``name``, ``experiment`` and ``description`` take a string or None; ``archived`` a bool
    (or int); ``tags`` a list of strings, stored as JSON text.
    """
    out: dict[str, Any] = {}
    if not isinstance(props, Mapping):
        return out
    for key, v in props.items():
        if key in ("name", "experiment", "description"):
            if v is None or isinstance(v, str):
                out[key] = v
        elif key == "archived":
            if isinstance(v, (bool, int)):
                out[key] = bool(v)
        elif key == "tags" and isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v):
            out[key] = dump_json(list(v))
    return out
