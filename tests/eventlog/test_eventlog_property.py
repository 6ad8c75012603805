"""Property: whatever is synced survives a crash, and nothing but a prefix of the rest does."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

from eventlog_support import copy_log, segments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackd.eventlog import log as log_module
from trackd.eventlog.log import EventLog
from trackd.eventlog.record import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE
from trackd.eventlog.segment import parse_segment_name

ops = st.lists(
    st.tuples(st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=4), st.booleans()),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=ops,
    segment_size=st.sampled_from([120, 400, 64 << 20]),
    spill=st.booleans(),
    tail=st.sampled_from(["cut", "zeros", "garbage"]),
    data=st.data(),
)
def test_synced_records_survive_a_crash(
    ops: list[tuple[list[bytes], bool]],
    segment_size: int,
    spill: bool,
    tail: str,
    data: st.DataObject,
) -> None:
    """A crash image with a random cut of the unsynced tail reopens with every synced record."""
    appended: list[tuple[int, bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        live, crash = Path(tmp) / "live", Path(tmp) / "crash"
        # With a zero-sized buffer every append is written at once, so the unsynced tail is
        # on disk (like a crash after write() but before fdatasync).
        with mock.patch.object(log_module, "WRITE_BUFFER_SIZE", 0 if spill else 1 << 30):
            log = EventLog.open(live, segment_size=segment_size)
            try:
                for batch, do_sync in ops:
                    appended += zip(log.append(batch), batch, strict=True)
                    if do_sync:
                        log.sync()
                synced = log.synced_offset
                copy_log(live, crash)
            finally:
                log.close()

        files = segments(crash)
        last = files[-1]
        base = parse_segment_name(last.name)
        assert base is not None
        written = base + last.stat().st_size
        # Creating a segment syncs the one before it and its own header, so the durable part
        # reaches at least the last segment's header even when synced_offset is older.
        durable = max(synced, base + SEGMENT_HEADER_SIZE)
        cut = data.draw(st.integers(durable, written), label="cut")
        with open(last, "r+b") as f:
            f.truncate(cut - base)
            if tail == "zeros":
                f.seek(0, os.SEEK_END)
                f.write(bytes(data.draw(st.integers(1, 64), label="zeros")))
            elif tail == "garbage":
                f.seek(0, os.SEEK_END)
                f.write(data.draw(st.binary(min_size=1, max_size=64), label="garbage"))

        with EventLog.open(crash, segment_size=segment_size) as again:
            got = [(r.offset, r.payload) for r in again.read()]
            assert again.recovery.corruption is None
        expected = [(o, p) for o, p in appended if o + RECORD_HEADER_SIZE + len(p) <= cut]
        assert got == expected
        assert all(o + RECORD_HEADER_SIZE + len(p) > synced for o, p in appended[len(got) :])
