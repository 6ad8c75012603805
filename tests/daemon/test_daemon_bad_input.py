"""Bad input gets the documented error on that connection only; other clients keep working."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from rawclient import (
    ClientFactory,
    RawClient,
    created,
    point_stream,
    points,
    sequence_count,
    wait_for,
)

from trackd.wire import APPEND_REJECTED, Hello, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass(frozen=True)
class Case:
    """A bad action and the error reply it must get."""

    act: Callable[[RawClient, Path], None]
    id: int | None
    code: str
    needles: tuple[str, ...]
    closes: bool


def _hello(c: RawClient, repo: Path) -> None:
    c.welcome(repo)


def _oversize(c: RawClient, repo: Path) -> None:
    c.send_raw(struct.pack(">I", 0xFFFFFFF0) + b"x" * 100)


def _zero_length(c: RawClient, repo: Path) -> None:
    c.send_raw(b"\0\0\0\0")


def _garbage(c: RawClient, repo: Path) -> None:
    c.send_body(b"\xc1\xc1\xc1\xc1")


def _unknown_kind(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    c.send_obj({"k": "bogus", "x": 1})


def _append_first(c: RawClient, repo: Path) -> None:
    c.append([created(c.client_id, 1, "r")])


def _wrong_proto(c: RawClient, repo: Path) -> None:
    c.send(Hello(client_id=c.client_id, pid=os.getpid(), repo=str(repo), proto=99))


def _relative_repo(c: RawClient, repo: Path) -> None:
    c.send(Hello(client_id=c.client_id, pid=os.getpid(), repo="some/relative/dir"))


def _missing_repo(c: RawClient, repo: Path) -> None:
    c.send(Hello(client_id=c.client_id, pid=os.getpid(), repo=str(repo / "nope")))


def _nul_in_repo(c: RawClient, repo: Path) -> None:
    c.send(Hello(client_id=c.client_id, pid=os.getpid(), repo=f"{repo}/a\0b"))


def _second_hello(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    c.send(Hello(client_id=c.client_id, pid=os.getpid(), repo=str(repo)))


def _unknown_event(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    bad = msgpack.packb(["nope.type", 1, c.client_id, 5, 0.0, {}], use_bin_type=True)
    c.append([created(c.client_id, 4, "r"), bad])


def _wrong_field_types(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    body = {"container": "r", "name": "loss", "context": {}, "steps": "12", "values": b""}
    bad = msgpack.packb(["sequence.appended", 1, c.client_id, 3, 0.0, body], use_bin_type=True)
    c.append([bad])


def _hostile_column(c: RawClient, repo: Path) -> None:
    # A compact steps column of 21 bytes claiming four billion arithmetic steps: refused
    # before anything is allocated for them.
    _hello(c, repo)
    body = {
        "container": "r",
        "name": "loss",
        "context": {},
        "steps": struct.pack("<BIqq", 1, 2**32 - 1, 0, 1),
        "values": struct.pack("<d", 1.0),
        "value_dtype": "<f8",
    }
    bad = msgpack.packb(["sequence.appended", 2, c.client_id, 3, 0.0, body], use_bin_type=True)
    c.append([bad])


def _other_client_id(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    c.append([created(os.urandom(16), 1, "r")])


def _unknown_op(c: RawClient, repo: Path) -> None:
    _hello(c, repo)
    c.send_obj({"k": "req", "id": 7, "op": "explode", "args": {}})


CASES = {
    "oversize-frame": Case(_oversize, None, "frame_too_large", ("4294967280",), True),
    "zero-length-frame": Case(_zero_length, None, "protocol", ("0 bytes",), True),
    "garbage-msgpack": Case(_garbage, None, "protocol", ("not valid msgpack",), True),
    "unknown-kind": Case(_unknown_kind, None, "protocol", ("unknown message kind 'bogus'",), True),
    "append-before-hello": Case(
        _append_first, None, "protocol", ("first message must be hello", "append"), True
    ),
    "wrong-protocol-version": Case(
        _wrong_proto, None, "protocol", ("version 99", "version 1"), True
    ),
    "relative-repo": Case(
        _relative_repo, None, "invalid_name", ("'some/relative/dir'", "absolute"), True
    ),
    "missing-repo": Case(_missing_repo, None, "not_found", ("nope'", "does not exist"), True),
    "nul-in-repo-path": Case(_nul_in_repo, None, "invalid_name", ("NUL",), True),
    "second-hello": Case(_second_hello, None, "protocol", ("already",), True),
    "unknown-event-type": Case(
        _unknown_event,
        APPEND_REJECTED,
        "unknown_event",
        ("client_seq 5", "unknown event type 'nope.type'"),
        False,
    ),
    "wrong-field-types": Case(
        _wrong_field_types, APPEND_REJECTED, "event", ("client_seq 3", "steps"), False
    ),
    "hostile-column-count": Case(
        _hostile_column,
        APPEND_REJECTED,
        "event",
        ("client_seq 3", "steps claims 4294967295 points", "8 bytes of values"),
        False,
    ),
    "other-client-id": Case(
        _other_client_id, APPEND_REJECTED, "event", ("client_seq 1", "client_id"), False
    ),
    "unknown-request-op": Case(_unknown_op, 7, "protocol", ("'explode'",), False),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_gets_documented_error_and_spares_others(
    daemon, connect: ClientFactory, repo_path: Path, case: Case
) -> None:
    """Each bad input gets its error (scope, code, message); a concurrent client is unaffected."""
    good = connect()
    good.welcome(repo_path)
    good.append(point_stream(good.client_id, "good", "m", 10))

    bad = connect()
    case.act(bad, repo_path)
    err = bad.expect_error()
    assert (err.id, err.code) == (case.id, case.code), err
    for needle in case.needles:
        assert needle in err.message, (needle, err.message)
    if case.closes:
        bad.expect_closed()
    else:
        bad.flush()  # the connection still works
        assert sequence_count(repo_path, "r", "loss") == 0  # nothing of the frame was written

    more = [points(good.client_id, 12, "good", "m", [10], [5.0])]
    good.append(more)
    good.wait_ack(12)
    good.flush()
    assert sequence_count(repo_path, "good", "m") == 11
    assert daemon.proc.poll() is None


def test_rejected_frame_writes_none_of_its_events(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A frame whose last event is bad is rejected whole: its good events are not written."""
    c = connect()
    c.welcome(repo_path)
    good = point_stream(c.client_id, "r", "loss", 5)
    bad = msgpack.packb(["nope.type", 1, c.client_id, 7, 0.0, {}], use_bin_type=True)
    c.append([*good, bad])
    err = c.expect_error()
    assert err.id == APPEND_REJECTED
    assert "client_seq 7" in err.message
    c.flush()
    assert sequence_count(repo_path, "r", "loss") == 0
    c.append(good)  # the same seqs are still free: nothing of the frame was recorded
    c.wait_ack(len(good))
    c.flush()
    assert sequence_count(repo_path, "r", "loss") == 5


def test_truncated_frame_then_disconnect_spares_others(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A client that dies in the middle of a frame does not disturb the daemon or others."""
    good = connect()
    good.welcome(repo_path)
    bad = connect()
    bad.welcome(repo_path)
    frame = RawClient.frame_of([created(bad.client_id, 1, "half")])
    bad.send_raw(frame[: len(frame) // 2])
    bad.close()
    good.append(point_stream(good.client_id, "good", "m", 3))
    good.wait_ack(4)
    good.flush()
    assert sequence_count(repo_path, "good", "m") == 3
    status = good.request("status")
    assert isinstance(status, Reply)
    assert status.result["repositories"][0]["events_written"] == 4
    wait_for(lambda: "middle of a frame" in daemon.log(), what="the daemon to log the cut frame")
