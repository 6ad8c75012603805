"""The daemon's tunables, in one frozen dataclass with documented defaults.

Owns: :class:`DaemonSettings`. Imports ``trackd.wire`` and ``trackd.eventlog.record`` (for
frame and record size limits) only.
A config layer (``config.toml``, environment, flags) builds one of these and hands it to
:func:`trackd.daemon.server.run_daemon`; nothing in the daemon reads the environment for a
tunable by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trackd.errors import ConfigError
from trackd.eventlog.record import MAX_RECORD_SIZE
from trackd.wire import DEFAULT_MAX_FRAME

__all__ = ["DaemonSettings"]

if TYPE_CHECKING:
    from trackd.config import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """Everything about the daemon that a user may tune.

    Attributes:
        socket: The Unix socket to serve; None means :func:`trackd.wire.address.socket_path`.
        group_commit_max_wait: Seconds the writer waits for more events after the first one
            of a group before it syncs. 0 (the default) syncs at once: events that arrive
            while a sync runs form the next group anyway, so batching grows with load
            without adding latency when the daemon is idle.
        max_pending_bytes: Estimated memory of one repository's events held by the daemon
            (received but not synced, or synced but not yet applied to the views; see
            :func:`trackd.daemon.writer.memory_cost`) above which the daemon stops reading
            that repository's connections. Default 32 MiB: the daemon's peak RSS grows by
            about twice the budget over its idle size (64 producers on two cores: 213 MB
            with 32 MiB, 279 MB with 64 MiB), and a larger budget did not raise throughput.
        resume_pending_bytes: Reading resumes once the pending bytes fall below this. None
            (the default) means three quarters of ``max_pending_bytes``: pauses stay short
            (the time to apply a quarter of the budget), so no client waits long for a read.
        segment_size: Size at which the event log starts a new segment file. Default 64 MiB.
        max_frame: Largest frame a client may send, in bytes (announced in Welcome).
            Default :data:`trackd.wire.DEFAULT_MAX_FRAME` (64 MiB).
        projector_batch_events: Most events applied to the views in one transaction.
        spool_rescan_interval: Seconds between rescans of a spool folder while some spool
            file is still locked by a live writer (its exit may not produce a file event).
        idle_close: Seconds after its last client left, with nothing left to write or
            apply, before a repository is closed (its threads, log, views and caches freed;
            each open repository holds ~15-20 MB). The next client reopens it. 0: never.
        shutdown_timeout: Seconds a graceful stop may take to drain before giving up.
        log_level: Standard logging level name for the daemon's stderr log.
        log_format: ``auto`` (journal prefixes when stderr is the journal), ``journal`` or
            ``text``.
    """

    socket: Path | None = None
    group_commit_max_wait: float = 0.0
    max_pending_bytes: int = 32 << 20
    resume_pending_bytes: int | None = None
    segment_size: int = 64 << 20
    max_frame: int = DEFAULT_MAX_FRAME
    projector_batch_events: int = 20_000
    spool_rescan_interval: float = 2.0
    idle_close: float = 300.0
    shutdown_timeout: float = 60.0
    log_level: str = "INFO"
    log_format: str = "auto"

    @classmethod
    def from_config(cls, settings: Settings) -> DaemonSettings:
        """Build the daemon's tunables from the ``[daemon]`` section of the settings.

        ``trackd.config`` speaks in the units users write (milliseconds, MiB); the daemon
        works in seconds and bytes.
        """
        d = settings.daemon
        return cls(
            socket=d.socket,
            group_commit_max_wait=d.group_commit_max_wait_ms / 1000.0,
            max_pending_bytes=d.max_pending_mb << 20,
            segment_size=d.segment_size_mb << 20,
            max_frame=d.max_frame_mb << 20,
            idle_close=d.idle_close_s,
            log_level=d.log_level.upper(),
            log_format=d.log_format,
        )

    def __post_init__(self) -> None:
        if self.group_commit_max_wait < 0:
            raise ConfigError(
                f"group_commit_max_wait must be >= 0 seconds, got {self.group_commit_max_wait}"
            )
        if self.max_pending_bytes < 1 << 20:
            raise ConfigError(
                f"max_pending_bytes must be at least 1 MiB, got {self.max_pending_bytes}"
            )
        low = self.resume_pending_bytes
        if low is not None and not 0 <= low < self.max_pending_bytes:
            raise ConfigError(f"resume_pending_bytes must be in [0, max_pending_bytes), got {low}")
        if self.segment_size < 4096:
            raise ConfigError(f"segment_size must be at least 4096 bytes, got {self.segment_size}")
        if not 1024 <= self.max_frame <= MAX_RECORD_SIZE:
            # An event is smaller than its frame, so this bound keeps every event recordable.
            raise ConfigError(
                f"max_frame must be between 1024 and {MAX_RECORD_SIZE} bytes, got {self.max_frame}"
            )
        if self.idle_close < 0:
            raise ConfigError(f"idle_close must be >= 0 seconds (0: never), got {self.idle_close}")
        if self.projector_batch_events < 1:
            raise ConfigError(
                f"projector_batch_events must be positive, got {self.projector_batch_events}"
            )
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError(
                f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}"
            )

    @property
    def low_water_bytes(self) -> int:
        """Pending bytes below which paused connections resume reading."""
        if self.resume_pending_bytes is not None:
            return self.resume_pending_bytes
        return self.max_pending_bytes * 3 // 4
