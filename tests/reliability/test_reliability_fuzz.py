"""Protocol fuzzing: generated and mutated frames against the decoder and a live daemon.

Sans-IO: hypothesis-generated messages and events, mutated (bit flips, truncations, splices
of valid frames, insertions, huge and zero lengths), every field of every kind and event set
to every wrong type, fed in random chunks to ``FrameDecoder`` / ``decode_message`` /
``decode_event``: only ``ProtocolError`` and ``EventError`` may escape, no frame longer than
the maximum is ever buffered, and nothing hangs.

Live: a daemon serves fuzz connections while a well-behaved client keeps appending. Each
fuzz connection sends its bytes and half-closes; the daemon must answer with error replies
or close it, never hang or crash; the good client keeps getting acks and its data is exact.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fuzzing import (
    FIELDS,
    MAX_FRAME,
    WRONG_FRAMES,
    frame,
    harness,
    mutate,
    random_stream,
    run_harness,
    wrong_type_events,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from producer import POINTS_PER_EVENT, event
from reliability_support import Daemon, record_figure

from trackd.errors import EventError, ProtocolError
from trackd.eventlog.events import decode_event, event_types
from trackd.eventlog.log import EventLog
from trackd.views import open_reader
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

# Hypothesis settings are fixed at import, before any fixture runs: the long mode is read
# from the command line (or TRACKD_FUZZ_EXAMPLES overrides the number of examples).
LONG = os.environ.get("TRACKD_FUZZ_EXAMPLES") or ("5000" if "--long" in sys.argv else None)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=16,
)


MESSAGE_FIELDS = sorted({f for fs in FIELDS.values() for f in fs})
EVENT_FIELDS = sorted(
    {f.name for cls in event_types().values() for f in dataclasses.fields(cls)}
    - {"client_id", "client_seq", "client_time"}
)


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    """A frame holding a map that looks like a message, with arbitrary field values."""
    kind = draw(st.sampled_from(["hello", "welcome", "append", "ack", "req", "reply", "error"]))
    fields = draw(
        st.dictionaries(
            st.sampled_from(MESSAGE_FIELDS),
            msgpack_values,
        )
    )
    return frame({"k": kind, **fields})


@st.composite
def event_arrays(draw: st.DrawFn) -> bytes:
    """An event-shaped msgpack array with garbage in any position, nested bodies included."""
    etype = draw(st.sampled_from([*event_types(), "nope"]) | st.text(max_size=5))
    body = draw(
        st.dictionaries(
            st.sampled_from(EVENT_FIELDS),
            msgpack_values,
        )
    )
    arr = [
        etype,
        draw(st.integers(-1, 3) | msgpack_values),
        draw(st.just(b"\x01" * 16) | msgpack_values),
        draw(st.integers(0, 99) | msgpack_values),
        draw(st.floats() | msgpack_values),
        body,
    ]
    if draw(st.booleans()):
        arr = arr[: draw(st.integers(0, 6))]
    return msgpack.packb(arr, use_bin_type=True)  # type: ignore[no-any-return]


def _examples(ci: int) -> int:
    return int(LONG) if LONG else ci


def _note(n: int = 1) -> None:
    record_figure("frames fuzzed (sans-IO)", n)


@settings(
    max_examples=_examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    frames=st.lists(raw_messages() | st.binary(max_size=64).map(frame), min_size=1, max_size=4),
    events=st.lists(event_arrays(), max_size=4),
    rnd=st.randoms(use_true_random=False),
    mutations=st.integers(0, 4),
    chunks=st.lists(st.integers(1, 300), min_size=1, max_size=6),
)
def test_generated_and_mutated_frames_raise_only_protocol_or_event_errors(
    frames: list[bytes], events: list[bytes], rnd: Any, mutations: int, chunks: list[int]
) -> None:
    """Hypothesis frames, mutated and fed in chunks: only ProtocolError/EventError escape."""
    pool = [*frames, encode_message(Append(events=tuple(events)))]
    data = b"".join(pool)
    for _ in range(mutations):
        data = mutate(data, rnd, pool)
    t0 = time.monotonic()
    try:
        harness(data, chunks)
    except (ProtocolError, EventError):
        pass
    assert time.monotonic() - t0 < 5, "decoding one stream must not take seconds"
    _note(len(pool))


@settings(max_examples=_examples(400), deadline=None)
@given(payload=event_arrays())
def test_garbage_events_raise_only_event_errors(payload: bytes) -> None:
    """decode_event on event-shaped garbage raises EventError or returns a valid event."""
    try:
        decode_event(payload)
    except EventError:
        pass
    _note()


def test_every_field_with_every_wrong_type_is_refused_cleanly() -> None:
    """Each message field and event field set to each wrong type: a clean error or success."""
    verdicts: dict[str, int] = {}
    for f in WRONG_FRAMES:
        v = run_harness(f)
        verdicts[v] = verdicts.get(v, 0) + 1
    unexpected = []
    events = wrong_type_events()
    for p in events:
        try:
            decode_event(p)
            verdicts["event ok"] = verdicts.get("event ok", 0) + 1
        except EventError:
            verdicts["event refused"] = verdicts.get("event refused", 0) + 1
        except Exception as e:
            unexpected.append(f"{type(e).__name__}: {e} for {msgpack.unpackb(p)!r}")
    assert not unexpected, unexpected
    assert verdicts.get("protocol: ProtocolError", 0) > 100, verdicts
    assert verdicts["event refused"] > 200, verdicts
    _note(len(WRONG_FRAMES) + len(events))


def _params_event(path: Any) -> bytes:
    body = {"container": "c", "path": path, "value": 1, "delete": False}
    return msgpack.packb(["params.set", 1, b"\x01" * 16, 1, 0.0, body])  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", [None, 5, 1.5, True, "abc"])
def test_decode_event_refuses_a_params_path_that_is_not_an_array(path: Any) -> None:
    """params.set with a path that is not an array of strings raises EventError."""
    with pytest.raises(EventError, match="path"):
        decode_event(_params_event(path))


@pytest.mark.parametrize("dtype", [{}, {"a": 1}, [{}]])
def test_decode_event_refuses_an_unhashable_value_dtype(dtype: Any) -> None:
    """sequence.appended with a map/array value_dtype raises EventError."""
    body = {"container": "c", "name": "n", "context": {}, "steps": b"\0" * 8,
            "values": b"\0" * 8, "value_dtype": dtype}  # fmt: skip
    with pytest.raises(EventError, match="value_dtype"):
        decode_event(msgpack.packb(["sequence.appended", 1, b"\x01" * 16, 1, 0.0, body]))


def test_oversized_lengths_are_refused_before_buffering() -> None:
    """A length above the maximum raises at once, having buffered none of the body."""
    dec = FrameDecoder(MAX_FRAME)
    with pytest.raises(ProtocolError, match="announces"):
        dec.feed(b"\xff\xff\xff\xff" + b"x" * 1000)
    dec = FrameDecoder(MAX_FRAME)
    assert dec.feed((MAX_FRAME).to_bytes(4, "big") + b"x" * 100) == []
    assert dec.buffered == 104
    with pytest.raises(ProtocolError, match="0 bytes"):
        FrameDecoder(MAX_FRAME).feed(b"\0\0\0\0")


def test_seeded_streams_raise_only_protocol_or_event_errors(long_mode: bool) -> None:
    """A seeded generator's streams (the live test's inputs) pass the sans-IO harness."""
    rng = random.Random(99)
    n = 20_000 if long_mode else 2_000
    for _ in range(n):
        data = random_stream(rng, b"\x09" * 16, "/nonexistent/repo", rng.random() < 0.5)
        chunks = [rng.randint(1, 512) for _ in range(3)]
        try:
            harness(data, chunks)
        except (ProtocolError, EventError):
            pass
    _note(n)


# -- live daemon ---------------------------------------------------------------------------


class GoodClient(threading.Thread):
    """Appends point batches throughout the fuzzing and checks every ack."""

    def __init__(self, sock: Path, repo: Path) -> None:
        super().__init__(daemon=True)
        self.sock_path = sock
        self.repo = repo
        self.cid = os.urandom(16)
        self.acked = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.max_wait = 0.0

    def run(self) -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(self.sock_path))
            hello = Hello(client_id=self.cid, pid=os.getpid(), repo=str(self.repo))
            s.sendall(encode_message(hello))
            dec = FrameDecoder(1 << 30)
            msgs = [decode_message(b) for b in dec.feed(s.recv(1 << 16))]
            assert isinstance(msgs[0], Welcome), msgs
            seq = 0
            while not self.stop.is_set():
                batch = [event(self.cid, q, "good") for q in range(seq + 1, seq + 6)]
                seq += 5
                t0 = time.monotonic()
                s.sendall(encode_message(Append(events=tuple(batch))))
                while self.acked < seq:
                    data = s.recv(1 << 16)
                    assert data, "the daemon closed the good client's connection"
                    for b in dec.feed(data):
                        m = decode_message(b)
                        assert isinstance(m, Ack), f"good client got {m}"
                        self.acked = max(self.acked, m.seq)
                self.max_wait = max(self.max_wait, time.monotonic() - t0)
                time.sleep(0.01)
            s.close()
        except BaseException as e:  # reported by the test thread
            self.error = e


def _safe(data: bytes, repo: Path) -> bool:
    """False when a (mutated) hello in ``data`` names an existing folder other than ``repo``."""
    dec = FrameDecoder(MAX_FRAME)
    try:
        for body in dec.feed(data):
            try:
                msg = decode_message(body)
            except ProtocolError:
                continue
            if (
                isinstance(msg, Hello)
                and msg.repo not in ("", str(repo))
                and os.path.exists(msg.repo)
            ):
                return False
    except ProtocolError:
        pass
    return True


def _fuzz_connection(sock: Path, data: bytes, timeout: float) -> str:
    """Send ``data``, half-close, read until the daemon closes; return what happened."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock))
    errors = 0
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return "closed while sending"
        dec = FrameDecoder(1 << 30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                return "reset"
            except TimeoutError:
                break
            if not chunk:
                return "error reply, then closed" if errors else "closed"
            for b in dec.feed(chunk):
                if isinstance(decode_message(b), ErrorReply):
                    errors += 1
        return "HANG"
    finally:
        s.close()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_live_daemon_survives_fuzz_connections(
    socket_env: Path, tmp_path: Path, long_mode: bool
) -> None:
    """Fuzz connections get errors or a close; the daemon lives; a good client is untouched."""
    repo = tmp_path / "repo"
    repo.mkdir()
    d = Daemon(socket_env, dict(os.environ), tmp_path / "daemon.log")
    d.start()
    good = GoodClient(socket_env, repo)
    good.start()
    rng = random.Random(7)
    n = 5000 if long_mode else 800
    outcomes: dict[str, int] = {}
    frames = 0
    try:
        for i in range(n):
            cid = os.urandom(16)
            data = random_stream(rng, cid, str(repo), with_hello=rng.random() < 0.7)
            if not _safe(data, repo):
                continue
            what = _fuzz_connection(socket_env, data, timeout=15)
            outcomes[what] = outcomes.get(what, 0) + 1
            frames += 1
            assert what != "HANG", f"connection {i}: the daemon neither answered nor closed"
            assert d.alive(), f"the daemon died on fuzz connection {i}:\n{d.log()[-3000:]}"
            assert good.error is None, f"good client broke: {good.error!r}"
    finally:
        good.stop.set()
        good.join(30)
    assert good.error is None, f"good client broke: {good.error!r}"
    acked = good.acked
    assert acked > 0
    assert d.stop() == 0, d.log()[-3000:]
    assert "Traceback" not in d.log(), d.log()[-5000:]
    with EventLog.open(repo / ".trackd" / "log") as log:
        mine = [
            ev.client_seq
            for ev in (decode_event(r.payload) for r in log.read())
            if ev.client_id == good.cid
        ]
    assert mine == list(range(1, acked + 1))
    reader = open_reader(repo / ".trackd")
    try:
        row = reader.sequence("good", "loss", {})
        assert row is not None
        pts = reader.points(row.id)
        npts = (acked - 1) * POINTS_PER_EVENT
        assert pts.steps.tolist() == list(range(npts))
        assert pts.values.tolist() == [s * 0.5 for s in range(npts)]
    finally:
        reader.close()
    print(f"\nlive fuzz: {frames} connections, outcomes {outcomes}, good client acked {acked}")
    print(f"good client's longest wait for an ack: {good.max_wait * 1e3:.0f} ms")
    record_figure("fuzz connections to a live daemon", frames)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_live_daemon_rejects_a_bad_params_path_as_an_event_error(
    socket_env: Path, tmp_path: Path
) -> None:
    """An Append with a params.set whose path is 5 gets an EventError reply; no traceback."""
    repo = tmp_path / "repo"
    repo.mkdir()
    d = Daemon(socket_env, dict(os.environ), tmp_path / "daemon.log")
    d.start()
    cid = b"\x01" * 16
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(socket_env))
    try:
        s.sendall(encode_message(Hello(client_id=cid, pid=os.getpid(), repo=str(repo))))
        s.sendall(encode_message(Append(events=(_params_event(5),))))
        dec = FrameDecoder(1 << 30)
        msgs: list[object] = []
        while len(msgs) < 2:
            data = s.recv(1 << 16)
            if not data:
                break
            msgs += [decode_message(b) for b in dec.feed(data)]
    finally:
        s.close()
    assert d.stop() == 0
    assert "Traceback" not in d.log()
    assert len(msgs) == 2, msgs
    err = msgs[1]
    assert isinstance(err, ErrorReply), msgs
    assert (err.id, err.code) == (0, EventError.code), err


@pytest.mark.timeout(300)
def test_atheris_harness_finds_no_crash(tmp_path: Path, long_mode: bool) -> None:
    """libFuzzer (atheris) runs the sans-IO harness for a bounded number of inputs: no crash."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(3)
    for i in range(200):
        data = random_stream(rng, b"\x03" * 16, "/nonexistent/repo", rng.random() < 0.5)
        (corpus / f"seed-{i}").write_bytes(b"\x00\x40\x00\x00" + data)
    runs = 1_000_000 if long_mode else 50_000
    harness_py = Path(__file__).resolve().parent / "fuzz_atheris.py"
    proc = subprocess.run(
        [sys.executable, str(harness_py), f"-runs={runs}", "-max_total_time=240",
         f"-artifact_prefix={tmp_path}/", "-max_len=4096", "-rss_limit_mb=2048", str(corpus)],
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", out)
    assert done is not None, out[-3000:]
    print(f"\natheris: {done.group(1)} inputs in {done.group(2)} s, no crash")
    record_figure("frames fuzzed (atheris inputs)", int(done.group(1)))
