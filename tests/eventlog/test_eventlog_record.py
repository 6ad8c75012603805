"""Record and segment-header framing: pure functions over bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackd.errors import LogError
from trackd.eventlog.record import (
    MAX_RECORD_SIZE,
    RECORD_HEADER_SIZE,
    RECORD_MARKER,
    SEGMENT_HEADER_SIZE,
    HeaderStatus,
    StopReason,
    check_segment_header,
    encode_record,
    encode_records,
    encode_segment_header,
    find_record,
    scan_records,
)

payload_lists = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


@settings(max_examples=200, database=None)
@given(payload_lists)
def test_encode_many_then_scan_round_trips(payloads: list[bytes]) -> None:
    """scan_records finds exactly the encoded payloads, in order, and stops at the end."""
    buf = encode_records(payloads)
    assert buf == b"".join(encode_record(p) for p in payloads)
    scan = scan_records(buf)
    assert scan.reason is StopReason.END
    assert scan.stop == len(buf)
    assert [buf[s + RECORD_HEADER_SIZE : e] for s, e in scan.spans] == payloads


@settings(max_examples=200, database=None)
@given(payload_lists.filter(bool), st.data())
def test_any_cut_stops_at_the_last_whole_record(payloads: list[bytes], data: st.DataObject) -> None:
    """Cutting encoded records anywhere keeps exactly the records that end before the cut."""
    buf = encode_records(payloads)
    cut = data.draw(st.integers(0, len(buf)))
    scan = scan_records(buf[:cut])
    ends = [e for _s, e in scan_records(buf).spans]
    kept = [e for e in ends if e <= cut]
    assert [e for _s, e in scan.spans] == kept
    assert scan.stop == (kept[-1] if kept else 0)
    if scan.stop < cut:
        assert scan.reason in (StopReason.SHORT_HEADER, StopReason.SHORT_PAYLOAD)
        assert scan.needed > cut - scan.stop


@settings(max_examples=200, database=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_bit_flip_is_detected(payload: bytes, data: st.DataObject) -> None:
    """Flipping any single bit of a record makes scan_records reject it."""
    rec = bytearray(encode_record(payload))
    i = data.draw(st.integers(0, len(rec) - 1))
    rec[i] ^= 1 << data.draw(st.integers(0, 7))
    scan = scan_records(bytes(rec))
    assert scan.spans == []
    assert scan.reason is not StopReason.END


def test_zero_filled_bytes_never_parse() -> None:
    """A zero-filled region is reported as zeros, never as a record, at any length."""
    for n in (1, RECORD_HEADER_SIZE - 1, RECORD_HEADER_SIZE, 4096):
        scan = scan_records(bytes(n))
        assert scan.spans == []
        assert scan.reason is StopReason.ZEROS


def test_length_zero_and_too_large_are_invalid() -> None:
    """A length of 0 or above MAX_RECORD_SIZE is a bad length, even after a valid marker."""
    for length in (0, MAX_RECORD_SIZE + 1):
        buf = struct.pack("<4sII", RECORD_MARKER, 0, length) + b"x" * 8
        assert scan_records(buf).reason is StopReason.BAD_LENGTH


def test_encode_rejects_empty_and_oversized_payloads() -> None:
    """encode_record raises LogError for an empty payload and one above MAX_RECORD_SIZE."""
    with pytest.raises(LogError, match="empty"):
        encode_record(b"")
    with pytest.raises(LogError, match=str(MAX_RECORD_SIZE)):
        encode_records([b"ok", bytes(MAX_RECORD_SIZE + 1)])


def test_scan_limit_and_start() -> None:
    """scan_records honours start and limit and reports where it stopped."""
    buf = encode_records([b"a", b"bb", b"ccc"])
    first = scan_records(buf, limit=1)
    assert first.reason is StopReason.LIMIT
    assert len(first.spans) == 1
    rest = scan_records(buf, first.stop)
    assert [buf[s + RECORD_HEADER_SIZE : e] for s, e in rest.spans] == [b"bb", b"ccc"]


def test_find_record_skips_garbage_and_false_markers() -> None:
    """find_record returns the first valid record after garbage that contains the marker."""
    good = encode_record(b"payload")
    garbage = b"\x01\x02" + RECORD_MARKER + b"\xff" * 20
    buf = garbage + good
    assert find_record(buf) == (len(garbage), -1)
    assert find_record(garbage) == (-1, -1)
    cut = buf[:-3]
    pos, needed = find_record(cut)
    assert pos == len(garbage)
    assert needed == len(good)


def test_segment_header_checks() -> None:
    """A segment header round-trips, and each kind of damage is named."""
    head = encode_segment_header(4096)
    assert len(head) == SEGMENT_HEADER_SIZE
    assert check_segment_header(head, 4096) is HeaderStatus.OK
    assert check_segment_header(head, 0) is HeaderStatus.WRONG_BASE
    assert check_segment_header(head[:10], 4096) is HeaderStatus.SHORT
    assert check_segment_header(bytes(SEGMENT_HEADER_SIZE), 4096) is HeaderStatus.ZEROS
    assert check_segment_header(b"X" + head[1:], 4096) is HeaderStatus.BAD_MAGIC
    flipped = bytearray(head)
    flipped[12] ^= 1
    assert check_segment_header(bytes(flipped), 4096) is HeaderStatus.BAD_CRC
