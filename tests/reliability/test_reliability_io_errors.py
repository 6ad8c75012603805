"""Injected I/O errors: write and fdatasync failing with EIO and ENOSPC.

Against a real daemon process, strace makes the Nth ``fdatasync`` or ``pwrite64`` of the log
segment (``-P`` limits injection to that file) fail with EIO or ENOSPC. The daemon must stop
acknowledging, log a CRITICAL line naming the errno, exit non-zero, and a restart without
strace must recover with nothing acknowledged lost.

Unit level, on the simulated disk: after a failed ``datasync`` the log refuses appends and
syncs, and every crash image of that moment still recovers everything acknowledged.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

import pytest
from producer import event
from reliability_support import Daemon, dump_views, fast_tmp, record_figure, strace_available
from simdisk import SimDisk

from trackd.errors import LogIOError
from trackd.eventlog.events import decode_event
from trackd.eventlog.log import EventLog
from trackd.views import open_views, rebuild
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

SEGMENT0 = "00000000000000000000.seg"


class Client:
    """A raw client that records every ack and notices when the daemon stops acking."""

    def __init__(self, sock: Path, repo: Path, cid: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(sock))
        self.dec = FrameDecoder(1 << 30)
        self.cid = cid
        self.acked = 0
        self.errors: list[ErrorReply] = []
        self.sock.sendall(encode_message(Hello(client_id=cid, pid=os.getpid(), repo=str(repo))))
        msgs = self._recv()
        assert msgs
        assert isinstance(msgs[0], Welcome), msgs
        self.hwm = msgs[0].hwm

    def _recv(self) -> list[object]:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        return [decode_message(b) for b in self.dec.feed(data)]

    def send_and_wait(self, first: int, n: int, container: str) -> bool:
        """Send seqs first..first+n-1; True once acked, False when the daemon stopped acking."""
        frame = [event(self.cid, q, container) for q in range(first, first + n)]
        try:
            self.sock.sendall(encode_message(Append(events=tuple(frame))))
            while self.acked < first + n - 1:
                for m in self._recv():
                    if isinstance(m, Ack):
                        self.acked = max(self.acked, m.seq)
                    elif isinstance(m, ErrorReply):
                        self.errors.append(m)
                        return False
        except (OSError, ConnectionError):
            return False
        return True


CASES = [
    ("fdatasync", "EIO", 4),
    ("fdatasync", "ENOSPC", 7),
    ("pwrite64", "ENOSPC", 5),
    ("pwrite64", "EIO", 9),
]


def _inject_and_recover(
    socket_env: Path, tmp_path: Path, target: str, syscall: str, err: str, when: int
) -> list[str]:
    """Fail ``syscall`` on ``target`` (a path under the repo's .trackd) with ``err``.

    Checks that the daemon stops acknowledging and exits non-zero, that a restart without
    strace holds every acknowledged event, takes new ones, and stops cleanly, and that the
    log then holds each event exactly once, in order. Returns the daemon's CRITICAL lines.
    """
    reason = strace_available()
    if reason is not None:
        pytest.skip(reason)
    repo = tmp_path / "repo"
    repo.mkdir()
    d = Daemon(socket_env, dict(os.environ), tmp_path / "daemon.log")
    inject = ["-e", f"trace={syscall}", "-e", f"inject={syscall}:error={err}:when={when}"]
    d.start(strace=[*inject, "-P", str(repo / ".trackd" / target)])
    cid = os.urandom(16)
    c = Client(socket_env, repo, cid)
    seq = 1
    failed_at = None
    for _ in range(40):
        if not c.send_and_wait(seq, 3, "io"):
            failed_at = seq
            break
        seq += 3
    assert failed_at is not None, f"the injected {err} on {syscall} #{when} never surfaced"
    acked = c.acked
    # No further ack may ever arrive, whatever the client sends.
    assert not c.send_and_wait(seq + 3, 1, "io") or c.acked == acked
    c.sock.close()
    status = d.wait(timeout=30)
    assert status is not None, "the daemon kept running after a failed write or fsync"
    assert status != 0, f"the daemon exited with {status} after a failed {syscall}"
    assert d.trace_path is not None
    trace = d.trace_path.read_text()
    assert f"{err} " in trace
    assert "(INJECTED)" in trace
    critical = [line for line in d.log().splitlines() if "CRITICAL" in line]
    assert critical, f"no CRITICAL line in the daemon log:\n{d.log()[-3000:]}"

    d.start()  # no strace: a healthy disk again
    c2 = Client(socket_env, repo, cid)
    assert c2.hwm >= acked, f"acked {acked}, but the restarted daemon holds only {c2.hwm}"
    nxt = c2.hwm + 1
    assert c2.send_and_wait(nxt, 5, "io")
    c2.sock.close()
    assert d.stop() == 0
    with EventLog.open(repo / ".trackd" / "log") as log:
        seqs = [decode_event(r.payload).client_seq for r in log.read()]
        views = open_views(repo / ".trackd", log)
        live = dump_views(views, views)
        views.close()
        rebuild(tmp_path, log)
        views = open_views(tmp_path, log)
        rebuilt = dump_views(views, views)
        views.close()
    assert seqs == list(range(1, nxt + 5)), "events lost or duplicated across the failure"
    assert live == rebuilt, "views after the restart differ from a rebuild"
    record_figure("I/O error injections (real daemon)", 1)
    return critical


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("syscall", "err", "when"), CASES)
def test_failing_log_io_stops_acks_exits_and_restart_recovers(
    socket_env: Path, tmp_path: Path, syscall: str, err: str, when: int
) -> None:
    """A failed write/fdatasync of the log: no more acks, CRITICAL, exit 1, clean restart."""
    critical = _inject_and_recover(socket_env, tmp_path, f"log/{SEGMENT0}", syscall, err, when)
    assert any(err in line for line in critical), f"CRITICAL does not name {err}: {critical}"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("err", "when"), [("ENOSPC", 3), ("EIO", 6)])
def test_failing_views_write_stops_the_daemon_and_restart_recovers(
    socket_env: Path, tmp_path: Path, err: str, when: int
) -> None:
    """A failed write of views.db-wal: the daemon stops, exits 1; a restart loses nothing."""
    _inject_and_recover(socket_env, tmp_path, "views.db-wal", "pwrite64", err, when)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_critical_line_of_a_failed_views_write_names_the_cause(
    socket_env: Path, tmp_path: Path
) -> None:
    """The CRITICAL line of a views write failing with ENOSPC names the cause."""
    critical = _inject_and_recover(socket_env, tmp_path, "views.db-wal", "pwrite64", "ENOSPC", 3)
    assert not any("errno None" in line for line in critical), critical
    assert any("SQLITE_FULL" in line or "ENOSPC" in line for line in critical), critical


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_failed_datasync_fails_the_log_and_crash_images_keep_acked_data(err: int) -> None:
    """On the simulated disk: after a failed datasync appends are refused; crashes lose no ack."""
    disk = SimDisk()
    fail_next = False

    def fault(op: str, path: str) -> int | None:
        return err if fail_next and op == "datasync" and path.endswith(".seg") else None

    disk.fault = fault
    log = EventLog.open("/sim/log", fs=disk)
    acked = [f"acked-{i}".encode() * 50 for i in range(3)]
    log.append(acked)
    log.sync()
    fail_next = True
    log.append([b"doomed" * 900])
    with pytest.raises(LogIOError, match=errno.errorcode[err]):
        log.sync()
    with pytest.raises(LogIOError, match="refuses writes until it is reopened"):
        log.append([b"more"])
    with pytest.raises(LogIOError, match="refuses writes"):
        log.sync()
    assert [r.payload for r in log.read()] == acked
    images = disk.snapshot().crash_states(limit=200, seed=err)
    assert len(images) > 5
    with fast_tmp("td-io-") as tmp:
        for i, img in enumerate(images):
            root = tmp / str(i)
            img.materialise(root, "/sim")
            with EventLog.open(root / "log", strict=False) as again:
                got = [r.payload for r in again.read()]
                assert again.recovery.corruption is None, img.label
            shutil.rmtree(root)
            assert got[:3] == acked, img.label
            assert got[3:] in ([], [b"doomed" * 900]), img.label
    record_figure("crash states checked", len(images))
