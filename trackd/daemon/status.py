"""What ``status`` reports: the rate meter, and the human rendering of the status map.

Owns: :class:`RateMeter` (events per second over a sliding window), :class:`LatencyMeter`
(percentiles of the last flush barriers) and :func:`format_status` (the text
``trackd daemon status`` prints). The map itself is built by
:meth:`trackd.daemon.server.Server.status` from each repository's
:meth:`~trackd.daemon.repository.Repository.status`. Stdlib only.

The status map (a ``status`` request's result)::

    {"pid": int, "version": str, "socket": str, "uptime_s": float, "clients": int,
     "events_per_s": float, "repositories": [
        {"path": str, "end_offset": int, "synced_offset": int, "applied_offset": int,
         "lag_bytes": int, "lag_events": int, "clients": int, "locks": int,
         "pending_bytes": int, "paused": bool, "events_written": int,
         "duplicates_dropped": int, "groups_synced": int, "events_per_s": float,
         "spool_files_ingested": int, "sync_seconds": float, "apply_seconds": float,
         "flush_ms": {"count": int, "p50": float, "p99": float, "max": float},
         "flush_sync_ms": {...}, "flush_apply_ms": {...}},
        ...]}

``sync_seconds`` and ``apply_seconds`` are the wall time spent in append+fdatasync and in
applying to the views since the repository was opened. ``flush_ms`` describes the last
(up to 4,096) flush barriers, from the daemon reading the request to sending the reply:
the daemon's share of what a client's ``flush()`` takes (the figures are 0 before any).
``flush_sync_ms`` and ``flush_apply_ms`` split each of those flushes in two: from reading
the request until the writer is back from the fdatasync that made everything before it
durable, then until the projector applied it and the reply was sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["LatencyMeter", "RateMeter", "format_status"]


class RateMeter:
    """Counts events in one-second buckets and reports the mean rate over a window.

    Args:
        window: Seconds the rate averages over.
    """

    __slots__ = ("_buckets", "_started", "window")

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._buckets: deque[list[int]] = deque()
        self._started = time.monotonic()

    def add(self, n: int) -> None:
        """Record ``n`` events now."""
        sec = int(time.monotonic())
        if self._buckets and self._buckets[-1][0] == sec:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([sec, n])
            self._trim(sec)

    def rate(self) -> float:
        """Mean events per second over the last ``window`` seconds (or since start)."""
        now = time.monotonic()
        self._trim(int(now))
        span = min(float(self.window), max(now - self._started, 1.0))
        return sum(c for _, c in self._buckets) / span

    def _trim(self, sec: int) -> None:
        while self._buckets and self._buckets[0][0] <= sec - self.window:
            self._buckets.popleft()


class LatencyMeter:
    """Keeps the last ``size`` durations and reports their percentiles in milliseconds.

    Args:
        size: How many of the most recent samples count.
    """

    __slots__ = ("_samples", "count")

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        """Record one duration."""
        self._samples.append(seconds)
        self.count += 1

    def summary(self) -> dict[str, float]:
        """``count`` (all samples ever) and ``p50``/``p99``/``max`` in ms of the kept ones."""
        s = sorted(self._samples)
        if not s:
            return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

        def ms(q: float) -> float:
            return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 2)

        return {"count": self.count, "p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0)}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB"):
        x /= 1024
        if x < 1024:
            return f"{x:.1f} {unit}"
    return f"{x / 1024:.1f} GiB"


def _duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"


def format_status(status: Mapping[str, Any]) -> str:
    """Render a status map as the few readable lines ``trackd daemon status`` prints."""
    repos = status.get("repositories", [])
    lines = [
        f"trackd daemon {status.get('version', '?')}, pid {status.get('pid')}, "
        f"up {_duration(float(status.get('uptime_s', 0)))}",
        f"socket: {status.get('socket', '?')}",
        f"clients: {status.get('clients', 0)}, events/s: {status.get('events_per_s', 0):.1f}, "
        f"repositories: {len(repos)}",
    ]
    for r in repos:
        lines.append(f"  {r['path']}")
        lines.append(
            f"    log end {r['end_offset']}, synced {r['synced_offset']}, "
            f"applied {r['applied_offset']} (lag {_size(int(r['lag_bytes']))}, "
            f"{r['lag_events']} events)"
        )
        paused = ", reads paused" if r.get("paused") else ""
        lines.append(
            f"    clients {r['clients']}, locks {r['locks']}, events/s {r['events_per_s']:.1f}, "
            f"pending {_size(int(r['pending_bytes']))}{paused}"
        )
        flush = r.get("flush_ms") or {}
        if flush.get("count"):
            lines.append(
                f"    flushes {flush['count']}: p50 {flush['p50']:.1f} ms, "
                f"p99 {flush['p99']:.1f} ms, max {flush['max']:.1f} ms (in the daemon)"
            )
            parts = [
                f"{what} p50 {st['p50']:.1f} ms, p99 {st['p99']:.1f} ms"
                for what, st in (
                    ("durable", r.get("flush_sync_ms") or {}),
                    ("then applied", r.get("flush_apply_ms") or {}),
                )
                if st.get("count")
            ]
            if parts:
                lines.append("      " + "; ".join(parts))
    return "\n".join(lines)
