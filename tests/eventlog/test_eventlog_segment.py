"""Chunked reading of segment files: the same answers whatever the chunk size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trackd.eventlog.fs import OSFileSystem
from trackd.eventlog.record import RECORD_HEADER_SIZE, encode_records, scan_records
from trackd.eventlog.segment import (
    RecordWalk,
    find_valid_record,
    parse_segment_name,
    segment_name,
)

fs = OSFileSystem()


def walk_file(path: Path, chunk: int) -> tuple[list[bytes], int, str]:
    """Walk the whole file with ``chunk``-sized reads; return payloads, stop and reason."""
    fd = fs.open_read(str(path))
    try:
        walk = RecordWalk(fs, fd, 0, fs.size(fd), chunk)
        out = [buf[s + RECORD_HEADER_SIZE : e] for _pos, buf, spans in walk for s, e in spans]
    finally:
        fs.close(fd)
    return out, walk.stop, walk.reason.name


@settings(max_examples=150, deadline=None, database=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=80), max_size=12),
    junk=st.binary(max_size=30),
    chunk=st.integers(1, 200),
)
def test_walk_matches_whole_buffer_scan(payloads: list[bytes], junk: bytes, chunk: int) -> None:
    """RecordWalk with any chunk size finds what scan_records finds over the whole file."""
    buf = encode_records(payloads) + junk
    whole = scan_records(buf)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(buf)
        got, stop, reason = walk_file(path, chunk)
    assert got == [buf[s + RECORD_HEADER_SIZE : e] for s, e in whole.spans]
    assert stop == whole.stop
    assert reason == whole.reason.name


@settings(max_examples=150, deadline=None, database=None)
@given(
    junk=st.binary(min_size=1, max_size=60),
    payload=st.binary(min_size=1, max_size=60),
    chunk=st.integers(4, 64),
)
def test_find_valid_record_across_chunks(junk: bytes, payload: bytes, chunk: int) -> None:
    """find_valid_record finds a record after junk even when chunks split its marker or body."""
    rec = encode_records([payload])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(junk + rec)
        fd = fs.open_read(str(path))
        try:
            found = find_valid_record(fs, fd, 0, len(junk) + len(rec), chunk)
            none = find_valid_record(fs, fd, 0, len(junk) + len(rec) - 1, chunk)
        finally:
            fs.close(fd)
    # Junk could by chance end with a prefix that forms a record only with ``rec``'s bytes;
    # the first valid record is then at or before ``len(junk)``.
    assert found is not None
    assert found <= len(junk)
    assert none is None or none < len(junk)


def test_segment_names_round_trip() -> None:
    """Segment names encode the base offset in 20 digits; other names are not segments."""
    assert segment_name(1234) == "00000000000000001234.seg"
    assert parse_segment_name(segment_name(1234)) == 1234
    for other in ("LOCK", "1234.seg", "0000000000000000123x.seg", "00000000000000001234.sег"):
        assert parse_segment_name(other) is None
