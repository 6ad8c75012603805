"""The run: a container of type ``"run"`` that training code writes to.

Owns: :class:`Run` — creating or resuming a run, ``track()`` (the hot path), params and
properties, ``close()``. Writes go through the process's :class:`trackd.sdk.client.Client`;
reads of what this process set come from a local copy, everything else from the views.
Imports the SDK's own modules and ``trackd.eventlog`` events.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any

from trackd.errors import InvalidInputError, InvalidNameError, NotFoundError
from trackd.eventlog.events import (
    ContainerCreated,
    ContainerFinished,
    Event,
    ParamsSet,
    PropertiesSet,
)
from trackd.sdk import _settings
from trackd.sdk._values import (
    AUTO_STEP,
    EMPTY_CONTEXT_KEY,
    INT64_MAX,
    INT64_MIN,
    POINT,
    ContextKeys,
    bad_name,
    bad_step,
    check_param,
    check_param_key,
    check_property,
    check_value,
    is_text,
)
from trackd.sdk.container import Container
from trackd.sdk.repo import Repo, resolve_repo

if TYPE_CHECKING:
    from collections.abc import Callable

    from trackd.sdk.client import Client

__all__ = ["Run"]

_HASH_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_time = time.time
_pack = POINT.pack


def _discard(item: bytes | tuple[Any, ...]) -> None:
    """The buffer of a disabled run: nothing is kept."""


#: Context keys of runs that have no client (TRACKD_MODE=disabled).
_DISABLED_CONTEXTS = ContextKeys()


class Run(Container):
    """A training run: track metrics, set params and properties, close when done.

    ``Run()`` creates a new run with a fresh 24-hex-digit hash without waiting for the
    daemon; ``Run(run_hash)`` resumes an existing run (or creates one with that hash),
    taking its write lock synchronously. Use it as a context manager, or call
    :meth:`close`; runs left open are closed at interpreter exit.
    """

    #: The contexts of the last two track() calls that looked one up, as ``(context, copy
    #: of its content then, its sequence ids by name, its key, textual)``. A training loop
    #: passes the same dict call after call (or alternates two, train and val), or builds an
    #: equal one for each call (``context={"subset": "train"}``): recognising it by identity
    #: and equality, or for a textual context by equality alone (see
    #: :meth:`ContextKeys.lookup`), skips the lookups by id() and by key (0.1 us of a call
    #: with a reused dict, 0.5 us with one built per call). Class attributes, so that they
    #: have a value before the first call (and in runs built without __init__).
    _ctx_a: tuple[Any, Any, dict[str, int], str, bool] = (None, None, {}, EMPTY_CONTEXT_KEY, False)
    _ctx_b: tuple[Any, Any, dict[str, int], str, bool] = _ctx_a
    _ctx_lookup: Callable[[Any], tuple[str, bool]] | None = None

    def __init__(
        self,
        run_hash: str | None = None,
        *,
        repo: str | os.PathLike[str] | Repo | None = None,
        experiment: str | None = None,
        read_only: bool = False,
    ) -> None:
        """Create, resume or open a run.

        Args:
            run_hash: Resume (or create) the run with this hash; None creates a new run.
            repo: Repository (a Repo or a path); default ``TRACKD_REPO`` or the current
                folder.
            experiment: Experiment name to set on the run.
            read_only: Open an existing run for reading only (``run_hash`` required).

        Raises:
            InvalidNameError: ``run_hash`` is not 1-64 characters of ``[0-9A-Za-z_-]``.
            LockedError: another live process holds the run.
            DaemonUnavailableError: resuming needs the daemon and none can be reached.
            NotFoundError: ``read_only`` and the run does not exist.
        """
        if run_hash is not None and (
            not isinstance(run_hash, str) or not _HASH_RE.fullmatch(run_hash)
        ):
            raise InvalidNameError(
                f"run_hash must be 1-64 characters of [0-9A-Za-z_-], got {run_hash!r}"
            )
        r = resolve_repo(repo)
        h = run_hash if run_hash is not None else secrets.token_hex(12)
        super().__init__(h, repo=r)
        self._closed = False
        self._client: Client | None = None
        self._ctx_cache = _DISABLED_CONTEXTS.by_id
        self._ctx_key: Callable[[Any], str] = _DISABLED_CONTEXTS.key
        self._ctx_lookup = _DISABLED_CONTEXTS.lookup
        self._append: Callable[[bytes | tuple[Any, ...]], None] = _discard
        self._sids: dict[str, dict[str, int]] = {}  # context key -> name -> sequence id
        self._params_local: dict[str, Any] = {}
        self._props: dict[str, Any] = {
            "name": None,
            "experiment": None,
            "description": None,
            "archived": False,
            "tags": [],
        }
        self._created_at = time.time()
        self._ended_at: float | None = None
        self._writable = not read_only
        if read_only:
            if run_hash is None:
                raise InvalidNameError("a read-only Run needs the run_hash of an existing run")
            self._row()  # NotFoundError when missing
            return
        if experiment is not None:
            check_property("experiment", experiment)
        if _settings.disabled(r.path):
            self._props["experiment"] = experiment
            return
        from trackd.sdk.client import get_client

        r.layout.ensure()
        client = get_client(r.path)
        client.start()
        self._client = client
        self._ctx_cache = client.contexts.by_id
        self._ctx_key = client.contexts.key
        self._ctx_lookup = client.contexts.lookup
        if run_hash is None:
            client.enqueue_event(
                ContainerCreated(container=h, container_type="run", created_at=self._created_at)
            )
            client.request_async("open_container", {"container": h})
        else:
            self._resume(client)
        client.attach(self)
        if experiment is not None:
            self.experiment = experiment

    def _resume(self, client: Client) -> None:
        h = self._hash
        timeout = client.settings.flush_timeout_s
        client.request("open_container", {"container": h}, timeout)
        try:
            # Everything logged before (by a previous holder too) is now in the views.
            client.request("flush", {}, timeout)
            row = self._repo._read_or(lambda r: r.container(h), None)
        except BaseException:
            client.request_async("close_container", {"container": h})
            raise
        if row is None:
            client.enqueue_event(
                ContainerCreated(container=h, container_type="run", created_at=self._created_at)
            )
            return
        self._params_local = row.params
        self._props.update(
            name=row.name,
            experiment=row.experiment,
            description=row.description,
            archived=row.archived,
            tags=list(row.tags),
        )
        if row.created_at is not None:
            self._created_at = row.created_at
        from trackd.views._canon import canonical_context

        seqs = self._repo._read(lambda r: r.sequences(h))
        client.set_next_steps(
            {
                (h, s.name, canonical_context(s.context)): s.last_step + 1
                for s in seqs
                if s.last_step is not None
            }
        )
        # Marks the run active again (the views clear its end time).
        client.enqueue_event(ContainerCreated(container=h, container_type="run"))

    # -- the hot path ------------------------------------------------------------------

    def track(
        self,
        value: Any,
        name: str,
        step: int | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Record ``value`` at ``step`` of the sequence ``name`` with ``context``.

        Costs about as much as appending to a list: the value is buffered and a background
        thread sends it. Never blocks on, or raises because of, the daemon.

        Args:
            value: An int, float, bool or numpy number scalar.
            name: Sequence name, e.g. ``"loss"``.
            step: Non-negative step; None takes the next step of this sequence.
            context: Dict with str keys telling sequences of one name apart, e.g.
                ``{"subset": "train"}``.

        Raises:
            InvalidNameError: ``name`` is not a non-empty str of valid Unicode text.
            InvalidValueError: bad value, step or context; nothing was recorded.
        """
        if type(name) is not str or not name:
            raise bad_name(name)
        if type(value) is not float:
            self._track_other(value, name, step, context)
            return
        if step is None:
            step = AUTO_STEP
        elif type(step) is not int or step < 0:
            step = _check_step(step)
        if context is None:
            key = EMPTY_CONTEXT_KEY
            by_name = self._sids.get(key)
        else:
            a = self._ctx_a
            if (a[0] is context or (a[4] and type(context) is dict)) and a[1] == context:
                by_name, key = a[2], a[3]
            else:
                b = self._ctx_b
                if (b[0] is context or (b[4] and type(context) is dict)) and b[1] == context:
                    by_name, key = b[2], b[3]
                else:
                    by_name, key = self._context_sids(context)
        try:
            sid = by_name[name]  # type: ignore[index]
        except (KeyError, TypeError):  # TypeError: no sequence of this context yet
            sid = self._new_sid(name, key)
        # The buffer's layout is documented at trackd.sdk.client._CTRL.
        try:
            self._append(_pack(sid, step, value, _time()))
        except struct.error:  # a step beyond int64: checked here at no cost to other calls
            raise bad_step(step) from None

    def _track_other(
        self, value: Any, name: str, step: int | None, context: dict[str, Any] | None
    ) -> None:
        """:meth:`track` of a value whose type is not exactly ``float``.

        Anything but a float is buffered as a tuple with ``~sid``, keeping the value itself:
        the flusher infers the sequence's dtype (bool, int64, float32, float64) from the
        values as numpy does.
        """
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            value = check_value(value, name)
        if step is None:
            step = AUTO_STEP
        elif type(step) is not int or not 0 <= step <= INT64_MAX:
            step = _check_step(step)
        if context is None:
            key = EMPTY_CONTEXT_KEY
            by_name = self._sids.get(key, {})
        else:
            by_name, key = self._context_sids(context)
        try:
            sid = by_name[name]
        except KeyError:
            sid = self._new_sid(name, key)
        if type(value) is float:  # a float subclass (numpy.float64), made plain by check_value
            self._append(_pack(sid, step, value, _time()))
        else:
            self._append((~sid, step, value, _time()))

    def _context_sids(self, context: Any) -> tuple[dict[str, int], str]:
        """The sequence ids by name of ``context`` and its key; validates a new context and
        makes it the last one seen (see ``_ctx_a``).

        Raises:
            InvalidValueError: the context is not a dict of storable values with str keys.
        """
        snapshot: dict[str, Any] | None
        c = self._ctx_cache.get(id(context))
        if c is not None and c[0] is context and c[1] == context:
            key, snapshot, textual = c[2], c[1], False
        elif self._ctx_lookup is not None:
            key, textual = self._ctx_lookup(context)
            # A textual context is flat with immutable values: a shallow copy keeps it.
            snapshot = dict(context) if textual else None
        else:
            key, snapshot, textual = self._ctx_key(context), None, False
        by_name = self._sids.get(key)
        if by_name is None:
            by_name = self._sids[key] = {}
        if snapshot is not None:
            self._ctx_b = self._ctx_a
            self._ctx_a = (context, snapshot, by_name, key, textual)
        return by_name, key

    def _new_sid(self, name: str, key: str) -> int:
        # The first call with a name checks that it can be encoded at all: the flusher
        # could not send it, and every later event of the client would be stuck behind it.
        if not is_text(name):
            raise bad_name(name)
        sid = 0 if self._client is None else self._client.sequence_id(self._hash, name, key)
        self._sids.setdefault(key, {})[name] = sid
        return sid

    # -- params ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return self._params_local if self._writable else super()._params()

    def __setitem__(self, key: str | tuple[str, ...], value: Any) -> None:
        """Set the param at ``key`` (a name, or a tuple path into nested dicts).

        Raises:
            InvalidNameError: the key is not a non-empty str or tuple of them.
            InvalidValueError: the value holds something that cannot be stored.
        """
        self._require_writable()
        path = check_param_key(key)
        value = check_param(value, path)
        node = self._params_local
        for k in path[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = node[k] = {}
            node = child
        node[path[-1]] = copy.deepcopy(value)
        self._emit(ParamsSet(container=self._hash, path=path, value=value))

    def set(self, key: str | tuple[str, ...], value: Any, strict: bool = True) -> None:
        """Same as ``run[key] = value`` (``strict`` is accepted for Aim compatibility)."""
        self[key] = value

    def __delitem__(self, key: str | tuple[str, ...]) -> None:
        """Delete the param at ``key``.

        Raises:
            NotFoundError: there is no param at ``key``.
        """
        self._require_writable()
        path = check_param_key(key)
        node: Any = self._params_local
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path[-1] not in node:
            raise NotFoundError(f"run {self._hash} has no param {list(path)!r}")
        del node[path[-1]]
        self._emit(ParamsSet(container=self._hash, path=path, delete=True))

    # -- properties --------------------------------------------------------------------

    def _prop(self, key: str) -> Any:
        if self._writable:
            return copy.copy(self._props[key])
        return getattr(self._row(), key)

    def _set_prop(self, key: str, value: Any) -> None:
        self._require_writable()
        value = check_property(key, value)
        self._props[key] = value
        self._emit(PropertiesSet(container=self._hash, props={key: value}))

    @property
    def type(self) -> str:
        """Always ``"run"``."""
        return "run" if self._writable else super().type

    @property
    def name(self) -> str | None:
        """Display name."""
        return self._prop("name")  # type: ignore[no-any-return]

    @name.setter
    def name(self, value: str | None) -> None:
        self._set_prop("name", value)

    @property
    def experiment(self) -> str | None:
        """Experiment name."""
        return self._prop("experiment")  # type: ignore[no-any-return]

    @experiment.setter
    def experiment(self, value: str | None) -> None:
        self._set_prop("experiment", value)

    @property
    def description(self) -> str | None:
        """Free-text description."""
        return self._prop("description")  # type: ignore[no-any-return]

    @description.setter
    def description(self, value: str | None) -> None:
        self._set_prop("description", value)

    @property
    def archived(self) -> bool:
        """Hidden from default listings."""
        return bool(self._prop("archived"))

    @archived.setter
    def archived(self, value: bool) -> None:
        self._set_prop("archived", value)

    @property
    def tags(self) -> list[str]:
        """Tag names (set the whole list, or use :meth:`add_tag` / :meth:`remove_tag`)."""
        return list(self._prop("tags"))

    @tags.setter
    def tags(self, value: list[str]) -> None:
        self._set_prop("tags", value)

    def add_tag(self, tag: str) -> None:
        """Add a tag (no-op when present)."""
        if tag not in self._props["tags"]:
            self.tags = [*self._props["tags"], tag]

    def remove_tag(self, tag: str) -> None:
        """Remove a tag (no-op when absent)."""
        if tag in self._props["tags"]:
            self.tags = [t for t in self._props["tags"] if t != tag]

    @property
    def creation_time(self) -> float | None:
        """Wall-clock creation time."""
        return self._created_at if self._writable else super().creation_time

    @property
    def end_time(self) -> float | None:
        """When :meth:`close` finished the run, else None."""
        return self._ended_at if self._writable else super().end_time

    @property
    def active(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed if self._writable else super().active

    def collect_properties(self) -> dict[str, Any]:
        """All properties as a dict (what this run set, for a writable run)."""
        if not self._writable:
            return super().collect_properties()
        out = copy.deepcopy(self._props)
        out.update(creation_time=self._created_at, end_time=self._ended_at, active=self.active)
        return out

    # -- life cycle --------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Finish the run: mark it ended, wait until everything is durable and applied to
        the views, and release its lock. Idempotent.

        When no daemon can be reached the data goes to a spool file (with a warning) and
        this returns; a daemon ingests the spool later.

        Raises:
            FlushTimeoutError: a daemon is connected but did not confirm in time.
            TrackdError: the daemon rejected something this process sent earlier.
        """
        if self._closed or not self._writable:
            return
        self._closed = True
        self._ended_at = time.time()
        client = self._client
        self._append = self._append_after_close
        if client is None:
            return
        client.enqueue_event(ContainerFinished(container=self._hash, ended_at=self._ended_at))
        client.request_async("close_container", {"container": self._hash})
        client.detach(self)
        client.flush(timeout)

    def _append_after_close(self, item: bytes | tuple[Any, ...]) -> None:
        raise InvalidInputError(f"run {self._hash} is closed; tracking into it is not possible")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, event: Event) -> None:
        if self._closed:
            raise InvalidInputError(f"run {self._hash} is closed")
        if self._client is not None:
            self._client.enqueue_event(event)

    def _require_writable(self) -> None:
        if not self._writable:
            raise InvalidInputError(f"run {self._hash} was opened read-only")


def _check_step(step: Any) -> int:
    """Slow path of a step that is not a plain non-negative int."""
    if type(step) is not bool:
        try:
            import numpy as np

            if isinstance(step, np.integer) and 0 <= int(step) <= INT64_MAX:
                return int(step)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
    raise bad_step(step)
