"""Who does a flush's work, against a real daemon: the flushing thread sends its barrier and
reads its own reply on a live connection; it leaves both to the flusher and the reader
when the flusher is mid-step; many threads flushing at once all get their answers."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import trackd
from trackd.sdk.client import Client, _Conn, get_client
from trackd.wire.protocol import Ack, Reply, Welcome, encode_message

if TYPE_CHECKING:
    from conftest import DaemonProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def reply_readers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that parsed each Reply from the daemon, in order."""
    seen: list[str] = []
    early = Client._on_message_early

    def record(self: Client, conn: Any, msg: Any) -> bool:
        if isinstance(msg, Reply):
            seen.append(threading.current_thread().name)
        return early(self, conn, msg)

    monkeypatch.setattr(Client, "_on_message_early", record)
    return seen


def _live_run(repo_path: Path) -> tuple[trackd.Run, Client]:
    run = trackd.Run(repo=repo_path)
    client = get_client(run.repo.path)
    client.flush(force=True)  # connected, the run opened
    return run, client


def _flusher_idle(client: Client) -> None:
    """Wait until the flusher has taken the last reply from its inbox and is between steps.

    The flusher does the bookkeeping of a reply read on the calling thread at its next
    step; a flush that starts during a step is left to the flusher (the next test), which
    on a busy machine happens often enough to make back-to-back flushes take either path.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not client._inbox and client._step_lock.acquire(blocking=False):
            client._step_lock.release()
            return
        time.sleep(0.001)
    raise AssertionError("the flusher did not go idle within 10 s")


def test_a_flush_is_sent_and_answered_on_the_calling_thread(
    daemon: DaemonProc, repo_path: Path, reply_readers: list[str]
) -> None:
    run, client = _live_run(repo_path)
    reply_readers.clear()
    for i in range(5):
        run.track(float(i), "m", i)
        _flusher_idle(client)
        client.flush()
    assert reply_readers == [threading.current_thread().name] * 5
    # Everything tracked before each barrier was durable and applied when it returned.
    assert list(trackd.Repo(repo_path).get_container(run.hash).sequences["m"].values()) == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
    ]
    run.close()


def _wait_for(what: str, cond: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.005)


def test_after_a_flush_answered_here_the_flusher_and_reader_catch_up_unprompted(
    daemon: DaemonProc, repo_path: Path, reply_readers: list[str]
) -> None:
    """A caller that read its own reply wakes neither the flusher nor the reader (on a busy
    machine a woken thread can take the returning caller's CPU). Both must still catch up
    on their own: the flusher takes the reply from its inbox, and the reader, which stood
    aside, reads the acks of what the flusher sends later, with no further flush."""
    run, client = _live_run(repo_path)
    reply_readers.clear()
    run.track(0.0, "m", 0)
    _flusher_idle(client)
    client.flush()
    assert reply_readers == [threading.current_thread().name]
    _wait_for("the flusher's bookkeeping of the reply", lambda: not client._inflight)
    for i in range(1, 200):
        run.track(float(i), "m", i)
    _wait_for(
        "the acks of events sent after the barrier",
        lambda: not client.buf and client._seq > 0 and client._acked == client._seq,
    )
    assert not client._unacked
    assert reply_readers == [threading.current_thread().name]  # no request since
    run.close()


def test_a_flush_while_the_flusher_is_mid_step_is_left_to_it(
    daemon: DaemonProc, repo_path: Path, reply_readers: list[str]
) -> None:
    run, client = _live_run(repo_path)
    reply_readers.clear()
    run.track(1.0, "m", 0)
    released = threading.Event()

    def busy_flusher() -> None:
        with client._step_lock:  # as the flusher holds it during a step
            released.wait(10)

    holder = threading.Thread(target=busy_flusher)
    holder.start()
    try:
        threading.Timer(0.2, released.set).start()
        t0 = time.monotonic()
        client.flush()
        assert time.monotonic() - t0 >= 0.15  # it waited for the flusher's step
    finally:
        released.set()
        holder.join()
    assert reply_readers == ["trackd-reader"]
    assert list(trackd.Repo(repo_path).get_container(run.hash).sequences["m"].values()) == [1.0]
    run.close()


def test_many_threads_flushing_at_once_all_get_their_answers(
    daemon: DaemonProc, repo_path: Path
) -> None:
    run, client = _live_run(repo_path)
    errors: list[BaseException] = []
    per_thread = 40

    def worker(k: int) -> None:
        try:
            for i in range(per_thread):
                run.track(float(i), f"m{k}", i)
                client.flush(timeout=30)
        except BaseException as e:  # reported below, with the thread's number
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    container = trackd.Repo(repo_path).get_container(run.hash)
    for k in range(6):
        assert [s for s, _v in container.sequences[f"m{k}"].items()] == list(range(per_thread))
    run.close()


def test_the_reader_keeps_the_link_when_a_caller_read_what_woke_it(tmp_path: Path) -> None:
    """The reader thread polls without the read lock. When data wakes it but a flushing
    caller (holding the lock) reads it first and is gone by the time the reader gets the
    lock, the reader must look again, not block in recv() (the socket has a timeout, so
    recv waits for data whatever its flags) and then report the connection lost."""
    ours, theirs = socket.socketpair()
    ours.settimeout(0.5)  # as the client's connections have
    client = Client(tmp_path)
    conn = _Conn(ours, Welcome(daemon_pid=1, max_frame=1 << 20, hwm=0))
    client._conn = conn
    reader = threading.Thread(target=client._reader, args=(conn,), daemon=True)
    try:
        with client._read_lock:  # a caller reading the socket
            reader.start()
            time.sleep(0.1)  # the reader polls
            theirs.sendall(encode_message(Ack(seq=7)))
            time.sleep(0.1)  # ...wakes, and waits for the lock
            assert ours.recv(1 << 16)  # the caller takes the data
        time.sleep(1.0)  # longer than the socket timeout
        assert reader.is_alive()
        assert [item for item in client._inbox if item[0] == "lost"] == []
    finally:
        client._conn = None
        theirs.close()
        reader.join(5)
