"""Unit tests of the status helpers (pure code): the latency meter and the text rendering."""

from __future__ import annotations

from trackd.daemon.status import LatencyMeter, format_status


def test_latency_meter_reports_percentiles_of_the_kept_samples_in_ms() -> None:
    """p50/p99/max come from the last ``size`` samples; count counts every sample."""
    m = LatencyMeter(size=100)
    assert m.summary() == {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    for i in range(1, 201):  # 1 ms .. 200 ms; only 101..200 are kept
        m.add(i / 1000)
    assert m.summary() == {"count": 200, "p50": 151.0, "p99": 200.0, "max": 200.0}


def test_status_text_shows_flush_latency_only_once_there_were_flushes() -> None:
    """The text status names the daemon's flush percentiles of a repository that had any."""
    repo = {
        "path": "/r",
        "end_offset": 10,
        "synced_offset": 10,
        "applied_offset": 10,
        "lag_bytes": 0,
        "lag_events": 0,
        "clients": 1,
        "locks": 0,
        "events_per_s": 0.0,
        "pending_bytes": 0,
        "flush_ms": {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0},
    }
    quiet = format_status({"repositories": [repo]})
    assert "flushes" not in quiet
    repo["flush_ms"] = {"count": 7, "p50": 1.25, "p99": 9.5, "max": 12.0}
    busy = format_status({"repositories": [repo]})
    assert "flushes 7: p50 1.2 ms, p99 9.5 ms, max 12.0 ms (in the daemon)" in busy
    assert "durable" not in busy  # a daemon that reports no split (an older one)
    repo["flush_sync_ms"] = {"count": 7, "p50": 0.75, "p99": 6.0, "max": 8.0}
    repo["flush_apply_ms"] = {"count": 7, "p50": 0.5, "p99": 3.5, "max": 4.0}
    split = format_status({"repositories": [repo]})
    assert "durable p50 0.8 ms, p99 6.0 ms; then applied p50 0.5 ms, p99 3.5 ms" in split
