"""Container write locks belong to live connections."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rawclient import ClientFactory, wait_for

from trackd.wire import ErrorReply, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from trackd.daemon.client import DaemonClient
    c = DaemonClient(sys.argv[1])
    c.hello(sys.argv[2])
    c.request("open_container", {"container": "run1"})
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_lock_held_by_a_killed_process_frees_itself(
    daemon, connect: ClientFactory, socket_env: Path, repo_path: Path
) -> None:
    """A second connection gets 'locked' naming the holder's pid, until the holder is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(socket_env), str(repo_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        c = connect()
        c.welcome(repo_path)
        err = c.request("open_container", {"container": "run1"})
        assert isinstance(err, ErrorReply)
        assert err.code == "locked"
        assert f"pid {holder.pid}" in err.message
        assert "'run1'" in err.message
        ok = c.request("open_container", {"container": "run2"})  # other containers are free
        assert isinstance(ok, Reply)
        holder.kill()
        holder.wait(timeout=10)
        wait_for(
            lambda: isinstance(c.request("open_container", {"container": "run1"}), Reply),
            what="the dead holder's lock to be released",
        )
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_close_container_releases_the_lock(daemon, connect: ClientFactory, repo_path: Path) -> None:
    """close_container by the holder frees the lock; by anyone else it releases nothing."""
    a, b = connect(), connect()
    a.welcome(repo_path)
    b.welcome(repo_path)
    assert isinstance(a.request("open_container", {"container": "c"}), Reply)
    assert isinstance(a.request("open_container", {"container": "c"}), Reply)  # idempotent
    not_held = b.request("close_container", {"container": "c"})
    assert isinstance(not_held, Reply)
    assert not_held.result["released"] is False
    assert isinstance(b.request("open_container", {"container": "c"}), ErrorReply)
    released = a.request("close_container", {"container": "c"})
    assert isinstance(released, Reply)
    assert released.result["released"] is True
    assert isinstance(b.request("open_container", {"container": "c"}), Reply)


def test_open_container_without_a_name_is_a_request_error(
    daemon, connect: ClientFactory, repo_path: Path
) -> None:
    """open_container without a container name fails that request only."""
    c = connect()
    c.welcome(repo_path)
    err = c.request("open_container", {})
    assert isinstance(err, ErrorReply)
    assert (err.id, err.code) == (1, "invalid_name")
    assert isinstance(c.request("ping"), Reply)
