"""Spool files: the segment format, locking between a live writer and readers, and recovery
from torn tails versus corruption."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trackd.errors import LogCorruptedError
from trackd.eventlog.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    check_segment_header,
)
from trackd.eventlog.spool import (
    SpoolWriter,
    iter_spool,
    parse_spool_name,
    read_spool,
    try_lock_spool,
)

CID = bytes(range(16))
PAYLOADS = [b"first", b"x" * 1000, b"third record", bytes(range(256))]


def _write(tmp_path: Path, payloads: list[bytes] = PAYLOADS) -> Path:
    w = SpoolWriter(tmp_path / "spool", CID)
    w.append(payloads)
    w.close()
    return w.path


def test_writer_creates_named_file_with_segment_header(tmp_path: Path) -> None:
    """The file is named <client hex>-<pid>-<time_ns>.spool and starts with a base-0 header."""
    w = SpoolWriter(tmp_path / "spool", CID)
    try:
        parsed = parse_spool_name(w.path.name)
        assert parsed is not None
        assert parsed[0] == CID
        assert parsed[1] == os.getpid()
        assert check_segment_header(w.path.read_bytes(), 0) is HeaderStatus.OK
        assert sorted(os.listdir(tmp_path / "spool")) == [w.path.name]  # no temp file left
    finally:
        w.close()


def test_round_trip_in_order(tmp_path: Path) -> None:
    """Payloads appended in several calls read back in the same order, clean."""
    w = SpoolWriter(tmp_path / "spool", CID)
    w.append(PAYLOADS[:2])
    w.append([])
    w.append(PAYLOADS[2:])
    w.sync()
    assert w.records == len(PAYLOADS)
    w.close()
    got = read_spool(w.path)
    assert got.payloads == PAYLOADS
    assert got.torn_tail_bytes == 0
    assert got.corruption is None
    assert [p for chunk in iter_spool(w.path) for p in chunk] == PAYLOADS


def test_live_writer_holds_lock_until_close(tmp_path: Path) -> None:
    """try_lock_spool returns None while the writer is open and a lock after close()."""
    w = SpoolWriter(tmp_path / "spool", CID)
    assert try_lock_spool(w.path) is None
    w.close()
    lock = try_lock_spool(w.path)
    assert lock is not None
    # A second reader cannot take it while the first holds it.
    assert try_lock_spool(w.path) is None
    lock.release()
    lock.release()
    again = try_lock_spool(w.path)
    assert again is not None
    again.release()


def test_lock_released_when_writer_process_dies(tmp_path: Path) -> None:
    """A spool whose writer was SIGKILLed is lockable and holds everything it appended."""
    spool_dir = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import os, sys, signal
        from pathlib import Path
        from trackd.eventlog.spool import SpoolWriter
        w = SpoolWriter(Path({str(spool_dir)!r}), bytes(range(16)))
        w.append([b"a", b"b", b"c"])
        print(w.path, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        path = Path(proc.stdout.readline().strip())
        assert try_lock_spool(path) is None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    lock = try_lock_spool(path)
    assert lock is not None
    lock.release()
    assert read_spool(path).payloads == [b"a", b"b", b"c"]


def test_lock_of_missing_file_is_none(tmp_path: Path) -> None:
    """Locking a spool that was already removed returns None instead of raising."""
    assert try_lock_spool(tmp_path / "gone.spool") is None


def test_remove_deletes_file_and_is_idempotent(tmp_path: Path) -> None:
    """remove() unlinks an open writer's file and closes it; a second call does nothing."""
    w = SpoolWriter(tmp_path / "spool", CID)
    w.append([b"x"])
    w.remove()
    assert not w.path.exists()
    assert w.closed
    w.remove()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.append([b"y"])


@pytest.mark.parametrize("cut", [1, RECORD_HEADER_SIZE - 1, RECORD_HEADER_SIZE + 3])
def test_torn_tail_is_the_end(tmp_path: Path, cut: int) -> None:
    """A last record cut short is reported as torn tail bytes, not as corruption."""
    path = _write(tmp_path)
    data = path.read_bytes()
    last = RECORD_HEADER_SIZE + len(PAYLOADS[-1])
    path.write_bytes(data[: len(data) - last + cut])
    got = read_spool(path)
    assert got.payloads == PAYLOADS[:-1]
    assert got.torn_tail_bytes == cut
    assert got.corruption is None


def test_zero_filled_tail_is_the_end(tmp_path: Path) -> None:
    """Zero bytes after the last record (a crash after the size grew) are a torn tail."""
    path = _write(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    got = read_spool(path)
    assert got.payloads == PAYLOADS
    assert got.torn_tail_bytes == 4096
    assert got.corruption is None


def test_bad_record_followed_by_good_ones_is_reported(tmp_path: Path) -> None:
    """A flipped byte in the second record is corruption naming its offset, never skipped."""
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    second = SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + len(PAYLOADS[0])
    data[second + RECORD_HEADER_SIZE + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    got = read_spool(path)
    assert got.payloads == PAYLOADS[:1]
    assert got.corruption is not None
    assert f"offset {second}" in got.corruption
    assert got.torn_tail_bytes == 0
    chunks = iter_spool(path)
    assert next(chunks) == PAYLOADS[:1]
    with pytest.raises(LogCorruptedError, match=f"offset {second}"):
        next(chunks)


def test_bad_header_is_corruption(tmp_path: Path) -> None:
    """A damaged header in front of valid records is reported, with no payloads."""
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    got = read_spool(path)
    assert got.payloads == []
    assert got.corruption is not None
    assert "magic" in got.corruption


def test_empty_file_is_a_torn_header(tmp_path: Path) -> None:
    """A file cut before its header was complete reads as empty with a torn tail."""
    path = tmp_path / "x.spool"
    path.write_bytes(b"TRKD")
    got = read_spool(path)
    assert got.payloads == []
    assert got.torn_tail_bytes == 4
    assert got.corruption is None


def test_parse_spool_name_rejects_other_names() -> None:
    """Temporary files and foreign names are not spool files."""
    good = f"{CID.hex()}-12-345.spool"
    assert parse_spool_name(good) == (CID, 12, 345)
    assert parse_spool_name("." + good + ".tmp") is None
    assert parse_spool_name("zz-12-345.spool") is None
    assert parse_spool_name(f"{CID.hex()}-12.spool") is None
    assert parse_spool_name(f"{CID.hex()}-12-345.seg") is None
