"""Producer processes for the reliability tests: raw protocol clients and SDK runs.

Run as a script (``python producer.py raw|sdk ...``). Both kinds keep an *outside record* of
what the daemon acknowledged, in a file they write and fdatasync themselves, so a test can
check it against the log after the daemon was killed any number of times.

``raw``: a client that speaks the wire protocol directly and sees every Ack. Events are a
pure function of (client id, seq), so a resend after a reconnect is byte-identical. It
reconnects whenever the connection breaks, resends from the daemon's high-water mark, and
records the highest acknowledged seq (``acked <seq>``). When a Welcome reports a high-water
mark below a seq it had seen acknowledged, that is a lost acknowledged event: it writes
``LOST <acked> <hwm>`` to the record and keeps going, so the test fails with the numbers.

``sdk``: training loops with ``trackd.Run`` (fire-and-forget ``track()``), one run after
another; it records ``run <hash> <time>`` when a run starts and ``closed <hash> <points>
<time>`` once ``run.close()`` returned, which promises every point is durable (in the log,
or in a spool file when no daemon answered).

With ``--stop-file``, both stop making new events once that file exists and finish.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np

from trackd.eventlog.events import ContainerCreated, SequenceAppended, encode_event
from trackd.wire import (
    Ack,
    Append,
    ErrorReply,
    FrameDecoder,
    Hello,
    Welcome,
    decode_message,
    encode_message,
)

POINTS_PER_EVENT = 4


def event(cid: bytes, seq: int, container: str) -> bytes:
    """Event ``seq`` of client ``cid``: a run at seq 1, then batches of points.

    Batch ``seq`` holds steps ``(seq - 2) * 4 .. + 3`` with value ``step * 0.5``.
    """
    if seq == 1:
        return encode_event(
            ContainerCreated(container=container, client_id=cid, client_seq=1, client_time=1.0)
        )
    first = (seq - 2) * POINTS_PER_EVENT
    steps = np.arange(first, first + POINTS_PER_EVENT, dtype="<i8")
    return encode_event(
        SequenceAppended.from_arrays(
            container=container,
            name="loss",
            context={},
            steps=steps,
            values=steps * 0.5,
            client_id=cid,
            client_seq=seq,
            client_time=float(seq),
        )
    )


class Record:
    """A small file rewritten in place and fdatasynced: the outside record."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.lost: list[str] = []
        self.acked = 0

    def write(self) -> None:
        text = f"acked {self.acked}\n" + "".join(f"{x}\n" for x in self.lost)
        data = text.encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fdatasync(self._fd)


