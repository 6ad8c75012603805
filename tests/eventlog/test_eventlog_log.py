"""EventLog basics: append, sync, read, segments, reopen, lock, verify."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import pytest
from eventlog_support import flip_bit, payload_position, segments, snapshot

from trackd.errors import LogCorruptedError, LogError, LogLockedError
from trackd.eventlog import log as log_module
from trackd.eventlog.log import EventLog, verify_log
from trackd.eventlog.record import MAX_RECORD_SIZE, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from trackd.eventlog.segment import parse_segment_name


def payloads(n: int, size: int = 40) -> list[bytes]:
    """``n`` distinct payloads of about ``size`` bytes."""
    return [f"{i:06d}".encode() + bytes([i % 251]) * size for i in range(n)]


def test_round_trip_and_monotonic_offsets(tmp_path: Path) -> None:
    """Synced payloads read back unchanged, with increasing offsets that chain end to start."""
    data = payloads(50)
    with EventLog.open(tmp_path / "log") as log:
        assert log.start_offset == SEGMENT_HEADER_SIZE
        offsets = log.append(data[:20]) + log.append(data[20:])
        assert log.sync() == log.synced_offset == log.end_offset
        recs = list(log.read())
    assert [r.payload for r in recs] == data
    assert [r.offset for r in recs] == offsets
    assert offsets == sorted(offsets)
    assert all(a.end == b.offset for a, b in itertools.pairwise(recs))
    assert all(r.end - r.offset == RECORD_HEADER_SIZE + len(r.payload) for r in recs)


def test_read_from_middle_offset_and_checkpoint(tmp_path: Path) -> None:
    """read(from_offset) starts at that record; a record's end works as a checkpoint."""
    data = payloads(30)
    with EventLog.open(tmp_path / "log") as log:
        offsets = log.append(data)
        log.sync()
        assert [r.payload for r in log.read(offsets[17])] == data[17:]
        mid = list(log.read(offsets[5], offsets[9]))
        assert [r.payload for r in mid] == data[5:9]
        assert [r.payload for r in log.read(mid[-1].end)] == data[9:]
        assert list(log.read(log.synced_offset)) == []


def test_read_rejects_offsets_that_are_not_boundaries(tmp_path: Path) -> None:
    """from_offset inside a record, past the synced end or before the start is a LogError."""
    with EventLog.open(tmp_path / "log") as log:
        offsets = log.append(payloads(5))
        log.sync()
        with pytest.raises(LogError, match=f"from_offset {offsets[2] + 3} is not a record"):
            log.read(offsets[2] + 3)
        with pytest.raises(LogError, match="inside the header"):
            log.read(5)
        with pytest.raises(LogError, match=f"to_offset {log.synced_offset + 1}"):
            log.read(to_offset=log.synced_offset + 1)
        with pytest.raises(LogError, match=f"to_offset {offsets[3] + 1} is not a record"):
            log.read(to_offset=offsets[3] + 1)
        with pytest.raises(LogError, match="from_offset"):
            log.read(offsets[3], offsets[2])


def test_read_returns_only_synced_records(tmp_path: Path) -> None:
    """Appended but unsynced records are invisible to read() until sync()."""
    with EventLog.open(tmp_path / "log") as log:
        log.append([b"one", b"two"])
        log.sync()
        log.append([b"three"])
        assert log.end_offset > log.synced_offset
        assert [r.payload for r in log.read()] == [b"one", b"two"]
        log.sync()
        assert [r.payload for r in log.read()] == [b"one", b"two", b"three"]


def test_reopen_sees_everything_synced(tmp_path: Path) -> None:
    """After close and reopen, every synced record is there and appends continue after it."""
    data = payloads(40)
    with EventLog.open(tmp_path / "log", segment_size=500) as log:
        log.append(data[:30])
        log.sync()
        end = log.synced_offset
    with EventLog.open(tmp_path / "log", segment_size=500) as log:
        assert log.recovery.clean
        assert log.end_offset == log.synced_offset == end
        assert log.recovery.records == 30
        offs = log.append(data[30:])
        assert offs[0] >= end
        log.sync()
        assert [r.payload for r in log.read()] == data


