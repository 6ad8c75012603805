"""Validation of what user code passes to write calls: names, tracked values, steps, contexts,
params and properties. Every check raises before anything is buffered, with a message that
names the bad value and what was expected.

Owns: the error messages of bad input and the canonical key of a context. The per-call fast
paths live in :meth:`trackd.sdk.run.Run.track`; the functions here are the slow paths and
the one-off checks. Imports ``trackd.errors``, ``trackd.views`` (the canonical context text,
so that the SDK and the views agree on which contexts name the same sequence) and msgpack.
"""

from __future__ import annotations

import copy
import numbers
import struct
from typing import Any

from trackd.errors import InvalidNameError, InvalidValueError
from trackd.eventlog.events import is_text

__all__ = [
    "AUTO_STEP",
    "EMPTY_CONTEXT_KEY",
    "INT64_MAX",
    "INT64_MIN",
    "POINT",
    "ContextKeys",
    "bad_name",
    "bad_step",
    "check_param",
    "check_param_key",
    "check_property",
    "check_value",
    "context_entry",
    "is_text",
]

EMPTY_CONTEXT_KEY = "{}"  # canonical key of context None / {}
#: The step a point is buffered with when ``track()`` got none (real steps are >= 0): an int,
#: so that the flusher converts every step column to int64 in one pass.
AUTO_STEP = -1
#: How ``track()`` buffers a point whose value is a Python float: ``(sid, step, value,
#: time)`` packed into 32 bytes (see ``trackd.sdk.client._CTRL`` for the buffer's layout).
#: Packing costs the caller no more than building a tuple, and a bytes object is not
#: tracked by the garbage collector, which a tuple per point would have run every 700
#: calls; the flusher joins a drain's points and reads them as columns without converting
#: each one.
POINT = struct.Struct("<qqdd")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

#: Scalar types a context or param may hold as-is.
_SCALARS = (str, int, float, bool, type(None), bytes)
_SIMPLE_CONTEXT_TYPES = frozenset({str, int, float, bool, type(None)})
_TEXT_TYPES = frozenset({str, type(None)})


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_NOT_TEXT = "which is not valid Unicode text (a lone surrogate cannot be encoded as UTF-8)"


def bad_name(name: Any) -> InvalidNameError:
    """The error for a sequence name that is not a non-empty str of valid Unicode text."""
    if isinstance(name, str) and name:
        return InvalidNameError(f"sequence name {_show(name)} is not allowed, {_NOT_TEXT}")
    if isinstance(name, str):
        return InvalidNameError("a sequence name must be a non-empty str, got ''")
    return InvalidNameError(
        f"a sequence name must be a non-empty str, got {type(name).__name__} {_show(name)}"
    )


