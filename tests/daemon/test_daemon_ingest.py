"""Ingest through a real daemon: handshake, acks, flush, exactly-once, many clients and repos."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from rawclient import (
    ClientFactory,
    created,
    log_identities,
    point_stream,
    points,
    read_points,
    sequence_count,
)

from trackd.wire import PROTOCOL_VERSION, Ack, Reply, Request, Welcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_hello_gets_welcome_with_pid_frame_size_and_zero_hwm(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A first Hello for a new repository gets Welcome(daemon pid, max frame, hwm 0)."""
    c = connect()
    w = c.hello(repo_path)
    assert isinstance(w, Welcome)
    assert w.daemon_pid == daemon.pid
    assert w.proto == PROTOCOL_VERSION
    assert w.max_frame > 1 << 20
    assert w.hwm == 0
    assert (repo_path / ".trackd" / "log").is_dir()


def test_append_is_acked_and_flush_makes_points_visible(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """Appended points are acked cumulatively and, after flush, the views hold exactly them."""
    c = connect()
    c.welcome(repo_path)
    stream = point_stream(c.client_id, "run1", "loss", 500, per_event=7)
    for i in range(0, len(stream), 10):
        c.append(stream[i : i + 10])
    c.wait_ack(len(stream))
    assert c.acked == len(stream)
    offset = c.flush()
    assert offset > 0
    assert read_points(repo_path, "run1", "loss") == [(s, s * 0.5) for s in range(500)]
    status = c.request("status")
    assert isinstance(status, Reply)
    (repo,) = status.result["repositories"]
    assert repo["path"] == str(repo_path.resolve())
    assert repo["applied_offset"] == repo["synced_offset"] == offset
    assert repo["events_written"] == len(stream)


def test_resent_duplicates_after_reconnect_are_dropped(
    daemon_factory, connect: ClientFactory, repo_path: Path
) -> None:
    """After a reconnect Welcome.hwm is the durable seq; resent events are acked, not written."""
    daemon_factory.start()
    cid = os.urandom(16)
    first = connect()
    first.welcome(repo_path, cid)
    stream = point_stream(cid, "r", "acc", 100)
    first.append(stream)
    first.wait_ack(len(stream))
    first.close()

    second = connect()
    assert second.welcome(repo_path, cid).hwm == len(stream)
    # Resend everything with other values for the same seqs: if any were applied, the views
    # would show the new values.
    resent = [points(cid, seq, "r", "acc", [seq - 2], [-1.0]) for seq in range(2, 102)]
    more = [points(cid, 102, "r", "acc", [100], [50.0])]
    second.append(resent)
    second.append(more)
    second.wait_ack(102)
    second.flush()
    assert read_points(repo_path, "r", "acc") == [(s, s * 0.5) for s in range(101)]
    status = second.request("status")
    assert isinstance(status, Reply)
    (repo,) = status.result["repositories"]
    assert repo["duplicates_dropped"] == 100
    assert repo["events_written"] == 102
    assert daemon_factory.stop() == 0
    ids = log_identities(repo_path)
    assert ids == [(cid, s) for s in range(1, 103)]


def test_many_concurrent_clients_each_get_all_points(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """Twelve clients appending at once are all acked and all their points land, exactly."""
    n_clients, n_points = 12, 3000
    errors: list[BaseException] = []

    def produce(i: int) -> None:
        try:
            c = connect()
            c.welcome(repo_path)
            stream = point_stream(c.client_id, f"run{i}", "loss", n_points, per_event=10)
            for j in range(0, len(stream), 25):
                c.append(stream[j : j + 25])
            c.wait_ack(len(stream))
            c.flush()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not errors, errors
    for i in range(n_clients):
        assert sequence_count(repo_path, f"run{i}", "loss") == n_points
    assert read_points(repo_path, "run3", "loss")[-1] == (n_points - 1, (n_points - 1) * 0.5)


def test_one_daemon_serves_two_repositories(daemon, connect: ClientFactory, tmp_path: Path) -> None:
    """Two repositories served by one daemon keep separate logs and views."""
    repo_a, repo_b = tmp_path / "a", tmp_path / "b"
    repo_a.mkdir()
    repo_b.mkdir()
    ca, cb = connect(), connect()
    ca.welcome(repo_a)
    cb.welcome(repo_b)
    ca.append(point_stream(ca.client_id, "ra", "x", 30))
    cb.append(point_stream(cb.client_id, "rb", "y", 40))
    ca.flush()
    cb.flush()
    assert sequence_count(repo_a, "ra", "x") == 30
    assert sequence_count(repo_b, "rb", "y") == 40
    assert sequence_count(repo_a, "rb", "y") == 0
    assert sequence_count(repo_b, "ra", "x") == 0
    status = ca.request("status")
    assert isinstance(status, Reply)
    paths = sorted(r["path"] for r in status.result["repositories"])
    assert paths == sorted([str(repo_a.resolve()), str(repo_b.resolve())])
    assert status.result["clients"] == 2


def test_flush_waits_for_appends_sent_before_it(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """A flush sent right after appends (without waiting for acks) answers after them."""
    c = connect()
    c.welcome(repo_path)
    stream = point_stream(c.client_id, "r", "m", 2000, per_event=1)
    c.append(stream[:1000])
    c.append(stream[1000:])
    reply = c.request("flush")  # acks that arrive first are absorbed
    assert isinstance(reply, Reply)
    assert c.acked == len(stream)
    assert sequence_count(repo_path, "r", "m") == 2000


def test_acks_are_cumulative_per_connection(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """Acks only grow, and the last one covers the last seq sent."""
    c = connect()
    c.welcome(repo_path)
    c.append([created(c.client_id, 1, "r")])
    for seq in range(2, 60):
        c.append([points(c.client_id, seq, "r", "m", [seq], [1.0])])
    seen: list[int] = []
    while not seen or seen[-1] < 59:
        msg = c.recv()
        assert isinstance(msg, Ack), msg
        seen.append(msg.seq)
    assert seen == sorted(set(seen))


def test_a_flush_reply_comes_after_the_acks_of_what_preceded_it(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """The writer queues a group's acks before the views may commit it, so a client reads
    the Ack of everything it sent before a flush before that flush's Reply."""
    c = connect()
    c.welcome(repo_path)
    stream = point_stream(c.client_id, "run1", "loss", 60, per_event=1)
    for seq, event in enumerate(stream, start=1):
        c.append([event])
        c.next_id += 1
        c.send(Request(id=c.next_id, op="flush", args={}))
        seen: list[str] = []
        while not seen or seen[-1] != "reply":
            msg = c.recv()
            if isinstance(msg, Ack):
                seen.append(f"ack {msg.seq}")
            else:
                assert isinstance(msg, Reply), msg
                assert msg.id == c.next_id
                seen.append("reply")
        assert f"ack {seq}" in seen, f"round {seq}: {seen}"
    assert sequence_count(repo_path, "run1", "loss") == 60