def test_close_syncs_buffered_appends(tmp_path: Path) -> None:
    """close() writes and syncs what was appended, so a reopen sees it."""
    with EventLog.open(tmp_path / "log") as log:
        log.append([b"unsynced"])
    with EventLog.open(tmp_path / "log") as log:
        assert [r.payload for r in log.read()] == [b"unsynced"]


def test_segment_rollover_names_and_reads_across(tmp_path: Path) -> None:
    """Small segments roll over; files are named by base offset; reads span segments."""
    data = payloads(60, size=50)
    seg_size = 400
    with EventLog.open(tmp_path / "log", segment_size=seg_size) as log:
        offsets = log.append(data[:25])
        log.sync()
        offsets += log.append(data[25:])
        log.sync()
        recs = list(log.read())
        assert [r.payload for r in log.read(offsets[33])] == data[33:]
    assert [r.payload for r in recs] == data
    files = segments(tmp_path / "log")
    assert len(files) > 5
    base = 0
    for f in files:
        assert parse_segment_name(f.name) == base
        size = f.stat().st_size
        assert size <= seg_size
        base += size
    assert base == recs[-1].end
    # A checkpoint at the end of a segment (= the next segment's base) is a valid start.
    second_base = parse_segment_name(files[1].name)
    assert second_base is not None
    assert [r.payload for r in log_read_from(tmp_path, second_base, seg_size)] == [
        r.payload for r in recs if r.offset > second_base
    ]


def log_read_from(tmp_path: Path, offset: int, seg_size: int) -> list[log_module.Record]:
    """Reopen the test log and read from ``offset``."""
    with EventLog.open(tmp_path / "log", segment_size=seg_size) as log:
        return list(log.read(offset))


def test_record_larger_than_segment_gets_its_own_segment(tmp_path: Path) -> None:
    """A record bigger than segment_size (and than a read chunk) sits alone in a segment."""
    big = os.urandom(5 << 20)
    with EventLog.open(tmp_path / "log", segment_size=4096) as log:
        log.append([b"small", big, b"after"])
        log.sync()
        assert [r.payload for r in log.read()] == [b"small", big, b"after"]
    files = segments(tmp_path / "log")
    assert len(files) == 3
    assert files[1].stat().st_size == SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + len(big)
    with EventLog.open(tmp_path / "log", segment_size=4096) as log:
        assert [len(r.payload) for r in log.read()] == [5, len(big), 5]


def test_boundary_check_far_into_a_segment(tmp_path: Path) -> None:
    """Offsets deep into a multi-MiB segment are checked correctly, live and after reopen."""
    data = payloads(4000, size=1000)
    with EventLog.open(tmp_path / "log") as log:
        offsets = log.append(data)
        log.sync()
        assert next(iter(log.read(offsets[3500]))).payload == data[3500]
        with pytest.raises(LogError, match="not a record boundary"):
            log.read(offsets[3500] + 7)
    with EventLog.open(tmp_path / "log") as log:
        assert [r.payload for r in log.read(offsets[2999], offsets[3002])] == data[2999:3002]
        with pytest.raises(LogError, match="not a record boundary"):
            log.read(offsets[2999] - 1)


def test_buffer_spills_to_disk_without_becoming_readable(tmp_path: Path) -> None:
    """Past WRITE_BUFFER_SIZE appends are written out, but stay unsynced and unreadable."""
    chunk = bytes(64 << 10)
    n = log_module.WRITE_BUFFER_SIZE // len(chunk) + 2
    with EventLog.open(tmp_path / "log") as log:
        log.append([chunk] * n)
        (seg,) = segments(tmp_path / "log")
        assert seg.stat().st_size > log_module.WRITE_BUFFER_SIZE
        assert log.synced_offset == log.start_offset
        assert list(log.read()) == []
        log.sync()
        assert sum(1 for _ in log.read()) == n


