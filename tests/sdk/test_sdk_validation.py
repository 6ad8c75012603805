"""Bad input to write calls: the right error class, a message naming the bad value, and
nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from sdk_support import log_events

import trackd
from trackd.errors import InvalidInputError, InvalidNameError, InvalidValueError
from trackd.eventlog.events import ContainerCreated, ContainerFinished

if TYPE_CHECKING:
    from conftest import DaemonProc


class _Unstorable:
    def __repr__(self) -> str:
        return "<unstorable>"


BAD_TRACK: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("int name", {"value": 1.0, "name": 3}, InvalidNameError, "got int 3"),
    ("None name", {"value": 1.0, "name": None}, InvalidNameError, "non-empty str, got NoneType"),
    ("empty name", {"value": 1.0, "name": ""}, InvalidNameError, "got ''"),
    ("list value", {"value": [1, 2], "name": "m"}, InvalidValueError, "builtins.list for 'm'"),
    ("str value", {"value": "1.0", "name": "m"}, InvalidValueError, "builtins.str for 'm'"),
    ("array value", {"value": np.ones(3), "name": "m"}, InvalidValueError, "numpy.ndarray"),
    ("huge int", {"value": 1 << 70, "name": "m"}, InvalidValueError, "int64 range"),
    ("negative step", {"value": 1.0, "name": "m", "step": -1}, InvalidValueError, "got -1"),
    ("float step", {"value": 1.0, "name": "m", "step": 1.5}, InvalidValueError, "float 1.5"),
    ("bool step", {"value": 1.0, "name": "m", "step": True}, InvalidValueError, "bool True"),
    (
        "list context",
        {"value": 1.0, "name": "m", "context": ["a"]},
        InvalidValueError,
        "context must be a dict with str keys or None, got list",
    ),
    (
        "int key context",
        {"value": 1.0, "name": "m", "context": {1: "a"}},
        InvalidValueError,
        "key 1 of type int",
    ),
    (
        "object in context",
        {"value": 1.0, "name": "m", "context": {"a": _Unstorable()}},
        InvalidValueError,
        "context['a'] holds a value of type",
    ),
]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TRACKD_MODE=disabled: validation runs, nothing is sent."""
    monkeypatch.setenv("TRACKD_MODE", "disabled")
    return tmp_path


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"), [c[1:] for c in BAD_TRACK], ids=[c[0] for c in BAD_TRACK]
)
def test_bad_track_arguments_raise_named_errors(
    offline: Path, kwargs: dict[str, Any], exc: type[Exception], msg: str
) -> None:
    """Each bad argument of track() raises its error class with a message naming it."""
    run = trackd.Run(repo=offline)
    with pytest.raises(exc, match=_literal(msg)):
        run.track(**kwargs)


def test_bad_input_errors_are_value_errors(offline: Path) -> None:
    """Input errors are also ValueErrors, so generic handlers catch them."""
    run = trackd.Run(repo=offline)
    with pytest.raises(ValueError, match="sequence name"):
        run.track(1.0, "")


def test_good_track_arguments_are_accepted(offline: Path) -> None:
    """Numbers of every supported kind, numpy int steps and nested contexts pass."""
    run = trackd.Run(repo=offline)
    for v in (1, 1.5, True, np.float32(2), np.int64(3), np.bool_(False), np.array(4.0)):
        run.track(v, "m")
    run.track(1.0, "m", step=np.int64(7))
    run.track(1.0, "m", context={"a": {"b": [1, 2]}, "c": None})


def test_mutated_context_dict_is_validated_again(offline: Path) -> None:
    """A context dict changed in place after a good call is checked again, not trusted."""
    run = trackd.Run(repo=offline)
    ctx: dict[Any, Any] = {"subset": "train"}
    run.track(1.0, "m", context=ctx)
    ctx[5] = "x"
    with pytest.raises(InvalidValueError, match="key 5"):
        run.track(1.0, "m", context=ctx)


BAD_PARAMS: list[tuple[str, Callable[[trackd.Run], None], type[Exception], str]] = [
    ("set", lambda r: r.__setitem__("p", {1: 2}), InvalidValueError, "param ['p'] has key 1"),
    (
        "object",
        lambda r: r.__setitem__("p", {"a": [_Unstorable()]}),
        InvalidValueError,
        "param ['p']['a'][0] holds a value of type",
    ),
    ("key", lambda r: r.__setitem__(3, 1), InvalidNameError, "param key"),
    ("empty key", lambda r: r.__setitem__("", 1), InvalidNameError, "param key"),
    ("name", lambda r: setattr(r, "name", 5), InvalidValueError, "name must be a str or None"),
    ("archived", lambda r: setattr(r, "archived", "y"), InvalidValueError, "archived must"),
    ("tags", lambda r: setattr(r, "tags", ["a", 1]), InvalidValueError, "tags must be"),
]


@pytest.mark.parametrize(
    ("action", "exc", "msg"), [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS]
)
def test_bad_params_and_properties_raise_named_errors(
    offline: Path, action: Callable[[trackd.Run], None], exc: type[Exception], msg: str
) -> None:
    """Unstorable params and badly typed properties raise with a message naming them."""
    run = trackd.Run(repo=offline)
    with pytest.raises(exc, match=_literal(msg)):
        action(run)


def test_bad_run_hash_is_refused(offline: Path) -> None:
    """A run hash with characters outside [0-9A-Za-z_-] is an InvalidNameError."""
    with pytest.raises(InvalidNameError, match="run_hash"):
        trackd.Run("../etc", repo=offline)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_rejected_input_writes_nothing(daemon: DaemonProc, repo_path: Path) -> None:
    """After every kind of bad input, the log holds only the run's creation and finish."""
    run = trackd.Run(repo=repo_path)
    for _label, kwargs, exc, _msg in BAD_TRACK:
        with pytest.raises(exc):
            run.track(**kwargs)
    for _label, action, exc, _msg in BAD_PARAMS:
        with pytest.raises(exc):
            action(run)
    run.close()
    with pytest.raises(InvalidInputError, match="closed"):
        run.track(1.0, "m")
    events = log_events(repo_path)
    assert [type(e) for e in events] == [ContainerCreated, ContainerFinished]
    assert trackd.Repo(repo_path).get_container(run.hash).collect_properties()["tags"] == []


def _literal(text: str) -> str:
    import re

    return re.escape(text)
