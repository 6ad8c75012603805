"""The per-process connection to the daemon for one repository: buffering, the background
flusher, reconnects, the spool fallback, flush barriers, fork safety and exit handling.

Owns: :class:`Client` and the registry of clients (one per process and repository, shared by
every run of that process). Imports ``trackd.wire`` (to write), ``trackd.eventlog`` (events,
codec, spool files, layout), ``trackd.errors``; never the daemon stack.

Threads. ``track()`` runs on the caller's thread and only appends a tuple to :attr:`Client.buf`
(a ``collections.deque``). Everything else happens on the client's *flusher* thread, which
owns all state below; a *reader* thread per connection parses what the daemon sends and
posts it to the flusher's inbox, and a short-lived *connector* thread connects (and
auto-starts a daemon) so that the flusher keeps draining the buffer meanwhile.

A flush on a live connection skips two of those hand-offs: the calling thread, which waits
anyway, takes the flusher's step lock to send what is buffered and the barrier itself, then
takes the socket's read lock and reads until its reply arrives (the reader thread stands
aside meanwhile), so the reply wakes the caller directly. On a machine whose CPUs are busy
each hand-off is a wait for a CPU; this halves the client's share of a flush.

States of the flusher::

    CONNECTING --connected--> LIVE --connection lost--> CONNECTING
        |                      |
        | no daemon answers,   | unacked data > bound: spool it, keep sending
        | or > 2 s, or > bound v
        v                    DRAIN --everything spooled is acked--> LIVE (spool removed)
      SPOOL --connected: replay spool over the connection--> DRAIN
        ^                      |
        +--connection lost-----+

- LIVE: every event is sent as it is made and kept in ``unacked`` until a cumulative Ack.
- CONNECTING: events wait in memory; a connector thread tries to connect (auto-starting a
  daemon when none answers and ``TRACKD_AUTOSTART`` is not ``0``).
- SPOOL: every event (from the first unacked one on) is appended to a locked spool file;
  the connector retries with backoff (50 ms doubling to 2 s).
- DRAIN: connected again; the spooled events after the daemon's high-water mark are replayed
  first, new events go to the spool *and* the connection, in seq order. Once the daemon acks
  the last spooled seq the spool file is deleted. The daemon drops duplicates by a per-client
  maximum seq, so no event is ever sent before every lower-seq event of this client.

The client never raises into ``track()`` because the daemon is slow or gone; errors the
daemon reports asynchronously (a rejected append, a lost run lock) are raised from the next
:meth:`Client.flush`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import operator
import os
import secrets
import select
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

# The canonical context keys the SDK buffers by are computed by trackd.views. Importing it
# here, when a process first connects, keeps that import (about 20 ms) out of the first
# track() call with a context, which must cost no more than any other.
import trackd.views._canon  # noqa: F401
from trackd.errors import (
    DaemonUnavailableError,
    FlushTimeoutError,
    LogCorruptedError,
    TrackdError,
    error_from_code,
)
from trackd.eventlog.events import Event, SequenceAppended, encode_event
from trackd.eventlog.layout import RepoLayout
from trackd.eventlog.spool import SpoolWriter, iter_spool
from trackd.sdk._connect import Unreachable, autostart, handshake, refused
from trackd.sdk._settings import client_settings
from trackd.sdk._values import POINT, ContextKeys
from trackd.wire.address import socket_path
from trackd.wire.protocol import (
    APPEND_REJECTED,
    Ack,
    Append,
    ErrorReply,
    FrameDecoder,
    Hello,
    Reply,
    Request,
    Welcome,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from trackd.sdk.run import Run

__all__ = ["Client", "SpoolWarning", "get_client"]

log = logging.getLogger("trackd.sdk")

#: Most points in one SequenceAppended event.
MAX_EVENT_POINTS: Final = 65_536
#: Most bytes of events in one Append frame (and at most half the daemon's max_frame). A
#: daemon that pauses reading holds each connection's half-read frame: with 64 producers,
#: 4 MiB frames put its peak RSS at 343 MB, 1 MiB frames at 279 MB (same budget).
MAX_APPEND_BYTES: Final = 1 << 20
#: Events kept in memory (unacked or waiting for a connection) before spooling them.
MEMORY_BOUND: Final = 64 << 20
#: A send that makes no progress for this long means the daemon stopped reading. A daemon
#: short of memory pauses reading every connection of a repository until its backlog is
#: applied (about a second per 16 MiB when 64 producers share two cores), which is
#: backpressure, not a hang: dropping the connection then only added reconnects and spools.
STALL_TIMEOUT: Final = 10.0
#: Time the connection attempts may take before the events in memory go to the spool.
DISCONNECTED_SPOOL_AFTER: Final = 2.0
BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 2.0
#: Least time between two daemon auto-starts by one client.
AUTOSTART_INTERVAL: Final = 10.0
#: Upper bound of the best-effort flush at interpreter exit.
EXIT_TIMEOUT: Final = 15.0

#: The buffer's layout. A point whose value is a Python float is ``POINT.pack(sid, step,
#: value, time)``: 32 bytes, read back as a row of ``_ROW``. Any other point is the tuple
#: ``(~sid, step, value, time)``, which keeps the value object because its type decides the
#: sequence's dtype. ``step`` is ``AUTO_STEP`` for "the next step". A control item is the
#: tuple ``(_CTRL, kind, payload, None)``. A drain holding only float points is therefore
#: one ``b"".join`` and a ``np.frombuffer``, with no work per point beyond taking it.
_CTRL: Final = -(1 << 62)
_ROW: Final = np.dtype([("sid", "<i8"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8")])
assert _ROW.itemsize == POINT.size
_SID, _STEP, _VALUE, _TIME = (operator.itemgetter(i) for i in range(4))
#: Sequences in one drain above which points are grouped by sorting rather than by one
#: comparison pass per sequence.
_GROUP_BY_MASK_MAX: Final = 16

CONNECTING: Final = "connecting"
LIVE: Final = "live"
SPOOL: Final = "spool"
DRAIN: Final = "drain"


class SpoolWarning(UserWarning):
    """A flush found no daemon: the events were made durable in a spool file instead."""


class _Waiter:
    """A caller waiting for the flusher: the outcome of a request or a barrier."""

    __slots__ = ("done", "error", "result", "status")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.status = ""
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self, status: str, result: Any = None, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        self.status, self.result, self.error = status, result, error
        self.done.set()


class _Req:
    """A request to send in order with the events: ``flush``, ``open_container``, ..."""

    __slots__ = ("args", "op", "seq", "urgent_gen", "waiter")

    def __init__(self, op: str, args: dict[str, Any], waiter: _Waiter | None) -> None:
        self.op = op
        self.args = args
        self.waiter = waiter
        self.seq = 0  # last client_seq sent before this request
        self.urgent_gen = 0  # connect attempt whose failure resolves it offline


class _Conn:
    """One connected, handshaken socket and the reader thread that drains it."""

    __slots__ = ("dec", "frame_limit", "sock", "welcome")

    def __init__(self, sock: socket.socket, welcome: Welcome) -> None:
        self.sock = sock
        self.welcome = welcome
        # Fed by whoever holds the client's read lock.
        self.dec = FrameDecoder(welcome.max_frame)
        self.frame_limit = max(1 << 16, min(MAX_APPEND_BYTES, welcome.max_frame // 2))


class _Stalled(Exception):
    """A send made no progress for STALL_TIMEOUT."""


class Client:
    """The connection of this process to the daemon for one repository.

    Created by :func:`get_client`; shared by every run of the process in that repository.
    """

    def __init__(self, root: Path, sock: Path | None = None) -> None:
        """Prepare a client; no thread, socket or file exists until :meth:`start`.

        Args:
            root: Absolute repository root (the folder holding ``.trackd``).
            sock: Socket path (default: :func:`trackd.wire.address.socket_path`).
        """
        self.layout = RepoLayout(root)
        self.sock_path = sock if sock is not None else socket_path()
        #: The ``[client]`` settings for this repository, read once.
        self.settings = client_settings(root)
        self._interval = self.settings.flush_interval_ms / 1000
        #: Shared with every Run: the hot path reads these directly.
        self.buf: collections.deque[bytes | tuple[Any, ...]] = collections.deque()
        self.contexts = ContextKeys()
        # Sequence ids: a buffered point names its sequence by one int (kept across forks,
        # so the ids cached by runs stay valid).
        self._seq_keys: list[tuple[str, str, str]] = []
        self._sid_of: dict[tuple[str, str, str], int] = {}
        self._sid_lock = threading.Lock()
        self._runs: weakref.WeakSet[Run] = weakref.WeakSet()
        self._reset()

    # -- state -------------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh identity, buffers, threads and connection state (also after a fork)."""
        self.client_id = secrets.token_bytes(16)
        self.buf.clear()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        # Held by whoever runs a step of the flusher: its thread, or a flushing caller.
        self._step_lock = threading.Lock()
        # Held by whoever reads the socket: the reader thread, or flushing callers, which
        # count themselves in _callers_reading so that the reader stands aside.
        self._read_lock = threading.Lock()
        self._callers_reading = 0
        self._reader_resume = threading.Event()
        self._reader_owed = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flusher_done = False
        self._drain_now = False
        self._errors: list[TrackdError] = []
        self._open_runs: dict[str, Run] = {}
        # Owned by the flusher step (see _step_lock) from here on.
        self.mode = CONNECTING
        self._seq = 0
        self._acked = 0
        self._next_step: dict[int, int] = {}
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._pending: collections.deque[tuple[int, bytes]] = collections.deque()
        self._mem = 0
        self._parked: list[_Req] = []
        self._inflight: dict[int, _Req] = {}
        self._req_id = 0
        self._held: set[str] = set()
        self._conn: _Conn | None = None
        self._first_attempt_at: float | None = None  # of the attempts since the last connection
        self._spool: SpoolWriter | None = None
        self._spool_first = 0
        self._spool_last = 0
        self._attempt_gen = 0
        self._attempt_running = False
        self._next_attempt = 0.0
        self._backoff = BACKOFF_MIN
        self._last_autostart = -AUTOSTART_INTERVAL
        self._last_drain = time.monotonic()
        self._last_sent = 0  # highest client_seq written to the current connection
        self._flushed_seq = 0  # highest client_seq a flush barrier confirmed

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connection, spool, threads and runs; start lazily on use."""
        conn, spool = self._conn, self._spool
        if conn is not None:
            try:
                # Close only this process's copy: the parent's connection stays up.
                os.close(conn.sock.detach())
            except OSError:
                pass
        if spool is not None and spool._fd is not None:
            # Never unlock: the lock belongs to the open file, which the parent still uses.
            try:
                os.close(spool._fd)
            except OSError:
                pass
            spool._fd = None
        self._sid_lock = threading.Lock()  # a parent thread may have held the old one
        self._reset()
        for run in list(self._runs):
            run._append = self._lazy_append

    def _lazy_append(self, item: bytes | tuple[Any, ...]) -> None:
        self.start()
        self.buf.append(item)

    # -- public API (any thread) -------------------------------------------------------

    def start(self) -> None:
        """Start the flusher thread if it is not running (idempotent, thread-safe)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is not None:
                return
            t = threading.Thread(target=self._run, name="trackd-flusher", daemon=True)
            self._thread = t
            for run in list(self._runs):
                run._append = self.buf.append
            t.start()

    def attach(self, run: Run) -> None:
        """Register a run writing through this client (for fork handling and exit)."""
        self._runs.add(run)
        self._open_runs[run.hash] = run
        run._append = self.buf.append if self._thread is not None else self._lazy_append

    def detach(self, run: Run) -> None:
        """Forget a closed run."""
        self._open_runs.pop(run.hash, None)

    def _control_item(self, kind: str, payload: Any) -> None:
        # Same length as a point so that the flusher's column getters work on both.
        self.buf.append((_CTRL, kind, payload, None))

    def sequence_id(self, container: str, name: str, key: str) -> int:
        """The small int standing for a sequence in the buffer (assigned on first use)."""
        skey = (container, name, key)
        sid = self._sid_of.get(skey)
        if sid is None:
            with self._sid_lock:
                sid = self._sid_of.get(skey)
                if sid is None:
                    sid = len(self._seq_keys)
                    self._seq_keys.append(skey)
                    self._sid_of[skey] = sid
        return sid

    def enqueue_event(self, event: Event) -> None:
        """Queue a non-point event (it keeps its place among the points)."""
        self.start()
        self._control_item("event", event)

    def set_next_steps(self, steps: dict[tuple[str, str, str], int]) -> None:
        """Make auto steps of these sequences continue from the given next steps."""
        self._control_item("steps", steps)

    def request_async(self, op: str, args: dict[str, Any]) -> None:
        """Queue a request whose failure is raised from the next flush."""
        self.start()
        self._control_item("req", _Req(op, args, None))
        self._poke()

    def request(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Send a request in order with the queued events and wait for its reply.

        Raises:
            DaemonUnavailableError: no daemon could be reached.
            FlushTimeoutError: no reply within ``timeout``.
            TrackdError: the daemon refused the request (mapped from its error code).
        """
        self.start()
        w = _Waiter()
        self._control_item("req", _Req(op, args, w))
        self._poke()
        if not w.done.wait(timeout):
            raise FlushTimeoutError(
                f"the trackd daemon at {self.sock_path} did not answer {op!r} in {timeout:g}s"
            )
        if w.status == "offline":
            raise DaemonUnavailableError(
                f"no trackd daemon answers on {self.sock_path}, so {op!r} cannot be done; "
                "start one with `trackd daemon start`"
            )
        if w.error is not None:
            raise w.error
        return w.result

    def flush(self, timeout: float | None = None, *, force: bool = False) -> None:
        """Barrier: return once everything queued so far is durable and applied to the views.

        Without ``force`` a client that made nothing since its last barrier returns at once;
        with it, the daemon is asked anyway (connecting, and auto-starting one, if needed),
        which also makes it serve the repository and ingest spool files left there.

        When no daemon can be reached, the events are made durable in a spool file instead,
        a :class:`SpoolWarning` says where, and this returns without raising.

        Raises:
            FlushTimeoutError: a daemon is connected but did not confirm in time.
            TrackdError: the daemon rejected something sent earlier (a bad append, a lost
                run lock): the first such error since the last flush.
        """
        if not force and (
            self._thread is None or (self._flushed_seq == self._seq and not self.buf)
        ):
            # Nothing was made since the last confirmed barrier.
            self._raise_errors()
            return
        self.start()
        timeout = self.settings.flush_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        w = _Waiter()
        self._control_item("req", _Req("flush", {}, w))
        if not self._flush_here(w, deadline):
            self._poke()
        if not w.done.wait(max(0.0, deadline - time.monotonic())):
            timed_out = FlushTimeoutError(
                f"the trackd daemon at {self.sock_path} did not confirm a flush of "
                f"{self._outstanding()} unacknowledged events within {timeout:g}s"
            )
            if self._conn is not None:
                raise timed_out
            # No daemon answered in time: make what we hold durable in the spool instead.
            w = _Waiter()
            self._inbox.append(("spool_now", w))
            self._poke()
            if not w.done.wait(5.0) or w.status != "offline":
                raise timed_out
        if w.status == "offline" and w.result is not None:
            path, count = w.result
            warnings.warn(
                f"trackd: no daemon answered on {self.sock_path}; {count} events were written "
                f"to the spool file {path}. They become queryable once a daemon runs and "
                "serves this repository (`trackd daemon start`, then any write or "
                "repo.flush()).",
                SpoolWarning,
                stacklevel=3,
            )
        elif w.error is not None:
            raise w.error
        self._raise_errors()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher and close the connection and spool (used at exit and in tests)."""
        t = self._thread
        if t is None:
            return
        self._stopping = True
        self._poke()
        t.join(timeout)

    # -- helpers -----------------------------------------------------------------------

    def _poke(self) -> None:
        self._drain_now = True
        self._wake.set()

    def _flush_here(self, w: _Waiter, deadline: float) -> bool:
        """Send the buffer and the barrier from this (the flushing) thread and read the socket
        until ``w`` is answered or ``deadline`` passes; False to leave it to the flusher.

        Only on a live connection whose socket can take bytes now, and when the flusher is
        not in the middle of a step: otherwise the flusher does it, as it would anyway.
        """
        conn = self._conn
        if conn is None or self.mode != LIVE or self._stopping:
            return False
        if not self._step_lock.acquire(blocking=False):
            return False
        # The reader stands aside before the barrier goes out, so that it cannot take the
        # reply while this thread is between sending and reading.
        with self._read_lock:
            self._callers_reading += 1
        try:
            try:
                if self._conn is not conn or not _writable(conn.sock):
                    return False
                self._drain_now = True
                self._step()
            except Exception:  # as in the flusher: the data stays queued, the flusher goes on
                log.exception("trackd: sending a flush from the calling thread failed")
                return False
            finally:
                self._step_lock.release()
            if self._conn is not conn:
                return False  # lost while sending: the flusher reconnects and sends it again
            self._read_until(conn, w, deadline)
            return True
        finally:
            with self._read_lock:
                self._callers_reading -= 1
            # The flusher's next step (within its interval) resumes the reader. Waking it
            # here would make a third thread runnable just as this one returns: on a busy
            # machine the woken thread can take this one's CPU, and this one then waits for
            # the CPU again behind every other thread of its session.
            self._reader_owed = True

    def _read_until(self, conn: _Conn, w: _Waiter, deadline: float) -> None:
        """Read ``conn`` on this thread until ``w`` is resolved (the caller has made the
        reader stand aside)."""
        poller = select.poll()
        try:
            poller.register(conn.sock, select.POLLIN)
        except (OSError, ValueError):
            return  # closed meanwhile: the connection is lost, the flusher takes over
        while not w.done.is_set() and self._conn is conn:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with self._read_lock:
                if w.done.is_set():
                    return
                if not poller.poll(min(left, 0.05) * 1000):
                    continue
                try:
                    data = conn.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                    if data:
                        self._consume(conn, data)
                except BlockingIOError:
                    continue
                except Exception as e:
                    # As the reader does: the connection is lost. Shutting it down
                    # ends the reader, which closes it.
                    if not isinstance(e, OSError | TrackdError):
                        log.exception("trackd: reading a flush reply failed")
                    self._inbox.append(("lost", conn, f"reading failed: {e}"))
                    self._wake.set()
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    return
                if not data:
                    return  # the daemon closed it: the reader reads the same end

    def _outstanding(self) -> int:
        return len(self._unacked) + len(self._pending) + len(self.buf)

    def _raise_errors(self) -> None:
        if self._errors:
            err = self._errors.pop(0)
            self._errors.clear()
            raise err

    def _remember(self, err: TrackdError) -> None:
        log.error("trackd: %s", err)
        self._errors.append(err)

    # -- the flusher thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            wait = max(0.0, self._last_drain + self._interval - now)
            if (
                self.mode in (CONNECTING, SPOOL)
                and not self._attempt_running
                and self._wants_connection()
            ):
                # Wake for the next attempt; an idle client makes none, and waiting for a
                # time already past would spin.
                wait = min(wait, max(0.0, self._next_attempt - now))
            self._wake.wait(wait)
            self._wake.clear()
            try:
                with self._step_lock:
                    self._step()
            except Exception:  # the flusher must survive anything; the data stays queued
                log.exception("trackd: the flusher hit an unexpected error")
                time.sleep(self._interval)
            if self._stopping and not self.buf:
                self._shutdown()
                return

    def _step(self) -> None:
        if self._reader_owed and not self._callers_reading:
            self._reader_owed = False
            self._reader_resume.set()
        resolved: list[tuple[_Waiter, str, Any, BaseException | None]] = []
        self._handle_inbox(resolved)
        self._maybe_finish_drain()
        # Answer waiting callers before the (possibly long) drain of the buffer.
        for w, status, result, err in resolved:
            w.resolve(status, result, err)
        now = time.monotonic()
        if self._drain_now or now - self._last_drain >= self._interval or self._stopping:
            self._drain_now = False
            self._last_drain = now
            out = self._drain_buffer()
            if out:
                self._dispatch(out)
        self._check_bounds(now)
        self._maybe_finish_drain()
        if (
            self.mode in (CONNECTING, SPOOL)
            and not self._attempt_running
            and time.monotonic() >= self._next_attempt
            and self._wants_connection()
        ):
            self._start_attempt()

    def _wants_connection(self) -> bool:
        """Something to send or a run to hold: an idle client does not reconnect."""
        return bool(
            self._pending
            or self._parked
            or self._held
            or self._open_runs
            or self._spool is not None
            or self.buf
        )

    # -- draining the buffer -----------------------------------------------------------

    def _drain_buffer(self) -> list[Any]:
        """Take everything buffered; return events (seq, bytes) and requests, in order.

        The per-point work is C-level (popleft, join, numpy) so that the flusher costs the
        training thread as little GIL time as possible: about 0.1 us per point when every
        value is a float, against 0.35 us for a tuple per point converted column by column.
        """
        buf = self.buf
        n = len(buf)
        if not n:
            return []
        items: list[Any] = list(itertools.starmap(buf.popleft, itertools.repeat((), n)))
        out: list[Any] = []
        last = items[-1]
        if type(last) is tuple and last[0] == _CTRL:
            # The usual shape of a flush: float points, then the barrier behind them.
            if n == 1 or self._emit_floats(items[:-1], out):
                self._control(last[1], last[2], out)
                return out
        elif self._emit_floats(items, out):
            return out
        # Tuples among them: control items, or points whose value is not a float. The first
        # item of a packed row is one of its bytes, never _CTRL.
        firsts = np.fromiter(map(_SID, items), dtype=np.int64, count=n)
        start = 0
        for i in [*np.flatnonzero(firsts == _CTRL).tolist(), n]:
            if i > start:
                seg = items[start:i]
                if not self._emit_floats(seg, out):
                    self._emit_objects(seg, out)
            if i < n:
                _c, kind, payload, _ = items[i]
                self._control(kind, payload, out)
            start = i + 1
        return out

    def _emit_floats(self, items: list[Any], out: list[Any]) -> bool:
        """Emit ``items`` if they are all float points (packed rows); else return False."""
        try:
            raw = b"".join(items)
        except TypeError:
            return False
        rows = np.frombuffer(raw, dtype=_ROW)
        self._emit_points(rows["sid"], rows["step"], rows["time"], rows["value"], None, out)
        return True

    def _emit_objects(self, items: list[Any], out: list[Any]) -> None:
        """Emit points of which some keep their value object (no control items among them)."""
        unpack = POINT.unpack
        pts = [unpack(it) if type(it) is bytes else it for it in items]
        n = len(pts)
        sids = np.fromiter(map(_SID, pts), dtype=np.int64, count=n)
        steps = np.fromiter(map(_STEP, pts), dtype=np.int64, count=n)
        times = np.fromiter(map(_TIME, pts), dtype=np.float64, count=n)
        tagged = sids < 0
        sids = np.where(tagged, ~sids, sids)
        self._emit_points(sids, steps, times, None, (tagged, list(map(_VALUE, pts))), out)

    def _control(self, kind: str, payload: Any, out: list[Any]) -> None:
        if kind == "event":
            self._seq += 1
            ev = payload.with_envelope(self.client_id, self._seq, time.time())
            out.append((self._seq, encode_event(ev)))
        elif kind == "req":
            out.append(payload)
        elif kind == "steps":
            for skey, nxt in payload.items():
                sid = self.sequence_id(*skey)
                if nxt > self._next_step.get(sid, 0):
                    self._next_step[sid] = nxt

    def _emit_points(
        self,
        sids: Any,
        steps: Any,
        times: Any,
        values: Any,
        objects: tuple[Any, list[Any]] | None,
        out: list[Any],
    ) -> None:
        """Turn columns of points into one event per sequence (in order of sequence id).

        Args:
            sids: Sequence ids (int64 array).
            steps: Steps (int64 array), ``AUTO_STEP`` where the next step is meant.
            times: Wall-clock times (float64 array).
            values: The values as a float64 array when all are floats, else None.
            objects: When ``values`` is None: a mask of the points whose value is not a
                float, and every point's value as it was tracked.
        """
        now = time.time()
        groups: list[tuple[int, Any]]
        first = int(sids[0])
        if (sids == first).all():
            groups = [(first, None)]
        else:
            counts = np.bincount(sids)
            present = np.flatnonzero(counts)
            if len(present) <= _GROUP_BY_MASK_MAX:
                # A comparison pass per sequence beats a sort while sequences are few.
                groups = [(sid, np.flatnonzero(sids == sid)) for sid in present.tolist()]
            else:
                order = np.argsort(sids, kind="stable")
                ends = np.cumsum(counts[present]).tolist()
                groups = [
                    (sid, order[a:b])
                    for sid, a, b in zip(present.tolist(), [0, *ends[:-1]], ends, strict=True)
                ]
        for sid, idx in groups:
            container, name, ckey = self._seq_keys[sid]
            if idx is None:
                g_ts, st = times, steps
            else:
                g_ts, st = times[idx], steps[idx]
            if values is not None:
                vals = values if idx is None else values[idx]
            else:
                assert objects is not None
                tagged, py_values = objects
                if idx is None:
                    vals = _values_array(py_values)
                elif not tagged[idx].any():
                    vals = np.fromiter(
                        map(py_values.__getitem__, idx.tolist()), dtype=np.float64, count=len(idx)
                    )
                else:
                    vals = _values_array([py_values[i] for i in idx.tolist()])
            m = len(g_ts)
            nxt = self._next_step.get(sid, 0)
            if st.min() >= 0:
                nxt = max(nxt, int(st.max()) + 1)
            elif st.max() < 0:
                st = np.arange(nxt, nxt + m, dtype=np.int64)
                nxt += m
            else:
                # Auto steps among explicit ones: each continues after the largest step so far.
                filled = []
                for s in st.tolist():
                    if s < 0:
                        s = nxt
                    filled.append(s)
                    if s >= nxt:
                        nxt = s + 1
                st = np.array(filled, dtype=np.int64)
            self._next_step[sid] = nxt
            context = self.contexts.contexts[ckey]
            for a in range(0, m, MAX_EVENT_POINTS):
                b = a + MAX_EVENT_POINTS
                self._seq += 1
                ev = SequenceAppended.from_arrays(
                    container=container,
                    name=name,
                    context=context,
                    steps=st[a:b],
                    values=vals[a:b],
                    timestamps=g_ts[a:b],
                    client_id=self.client_id,
                    client_seq=self._seq,
                    client_time=now,
                )
                out.append((self._seq, encode_event(ev)))

    # -- sending -----------------------------------------------------------------------

    def _dispatch(self, out: list[Any]) -> None:
        mode = self.mode
        if mode == LIVE:
            self._send(out, keep=True)
        elif mode == CONNECTING:
            for item in out:
                if isinstance(item, _Req):
                    self._park(item)
                else:
                    self._pending.append(item)
                    self._mem += len(item[1])
        else:  # SPOOL or DRAIN: everything goes to the spool first
            events = [it for it in out if not isinstance(it, _Req)]
            self._spool_append(events)
            if mode == DRAIN:
                self._send(out, keep=False)
            else:
                for item in out:
                    if isinstance(item, _Req):
                        self._park(item)

    def _park(self, req: _Req) -> None:
        if req.op == "open_container" and req.waiter is None:
            # Runs this client holds are re-opened on every (re)connect anyway.
            self._held.add(req.args["container"])
            return
        if req.op == "close_container":
            # Locks belong to connections: without one, nothing is held.
            self._held.discard(req.args["container"])
            return
        if req.waiter is not None and self.mode == SPOOL:
            # A caller waits: try to connect now; if that fails, answer it from the spool.
            req.urgent_gen = self._attempt_gen + 1
            self._next_attempt = 0.0
        self._parked.append(req)

    def _send(self, items: Iterable[Any], *, keep: bool) -> None:
        """Send events and requests in order; ``keep`` puts the events in ``unacked``."""
        conn = self._conn
        if conn is None:
            # Lost meanwhile: requests wait for the next connection; events stay where they
            # are kept (in memory when ``keep``, else in the spool).
            for item in items:
                if isinstance(item, _Req):
                    self._park(item)
                elif keep:
                    self._pending.append(item)
                    self._mem += len(item[1])
            return
        frames: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        limit = conn.frame_limit
        last_seq = self._last_sent

        def cut() -> None:
            nonlocal batch, size
            if batch:
                frames.append(encode_message(Append(events=tuple(batch)), max_frame=1 << 31))
                batch, size = [], 0

        for item in items:
            if isinstance(item, _Req):
                cut()
                if item.op == "open_container" and item.waiter is None:
                    self._held.add(item.args["container"])
                elif item.op == "close_container":
                    self._held.discard(item.args["container"])
                self._req_id += 1
                item.seq = last_seq
                self._inflight[self._req_id] = item
                frames.append(encode_message(Request(self._req_id, item.op, item.args)))
                continue
            seq, payload = item
            if size and size + len(payload) > limit:
                cut()
            batch.append(payload)
            size += len(payload)
            last_seq = seq
            if keep:
                self._unacked.append(item)
                self._mem += len(payload)
        cut()
        self._last_sent = last_seq
        try:
            _send_all(conn.sock, frames)
        except (OSError, _Stalled) as e:
            self._lost(conn, f"sending failed: {e}")

    def _spool_append(self, events: list[tuple[int, bytes]], why: str = "") -> None:
        """Append events to the spool file (created on first use; ``why`` is logged then).

        When the spool cannot be written (disk full, no permission) nothing can make these
        events durable: they are dropped, and the next flush raises an error saying so.
        """
        if not events:
            return
        try:
            spool = self._ensure_spool(events[0][0], why)
            spool.append([p for _s, p in events])
        except OSError as e:
            where = self.layout.spool_dir if self._spool is None else self._spool.path
            self._remember(
                DaemonUnavailableError(
                    f"no daemon answered and the spool {where} cannot be written ({e}); "
                    f"{len(events)} events were lost"
                )
            )
            return
        self._spool_last = events[-1][0]

    def _ensure_spool(self, first_seq: int, why: str = "") -> SpoolWriter:
        if self._spool is None:
            self._spool = SpoolWriter(self.layout.ensure().spool_dir, self.client_id)
            self._spool_first = first_seq
            self._spool_last = first_seq - 1
            log.warning(
                "trackd: %s; spooling events to %s",
                why or f"no daemon on {self.sock_path}",
                self._spool.path,
            )
        return self._spool

    # -- connection life cycle ---------------------------------------------------------

    def _start_attempt(self) -> None:
        if self._first_attempt_at is None:
            self._first_attempt_at = time.monotonic()
        self._attempt_gen += 1
        self._attempt_running = True
        allow_autostart = (
            self.settings.autostart
            and time.monotonic() - self._last_autostart >= AUTOSTART_INTERVAL
        )
        hello = Hello(client_id=self.client_id, pid=os.getpid(), repo=str(self.layout.root))
        t = threading.Thread(
            target=self._attempt,
            args=(self._attempt_gen, hello, allow_autostart),
            name="trackd-connect",
            daemon=True,
        )
        t.start()

    def _attempt(self, gen: int, hello: Hello, allow_autostart: bool) -> None:
        """Connector thread: connect (auto-starting a daemon if allowed) and report."""
        try:
            try:
                sock, welcome = handshake(self.sock_path, hello)
            except Unreachable:
                if not allow_autostart:
                    raise
                self._inbox.append(("autostarted", gen))
                if not autostart(self.sock_path):
                    raise
                sock, welcome = handshake(self.sock_path, hello)
        except Exception as e:  # reported to the flusher, which decides
            self._inbox.append(("unreachable", gen, e))
        else:
            self._inbox.append(("connected", gen, sock, welcome))
        self._wake.set()
        if self._flusher_done:
            self._close_inbox_sockets()

    def _close_inbox_sockets(self) -> None:
        """Close connections the connector made that the flusher will never take, and take
        the acks that arrived on the current one."""
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            if item[0] == "connected":
                item[2].close()
            elif item[0] == "msg" and item[1] is self._conn and isinstance(item[2], Ack):
                self._on_ack(item[2].seq)

    def _handle_inbox(self, resolved: list[tuple[_Waiter, str, Any, BaseException | None]]) -> None:
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            if kind == "msg":
                if item[1] is self._conn:
                    self._on_message(item[2], resolved)
            elif kind == "lost":
                if self._conn is not None and item[1] is self._conn:
                    self._lost(self._conn, item[2])
            elif kind == "connected":
                self._attempt_running = False
                self._on_connected(item[2], item[3], resolved)
            elif kind == "unreachable":
                self._attempt_running = False
                self._on_unreachable(item[1], item[2], resolved)
            elif kind == "autostarted":
                self._last_autostart = time.monotonic()
            elif kind == "spool_now":
                w: _Waiter = item[1]
                if self._conn is not None:
                    resolved.append((w, "connected", None, None))
                else:
                    self._enter_spool()
                    resolved.append((w, "offline", self._sync_spool(), None))

    def _on_message(
        self, msg: Any, resolved: list[tuple[_Waiter, str, Any, BaseException | None]]
    ) -> None:
        if isinstance(msg, Ack):
            self._on_ack(msg.seq)
        elif isinstance(msg, Reply):
            req = self._inflight.pop(msg.id, None)
            if req is None:
                return
            if req.op == "flush":
                self._on_ack(req.seq)
                self._flushed_seq = max(self._flushed_seq, req.seq)
            if req.op == "open_container" and req.waiter is not None:
                # (Runs opened without waiting were counted as held when sent.)
                self._held.add(req.args["container"])
            if req.waiter is not None:
                resolved.append((req.waiter, "ok", msg.result, None))
        elif isinstance(msg, ErrorReply):
            err = error_from_code(msg.code, msg.message)
            # Connection-wide errors were recorded by the reader (_on_message_early).
            if msg.id is None:
                if self._conn is not None:
                    self._lost(self._conn, f"the daemon closed the connection: {err}")
            elif msg.id != APPEND_REJECTED:
                req = self._inflight.pop(msg.id, None)
                if req is None:
                    return
                if req.op == "open_container":
                    self._held.discard(req.args["container"])
                if req.waiter is not None:
                    resolved.append((req.waiter, "error", None, err))
                else:
                    self._remember(err)

    def _on_ack(self, seq: int) -> None:
        if seq <= self._acked:
            return
        self._acked = seq
        unacked = self._unacked
        while unacked and unacked[0][0] <= seq:
            self._mem -= len(unacked.popleft()[1])

    def _on_connected(
        self,
        sock: socket.socket,
        welcome: Welcome,
        resolved: list[tuple[_Waiter, str, Any, BaseException | None]],
    ) -> None:
        if self._stopping and self.mode == SPOOL:
            sock.close()
            return
        conn = _Conn(sock, welcome)
        sock.settimeout(0.5)
        self._conn = conn
        self._backoff = BACKOFF_MIN
        self._first_attempt_at = None
        self._on_ack(welcome.hwm)
        threading.Thread(
            target=self._reader, args=(conn,), name="trackd-reader", daemon=True
        ).start()
        log.info(
            "trackd: connected to the daemon at %s (pid %d)", self.sock_path, welcome.daemon_pid
        )
        reopen: list[Any] = [
            _Req("open_container", {"container": h}, None) for h in sorted(self._held)
        ]
        parked, self._parked = self._parked, []
        if self.mode == SPOOL and self._spool is not None:
            self.mode = DRAIN
            self._send(reopen, keep=False)
            self._replay_spool(welcome.hwm)
            self._send(parked, keep=False)
        else:
            pending = list(self._unacked) + list(self._pending)
            self._unacked.clear()
            self._pending.clear()
            self._mem = 0
            self.mode = LIVE
            self._send([*reopen, *pending, *parked], keep=True)

    def _replay_spool(self, hwm: int) -> None:
        spool = self._spool
        if spool is None:
            return
        seq = self._spool_first
        try:
            for chunk in iter_spool(spool.path):
                todo = [(seq + i, p) for i, p in enumerate(chunk) if seq + i > hwm]
                seq += len(chunk)
                if todo:
                    self._send(todo, keep=False)
                    if self._conn is None:
                        return
        except (OSError, LogCorruptedError) as e:
            self._remember(
                DaemonUnavailableError(
                    f"cannot replay the spool file {spool.path} from client_seq {seq}: {e}"
                )
            )
        self._last_sent = max(self._last_sent, self._spool_last)

    def _maybe_finish_drain(self) -> None:
        """Once the daemon acked everything spooled, delete the spool and go live."""
        spool = self._spool
        if self.mode != DRAIN or spool is None or self._acked < self._spool_last:
            return
        self._spool = None
        try:
            spool.remove()
        except OSError as e:
            log.warning("trackd: cannot remove the replayed spool file %s: %s", spool.path, e)
        log.info("trackd: spool %s replayed; sending live again", spool.path)
        self.mode = LIVE

    def _on_unreachable(
        self,
        gen: int,
        err: BaseException,
        resolved: list[tuple[_Waiter, str, Any, BaseException | None]],
    ) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        if isinstance(err, TrackdError) and refused(err):
            self._remember(err)
        elif not isinstance(err, TrackdError):
            log.warning("trackd: connecting to %s failed: %r", self.sock_path, err)
        self._enter_spool()
        if any(r.waiter is not None and r.urgent_gen > gen for r in self._parked):
            self._next_attempt = 0.0  # someone waits for a newer attempt: make it now
        waiting = [r for r in self._parked if r.waiter is not None and r.urgent_gen <= gen]
        if not waiting:
            return
        self._parked = [r for r in self._parked if r not in waiting]
        where = self._sync_spool()
        for r in waiting:
            assert r.waiter is not None
            if r.op == "flush":
                resolved.append((r.waiter, "offline", where, None))
            else:
                resolved.append((r.waiter, "offline", None, None))

    def _enter_spool(self, why: str = "") -> None:
        """Move every event held in memory to the spool; later events follow them there."""
        if self.mode == SPOOL:
            return
        events = list(self._unacked) + list(self._pending)
        self._unacked.clear()
        self._pending.clear()
        self._mem = 0
        self._spool_append(events, why)
        self.mode = SPOOL

    def _sync_spool(self) -> tuple[Path, int] | None:
        """Make the spool durable; return (its path, its event count), None when empty."""
        spool = self._spool
        if spool is None:
            return None
        try:
            spool.sync()
        except OSError as e:
            self._remember(DaemonUnavailableError(f"cannot sync the spool file {spool.path}: {e}"))
        return spool.path, spool.records

    def _lost(self, conn: _Conn, reason: str) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        log.warning("trackd: lost the connection to %s: %s", self.sock_path, reason)
        # Requests in flight are sent again on the next connection (held runs re-open anyway).
        for rid in sorted(self._inflight):
            req = self._inflight[rid]
            if req.waiter is not None or req.op not in ("open_container", "close_container"):
                self._parked.append(req)
        self._inflight.clear()
        self._next_attempt = 0.0
        if self.mode == DRAIN:
            self.mode = SPOOL
        else:
            self.mode = CONNECTING

    def _check_bounds(self, now: float) -> None:
        if self.mode == LIVE and self._mem > MEMORY_BOUND:
            # The daemon reads but does not keep up: park the backlog on disk, keep sending.
            events = list(self._unacked)
            self._unacked.clear()
            self._mem = 0
            self._spool_append(
                events,
                f"the daemon on {self.sock_path} has not confirmed "
                f"{MEMORY_BOUND >> 20} MiB of events",
            )
            self.mode = DRAIN
        elif self.mode == CONNECTING and (
            self._mem > MEMORY_BOUND
            or (
                self._first_attempt_at is not None
                and now - self._first_attempt_at > DISCONNECTED_SPOOL_AFTER
            )
        ):
            self._enter_spool()

    def _reader(self, conn: _Conn) -> None:
        """Reader thread: parse frames from the daemon and post them to the flusher.

        Stands aside while flushing callers read the socket themselves (:meth:`_flush_here`).
        """
        sock = conn.sock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        reason = "the daemon closed the connection"
        try:
            while True:
                if self._callers_reading:
                    self._reader_resume.wait(0.5)
                    self._reader_resume.clear()
                elif not poller.poll(500):
                    pass
                else:
                    with self._read_lock:
                        # A flushing caller may have read what woke us: look again under
                        # the lock. (The socket has a send timeout, so recv() would wait
                        # for data, MSG_DONTWAIT or not, and then report a lost link.)
                        if self._callers_reading or not poller.poll(0):
                            continue
                        try:
                            data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            continue
                        if not data:
                            break
                        self._consume(conn, data)
                    continue
                if self._conn is not conn:
                    break
        except (OSError, TrackdError) as e:
            reason = f"reading failed: {e}"
        finally:
            self._inbox.append(("lost", conn, reason))
            self._wake.set()
            sock.close()

    def _consume(self, conn: _Conn, data: bytes) -> None:
        """Parse bytes read from ``conn`` (holding the read lock) and post the messages."""
        wake = False
        for body in conn.dec.feed(data):
            msg = decode_message(body)
            if type(msg) is not Ack and not self._on_message_early(conn, msg):
                wake = True
            self._inbox.append(("msg", conn, msg))
        if wake:
            self._wake.set()

    def _on_message_early(self, conn: _Conn, msg: Any) -> bool:
        """On the reading thread, before the flusher sees ``msg``: answer a waiting flush.

        Under load every thread hand-off waits for a CPU, so a flush reply resolves its
        caller here rather than through the flusher. Errors that reject appends are recorded
        here too, in the order they arrived, so that a flush answered here still raises an
        error the daemon reported before it. The flusher does the rest of the bookkeeping
        when it takes the message from the inbox (resolving again is a no-op).

        Returns:
            True when nothing about ``msg`` is urgent for the flusher, so that its next
            step (within its interval) is soon enough and it need not be woken now.
        """
        if self._conn is not conn:
            return False
        if isinstance(msg, Reply):
            req = self._inflight.get(msg.id)
            if req is not None and req.op == "flush" and req.waiter is not None:
                self._flushed_seq = max(self._flushed_seq, req.seq)
                req.waiter.resolve("ok", msg.result)
                return True
        elif isinstance(msg, ErrorReply) and (msg.id is None or msg.id == APPEND_REJECTED):
            self._remember(error_from_code(msg.code, msg.message))
            return msg.id is not None
        return False

    def _shutdown(self) -> None:
        self._flusher_done = True
        # A flush reply handled on the reader thread, and acks still in the inbox, confirm
        # events that would otherwise be spooled (and ingested again) at every exit.
        self._on_ack(self._flushed_seq)
        self._close_inbox_sockets()
        if self._unacked or self._pending:
            # Not confirmed durable by a daemon: keep them in a spool for one to ingest.
            self._enter_spool(
                f"exiting with {len(self._unacked) + len(self._pending)} events the daemon "
                f"on {self.sock_path} has not confirmed"
            )
        conn = self._conn
        if conn is not None:
            self._conn = None
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        spool = self._spool
        if spool is not None:
            self._spool = None
            try:
                if spool.records == 0:
                    spool.remove()
                else:
                    spool.close()
            except OSError as e:
                log.warning("trackd: closing the spool file %s failed: %s", spool.path, e)


def _values_array(values: list[Any]) -> Any:
    """The values of one sequence that are not all Python floats, in the dtype numpy infers
    from them (bool, an int, float32 or float64; anything else becomes float64)."""
    vals = np.array(values)
    if vals.dtype.kind not in "biuf":
        vals = np.array(values, dtype=np.float64)
    return vals


def _writable(sock: socket.socket) -> bool:
    """True when ``sock`` can take bytes now (a stalled daemon leaves its buffer full);
    False when it was closed meanwhile (the connection was lost)."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLOUT)
    except (OSError, ValueError):
        return False
    return bool(poller.poll(0))


def _send_all(sock: socket.socket, frames: list[bytes]) -> None:
    """Send every frame; raise _Stalled when no byte goes out for STALL_TIMEOUT."""
    if not frames:
        return
    data = memoryview(b"".join(frames) if len(frames) > 1 else frames[0])
    last_progress = time.monotonic()
    while data:
        try:
            n = sock.send(data[: 1 << 20])
        except TimeoutError:
            if time.monotonic() - last_progress > STALL_TIMEOUT:
                raise _Stalled(f"the daemon read nothing for {STALL_TIMEOUT:g}s") from None
            continue
        data = data[n:]
        last_progress = time.monotonic()


# -- the registry: one client per (process, repository) -------------------------------

_clients: dict[Path, Client] = {}
_registry_lock = threading.Lock()


def get_client(root: Path) -> Client:
    """The client of this process for the repository at ``root`` (created on first use)."""
    c = _clients.get(root)
    if c is not None:
        return c
    with _registry_lock:
        c = _clients.get(root)
        if c is None:
            c = _clients[root] = Client(root)
        return c


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for c in _clients.values():
        c._after_fork_in_child()


def _at_exit() -> None:
    """Close the runs left open and flush, briefly and without raising."""
    with warnings.catch_warnings():
        # Warnings filters may turn SpoolWarning into an error; at exit it is a message.
        warnings.simplefilter("default")
        for c in list(_clients.values()):
            timeout = min(c.settings.flush_timeout_s, EXIT_TIMEOUT)
            for run in list(c._open_runs.values()):
                try:
                    run.close(timeout=timeout)
                except Exception as e:  # exit must go on
                    log.warning("trackd: closing run %s at exit failed: %s", run.hash, e)
            try:
                c.flush(timeout=timeout)
            except Exception as e:
                log.warning("trackd: the final flush failed: %s", e)
    shutdown_clients()


def shutdown_clients() -> None:
    """Stop every client of this process (their threads, connections and spools) and forget
    them; the next run starts afresh. Runs still open are not finished."""
    with _registry_lock:
        clients = list(_clients.values())
        _clients.clear()
    for c in clients:
        c.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
