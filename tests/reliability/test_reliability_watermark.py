"""The durable-before watermark: a torn unsynced tail is told apart from real corruption.

Segment format version 2: every record header carries the log's synced offset at the moment
the record was appended. Bad bytes at offset p of the last segment followed by valid records
are corruption only when some later record's watermark is > p.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from trackd.errors import LogCorruptedError, LogError
from trackd.eventlog.log import EventLog, verify_log
from trackd.eventlog.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    check_segment_header,
    encode_record,
    encode_records,
    record_durable_before,
    scan_records,
)
from trackd.eventlog.segment import parse_segment_name


def _seg(d: Path, i: int = 0) -> Path:
    return sorted(p for p in d.iterdir() if parse_segment_name(p.name) is not None)[i]


def _zero(path: Path, start: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(n))


def _flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ 0x10]))


def test_records_carry_the_synced_offset_of_their_append(tmp_path: Path) -> None:
    """Each record's durable_before is the synced offset when it was appended."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        (a,) = log.append([b"a" * 10])
        log.sync()
        synced_after_a = log.synced_offset
        b, c = log.append([b"b" * 10, b"c" * 10])
        log.sync()
    data = _seg(d).read_bytes()
    scan = scan_records(data, SEGMENT_HEADER_SIZE)
    assert [s for s, _ in scan.spans] == [a, b, c]
    marks = [record_durable_before(data, s) for s, _ in scan.spans]
    assert marks == [SEGMENT_HEADER_SIZE, synced_after_a, synced_after_a]


def test_encode_record_keeps_its_signature_with_watermark_zero() -> None:
    """encode_record/encode_records take one argument as before and write durable_before 0."""
    one = encode_record(b"payload")
    many = encode_records([b"x", b"yy"])
    assert len(one) == RECORD_HEADER_SIZE + 7
    assert record_durable_before(one, 0) == 0
    scan = scan_records(many)
    assert [record_durable_before(many, s) for s, _ in scan.spans] == [0, 0]
    marked = encode_record(b"payload", 12345)
    assert record_durable_before(marked, 0) == 12345
    assert scan_records(marked).clean
    with pytest.raises(LogError, match="durable_before"):
        encode_record(b"payload", -1)


def test_lost_unsynced_page_before_surviving_record_is_a_torn_tail(tmp_path: Path) -> None:
    """An unsynced record lost while a later unsynced one survived is cut, not quarantined."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        log.append([b"acked" * 10])
        log.sync()
        b, c = log.append([b"B" * 5000, b"C" * 100])  # one group: neither was durable
        log.sync()
    seg = _seg(d)
    # The crash lost the page holding B's header; C, in a later page, survived.
    _zero(seg, b, 4096 - b)
    assert verify_log(d).segments[0].torn_tail
    assert not verify_log(d).corrupt
    with EventLog.open(d) as log:  # strict: must not raise
        tail = log.recovery.torn_tail
        assert log.recovery.corruption is None
        assert [r.payload for r in log.read()] == [b"acked" * 10]
    assert tail is not None
    assert tail.offset == b
    assert tail.segment == str(seg)
    assert tail.bytes_cut == c + RECORD_HEADER_SIZE + 100 - b
    assert "none of them was ever acknowledged" in tail.reason
    assert f"offset {c}" in tail.reason
    assert not (tmp_path / "quarantine").exists()


def test_bad_synced_record_followed_by_later_write_is_corruption(tmp_path: Path) -> None:
    """A bad record that a later record knew to be durable is reported as corruption."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        log.append([b"a" * 40])
        log.sync()
        (b,) = log.append([b"b" * 40])
        log.sync()
        (c,) = log.append([b"c" * 40])  # durable_before > b
        log.sync()
    seg = _seg(d)
    _flip(seg, b + RECORD_HEADER_SIZE + 3)
    with pytest.raises(LogCorruptedError) as info:
        EventLog.open(d)
    msg = str(info.value)
    assert f"at offset {b} in segment {seg}" in msg
    assert f"valid record after it at offset {c}" in msg
    assert "durable up to offset" in msg
    with EventLog.open(d, strict=False) as log:
        assert [r.payload for r in log.read()] == [b"a" * 40]
        assert log.recovery.clean  # the first open already quarantined and cut
    (qdir,) = (tmp_path / "quarantine").iterdir()
    assert (qdir / f"{seg.name}.from-{b:020d}").exists()


def test_strict_false_reports_corruption_with_segment_and_offset(tmp_path: Path) -> None:
    """With strict=False the corruption is in recovery.corruption, naming segment and offset."""
    d = tmp_path / "log"
    with EventLog.open(d) as log:
        for i in range(4):
            log.append([f"r{i}".encode() * 30])
            log.sync()
        offsets = [r.offset for r in log.read()]
    seg = _seg(d)
    _zero(seg, offsets[1], 30)
    with EventLog.open(d, strict=False) as log:
        bad = log.recovery.corruption
        assert bad is not None
        assert (bad.segment, bad.offset) == (str(seg), offsets[1])
        assert log.recovery.torn_tail is None
        assert log.end_offset == offsets[1]


def test_bad_bytes_in_an_earlier_segment_stay_corruption(tmp_path: Path) -> None:
    """A lost page in a sealed (synced) segment is corruption whatever the watermarks say."""
    d = tmp_path / "log"
    with EventLog.open(d, segment_size=4096) as log:
        log.append([b"x" * 1500, b"y" * 1500, b"z" * 1500])  # one group over two segments
        log.sync()
        offsets = [r.offset for r in log.read()]
    first = _seg(d, 0)
    _zero(first, offsets[0] + 4, 16)
    with EventLog.open(d, strict=False, segment_size=4096) as log:
        bad = log.recovery.corruption
        assert bad is not None
        assert bad.offset == offsets[0]
        assert "not the last one" in bad.reason
        assert list(log.read()) == []


def _v1_segment(records: list[bytes]) -> bytes:
    body = struct.pack("<8sHHQ", b"TRKDLOG\0", 1, 0, 0)
    out = body + struct.pack("<I", crc32c(body))
    for p in records:
        n = struct.pack("<I", len(p))
        out += b"\xc1\x7e\xd3\x9a" + struct.pack("<I", crc32c(p, crc32c(n))) + n + p
    return out


def test_version_1_segments_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    """A format-1 log is refused untouched, with a message saying why and what to do."""
    d = tmp_path / "log"
    d.mkdir()
    seg = d / "00000000000000000000.seg"
    raw = _v1_segment([b"old-1", b"old-2"])
    seg.write_bytes(raw)
    assert check_segment_header(raw, 0) is HeaderStatus.OLD_VERSION
    with pytest.raises(LogError, match=r"format version 1.*reads format version 2") as info:
        EventLog.open(d, strict=False)
    assert str(seg) in str(info.value)
    assert "Move the log folder aside" in str(info.value)
    assert seg.read_bytes() == raw
    assert not (tmp_path / "quarantine").exists()
    report = verify_log(d)
    assert report.corrupt
    assert "format version 1" in (report.segments[0].error or "")
    assert SEGMENT_FORMAT_VERSION == 2