def test_append_rejects_bad_payloads_atomically(tmp_path: Path) -> None:
    """Empty, oversized or non-bytes payloads raise LogError and nothing of the call is kept."""
    with EventLog.open(tmp_path / "log") as log:
        end = log.end_offset
        with pytest.raises(LogError, match=r"payload 1: .*empty"):
            log.append([b"ok", b""])
        with pytest.raises(LogError, match=f"exceeds the maximum of {MAX_RECORD_SIZE}"):
            log.append([bytes(MAX_RECORD_SIZE + 1)])
        with pytest.raises(LogError, match="payload 0 is a str"):
            log.append(["text"])  # type: ignore[list-item]
        with pytest.raises(LogError, match="not a single bytes object"):
            log.append(b"abc")
        assert log.end_offset == end
        log.append([bytearray(b"bytes-like"), memoryview(b"view")])  # type: ignore[list-item]
        log.sync()
        assert [r.payload for r in log.read()] == [b"bytes-like", b"view"]


def test_read_while_appending_from_another_thread(tmp_path: Path) -> None:
    """A reader following the synced end sees each record once, in order, while a writer appends."""
    data = payloads(3000, size=100)
    seen: list[bytes] = []
    with EventLog.open(tmp_path / "log", segment_size=64 << 10) as log:
        done = threading.Event()

        def writer() -> None:
            for i in range(0, len(data), 50):
                log.append(data[i : i + 50])
                log.sync()
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        checkpoint = log.start_offset
        while True:
            finished = done.is_set()
            for rec in log.read(checkpoint):
                seen.append(rec.payload)
                checkpoint = rec.end
            if finished:
                break
        t.join()
    assert seen == data


def test_second_open_is_locked(tmp_path: Path) -> None:
    """Opening a log that is already open raises LogLockedError naming the holder's pid."""
    with (
        EventLog.open(tmp_path / "log"),
        pytest.raises(LogLockedError, match=f"pid {os.getpid()}"),
    ):
        EventLog.open(tmp_path / "log")
    with EventLog.open(tmp_path / "log") as log:
        assert log.recovery.clean


def test_closed_log_refuses_use(tmp_path: Path) -> None:
    """After close(), append, sync and read raise LogError; close() again is harmless."""
    log = EventLog.open(tmp_path / "log")
    log.close()
    log.close()
    for call in (lambda: log.append([b"x"]), log.sync, log.read):
        with pytest.raises(LogError, match="closed"):
            call()


def test_verify_reports_flipped_bit_without_changing_files(tmp_path: Path) -> None:
    """verify() and verify_log() name the segment and offset of a flipped bit and touch nothing."""
    d = tmp_path / "log"
    with EventLog.open(d, segment_size=600) as log:
        offsets = log.append(payloads(40))
        log.sync()
        assert log.verify().ok
        files = segments(d)
        target = offsets[3]
        flip_bit(files[0], payload_position(target, 0) + 5)
        report = log.verify()
        before = snapshot(tmp_path)
        offline = verify_log(d)
        assert snapshot(tmp_path) == before
        for rep in (report, offline):
            assert not rep.ok
            assert rep.corrupt
            (bad,) = rep.errors
            assert bad.path == str(files[0])
            assert bad.base_offset == 0
            assert bad.error_offset == target
            assert bad.error is not None
            assert "checksum" in bad.error
            assert bad.records == 3
            assert not bad.torn_tail
            assert all(s.ok for s in rep.segments[1:])
        with pytest.raises(LogCorruptedError, match=f"offset {target}"):
            list(log.read())


def test_verify_log_marks_torn_tail(tmp_path: Path) -> None:
    """verify_log reports garbage at the end of the last segment as a torn tail."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        log.append(payloads(3))
    (seg,) = segments(d)
    end = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\0" * 100)
    rep = verify_log(d)
    assert not rep.ok
    assert not rep.corrupt
    (bad,) = rep.errors
    assert bad.torn_tail
    assert bad.error_offset == end
    assert bad.records == 3


def test_verify_log_of_missing_directory(tmp_path: Path) -> None:
    """verify_log of a folder that does not exist is a LogError naming it."""
    with pytest.raises(LogError, match="nope"):
        verify_log(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_segment_size_too_small(tmp_path: Path) -> None:
    """A segment_size that cannot hold a header and one byte of record is refused."""
    with pytest.raises(LogError, match="segment_size"):
        EventLog.open(tmp_path / "log", segment_size=10)
