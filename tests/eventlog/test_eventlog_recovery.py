"""Recovery at open: torn tails are cut, damage before the tail is quarantined and reported."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from crc32c import crc32c
from eventlog_support import flip_bit, payload_position, segments, snapshot

from trackd.errors import LogCorruptedError, LogError
from trackd.eventlog.log import EventLog
from trackd.eventlog.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    encode_segment_header,
)
from trackd.eventlog.segment import parse_segment_name


def payloads(n: int, size: int = 20) -> list[bytes]:
    """``n`` distinct payloads of about ``size`` bytes."""
    return [f"p{i:04d}".encode() * (size // 5) for i in range(n)]


def make_log(d: Path, data: list[bytes], segment_size: int = 64 << 20) -> list[int]:
    """Write ``data`` into a new log at ``d``, one sync per record; return the offsets."""
    with EventLog.open(d, segment_size=segment_size) as log:
        offsets = []
        for p in data:
            offsets += log.append([p])
            log.sync()
    return offsets


def read_all(d: Path, **kw: object) -> list[bytes]:
    """Open the log at ``d`` and return every payload."""
    with EventLog.open(d, **kw) as log:  # type: ignore[arg-type]
        return [r.payload for r in log.read()]


def test_recovery_from_every_truncation_point_of_last_segment(tmp_path: Path) -> None:
    """Cut the last segment at every length: exactly the whole records before it survive."""
    data = payloads(10)
    src = tmp_path / "src"
    offsets = make_log(src, data, segment_size=200)
    files = segments(src)
    assert len(files) >= 2
    last = files[-1]
    base = parse_segment_name(last.name)
    assert base is not None
    full = last.read_bytes()
    for length in range(len(full) + 1):
        d = tmp_path / f"cut{length}"
        shutil.copytree(src, d)
        with open(d / last.name, "r+b") as f:
            f.truncate(length)
        survivors = [
            p
            for p, o in zip(data, offsets, strict=True)
            if o + RECORD_HEADER_SIZE + len(p) <= base + length
        ]
        with EventLog.open(d, segment_size=200) as log:
            assert [r.payload for r in log.read()] == survivors, length
            at_boundary = length >= SEGMENT_HEADER_SIZE and log.end_offset == base + length
            if at_boundary:
                assert log.recovery.clean
            else:
                assert log.recovery.torn_tail is not None, length
                assert log.recovery.corruption is None
            log.append([b"after"])
            log.sync()
            assert [r.payload for r in log.read()] == [*survivors, b"after"]
        assert read_all(d, segment_size=200) == [*survivors, b"after"]
        shutil.rmtree(d)


def test_zero_filled_tail_is_cut(tmp_path: Path) -> None:
    """Zero bytes after the last record (a crash after the size grew) are cut and reported."""
    d = tmp_path / "log"
    data = payloads(5)
    make_log(d, data)
    (seg,) = segments(d)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(4096))
    with EventLog.open(d) as log:
        tail = log.recovery.torn_tail
        assert tail is not None
        assert (tail.offset, tail.bytes_cut) == (size, 4096)
        assert "zero" in tail.reason
        assert [r.payload for r in log.read()] == data
    assert seg.stat().st_size == size


def test_garbage_tail_is_cut(tmp_path: Path) -> None:
    """Random bytes after the last record are cut; appends continue at the cut point."""
    d = tmp_path / "log"
    data = payloads(5)
    make_log(d, data)
    (seg,) = segments(d)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(os.urandom(1000))
    with EventLog.open(d) as log:
        assert log.recovery.torn_tail is not None
        assert log.end_offset == size
        assert log.append([b"next"]) == [size]
        log.sync()
    assert read_all(d) == [*data, b"next"]


def test_bit_flip_in_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    """A damaged last record with nothing valid after it is cut, not quarantined."""
    d = tmp_path / "log"
    data = payloads(5)
    offsets = make_log(d, data)
    (seg,) = segments(d)
    flip_bit(seg, payload_position(offsets[-1], 0) + 3)
    with EventLog.open(d) as log:
        tail = log.recovery.torn_tail
        assert tail is not None
        assert tail.offset == offsets[-1]
        assert "checksum" in tail.reason
        assert log.recovery.corruption is None
        assert [r.payload for r in log.read()] == data[:-1]
    assert not (tmp_path / "quarantine").exists()


def test_bit_flip_in_middle_record_quarantines(tmp_path: Path) -> None:
    """A bad record followed by good ones raises LogCorruptedError after moving the rest aside."""
    d = tmp_path / "log"
    data = payloads(8)
    offsets = make_log(d, data)
    (seg,) = segments(d)
    bad = offsets[3]
    flip_bit(seg, payload_position(bad, 0))
    damaged = seg.read_bytes()
    with pytest.raises(LogCorruptedError) as info:
        EventLog.open(d)
    msg = str(info.value)
    assert str(seg) in msg
    assert f"offset {bad}" in msg
    assert "checksum" in msg
    assert f"reopening continues from offset {bad}" in msg
    assert "trackd log verify" in msg
    (qdir,) = (tmp_path / "quarantine").iterdir()
    assert str(qdir) in msg
    (rest,) = qdir.glob("*.seg.from-*")
    assert rest.name == f"{seg.name}.from-{bad:020d}"
    assert rest.read_bytes() == damaged[bad:]
    assert (qdir / "QUARANTINE.txt").read_text().strip() == msg
    assert seg.stat().st_size == bad
    with EventLog.open(d) as log:
        assert log.recovery.clean
        assert log.end_offset == bad
        assert [r.payload for r in log.read()] == data[:3]
        log.append([b"new"])
        log.sync()
    assert read_all(d) == [*data[:3], b"new"]


def test_bit_flip_in_middle_record_not_strict_reports(tmp_path: Path) -> None:
    """With strict=False the same damage is quarantined and reported in recovery, not raised."""
    d = tmp_path / "log"
    data = payloads(8)
    offsets = make_log(d, data)
    (seg,) = segments(d)
    flip_bit(seg, payload_position(offsets[5], 0) + 2)
    qroot = tmp_path / "elsewhere"
    with EventLog.open(d, strict=False, quarantine_dir=qroot) as log:
        c = log.recovery.corruption
        assert c is not None
        assert (c.segment, c.offset) == (str(seg), offsets[5])
        assert c.quarantine_dir.startswith(str(qroot))
        assert len(c.moved) == 1
        assert os.path.exists(c.moved[0])
        assert f"offset {offsets[5]}" in c.message
        assert not log.recovery.clean
        assert [r.payload for r in log.read()] == data[:5]
        assert log.end_offset == offsets[5]


def test_bit_flip_in_non_last_segment_quarantines_later_segments(tmp_path: Path) -> None:
    """Damage in an earlier segment moves its rest and every later segment to quarantine."""
    d = tmp_path / "log"
    data = payloads(30)
    offsets = make_log(d, data, segment_size=150)
    files = segments(d)
    assert len(files) >= 4
    # The last record of the second segment: nothing valid follows it in that segment, but
    # the segment is not the last, so this is corruption, not a torn tail.
    base1 = parse_segment_name(files[1].name)
    base2 = parse_segment_name(files[2].name)
    assert base1 is not None
    assert base2 is not None
    in_seg1 = [o for o in offsets if base1 <= o < base2]
    bad = in_seg1[-1]
    flip_bit(files[1], payload_position(bad, base1))
    with pytest.raises(LogCorruptedError, match=f"offset {bad} in segment {files[1]}"):
        EventLog.open(d, segment_size=150)
    (qdir,) = (tmp_path / "quarantine").iterdir()
    moved = sorted(p.name for p in qdir.iterdir())
    assert moved == sorted(
        [f"{files[1].name}.from-{bad:020d}", "QUARANTINE.txt"] + [f.name for f in files[2:]]
    )
    assert segments(d) == files[:2]
    keep = [p for p, o in zip(data, offsets, strict=True) if o < bad]
    assert read_all(d, segment_size=150) == keep
    with EventLog.open(d, segment_size=150) as log:
        assert log.end_offset == bad
        log.append([b"x" * 100, b"y" * 100])
        log.sync()
    assert read_all(d, segment_size=150) == [*keep, b"x" * 100, b"y" * 100]


def test_damaged_segment_header_quarantines_whole_segments(tmp_path: Path) -> None:
    """A bad header of a middle segment moves that segment and the later ones aside."""
    d = tmp_path / "log"
    data = payloads(20)
    offsets = make_log(d, data, segment_size=150)
    files = segments(d)
    base1 = parse_segment_name(files[1].name)
    assert base1 is not None
    flip_bit(files[1], 12)
    with pytest.raises(LogCorruptedError, match=f"checksum mismatch, at offset {base1}"):
        EventLog.open(d, segment_size=150)
    (qdir,) = (tmp_path / "quarantine").iterdir()
    assert sorted(p.name for p in qdir.glob("*.seg")) == [f.name for f in files[1:]]
    assert segments(d) == files[:1]
    assert read_all(d, segment_size=150) == [
        p for p, o in zip(data, offsets, strict=True) if o < base1
    ]


def test_damaged_header_of_first_and_only_segment(tmp_path: Path) -> None:
    """A bad header on the only segment, with records after it, leaves an empty log at its base."""
    d = tmp_path / "log"
    make_log(d, payloads(5))
    (seg,) = segments(d)
    flip_bit(seg, 0)
    with EventLog.open(d, strict=False) as log:
        c = log.recovery.corruption
        assert c is not None
        assert c.offset == 0
        assert "magic" in c.reason
        assert list(log.read()) == []
        log.append([b"fresh"])
        log.sync()
    assert read_all(d) == [b"fresh"]
    (qdir,) = (tmp_path / "quarantine").iterdir()
    assert (qdir / seg.name).exists()


def test_short_or_empty_last_segment_is_recreated(tmp_path: Path) -> None:
    """A last segment cut short or zero-filled by a crash at its creation is redone."""
    d = tmp_path / "log"
    data = payloads(12)
    make_log(d, data, segment_size=150)
    end = sum(f.stat().st_size for f in segments(d))
    for content in (b"", encode_segment_header(end)[:7], bytes(SEGMENT_HEADER_SIZE + 30)):
        (d / f"{end:020d}.seg").write_bytes(content)
        with EventLog.open(d, segment_size=150) as log:
            assert log.recovery.torn_tail is not None
            assert log.recovery.corruption is None
            assert log.end_offset == end + SEGMENT_HEADER_SIZE
            assert [r.payload for r in log.read()] == data
        assert (d / f"{end:020d}.seg").read_bytes() == encode_segment_header(end)


def test_missing_middle_segment_quarantines_the_rest(tmp_path: Path) -> None:
    """A gap between segments is damage at the gap: later segments are moved aside."""
    d = tmp_path / "log"
    data = payloads(20)
    offsets = make_log(d, data, segment_size=150)
    files = segments(d)
    base2 = parse_segment_name(files[2].name)
    assert base2 is not None
    files[2].unlink()
    with pytest.raises(LogCorruptedError, match="missing"):
        EventLog.open(d, segment_size=150)
    assert segments(d) == files[:2]
    assert read_all(d, segment_size=150) == [
        p for p, o in zip(data, offsets, strict=True) if o < base2
    ]


def test_newer_format_version_is_refused_untouched(tmp_path: Path) -> None:
    """A segment written by a newer format raises LogError and no file is changed."""
    d = tmp_path / "log"
    make_log(d, payloads(3))
    (seg,) = segments(d)
    body = struct.pack("<8sHHQ", b"TRKDLOG\0", SEGMENT_FORMAT_VERSION + 1, 0, 0)
    raw = seg.read_bytes()
    seg.write_bytes(body + struct.pack("<I", crc32c(body)) + raw[SEGMENT_HEADER_SIZE:])
    before = snapshot(d)
    with pytest.raises(LogError, match="upgrade trackd"):
        EventLog.open(d)
    after = snapshot(d)
    assert {k: v for k, v in after.items() if k != "LOCK"} == {
        k: v for k, v in before.items() if k != "LOCK"
    }
    with pytest.raises(LogError, match="upgrade trackd"):  # and the lock was released
        EventLog.open(d)


def test_short_non_last_segment_is_corruption(tmp_path: Path) -> None:
    """A segment cut below its header that is not the last one is quarantined with the rest."""
    d = tmp_path / "log"
    data = payloads(20)
    offsets = make_log(d, data, segment_size=150)
    files = segments(d)
    base1 = parse_segment_name(files[1].name)
    assert base1 is not None
    with open(files[1], "r+b") as f:
        f.truncate(10)
    with EventLog.open(d, segment_size=150, strict=False) as log:
        c = log.recovery.corruption
        assert c is not None
        assert (c.segment, c.offset) == (str(files[1]), base1)
        assert "shorter than its header" in c.reason
        assert [r.payload for r in log.read()] == [
            p for p, o in zip(data, offsets, strict=True) if o < base1
        ]
    assert segments(d) == files[:1]
