"""Injected write and fdatasync failures: LogIOError, a failed log, and a clean reopen."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from eventlog_support import FaultyFS

from trackd.errors import LogError, LogIOError
from trackd.eventlog.log import EventLog


def payloads(n: int, tag: str) -> list[bytes]:
    """``n`` distinct payloads tagged with ``tag``."""
    return [f"{tag}-{i:04d}".encode() * 4 for i in range(n)]


def reopen(d: Path, segment_size: int = 64 << 20) -> list[bytes]:
    """Reopen with the real file system and return every payload."""
    with EventLog.open(d, segment_size=segment_size) as log:
        return [r.payload for r in log.read()]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_datasync_failure_fails_the_log(tmp_path: Path, err: int) -> None:
    """A failed fdatasync raises LogIOError naming errno and file; later writes are refused."""
    d = tmp_path / "log"
    fs = FaultyFS()
    synced = payloads(5, "synced")
    lost = payloads(3, "lost")
    log = EventLog.open(d, fs=fs)
    log.append(synced)
    end = log.sync()
    fs.fail("datasync", err)
    log.append(lost)
    with pytest.raises(
        LogIOError, match=rf"fdatasync of {d}/\d+\.seg failed: {errno.errorcode[err]}"
    ):
        log.sync()
    assert log.synced_offset == end
    fs.heal()  # even with a healthy disk again, the instance must not trust its page cache
    with pytest.raises(LogIOError, match="refuses writes until it is reopened"):
        log.append([b"more"])
    with pytest.raises(LogIOError, match="refuses writes"):
        log.sync()
    assert [r.payload for r in log.read()] == synced
    log.close()
    got = reopen(d)
    assert got[:5] == synced
    assert got[5:] == lost[: len(got) - 5]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_partial_write_failure_fails_the_log(tmp_path: Path, err: int) -> None:
    """A write that fails halfway raises LogIOError; reopening cuts the half record."""
    d = tmp_path / "log"
    fs = FaultyFS()
    synced = payloads(5, "synced")
    log = EventLog.open(d, fs=fs)
    log.append(synced)
    log.sync()
    fs.fail("pwrite", err, partial=True)
    log.append(payloads(3, "torn"))  # half of three records ends inside the second
    with pytest.raises(LogIOError, match=rf"write of .* failed: {errno.errorcode[err]}"):
        log.sync()
    with pytest.raises(LogIOError):
        log.append([b"x"])
    log.close()
    with EventLog.open(d) as again:
        assert again.recovery.torn_tail is not None
        got = [r.payload for r in again.read()]
    assert got[:5] == synced
    assert got[5:] == payloads(3, "torn")[:1]


def test_failure_while_spilling_the_buffer_is_raised_by_append(tmp_path: Path) -> None:
    """When a full buffer is written out by append() and that fails, append raises LogIOError."""
    d = tmp_path / "log"
    fs = FaultyFS()
    log = EventLog.open(d, fs=fs)
    fs.fail("pwrite", errno.ENOSPC)
    with pytest.raises(LogIOError, match="ENOSPC"):
        log.append([bytes(1 << 20)] * 5)
    with pytest.raises(LogIOError):
        log.sync()
    log.close()
    assert reopen(d) == []


@pytest.mark.parametrize("op", ["create", "datasync", "fsync_dir"])
def test_failure_during_rollover(tmp_path: Path, op: str) -> None:
    """A failure while sealing or creating a segment fails the log; reopen keeps the synced part."""
    d = tmp_path / "log"
    fs = FaultyFS()
    first = payloads(3, "a")
    log = EventLog.open(d, fs=fs, segment_size=200)
    log.append(first)
    log.sync()
    fs.fail(op)
    log.append(payloads(6, "b"))
    with pytest.raises(LogIOError):
        log.sync()
    with pytest.raises(LogIOError):
        log.append([b"x"])
    log.close()
    got = reopen(d, segment_size=200)
    assert got[:3] == first
    assert got[3:] == payloads(6, "b")[: len(got) - 3]


def test_open_errors_are_translated(tmp_path: Path) -> None:
    """An OSError during open becomes LogIOError naming the file, and the lock is released."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        log.append([b"x"])
    fs = FaultyFS()
    fs.fail("open_write")
    with pytest.raises(LogIOError, match=r"open of .*\.seg failed: EIO"):
        EventLog.open(d, fs=fs)
    assert reopen(d) == [b"x"]


def test_unwritable_directory_is_an_error(tmp_path: Path) -> None:
    """A log path under a regular file cannot be created: LogError, not a crash."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(LogError, match="file/log"):
        EventLog.open(tmp_path / "file" / "log")