def bad_step(step: Any) -> InvalidValueError:
    """The error for a step that is not None or a non-negative int."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        if int(step) > INT64_MAX:
            return InvalidValueError(f"step {step} is larger than the largest step, {INT64_MAX}")
        return InvalidValueError(f"step must be a non-negative int or None, got {step}")
    return InvalidValueError(
        f"step must be a non-negative int or None, got {type(step).__name__} {_show(step)}"
    )


def check_value(value: Any, name: str) -> Any:
    """Check a tracked value that is not a plain ``float`` or ``int`` (the fast path's types).

    Args:
        value: The value passed to ``track``.
        name: The sequence name, for the message.

    Returns:
        The value to buffer (numpy scalars are kept; the flusher packs them).

    Raises:
        InvalidValueError: not a bool, int, float or numpy number scalar, or an int outside
            the int64 range.
    """
    if type(value) is bool:
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValueError(
                f"value {value} for {name!r} is outside the int64 range; track it as a float"
            )
        return int(value)
    if isinstance(value, float):
        return float(value)
    np = _numpy()
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        if value.dtype.kind == "u" and value > INT64_MAX:
            raise InvalidValueError(
                f"value {value} for {name!r} is outside the int64 range; track it as a float"
            )
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value[()]
    raise InvalidValueError(
        f"cannot track a value of type {type(value).__module__}.{type(value).__qualname__} "
        f"for {name!r}: expected int, float, bool or a numpy number scalar"
    )


def _numpy() -> Any:
    import numpy  # imported on the slow path only; track()'s fast path never needs it

    return numpy


def context_entry(context: Any) -> tuple[dict[str, Any], str]:
    """Validate a context and compute its canonical key.

    Args:
        context: What the user passed as ``context``.

    Returns:
        ``(copy, key)``: a deep copy of the context, and its canonical text (the same text
        the views key sequences by, so equal keys mean the same sequence).

    Raises:
        InvalidValueError: not a dict, a key that is not a str, or a value that cannot be
            stored (not made of None, bool, int, float, str, bytes, lists and str-keyed dicts).
    """
    if not isinstance(context, dict):
        raise InvalidValueError(
            f"context must be a dict with str keys or None, got {type(context).__name__} "
            f"{_show(context)}"
        )
    _check_tree(context, "context")
    from trackd.views._canon import canonical_context

    return copy.deepcopy(context), canonical_context(context)


class ContextKeys:
    """Canonical keys of contexts, cached so that ``track()`` almost never computes one.

    ``by_id`` maps ``id(context)`` to ``(context, copy, key)``: ``track()`` reuses the key
    while the very same dict comes back unchanged (``copy == context``), and calls
    :meth:`lookup` otherwise (after its own check of the last two contexts it saw, see
    ``Run._ctx_a``). :meth:`lookup` also recognises a flat context built afresh on every
    call (``context={"subset": "train"}`` in a loop) by its items and their types, without
    validating it again.
    """

    _MAX_IDS = 1024
    _MAX_SIMPLE = 4096

    def __init__(self) -> None:
        """Empty caches; the empty context has key ``"{}"``."""
        self.by_id: dict[int, tuple[dict[str, Any], dict[str, Any], str]] = {}
        # items of a flat context -> (key, value types, or None when all are str/None)
        self._simple: dict[tuple[Any, ...], tuple[str, tuple[type, ...] | None]] = {}
        #: A private copy of every context seen, by key.
        self.contexts: dict[str, dict[str, Any]] = {EMPTY_CONTEXT_KEY: {}}

    def key(self, context: Any) -> str:
        """Validate ``context`` and return its canonical key (see :func:`context_entry`).

        Raises:
            InvalidValueError: the context is not a dict of storable values with str keys.
        """
        return self.lookup(context)[0]

    def lookup(self, context: Any) -> tuple[str, bool]:
        """Like :meth:`key`, and also say whether the context is *textual*: a dict whose
        values are all str or None. Two textual contexts with equal items have the same key,
        so ``track()`` may recognise one by equality alone (numbers may not be: 1 == 1.0 ==
        True name three contexts).

        Raises:
            InvalidValueError: the context is not a dict of storable values with str keys.
        """
        items = None
        if type(context) is dict:
            try:
                items = tuple(context.items())
                hit = self._simple.get(items)
            except TypeError:  # an unhashable value: take the general path
                items = hit = None
            if hit is not None:
                # 1 == 1.0 == True, yet they are different contexts: where the stored
                # context held numbers, the value types must match too.
                key, types = hit
                if types is None:
                    return key, True
                if tuple(map(type, context.values())) == types:
                    return key, False
        copied, key = context_entry(context)
        self.contexts.setdefault(key, copied)
        by_id = self.by_id
        if len(by_id) >= self._MAX_IDS:
            by_id.clear()
        types = tuple(map(type, context.values())) if items is not None else ()
        if items is not None and _SIMPLE_CONTEXT_TYPES.issuperset(types):
            if len(self._simple) >= self._MAX_SIMPLE:
                self._simple.clear()
            numbers = not _TEXT_TYPES.issuperset(types)
            self._simple[items] = (key, types if numbers else None)
            by_id[id(context)] = (context, dict(context), key)
            return key, not numbers
        by_id[id(context)] = (context, copy.deepcopy(context), key)
        return key, False


def _check_tree(value: Any, where: str, depth: int = 0) -> None:
    if depth > 32:
        raise InvalidValueError(f"{where} is nested more than 32 levels deep")
    if isinstance(value, _SCALARS):
        if isinstance(value, str) and not is_text(value):
            raise InvalidValueError(f"{where} holds {_show(value)}, {_NOT_TEXT}")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not INT64_MIN <= value <= (1 << 64) - 1
        ):
            raise InvalidValueError(f"{where} holds {value}, outside the 64-bit int range")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidValueError(
                    f"{where} has key {_show(k)} of type {type(k).__name__}; keys must be str"
                )
            if not is_text(k):
                raise InvalidValueError(f"{where} has key {_show(k)}, {_NOT_TEXT}")
            _check_tree(v, f"{where}[{k!r}]", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_tree(v, f"{where}[{i}]", depth + 1)
        return
    raise InvalidValueError(
        f"{where} holds a value of type {type(value).__module__}.{type(value).__qualname__} "
        f"({_show(value)}), which cannot be stored: use None, bool, int, float, str, bytes, "
        "lists and dicts with str keys"
    )


def check_param_key(key: Any) -> tuple[str, ...]:
    """Turn ``run[key]``'s key into a path of str keys.

    Raises:
        InvalidNameError: not a non-empty str or a non-empty tuple of non-empty str, or a
            str that is not valid Unicode text.
    """
    path = key if isinstance(key, tuple) else (key,)
    if not path or not all(isinstance(k, str) and k for k in path):
        raise InvalidNameError(
            f"a param key must be a non-empty str or a tuple of them, got {_show(key)}"
        )
    for k in path:
        if not is_text(k):
            raise InvalidNameError(f"param key {_show(k)} is not allowed, {_NOT_TEXT}")
    return path


def check_param(value: Any, path: tuple[str, ...]) -> Any:
    """Validate a param value and return a deep copy of it, numpy scalars made plain.

    Raises:
        InvalidValueError: the value (or something inside it) cannot be stored.
    """
    value = _plain(value)
    _check_tree(value, "param " + "".join(f"[{k!r}]" for k in path))
    return copy.deepcopy(value)


def _plain(value: Any) -> Any:
    """Replace numpy scalars by Python ones, recursively; leave everything else alone."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, numbers.Number) and hasattr(value, "item"):
        return value.item()
    return value


def check_property(key: str, value: Any) -> Any:
    """Validate one container property and return the value to store.

    Raises:
        InvalidValueError: name/experiment/description not a str or None, archived not a
            bool, tags not a list of str, or a str that is not valid Unicode text.
    """
    if key in ("name", "experiment", "description"):
        if value is not None and not isinstance(value, str):
            raise InvalidValueError(
                f"{key} must be a str or None, got {type(value).__name__} {_show(value)}"
            )
        if value is not None and not is_text(value):
            raise InvalidValueError(f"{key} {_show(value)} is not allowed, {_NOT_TEXT}")
        return value
    if key == "archived":
        if not isinstance(value, bool):
            raise InvalidValueError(f"archived must be a bool, got {type(value).__name__}")
        return value
    if key == "tags":
        if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and t for t in value):
            raise InvalidValueError(f"tags must be a list of non-empty str, got {_show(value)}")
        for t in value:
            if not is_text(t):
                raise InvalidValueError(f"tag {_show(t)} is not allowed, {_NOT_TEXT}")
        return list(dict.fromkeys(value))
    raise InvalidNameError(f"unknown property {key!r}")
