"""The trackd daemon: one process per user that owns every repository's event log.

Imports ``trackd.eventlog``, ``trackd.views``, ``trackd.wire``, asyncio, uvloop and watchfiles;
never ``trackd.sdk``. The modules show the architecture:

- :mod:`~trackd.daemon.server` — single-instance lock, the Unix socket, signals, lifecycle
- :mod:`~trackd.daemon.session` — one connection: peer check, framing, handshake, dispatch
- :mod:`~trackd.daemon.repository` — one repository: log, views, locks, memory budget
- :mod:`~trackd.daemon.writer` — the single writer task: dedupe, append, group commit, acks
- :mod:`~trackd.daemon.projector` — applies synced events to the views on their own thread
- :mod:`~trackd.daemon.spool` — ingests spool files left by clients that found no daemon
- :mod:`~trackd.daemon.status` — the status map's rate meter and its human rendering
- :mod:`~trackd.daemon.client` — a small blocking client (``trackd daemon status``)
- :mod:`~trackd.daemon.settings` — the tunables
"""

from trackd.daemon.settings import DaemonSettings

__all__ = ["DaemonSettings"]
