"""One client connection: peer check, framing, handshake, validation and dispatch.

Owns: :class:`Session`, an :class:`asyncio.Protocol` (callbacks, no task per connection, for
speed). It checks the peer's uid with ``SO_PEERCRED``, splits the byte stream with the
sans-IO :class:`~trackd.wire.FrameDecoder`, requires Hello first, validates every event of
an Append before anything of it is queued, routes flushes through the writer queue so they
are ordered after this connection's appends, and answers the other requests at once.
Imports ``trackd.wire``, ``trackd.eventlog`` (codec, layout) and sibling daemon modules.

Error scopes follow :mod:`trackd.wire.protocol`: a rejected Append frame gets
``ErrorReply(id=0)``, a failed request ``ErrorReply(id=N)``; both keep the connection open.
Anything wrong with the connection itself gets ``ErrorReply(id=None)`` and closes it, and
only it: no exception raised while serving one session reaches the server.

A Hello whose ``repo`` is the empty string opens a *control* connection: it is attached to
no repository and may only ask for ``status`` and ``ping`` (``trackd daemon status`` uses it).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgpack

from trackd.daemon.writer import Batch, memory_cost
from trackd.errors import (
    AccessDeniedError,
    DaemonUnavailableError,
    EventError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    ProtocolError,
    TrackdError,
)
from trackd.eventlog.events import Event, decode_event
from trackd.eventlog.layout import RepoLayout
from trackd.wire import (
    APPEND_REJECTED,
    PROTOCOL_VERSION,
    Ack,
    Append,
    ErrorReply,
    FrameDecoder,
    Hello,
    Message,
    Reply,
    Request,
    Welcome,
    decode_message,
    encode_message,
    error_reply,
)

if TYPE_CHECKING:
    from trackd.daemon.repository import Repository
    from trackd.daemon.server import Server

__all__ = ["Session"]

log = logging.getLogger("trackd.daemon.session")

_UCRED = struct.Struct("3i")


class _State(enum.Enum):
    AWAIT_HELLO = "awaiting hello"
    OPENING = "opening repository"
    READY = "ready"
    CLOSED = "closed"


class Session(asyncio.Protocol):
    """Serves one client connection.

    Args:
        server: The daemon, for settings, repositories and status.

    Attributes:
        peer_pid: Process id of the peer (``SO_PEERCRED``), 0 until connected.
        peer_uid: User id of the peer.
        client_id: The client id from Hello (16 bytes), empty before Hello.
        repo: The repository the connection writes to, None before Hello or for control
            connections.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._max_frame = server.settings.max_frame
        self._decoder = FrameDecoder(self._max_frame)
        self._transport: asyncio.Transport | None = None
        self._state = _State.AWAIT_HELLO
        self._backlog: list[bytes] = []
        self._paused_for: set[str] = set()
        # Fairness under memory pressure: after reads resume, every connection is owed one
        # read before the next pause stops it (see set_backpressure).
        self._owed_read = False
        self._pause_after_read = False
        self._acked = 0
        self.peer_pid = 0
        self.peer_uid = -1
        self.client_id = b""
        self.repo: Repository | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Check the peer's uid, then wait for Hello."""
        # uvloop's transports do not subclass asyncio.Transport but implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.sessions.add(self)
        try:
            sock = self._transport.get_extra_info("socket")
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            self.peer_pid, self.peer_uid, _gid = _UCRED.unpack(raw)
        except (OSError, AttributeError, struct.error) as e:
            self._fail(AccessDeniedError(f"cannot identify the peer of this connection: {e}"))
            return
        if self.peer_uid != os.getuid():
            log.warning(
                "refused a connection from pid %d: uid %d is not the daemon's uid %d",
                self.peer_pid,
                self.peer_uid,
                os.getuid(),
            )
            self._fail(
                AccessDeniedError(
                    f"access denied: peer uid {self.peer_uid} is not the daemon's uid {os.getuid()}"
                ),
                quiet=True,
            )

    def data_received(self, data: bytes) -> None:
        """Split frames and handle each; a broken stream closes this connection only."""
        if self.closed:
            return
        self._owed_read = False
        if self._pause_after_read:
            self._pause_after_read = False
            self._pause("pressure")
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            self._fail(e)
            return
        try:
            for body in frames:
                if self.closed:
                    return
                if self._state is _State.OPENING:
                    self._backlog.append(body)
                else:
                    self._frame(body)
        except Exception as e:
            log.exception("%s: unexpected error; closing this connection", self)
            self._fail(TrackdError(f"internal error in the daemon: {type(e).__name__}: {e}"))

    def eof_received(self) -> bool | None:
        """The client closed its side; close ours (pending replies are still written)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; locks it held are released by the repository."""
        if self._decoder.buffered and not self.closed:
            log.info(
                "%s: connection closed in the middle of a frame (%d bytes dropped)",
                self,
                self._decoder.buffered,
            )
        self._state = _State.CLOSED
        self._backlog = []
        self._server.forget(self)
        if self.repo is not None:
            self.repo.detach(self)
        log.debug("%s: disconnected", self)

    def pause_writing(self) -> None:
        """The peer reads slowly; acks queue up in the transport (they are tiny)."""

    def resume_writing(self) -> None:
        """See :meth:`pause_writing`."""

    # -- called by the repository and the server -------------------------------------------

    def on_durable(self, seq: int) -> None:
        """Send a cumulative Ack once events up to ``seq`` are durable."""
        if seq > self._acked and not self.closed:
            self._acked = seq
            self._send(Ack(seq))

    def set_backpressure(self, paused: bool) -> None:
        """Stop or resume reading because the repository's memory budget is full.

        A connection not read since reads last resumed gets that one read before it
        pauses: otherwise the connections the event loop happens to serve first after a
        resume fill the budget again every time, and the others are never read (with 64
        producers some waited over 10 s). The budget is exceeded by at most one read per
        connection.
        """
        if paused:
            if self._owed_read:
                self._pause_after_read = True
            else:
                self._pause("pressure")
        else:
            # Owed: it was paused, or was let through and has not read yet.
            self._owed_read = "pressure" in self._paused_for or self._pause_after_read
            self._pause_after_read = False
            self._resume("pressure")

    def stop_reading(self) -> None:
        """Shutdown: read nothing more; what was read is already queued."""
        self._pause("shutdown")

    @property
    def closed(self) -> bool:
        """True once the connection is closed or closing."""
        return self._state is _State.CLOSED

    def close(self) -> None:
        """Close after writing what is queued (replies, acks)."""
        self._state = _State.CLOSED
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping anything not yet written (fatal errors)."""
        self._state = _State.CLOSED
        if self._transport is not None:
            self._transport.abort()

    def __repr__(self) -> str:
        cid = self.client_id.hex()[:8] if self.client_id else "-"
        return f"<session pid {self.peer_pid} client {cid}>"

    # -- frames ----------------------------------------------------------------------------

    def _frame(self, body: bytes) -> None:
        try:
            msg = decode_message(body)
        except ProtocolError as e:
            rid = _request_id(body)
            if rid is not None and self._state is _State.READY:
                self._send(error_reply(rid, e))
            else:
                self._fail(e)
            return
        if self._state is _State.AWAIT_HELLO:
            if isinstance(msg, Hello):
                self._hello(msg)
            else:
                self._fail(ProtocolError(f"the first message must be hello, got {_kind(msg)}"))
            return
        if isinstance(msg, Append):
            self._append(msg)
        elif isinstance(msg, Request):
            self._request(msg)
        elif isinstance(msg, Hello):
            self._fail(ProtocolError("hello was already received on this connection"))
        else:
            self._fail(ProtocolError(f"a client may not send {_kind(msg)} messages"))

    def _hello(self, hello: Hello) -> None:
        if hello.proto != PROTOCOL_VERSION:
            self._fail(
                ProtocolError(
                    f"client speaks protocol version {hello.proto}; this daemon speaks "
                    f"version {PROTOCOL_VERSION}"
                )
            )
            return
        self.client_id = hello.client_id
        if hello.repo == "":
            self._state = _State.READY
            self._send(self._welcome(0))
            return
        if not os.path.isabs(hello.repo):
            self._fail(InvalidNameError(f"repository path {hello.repo!r} must be absolute"))
            return
        try:
            layout = RepoLayout.at(hello.repo)
        except InvalidNameError as e:
            self._fail(e)
            return
        if not layout.root.is_dir():
            self._fail(
                NotFoundError(f"repository path {hello.repo!r} does not exist or is not a folder")
            )
            return
        if self._server.stopping:
            self._fail(DaemonUnavailableError("the daemon is shutting down"))
            return
        root = Path(os.path.realpath(layout.root))
        self._state = _State.OPENING
        self._pause("opening")
        task = asyncio.get_running_loop().create_task(self._server.repository(root))
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Repository]) -> None:
        if self.closed:
            return
        if task.cancelled():
            self._fail(DaemonUnavailableError("the daemon is shutting down"))
            return
        exc = task.exception()
        if exc is not None:
            err = exc if isinstance(exc, TrackdError) else TrackdError(str(exc))
            self._fail(err)
            return
        repo = task.result()
        if self._server.stopping:
            self._fail(DaemonUnavailableError("the daemon is shutting down"))
            return
        self.repo = repo
        repo.attach(self)
        hwm = repo.hwm(self.client_id)
        self._acked = hwm
        self._state = _State.READY
        self._send(self._welcome(hwm))
        log.info("%s: connected to %s (hwm %d)", self, repo.layout.root, hwm)
        backlog, self._backlog = self._backlog, []
        try:
            for body in backlog:
                if self.closed:
                    return
                self._frame(body)
        except Exception as e:
            log.exception("%s: unexpected error; closing this connection", self)
            self._fail(TrackdError(f"internal error in the daemon: {type(e).__name__}: {e}"))
            return
        self._resume("opening")

    def _welcome(self, hwm: int) -> Welcome:
        return Welcome(daemon_pid=os.getpid(), max_frame=self._max_frame, hwm=hwm)

    def _append(self, msg: Append) -> None:
        repo = self.repo
        if repo is None:
            self._send(
                ErrorReply(
                    APPEND_REJECTED,
                    InvalidInputError.code,
                    "this connection names no repository (hello with repo=''); it cannot append",
                )
            )
            return
        events: list[Event] = []
        nbytes = 0
        last = 0
        cid = self.client_id
        for i, payload in enumerate(msg.events):
            try:
                ev = decode_event(payload)
            except EventError as e:
                self._reject(e.code, f"event {i} (client_seq {_peek_seq(payload)}) rejected: {e}")
                return
            seq = ev.client_seq
            if ev.client_id != cid:
                self._reject(
                    EventError.code,
                    f"event {i} (client_seq {seq}) rejected: its client_id "
                    f"{ev.client_id.hex()} is not this connection's {cid.hex()}",
                )
                return
            if seq <= last:
                self._reject(
                    EventError.code,
                    f"event {i} (client_seq {seq}) rejected: client_seq must start at 1 and "
                    f"increase within a frame (previous {last})",
                )
                return
            last = seq
            events.append(ev)
            nbytes += memory_cost(payload)
        if events:
            repo.submit(Batch(events, list(msg.events), nbytes, sink=self))

    def _reject(self, code: str, message: str) -> None:
        log.info("%s: append frame rejected: %s", self, message)
        self._send(ErrorReply(APPEND_REJECTED, code, f"append frame rejected, {message}"))

    def _request(self, req: Request) -> None:
        op, rid = req.op, req.id
        if op == "ping":
            self._send(Reply(rid, {"pong": True}))
        elif op == "status":
            self._send(Reply(rid, self._server.status()))
        elif self.repo is None:
            self._send(
                ErrorReply(
                    rid,
                    InvalidInputError.code,
                    f"{op} needs a repository; this connection said hello without one",
                )
            )
        elif op == "flush":
            # Success is answered the moment the projector applies the barrier; a failure
            # (the log or views failed, the daemon stops) through the future.
            fut = self.repo.flush(on_applied=lambda offset: self._flush_applied(rid, offset))
            fut.add_done_callback(lambda f: self._flush_failed(rid, f))
        else:
            container = req.args.get("container")
            if not isinstance(container, str) or not container:
                self._send(
                    error_reply(
                        rid,
                        InvalidNameError(
                            f"{op} needs args.container, a non-empty string; got {container!r}"
                        ),
                    )
                )
            elif op == "open_container":
                try:
                    self.repo.open_container(container, self)
                except TrackdError as e:
                    self._send(error_reply(rid, e))
                else:
                    self._send(Reply(rid, {"container": container, "locked": True}))
            else:
                released = self.repo.close_container(container, self)
                self._send(Reply(rid, {"container": container, "released": released}))

    def _flush_applied(self, rid: int, offset: int) -> None:
        if not self.closed:
            self._send(Reply(rid, {"offset": offset}))

    def _flush_failed(self, rid: int, fut: asyncio.Future[int]) -> None:
        if self.closed:
            return
        if fut.cancelled():
            self._send(error_reply(rid, DaemonUnavailableError("the daemon is stopping")))
            return
        exc = fut.exception()
        if exc is not None:
            err = exc if isinstance(exc, TrackdError) else TrackdError(str(exc))
            self._send(error_reply(rid, err))

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(encode_message(msg, max_frame=1 << 31))

    def _fail(self, exc: TrackdError, *, quiet: bool = False) -> None:
        """Send ErrorReply(id=None) and close this connection."""
        if self.closed:
            return
        if not quiet:
            log.info("%s: closing connection: %s: %s", self, exc.code, exc)
        self._send(error_reply(None, exc))
        self.close()

    def _pause(self, reason: str) -> None:
        t = self._transport
        if not self._paused_for and t is not None and not t.is_closing():
            t.pause_reading()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused_for:
            return
        self._paused_for.discard(reason)
        t = self._transport
        if not self._paused_for and t is not None and not t.is_closing():
            t.resume_reading()


def _kind(msg: Message) -> str:
    return type(msg).__name__.lower()


def _request_id(body: bytes) -> int | None:
    """The id of a request frame that failed validation, so the error can be request-scoped."""
    try:
        obj: Any = msgpack.unpackb(body, raw=False)
    except Exception:
        return None
    if isinstance(obj, dict) and obj.get("k") == "req":
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and rid > 0:
            return rid
    return None


def _peek_seq(payload: bytes) -> str:
    """The client_seq of an event that failed to decode, if it can be seen, else ``?``."""
    try:
        obj: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        return "?"
    if isinstance(obj, (list, tuple)) and len(obj) >= 4 and isinstance(obj[3], int):
        return str(obj[3])
    return "?"