def read_record(path: Path) -> tuple[int, list[str]]:
    """``(acked seq, loss reports)`` from a raw producer's record (0 when none yet)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0, []
    acked = int(lines[0].split()[1]) if lines and lines[0].startswith("acked ") else 0
    return acked, [line for line in lines[1:] if line.startswith("LOST")]


def read_sdk_record(path: Path) -> list[tuple[str, float, int | None, float]]:
    """Per run: ``(hash, start time, points confirmed by close() or None, close time)``."""
    runs: dict[str, list[object]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "run":
            runs[parts[1]] = [parts[1], float(parts[2]), None, 0.0]
        elif parts[0] == "closed":
            runs[parts[1]][2:] = [int(parts[2]), float(parts[3])]
    return [(str(h), float(t0), n, float(t1)) for h, t0, n, t1 in runs.values()]  # type: ignore[misc]


def _connect(sock_path: str, deadline: float) -> socket.socket | None:
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock_path)
            s.settimeout(10.0)
            return s
        except OSError:
            s.close()
            time.sleep(0.02)
    return None


def run_raw(args: argparse.Namespace) -> int:
    """Send ``args.events`` events, surviving daemon restarts; record every ack."""
    cid = bytes.fromhex(args.client)
    record = Record(Path(args.record))
    rng = random.Random(args.client)
    deadline = time.monotonic() + args.timeout
    container = f"raw-{args.client[:8]}"
    total = args.events
    stop = Path(args.stop_file) if args.stop_file else None
    while record.acked < total:
        s = _connect(args.socket, deadline)
        if s is None:
            print(f"producer {args.client[:8]}: no daemon before the deadline", file=sys.stderr)
            return 2
        dec = FrameDecoder(1 << 30)
        try:
            s.sendall(encode_message(Hello(client_id=cid, pid=os.getpid(), repo=args.repo)))
            welcome = None
            while welcome is None:
                data = s.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed before welcome")
                for body in dec.feed(data):
                    msg = decode_message(body)
                    if isinstance(msg, ErrorReply):
                        raise ConnectionError(f"refused: {msg.code}: {msg.message}")
                    if isinstance(msg, Welcome):
                        welcome = msg
            if welcome.hwm < record.acked:
                record.lost.append(f"LOST acked={record.acked} hwm={welcome.hwm}")
                record.write()
            elif welcome.hwm > record.acked:  # durable, says the daemon: as good as an ack
                record.acked = welcome.hwm
                record.write()
            next_seq = welcome.hwm + 1
            while record.acked < total:
                if stop is not None and total > next_seq - 1 and stop.exists():
                    total = max(next_seq - 1, record.acked, 1)  # finish what was sent
                # a window of a few frames in flight, then read acks
                for _ in range(rng.randint(1, 4)):
                    if next_seq > total:
                        break
                    n = min(rng.randint(1, args.batch), total - next_seq + 1)
                    frame = [event(cid, q, container) for q in range(next_seq, next_seq + n)]
                    s.sendall(encode_message(Append(events=tuple(frame))))
                    next_seq += n
                data = s.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed")
                seen = record.acked
                for body in dec.feed(data):
                    msg = decode_message(body)
                    if isinstance(msg, Ack):
                        seen = max(seen, msg.seq)
                    elif isinstance(msg, ErrorReply):
                        raise ConnectionError(f"error reply: {msg.code}: {msg.message}")
                if seen > record.acked:
                    record.acked = seen
                    record.write()
                if args.pace:
                    time.sleep(args.pace)
        except (OSError, ConnectionError):
            pass
        finally:
            s.close()
    return 0


def run_sdk(args: argparse.Namespace) -> int:
    """Track runs of up to ``args.points`` points with trackd.Run until told to stop.

    Each run is closed before the next starts; the record gets ``run <hash> <time>`` when it
    starts and ``closed <hash> <points> <time>`` when ``close()`` returned.
    """
    import trackd

    record = Path(args.record)
    stop = Path(args.stop_file) if args.stop_file else None
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(line: str) -> None:
        os.write(fd, f"{line} {time.time()}\n".encode())
        os.fdatasync(fd)

    try:
        while True:
            n = 0
            with trackd.Run(repo=args.repo) as run:
                note(f"run {run.hash}")
                while n < args.points and not (stop is not None and n % 50 == 0 and stop.exists()):
                    run.track(n * 0.5, name="loss", step=n)
                    n += 1
                    if args.pace and n % 50 == 0:
                        time.sleep(args.pace)
            note(f"closed {run.hash} {n}")
            if stop is None or stop.exists():
                return 0
    finally:
        os.close(fd)


def main() -> int:
    """Parse the command line and run one producer."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="kind", required=True)
    raw = sub.add_parser("raw")
    raw.add_argument("--socket", required=True)
    raw.add_argument("--repo", required=True)
    raw.add_argument("--client", required=True, help="client id, 32 hex digits")
    raw.add_argument("--record", required=True)
    raw.add_argument("--events", type=int, required=True)
    raw.add_argument("--batch", type=int, default=20)
    raw.add_argument("--pace", type=float, default=0.0)
    raw.add_argument("--timeout", type=float, default=120.0)
    raw.add_argument("--stop-file", default="", help="finish (what was sent) once it exists")
    sdk = sub.add_parser("sdk")
    sdk.add_argument("--repo", required=True)
    sdk.add_argument("--record", required=True)
    sdk.add_argument("--points", type=int, required=True)
    sdk.add_argument("--pace", type=float, default=0.0)
    sdk.add_argument("--stop-file", default="", help="close the run once it exists")
    args = p.parse_args()
    return run_raw(args) if args.kind == "raw" else run_sdk(args)


if __name__ == "__main__":
    sys.exit(main())
