"""A raw protocol client for daemon tests: frames over a blocking socket, nothing hidden.

Unlike :class:`trackd.daemon.client.DaemonClient` it can send arbitrary bytes, bad frames and
messages in the wrong order, and it reports a closed connection instead of raising.
Also: helpers that build encoded events and read points back through ``trackd.views``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from trackd.eventlog.events import ContainerCreated, SequenceAppended, encode_event
from trackd.views import open_reader
from trackd.wire import (
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
)

CLOSED = "closed"


class RawClient:
    """One connection to the daemon at ``path``."""

    def __init__(self, path: Path | str, timeout: float = 15.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder(1 << 31)
        self.inbox: list[Message] = []
        self.acked = 0
        self.client_id = os.urandom(16)
        self.next_id = 0
        self.eof = False

    # -- sending -----------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        """Send one frame holding ``body`` (any bytes)."""
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def send_obj(self, obj: Any) -> None:
        """Send one frame holding ``obj`` packed with msgpack."""
        self.send_body(msgpack.packb(obj, use_bin_type=True))

    @staticmethod
    def frame_of(payloads: Iterable[bytes]) -> bytes:
        """The bytes of one Append frame."""
        return encode_message(Append(events=tuple(payloads)), max_frame=1 << 31)

    def send(self, msg: Message) -> None:
        """Send one well-formed message."""
        self.sock.sendall(encode_message(msg, max_frame=1 << 31))

    def hello(
        self,
        repo: Path | str,
        client_id: bytes | None = None,
        proto: int = PROTOCOL_VERSION,
    ) -> Message | str:
        """Say hello and return the daemon's answer (Welcome, ErrorReply or CLOSED)."""
        if client_id is not None:
            self.client_id = client_id
        self.send(Hello(client_id=self.client_id, pid=os.getpid(), repo=str(repo), proto=proto))
        msg = self.recv()
        if isinstance(msg, Welcome):
            self.acked = msg.hwm
        return msg

    def welcome(self, repo: Path | str, client_id: bytes | None = None) -> Welcome:
        """Hello that must succeed."""
        msg = self.hello(repo, client_id)
        assert isinstance(msg, Welcome), msg
        return msg

    def append(self, payloads: Iterable[bytes]) -> None:
        """Send one Append frame."""
        self.send(Append(events=tuple(payloads)))

    def request(self, op: str, args: dict[str, Any] | None = None) -> Reply | ErrorReply:
        """Send a request and return its Reply or ErrorReply (acks are absorbed)."""
        self.next_id += 1
        rid = self.next_id
        self.send(Request(id=rid, op=op, args=args or {}))
        while True:
            msg = self.recv()
            assert msg != CLOSED, f"connection closed while waiting for {op}"
            if isinstance(msg, (Reply, ErrorReply)) and msg.id in (rid, None):
                return msg
            assert isinstance(msg, Ack), msg

    def flush(self) -> int:
        """Flush and return the offset; fails the test on an error."""
        r = self.request("flush")
        assert isinstance(r, Reply), r
        return int(r.result["offset"])

    # -- receiving ---------------------------------------------------------------------

    def recv(self) -> Message | str:
        """Next message, or CLOSED when the daemon closed the connection."""
        while not self.inbox:
            if self.eof:
                return CLOSED
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            for body in self.decoder.feed(data):
                msg = decode_message(body)
                if isinstance(msg, Ack):
                    self.acked = max(self.acked, msg.seq)
                self.inbox.append(msg)
        return self.inbox.pop(0)

    def wait_ack(self, seq: int) -> None:
        """Read until an Ack covers ``seq``; anything else fails the test."""
        while self.acked < seq:
            msg = self.recv()
            assert isinstance(msg, Ack), f"waiting for ack {seq}, got {msg}"

    def expect_error(self) -> ErrorReply:
        """The next non-ack message, which must be an ErrorReply."""
        while True:
            msg = self.recv()
            if not isinstance(msg, Ack):
                assert isinstance(msg, ErrorReply), msg
                return msg

    def expect_closed(self) -> None:
        """The daemon closes the connection (after any messages still queued)."""
        while True:
            msg = self.recv()
            if msg == CLOSED:
                return
            assert isinstance(msg, (Ack, ErrorReply)), msg

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


# -- events --------------------------------------------------------------------------------


def created(cid: bytes, seq: int, container: str) -> bytes:
    """An encoded ContainerCreated event."""
    return encode_event(ContainerCreated(container=container, client_id=cid, client_seq=seq))


def points(
    cid: bytes, seq: int, container: str, name: str, steps: list[int], values: list[float]
) -> bytes:
    """An encoded SequenceAppended event."""
    return encode_event(
        SequenceAppended.from_arrays(
            container=container,
            name=name,
            context={},
            steps=steps,
            values=values,
            client_id=cid,
            client_seq=seq,
            client_time=time.time(),
        )
    )


def point_stream(
    cid: bytes, container: str, name: str, n: int, *, first_seq: int = 1, per_event: int = 1
) -> list[bytes]:
    """A ContainerCreated at ``first_seq`` then ``n`` points (``per_event`` per event).

    Steps are 0..n-1 and the value of step s is s * 0.5.
    """
    out = [created(cid, first_seq, container)]
    seq = first_seq
    for start in range(0, n, per_event):
        seq += 1
        steps = list(range(start, min(n, start + per_event)))
        out.append(points(cid, seq, container, name, steps, [s * 0.5 for s in steps]))
    return out


def read_points(repo: Path, container: str, name: str) -> list[tuple[int, float]]:
    """Every (step, value) of a sequence, read through the views reader."""
    reader = open_reader(repo / ".trackd")
    try:
        row = reader.sequence(container, name, {})
        if row is None:
            return []
        pts = reader.points(row.id)
        return list(zip(pts.steps.tolist(), pts.values.tolist(), strict=True))
    finally:
        reader.close()


def sequence_count(repo: Path, container: str, name: str) -> int:
    """The views' count of distinct steps of a sequence (0 when it does not exist)."""
    reader = open_reader(repo / ".trackd")
    try:
        row = reader.sequence(container, name, {})
        return 0 if row is None else row.count
    finally:
        reader.close()


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def log_identities(repo: Path) -> list[tuple[bytes, int]]:
    """(client_id, client_seq) of every event in the repository's log, in log order.

    Opens the log, so the daemon serving the repository must have stopped.
    """
    from trackd.eventlog.events import decode_event
    from trackd.eventlog.log import EventLog

    log = EventLog.open(repo / ".trackd" / "log")
    try:
        out = []
        for rec in log.read():
            ev = decode_event(rec.payload)
            out.append((ev.client_id, ev.client_seq))
        return out
    finally:
        log.close()


ClientFactory = Callable[[], RawClient]
