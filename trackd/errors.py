"""The one exception tree of trackd. Stdlib only; every other module imports from here.

Driver errors (``OSError``, ``sqlite3.Error``, ``msgpack`` exceptions) are translated once,
at the boundary where they happen, with ``raise ... from e``. Messages name the bad value and
what was expected.

::

    TrackdError
    ├── ConfigError                 bad or unknown configuration key / value
    ├── InvalidInputError           a bad argument from user code (also a ValueError)
    │   ├── InvalidNameError        a metric, param, run or repository name is not acceptable
    │   ├── InvalidValueError       a value of a type or shape that cannot be stored
    │   └── QueryError              a query string that does not parse or is not allowed
    ├── NotFoundError               a container, sequence or repository is missing (a KeyError)
    ├── EventError                  an event cannot be encoded or decoded
    │   └── UnknownEventError       an event type or version this build does not know
    ├── LogError                    the event log cannot do what was asked
    │   ├── LogCorruptedError       a bad record before the tail; the rest was moved aside
    │   ├── LogIOError              a write or fsync failed; the log refuses appends until reopened
    │   └── LogLockedError          another process owns the log
    ├── ViewsError                  the SQLite views cannot be read or written
    │   └── ViewsCorruptedError     stored points fail their checksum; rebuild from the log
    ├── ProtocolError               a frame or message breaks the wire protocol
    │   └── FrameTooLargeError      a frame longer than the negotiated maximum
    ├── RemoteError                 the daemon refused a request (carries the daemon's code)
    │   └── LockedError             a run or writer checkout is held by another live client
    ├── AccessDeniedError           a peer of another uid, or a path the caller may not use
    ├── DaemonUnavailableError      no daemon answers and none could be started
    └── FlushTimeoutError           a flush barrier did not complete in time

Every error the daemon sends travels as a stable string code (``ERROR_CODES``) and the SDK
raises the same class again with :func:`error_from_code`.
"""

from __future__ import annotations

__all__ = [
    "ERROR_CODES",
    "AccessDeniedError",
    "ConfigError",
    "DaemonUnavailableError",
    "EventError",
    "FlushTimeoutError",
    "FrameTooLargeError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidValueError",
    "LockedError",
    "LogCorruptedError",
    "LogError",
    "LogIOError",
    "LogLockedError",
    "NotFoundError",
    "ProtocolError",
    "QueryError",
    "RemoteError",
    "TrackdError",
    "UnknownEventError",
    "ViewsCorruptedError",
    "ViewsError",
    "error_from_code",
]


class TrackdError(Exception):
    """Root of every error trackd raises on purpose.

    ``code`` is the stable identifier used on the wire; subclasses override it.
    """

    code = "trackd_error"


class ConfigError(TrackdError):
    """A configuration file, environment variable or flag is unknown or has a bad value."""

    code = "config"


class InvalidInputError(TrackdError, ValueError):
    """User code passed an argument trackd cannot accept. Nothing was written."""

    code = "invalid_input"


class InvalidNameError(InvalidInputError):
    """A name (metric, param key, run, repository path) is empty, too long or of a bad type.

    Differs from :class:`InvalidValueError`, which is about the tracked value itself.
    """

    code = "invalid_name"


class InvalidValueError(InvalidInputError):
    """A tracked value or param has a type or shape that cannot be stored."""

    code = "invalid_value"


class QueryError(InvalidInputError):
    """A query expression does not parse or uses something outside the safe subset."""

    code = "query"


class NotFoundError(TrackdError, KeyError):
    """A container, sequence, repository or record asked for by name does not exist."""

    code = "not_found"

    def __str__(self) -> str:
        # KeyError quotes its argument; our messages are sentences.
        return str(self.args[0]) if self.args else ""


class EventError(TrackdError):
    """An event cannot be encoded (bad field) or decoded (bad bytes)."""

    code = "event"


class UnknownEventError(EventError):
    """An event type, or a version of it, that this build does not know how to read."""

    code = "unknown_event"


class LogError(TrackdError):
    """The event log cannot do what was asked."""

    code = "log"


class LogCorruptedError(LogError):
    """A bad record was found before the tail of the log.

    Raised at open after the rest of the damaged segment and every later segment were moved
    into the quarantine folder. Reopening continues from the last good record; the message
    names the segment, the offset and what to do. A torn *tail* never raises: it is cut.
    """

    code = "log_corrupted"


class LogIOError(LogError):
    """A write or fsync of the log failed. The log refuses appends until it is reopened,
    because after a failed fsync the kernel may have dropped the dirty pages."""

    code = "log_io"


class LogLockedError(LogError):
    """Another live process (usually another daemon) holds the log's lock."""

    code = "log_locked"


class ViewsError(TrackdError):
    """The SQLite views cannot be opened, migrated, read or written."""

    code = "views"


class ViewsCorruptedError(ViewsError):
    """Stored points fail their checksum: ``views.db`` was damaged on disk.

    The daemon rebuilds the views from the event log when it next opens the repository;
    ``trackd views rebuild`` does it by hand.
    """

    code = "views_corrupted"


class ProtocolError(TrackdError):
    """A frame or message does not follow the wire protocol (bad bytes, kind, or field)."""

    code = "protocol"


class FrameTooLargeError(ProtocolError):
    """A frame announces a length above the maximum; rejected before any byte is buffered."""

    code = "frame_too_large"


class RemoteError(TrackdError):
    """The daemon answered a request with an error whose code this build does not map."""

    code = "remote"


class LockedError(RemoteError):
    """A run (or a writer checkout) is held by another live client.

    Locks belong to connections: when the holder's process dies the lock is released.
    """

    code = "locked"


class AccessDeniedError(TrackdError):
    """The daemon refused a peer of another uid, or a repository path it may not use."""

    code = "access_denied"


class DaemonUnavailableError(TrackdError):
    """No daemon answered on the socket and none could be started."""

    code = "daemon_unavailable"


class FlushTimeoutError(TrackdError):
    """A flush barrier (``close()``/``flush()``) did not complete before its timeout."""

    code = "flush_timeout"


def _all_subclasses(cls: type[TrackdError]) -> list[type[TrackdError]]:
    out: list[type[TrackdError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ERROR_CODES: dict[str, type[TrackdError]] = {c.code: c for c in _all_subclasses(TrackdError)}


def error_from_code(code: str, message: str) -> TrackdError:
    """Rebuild the exception the daemon described by ``code``.

    Args:
        code: The stable code from an error reply.
        message: The daemon's message.

    Returns:
        An instance of the mapped class, or :class:`RemoteError` for unknown codes.
    """
    cls = ERROR_CODES.get(code, RemoteError)
    return cls(message)
