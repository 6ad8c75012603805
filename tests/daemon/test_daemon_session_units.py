"""Unit tests of a session's read pausing (pure policy, with a stand-in transport)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from trackd.daemon.session import Session


class _Transport:
    """Records whether reading is paused, as an asyncio transport would apply it."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


def _session() -> tuple[Session, _Transport]:
    server = SimpleNamespace(settings=SimpleNamespace(max_frame=1 << 20), sessions=set())
    s = Session(cast(Any, server))
    t = _Transport()
    s._transport = cast(Any, t)
    return s, t


def test_a_connection_not_read_since_reads_resumed_gets_one_read_before_pausing() -> None:
    """After a resume, a pause stops a connection only once it has been read: the ones the
    loop serves first cannot starve the others by filling the budget every time."""
    s, t = _session()
    s.set_backpressure(True)
    assert not t.reading  # never owed anything: paused at once
    s.set_backpressure(False)
    assert t.reading
    s.set_backpressure(True)  # the budget filled again before this connection was read
    assert t.reading  # ... so it still gets its read
    s.data_received(b"")
    assert not t.reading  # ... and pauses right after it
    s.set_backpressure(False)
    s.data_received(b"")  # read after the resume: its turn is used
    s.set_backpressure(True)
    assert not t.reading


def test_a_connection_let_through_without_reading_stays_owed_its_read() -> None:
    """A connection let through a pause that then had nothing to send is still owed its
    read at the next pause; a resume in between does not forget it."""
    s, t = _session()
    s.set_backpressure(True)
    s.set_backpressure(False)
    s.set_backpressure(True)
    assert t.reading
    s.set_backpressure(False)
    s.set_backpressure(True)
    assert t.reading
    s.data_received(b"")
    assert not t.reading
