"""sd_notify over a real AF_UNIX datagram socket, and journal-aware logging."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trackd.daemon.systemd import (
    JournalFormatter,
    Notifier,
    configure_logging,
    journal_stream_active,
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket, and its path."""
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def recv(sock: socket.socket) -> str:
    """One datagram, decoded."""
    return sock.recv(4096).decode()


def test_from_env_needs_notify_socket() -> None:
    """No NOTIFY_SOCKET (or a non-Unix address) means no notifier."""
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_lifecycle_messages(notify_socket: tuple[socket.socket, str]) -> None:
    """READY, STATUS, STOPPING, WATCHDOG and EXTEND_TIMEOUT_USEC arrive as single datagrams."""
    sock, path = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n is not None
    assert n.ready()
    assert recv(sock) == "READY=1"
    assert n.ready("serving 2 repositories")
    assert recv(sock) == "READY=1\nSTATUS=serving 2 repositories"
    assert n.status("recovering\nsegment 3 of 9")
    assert recv(sock) == "STATUS=recovering segment 3 of 9"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.extend_timeout(5_000_000)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=5000000"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    assert n.notify("READY=1", STATUS="raw and fields")
    assert recv(sock) == "READY=1\nSTATUS=raw and fields"


def test_reloading_carries_monotonic_usec(notify_socket: tuple[socket.socket, str]) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC at the call."""
    sock, path = notify_socket
    n = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", recv(sock))
    assert m is not None
    assert before <= int(m.group(1)) <= after


def test_abstract_socket() -> None:
    """An address starting with @ is the abstract socket of that name."""
    name = f"trackd-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n is not None
        assert n.ready()
        assert recv(s) == "READY=1"
    finally:
        s.close()


def test_send_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A vanished notify socket makes notify() return False and log at debug, not raise."""
    n = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="trackd.daemon.systemd"):
        assert n.ready() is False
        assert n.watchdog() is False
    assert "sd_notify" in caplog.text


def test_watchdog_interval() -> None:
    """WATCHDOG_USEC gives the interval in seconds unless WATCHDOG_PID names another process."""
    base = {"NOTIFY_SOCKET": "/nonexistent"}
    n = Notifier.from_env({**base, "WATCHDOG_USEC": "2500000"})
    assert n is not None
    assert n.watchdog_interval() == 2.5
    mine = Notifier.from_env({**base, "WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid())})
    assert mine is not None
    assert mine.watchdog_interval() == 2.5
    other = Notifier.from_env({**base, "WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "1"})
    assert other is not None
    assert other.watchdog_interval() is None
    off = Notifier.from_env(base)
    assert off is not None
    assert off.watchdog_interval() is None


# -- logging ------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Undo configure_logging's changes to the root logger after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def stream_id(path: Path) -> str:
    """JOURNAL_STREAM's value for the file at ``path``."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_detection(tmp_path: Path) -> None:
    """JOURNAL_STREAM matches only the stream it names (by st_dev:st_ino)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.touch()
    b.touch()
    with open(a, "w") as fa, open(b, "w") as fb:
        env = {"JOURNAL_STREAM": stream_id(a)}
        assert journal_stream_active(env, fa.fileno())
        assert not journal_stream_active(env, fb.fileno())
        assert not journal_stream_active({}, fa.fileno())
        assert not journal_stream_active({"JOURNAL_STREAM": "junk"}, fa.fileno())


def test_journal_formatter_priorities() -> None:
    """Every line gets the syslog priority of its level."""
    f = JournalFormatter()

    def fmt(level: int, msg: str) -> str:
        return f.format(logging.LogRecord("trackd.x", level, __file__, 1, msg, None, None))

    assert fmt(logging.ERROR, "disk full") == "<3>trackd.x: disk full"
    assert fmt(logging.WARNING, "w") == "<4>trackd.x: w"
    assert fmt(logging.INFO, "i") == "<6>trackd.x: i"
    assert fmt(logging.DEBUG, "d") == "<7>trackd.x: d"
    assert fmt(logging.CRITICAL, "c") == "<2>trackd.x: c"
    assert fmt(logging.ERROR, "one\ntwo") == "<3>trackd.x: one\n<3>two"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_auto_picks_journal(tmp_path: Path) -> None:
    """auto writes <N> prefixes when the stream is the journal, text otherwise."""
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        configure_logging("info", "auto", stream=stream, env={"JOURNAL_STREAM": stream_id(path)})
        logging.getLogger("trackd.t").warning("to the journal")
        logging.getLogger("trackd.t").debug("filtered")
        configure_logging("DEBUG", "auto", stream=stream, env={})
        logging.getLogger("trackd.t").debug("as text")
    lines = path.read_text().splitlines()
    assert lines[0] == "<4>trackd.t: to the journal"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG trackd\.t: as text", lines[1])
    assert len(lines) == 2


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_replaces_its_handler() -> None:
    """Calling it again (SIGHUP) keeps one handler and applies the new level and format."""
    out = io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)
    configure_logging("warning", "journal", stream=out)
    configure_logging("info", "text", stream=out)
    assert len(root.handlers) == before + 1
    assert root.level == logging.INFO
    logging.getLogger("trackd.t").info("hello")
    assert out.getvalue().endswith(" INFO trackd.t: hello\n")
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")
