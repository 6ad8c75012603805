"""A small blocking client of the daemon, for the CLI (``trackd daemon status``) and tests.

Owns: :class:`DaemonClient`, a plain blocking Unix socket speaking :mod:`trackd.wire`. It is
deliberately minimal: no background thread, no spooling, no reconnects; the SDK has its own
client. Imports ``trackd.wire`` and ``trackd.errors``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from trackd.errors import DaemonUnavailableError, ProtocolError, error_from_code
from trackd.wire import (
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

__all__ = ["DaemonClient"]


class DaemonClient:
    """One blocking connection to the daemon.

    Args:
        path: The daemon's socket.
        timeout: Seconds each connect, send or receive may take.

    Raises:
        DaemonUnavailableError: nothing answers on ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except OSError as e:
            self._sock.close()
            raise DaemonUnavailableError(f"daemon unreachable at {self.path}: {e}") from e
        self._decoder = FrameDecoder(1 << 31)
        self._inbox: list[Message] = []
        self._next_id = 0
        self.welcome: Welcome | None = None
        self.acked = 0

    def hello(self, repo: str = "", client_id: bytes | None = None) -> Welcome:
        """Say hello; ``repo=""`` opens a control connection (status and ping only).

        Raises:
            TrackdError: the daemon refused (the class its error code maps to).
        """
        cid = client_id if client_id is not None else os.urandom(16)
        self.send(Hello(client_id=cid, pid=os.getpid(), repo=repo))
        msg = self.recv()
        if isinstance(msg, ErrorReply):
            raise error_from_code(msg.code, msg.message)
        if not isinstance(msg, Welcome):
            raise ProtocolError(f"expected welcome, got {type(msg).__name__}")
        self.welcome = msg
        self.acked = msg.hwm
        return msg

    def append(self, payloads: Iterable[bytes]) -> None:
        """Send one Append frame (acks arrive later; see :meth:`wait_ack`)."""
        self.send(Append(events=tuple(payloads)))

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send a request and return its result, reading past acks.

        Raises:
            TrackdError: the daemon answered with an error (its code's class).
        """
        self._next_id += 1
        rid = self._next_id
        self.send(Request(id=rid, op=op, args=args or {}))
        while True:
            msg = self.recv()
            if isinstance(msg, Reply) and msg.id == rid:
                return msg.result
            if isinstance(msg, ErrorReply) and msg.id in (rid, None):
                raise error_from_code(msg.code, msg.message)
            self._inbox.append(msg)

    def wait_ack(self, seq: int) -> None:
        """Read until an Ack covers ``seq``.

        Raises:
            TrackdError: the daemon sent an error instead.
        """
        while self.acked < seq:
            msg = self.recv()
            if isinstance(msg, ErrorReply):
                raise error_from_code(msg.code, msg.message)
            if not isinstance(msg, Ack):
                self._inbox.append(msg)

    def send(self, msg: Message) -> None:
        """Send one message."""
        self._sock.sendall(encode_message(msg, max_frame=1 << 31))

    def recv(self) -> Message:
        """Return the next message (queued ones first).

        Raises:
            DaemonUnavailableError: the daemon closed the connection.
        """
        if self._inbox:
            return self._inbox.pop(0)
        while True:
            data = self._sock.recv(1 << 16)
            if not data:
                raise DaemonUnavailableError(f"the daemon at {self.path} closed the connection")
            for body in self._decoder.feed(data):
                msg = decode_message(body)
                if isinstance(msg, Ack):
                    self.acked = max(self.acked, msg.seq)
                self._inbox.append(msg)
            if self._inbox:
                return self._inbox.pop(0)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
