"""Security: repository paths, names as pure data, the spool folder, file permissions and
SQL text, each checked against a real daemon process on a real Unix socket and real files.

Already covered elsewhere and not repeated here: the socket's mode 0600 and refusal of a
peer of another uid (``tests/daemon/test_daemon_lifecycle.py``); relative, missing and
NUL-holding repository paths in a Hello and oversized frames (``test_daemon_bad_input.py``,
``tests/reliability/test_reliability_fuzz.py``); bad types of names, values and params in
the SDK (``tests/sdk/test_sdk_validation.py``).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from click.testing import CliRunner, Result

import trackd
from trackd.cli import main as cli_main
from trackd.daemon.client import DaemonClient
from trackd.errors import (
    AccessDeniedError,
    ConfigError,
    InvalidNameError,
    InvalidValueError,
    NotFoundError,
)
from trackd.eventlog.events import (
    ContainerCreated,
    ParamsSet,
    PropertiesSet,
    SequenceAppended,
    encode_event,
)
from trackd.eventlog.layout import RepoLayout
from trackd.eventlog.spool import SpoolWriter
from trackd.sdk._connect import autostart
from trackd.sdk.client import SpoolWarning, shutdown_clients
from trackd.views import open_reader
from trackd.wire.sockfiles import lock_path, log_path, pid_alive, pidfile_path

pytestmark = [pytest.mark.timeout(60)]
integration = pytest.mark.integration

#: What a repository may hold after runs were written and applied: nothing named after a
#: run, sequence, context, param or property.
REPO_FILES = {
    ".trackd",
    ".trackd/log",
    ".trackd/log/LOCK",
    ".trackd/log/00000000000000000000.seg",
    ".trackd/spool",
    ".trackd/views.db",
    ".trackd/views.db-wal",
    ".trackd/views.db-shm",
}
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class _Daemon(Protocol):
    """What these tests use of ``tests/conftest.py``'s ``DaemonProc``."""

    socket: Path

    def start(self, timeout: float = ...) -> Any:
        """Start the daemon process and wait until it answers."""

    def stop(self, timeout: float = ...) -> int:
        """SIGTERM it and return its exit status."""

    def log(self) -> str:
        """Everything it printed."""


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """No SDK client of one test outlives it (and reconnects to another test's daemon)."""
    shutdown_clients()
    yield
    shutdown_clients()


# -- helpers --------------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    """Every folder, file and link under ``root``, relative to it; links are not followed."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _created(cid: bytes, seq: int, container: str) -> bytes:
    return encode_event(ContainerCreated(container=container, client_id=cid, client_seq=seq))


def _point(
    cid: bytes, seq: int, container: str, name: str, context: dict[str, Any], step: int
) -> bytes:
    return encode_event(
        SequenceAppended.from_arrays(
            container=container,
            name=name,
            context=context,
            steps=[step],
            values=[float(step)],
            client_id=cid,
            client_seq=seq,
            client_time=time.time(),
        )
    )


def _write_through(sock: Path, repo: Path | str, container: str) -> None:
    """Hello naming ``repo``, create ``container``, wait until it is durable and applied."""
    cid = os.urandom(16)
    with DaemonClient(sock) as c:
        c.hello(str(repo), cid)
        c.append([_created(cid, 1, container), _point(cid, 2, container, "m", {}, 0)])
        c.wait_ack(2)
        c.request("flush")


def _containers(repo: Path) -> set[str]:
    reader = open_reader(repo / ".trackd")
    try:
        return {r.hash for r in reader.containers()}
    finally:
        reader.close()


def _served(sock: Path) -> list[str]:
    with DaemonClient(sock) as c:
        c.hello("")
        status: dict[str, Any] = c.request("status")
    return [r["path"] for r in status["repositories"]]


def _cli(*args: str | Path) -> Result:
    return CliRunner().invoke(cli_main, [str(a) for a in args], prog_name="trackd")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- 1. repository paths --------------------------------------------------------------------


@integration
def test_spellings_of_one_folder_open_one_repository(
    daemon: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """``sub/..``, the ``.trackd`` folder itself and a symlinked alias all name the same
    repository: one entry in the daemon's status, one store, no second ``.trackd``."""
    (repo_path / "sub").mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(repo_path, target_is_directory=True)
    spellings = [
        f"{repo_path}/sub/..",
        f"{repo_path}/.trackd",
        str(alias),
        f"{alias}/./sub/../",
    ]
    for i, spelling in enumerate(spellings):
        _write_through(daemon.socket, spelling, f"c{i}")

    assert _served(daemon.socket) == [os.path.realpath(repo_path)]
    assert _containers(repo_path) == {f"c{i}" for i in range(len(spellings))}
    stores = sorted(p for p in _tree(tmp_path) if os.path.basename(p) == ".trackd")
    assert stores == ["repo/.trackd"]
    assert trackd.Repo(f"{repo_path}/sub/..") == trackd.Repo(repo_path)
    assert trackd.Repo(repo_path / ".trackd") == trackd.Repo(repo_path)


#: Links planted in a repository, each leading outside it: (link, target is a folder).
OUTWARD_LINKS = {
    "dot-folder": (".trackd", True),
    "log-folder": (".trackd/log", True),
    "spool-folder": (".trackd/spool", True),
    "quarantine-folder": (".trackd/quarantine", True),
    "views-file": (".trackd/views.db", False),
    "segment-file": (".trackd/log/00000000000000000000.seg", False),
}


def _plant_outward_link(repo: Path, outside: Path, link: str, is_dir: bool) -> Path:
    """Make ``repo/link`` a symlink to ``outside`` (a folder holding one precious file, or a
    precious file) and return the link's path."""
    target = outside
    if is_dir:
        outside.mkdir()
        (outside / "precious.txt").write_text("precious")
    else:
        outside.write_text("precious")
    path = repo / link
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=is_dir)
    return path


def _untouched(outside: Path, is_dir: bool) -> None:
    if is_dir:
        assert _tree(outside) == {"precious.txt"}
        assert (outside / "precious.txt").read_text() == "precious"
    else:
        assert outside.read_text() == "precious"


@integration
@pytest.mark.parametrize(("link", "is_dir"), list(OUTWARD_LINKS.values()), ids=list(OUTWARD_LINKS))
def test_daemon_refuses_a_repository_whose_files_link_outside_it(
    daemon: _Daemon, repo_path: Path, tmp_path: Path, link: str, is_dir: bool
) -> None:
    """A repository where ``.trackd``, its log, spool or quarantine folder, the views file or
    a log segment is a symlink leading out of it is refused with access_denied naming the
    link; nothing is written (or cut) at the target, and the daemon serves others on."""
    outside = tmp_path / "outside"
    planted = _plant_outward_link(repo_path, outside, link, is_dir)

    with DaemonClient(daemon.socket) as c, pytest.raises(AccessDeniedError) as err:
        c.hello(str(repo_path))
    assert str(planted) in str(err.value)
    assert "outside the repository" in str(err.value)
    _untouched(outside, is_dir)

    other = tmp_path / "other"
    other.mkdir()
    _write_through(daemon.socket, other, "fine")
    assert _containers(other) == {"fine"}
    assert _served(daemon.socket) == [os.path.realpath(other)]
    _untouched(outside, is_dir)


def test_sdk_and_cli_refuse_a_repository_whose_files_link_outside_it(
    socket_env: Path, repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK, which writes spool files itself, refuses a spool folder linked outside the
    repository before writing anything; the CLI refuses a log folder linked outside."""
    monkeypatch.setenv("TRACKD_AUTOSTART", "0")
    spool_target = tmp_path / "spool-target"
    link = _plant_outward_link(repo_path, spool_target, ".trackd/spool", True)
    with pytest.raises(AccessDeniedError, match="outside the repository") as err:
        trackd.Run(repo=repo_path)
    assert str(link) in str(err.value)
    with pytest.raises(AccessDeniedError):
        trackd.Repo.init(repo_path)
    _untouched(spool_target, True)

    link.unlink()
    log_target = tmp_path / "log-target"
    link = _plant_outward_link(repo_path, log_target, ".trackd/log", True)
    out = _cli("views", "rebuild", "--repo", repo_path, "--yes")
    assert out.exit_code == 1, out.output
    assert str(link) in out.output
    assert "outside the repository" in out.output
    _untouched(log_target, True)


@integration
def test_hello_naming_something_other_than_a_folder_is_refused(
    daemon: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """A Hello naming a regular file, a symlink to one, a dangling symlink or a FIFO gets
    not_found naming the path, creates nothing, and the daemon serves a good client on."""
    plain = tmp_path / "plain-file"
    plain.write_text("not a repository")
    to_file = tmp_path / "link-to-file"
    to_file.symlink_to(plain)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _tree(tmp_path)

    for bad in (plain, to_file, dangling, fifo):
        with DaemonClient(daemon.socket) as c, pytest.raises(NotFoundError) as err:
            c.hello(str(bad))
        assert repr(str(bad)) in str(err.value)
        assert "not a folder" in str(err.value)
        _write_through(daemon.socket, repo_path, f"after-{bad.name}")

    assert _tree(tmp_path) - before <= {f"repo/{p}" for p in REPO_FILES}
    assert plain.read_text() == "not a repository"
    assert _containers(repo_path) == {f"after-{p.name}" for p in (plain, to_file, dangling, fifo)}


def test_sdk_refuses_a_repository_path_that_is_not_utf8(
    socket_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose name is not UTF-8 cannot be named to the daemon: the SDK refuses it
    at once with a message naming it, instead of spooling into it for ever."""
    monkeypatch.setenv("TRACKD_AUTOSTART", "0")
    repo = Path(os.fsdecode(os.fsencode(tmp_path) + b"/repo-\xff"))
    repo.mkdir()
    for make in (lambda: trackd.Run(repo=repo), lambda: trackd.Repo.init(repo)):
        with pytest.raises(InvalidNameError, match="is not valid UTF-8") as err:
            make()
        assert repr(str(repo)) in str(err.value)
    assert list(repo.iterdir()) == []


# -- 2. names -------------------------------------------------------------------------------


def _hostile_names(tmp_path: Path) -> list[str]:
    """Names that would escape or damage a folder if anything used them as a path."""
    return [
        "a/b",
        "..",
        ".",
        "/etc/passwd",
        f"{tmp_path}/canary-absolute",
        "../" * 12 + f"{str(tmp_path).lstrip('/')}/canary-relative",
        "x\x00y",
        "C:\\Windows\\system32",
        "~root",
        "$(touch canary-shell)",
        "%s%n{0.__class__}",
        ".trackd",
        "views.db",
        "LOCK",
        "\n",
        "ñ/💥",
        "n" * 100_000,
    ]


@integration
def test_hostile_names_are_stored_as_data_and_create_no_files(
    daemon: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """Run properties, sequence names, context keys and values, param keys and values with
    ``/``, ``..``, NUL, absolute paths and 100,000 characters are stored and read back
    exactly; no file or folder is created from any of them, in or out of the repository."""
    names = _hostile_names(tmp_path)
    run = trackd.Run(repo=repo_path)
    run.track(0.0, "warm-up", step=0)
    run.repo.flush()
    before, outside_before = _tree(repo_path), _tree(tmp_path) - {"daemon.log"}
    sock_dir_before = _tree(daemon.socket.parent)

    for i, name in enumerate(names):
        run.track(float(i), name, step=i, context={name: name})
        run[name] = {name: [name]}
    run.name, run.experiment, run.description = names[5], names[3], names[6]
    run.tags = names[:8]
    run.close()

    after = _tree(repo_path)
    assert after == before
    assert after <= REPO_FILES
    assert _tree(tmp_path) - {"daemon.log"} == outside_before
    assert _tree(daemon.socket.parent) == sock_dir_before

    got = trackd.Repo(repo_path).get_container(run.hash)
    assert (got.name, got.experiment, got.description) == (names[5], names[3], names[6])
    assert got.tags == names[:8]
    assert {s.name for s in got.sequences} == {*names, "warm-up"}
    for i, name in enumerate(names):
        assert list(got.sequences[(name, {name: name})].items()) == [(i, float(i))]
        assert got[name] == {name: [name]}


#: Calls that must be refused at once: (call, error class, words of the message).
REFUSED: list[tuple[str, Callable[[trackd.Run], object], type[Exception], str]] = [
    ("surrogate name", lambda r: r.track(1.0, "loss\ud800"), InvalidNameError, "'loss\\ud800'"),
    ("surrogate int-valued name", lambda r: r.track(1, "\udcff"), InvalidNameError, "'\\udcff'"),
    (
        "surrogate context key",
        lambda r: r.track(1.0, "m", context={"\ud800": 1}),
        InvalidValueError,
        "context has key '\\ud800'",
    ),
    (
        "surrogate context value",
        lambda r: r.track(1.0, "m", context={"k": ["\udfff"]}),
        InvalidValueError,
        "context['k'][0] holds '\\udfff'",
    ),
    (
        "surrogate param key",
        lambda r: r.__setitem__(("ok", "\ud800"), 1),
        InvalidNameError,
        "param key '\\ud800'",
    ),
    (
        "surrogate param value",
        lambda r: r.__setitem__("p", {"a": "\ud800"}),
        InvalidValueError,
        "param ['p']['a'] holds '\\ud800'",
    ),
    (
        "surrogate run name",
        lambda r: setattr(r, "name", "\ud800"),
        InvalidValueError,
        "name '\\ud800' is not allowed",
    ),
    (
        "surrogate tag",
        lambda r: setattr(r, "tags", ["a", "\ud800"]),
        InvalidValueError,
        "tag '\\ud800' is not allowed",
    ),
    (
        "bytes name",
        lambda r: r.track(1.0, b"loss"),  # type: ignore[arg-type]
        InvalidNameError,
        "got bytes b'loss'",
    ),
    (
        "path name",
        lambda r: r.track(1.0, Path("loss")),  # type: ignore[arg-type]
        InvalidNameError,
        "got PosixPath",
    ),
    (
        "bytes context key",
        lambda r: r.track(1.0, "m", context={b"k": 1}),  # type: ignore[dict-item]
        InvalidValueError,
        "key b'k' of type bytes",
    ),
    (
        "bytes param key",
        lambda r: r.__setitem__(b"k", 1),  # type: ignore[index]
        InvalidNameError,
        "param key",
    ),
]


@integration
def test_unstorable_names_are_refused_and_the_run_keeps_working(
    daemon: _Daemon, repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that cannot be encoded (lone surrogates) and names of other types are refused
    at the call with a message naming them; the background sender never sees them, so what
    was tracked before and after is durable on close()."""
    monkeypatch.setenv("TRACKD_FLUSH_TIMEOUT", "10")
    run = trackd.Run(repo=repo_path)
    run.track(1.0, "before", step=0)
    for label, call, exc, words in REFUSED:
        with pytest.raises(exc) as err:
            call(run)
        assert words in str(err.value), (label, str(err.value))
    run.track(2.0, "after", step=0)
    run.close()

    got = trackd.Repo(repo_path).get_container(run.hash)
    assert {s.name for s in got.sequences} == {"before", "after"}
    assert list(got.sequences["after"].items()) == [(0, 2.0)]
    assert got.collect_properties()["tags"] == []


@integration
def test_lookups_by_unstorable_names_find_nothing(daemon: _Daemon, repo_path: Path) -> None:
    """Reading by a name that cannot be stored (a lone surrogate) finds nothing: ``in`` is
    False and a lookup raises NotFoundError (a KeyError), never a driver error."""
    run = trackd.Run(repo=repo_path)
    run.track(1.0, "m", step=0)
    run.close()
    repo = trackd.Repo(repo_path)
    got = repo.get_container(run.hash)
    assert ("m\ud800", {}) not in got.sequences
    with pytest.raises(NotFoundError):
        got.sequences["m\ud800"]
    with pytest.raises(NotFoundError):
        repo.get_container("\ud800")


@integration
def test_names_from_the_wire_are_data_for_the_daemon(
    daemon: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """Container, sequence, context, param and property names sent by a raw client (no SDK
    checks) that look like paths, or like SQL column assignments, are stored as data and
    locked by; the daemon creates no file from them."""
    c_name = "../../../../" + str(tmp_path).lstrip("/") + "/escaped"
    cid = os.urandom(16)
    with DaemonClient(daemon.socket) as c:
        c.hello(str(repo_path), cid)
        assert c.request("open_container", {"container": c_name})["locked"] is True
        c.append(
            [
                _created(cid, 1, c_name),
                _point(cid, 2, c_name, "/etc/shadow", {"../k": "/v"}, 7),
                encode_event(
                    ParamsSet(
                        container=c_name,
                        path=("..", "/abs"),
                        value="../v",
                        client_id=cid,
                        client_seq=3,
                    )
                ),
                encode_event(
                    PropertiesSet(
                        container=c_name,
                        props={"name": "../n", "hash = 'x', name": "injected", "tags": ["/t"]},
                        client_id=cid,
                        client_seq=4,
                    )
                ),
            ]
        )
        c.wait_ack(4)
        c.request("flush")

    assert _tree(repo_path) <= REPO_FILES
    assert not (tmp_path / "escaped").exists()
    got = trackd.Repo(repo_path).get_container(c_name)
    assert (got.name, got.tags) == ("../n", ["/t"])
    assert got[("..", "/abs")] == "../v"
    assert list(got.sequences[("/etc/shadow", {"../k": "/v"})].items()) == [(7, 7.0)]
    assert trackd.Repo(repo_path).container_hashes == [c_name]


# -- 3. the spool folder --------------------------------------------------------------------


def test_spool_files_are_private_whatever_the_umask(
    socket_env: Path, repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no daemon and umask 0, the SDK's spool file is 0600 in a 0700 spool folder
    inside a 0700 ``.trackd``."""
    monkeypatch.setenv("TRACKD_AUTOSTART", "0")
    old = os.umask(0)
    try:
        run = trackd.Run(repo=repo_path)
        run.track(1.0, "m")
        with pytest.warns(SpoolWarning):
            run.close()
    finally:
        os.umask(old)
    layout = RepoLayout.at(repo_path)
    spooled = list(layout.spool_dir.iterdir())
    assert [p.suffix for p in spooled] == [".spool"]
    assert _mode(spooled[0]) == 0o600
    assert _mode(layout.spool_dir) == 0o700
    assert _mode(layout.dot) == 0o700


@integration
def test_spool_entries_that_are_not_regular_files_are_never_opened(
    daemon_factory: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """A symlink named like a spool file (leading to a valid spool file outside) and a FIFO
    are left alone, with a warning: the outside file is neither ingested, moved nor deleted,
    the FIFO does not stall ingest, and a real spool file beside them is ingested."""
    spool = RepoLayout.at(repo_path).ensure().spool_dir
    foreign_cid, own_cid = os.urandom(16), os.urandom(16)
    w = SpoolWriter(tmp_path / "elsewhere", foreign_cid)
    w.append([_created(foreign_cid, 1, "foreign")])
    w.close()
    victim, victim_bytes = w.path, w.path.read_bytes()
    link = spool / f"{foreign_cid.hex()}-1-1.spool"  # sorts first
    link.symlink_to(victim)
    fifo = spool / f"{os.urandom(16).hex()}-1-2.spool"
    os.mkfifo(fifo)
    w = SpoolWriter(spool, own_cid)
    w.append([_created(own_cid, 1, "own"), _point(own_cid, 2, "own", "m", {}, 0)])
    w.close()

    daemon_factory.start()
    with DaemonClient(daemon_factory.socket) as c:
        c.hello(str(repo_path))
        deadline = time.monotonic() + 15
        while w.path.exists():
            assert time.monotonic() < deadline, "the real spool file was not ingested"
            time.sleep(0.02)
        c.request("flush")

    assert _containers(repo_path) == {"own"}
    assert victim.read_bytes() == victim_bytes
    assert link.is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    log = daemon_factory.log()
    assert f"ignoring {link}" in log
    assert f"ignoring {fifo}" in log
    assert daemon_factory.stop(timeout=20) == 0  # the drain is not stuck on the FIFO
    assert victim.read_bytes() == victim_bytes


# -- 4. permissions -------------------------------------------------------------------------


def _stop_daemon_of(sock: Path) -> None:
    """SIGTERM the daemon this test auto-started on ``sock`` (our child) and reap it."""
    try:
        pid = int(pidfile_path(sock).read_text())
    except (OSError, ValueError):
        return
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid or not pid_alive(pid):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


@integration
def test_daemon_and_repository_files_are_private_whatever_the_umask(
    socket_env: Path, repo_path: Path
) -> None:
    """A daemon auto-started with umask 0 creates its socket folder 0700; the socket, pid,
    lock, log and auto-start lock files 0600; and nothing in the repository (``.trackd``
    0700, log segments, views) that others may write."""
    sock = socket_env.parent / "run" / "trackd.sock"
    old = os.umask(0)
    try:
        assert autostart(sock)
        _write_through(sock, repo_path, "r")
        assert _mode(sock) == 0o600
        assert _mode(pidfile_path(sock)) == 0o600
    finally:
        os.umask(old)
        _stop_daemon_of(sock)

    assert _mode(sock.parent) == 0o700
    for private in (lock_path(sock), log_path(sock), sock.parent / "autostart.lock"):
        assert _mode(private) == 0o600, private
    dot = repo_path / ".trackd"
    assert _mode(dot) == 0o700
    assert _mode(dot / "spool") == 0o700
    files = _tree(dot)
    assert {"log/00000000000000000000.seg", "views.db"} <= files
    for rel in files:
        assert not _mode(dot / rel) & _WRITABLE_BY_OTHERS, (rel, oct(_mode(dot / rel)))


def _unsafe_folder(tmp_path: Path, how: str) -> Path:
    d = tmp_path / how
    d.mkdir()
    if how == "writable-by-others":
        os.chmod(d, 0o777)
    else:
        os.chmod(d, 0o700)
        os.chown(d, 65534, 65534)
    return d


@integration
@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("writable-by-others", "is writable by others"),
        pytest.param(
            "owned-by-another-uid",
            "belongs to uid 65534",
            marks=pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown"),
        ),
    ],
)
def test_socket_folder_others_control_is_refused(tmp_path: Path, how: str, words: str) -> None:
    """The daemon will not bind, and the SDK will not auto-start one, in a socket folder
    that another user owns or that others can write into (they could swap the socket)."""
    sock = _unsafe_folder(tmp_path, how) / "trackd.sock"
    done = subprocess.run(
        [sys.executable, "-m", "trackd", "daemon", "run", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TRACKD_SOCKET": str(sock)},
    )
    assert done.returncode == 1, done.stderr
    assert words in done.stderr
    assert os.listdir(sock.parent) == []
    try:
        with pytest.raises(ConfigError, match=words):
            autostart(sock)
    finally:
        _stop_daemon_of(sock)
    assert os.listdir(sock.parent) == []


def _shared_sticky_folder(tmp_path: Path) -> Path:
    """A folder like /tmp: everyone may create files, only owners may remove them."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


@integration
def test_daemon_never_writes_through_links_planted_beside_its_socket(tmp_path: Path) -> None:
    """In a shared sticky socket folder, a link planted at the pidfile's temporary name is
    replaced, not written through, and a link planted at the lock file stops the start:
    the files they point at are untouched."""
    sock = _shared_sticky_folder(tmp_path) / "trackd.sock"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    cmd = [sys.executable, "-m", "trackd", "daemon", "run", "--socket", str(sock)]
    env = {**os.environ, "TRACKD_SOCKET": str(sock)}

    lock_link = lock_path(sock)
    lock_link.symlink_to(victim)
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 1, refused.stderr
    assert f"cannot open the lock file {lock_link}" in refused.stderr
    lock_link.unlink()

    tmp_pidfile = Path(f"{pidfile_path(sock)}.tmp")
    tmp_pidfile.symlink_to(victim)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "the daemon did not bind its socket"
            time.sleep(0.02)
        assert int(pidfile_path(sock).read_text()) == proc.pid
        assert not tmp_pidfile.is_symlink()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("planted", ["autostart.lock", "trackd.sock.log"])
def test_autostart_never_writes_through_links_planted_beside_the_socket(
    tmp_path: Path, planted: str
) -> None:
    """The SDK's auto-start refuses (naming the file) rather than open its lock or the
    daemon's log through a link planted in a shared socket folder; no daemon starts."""
    sock = _shared_sticky_folder(tmp_path) / "trackd.sock"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (sock.parent / planted).symlink_to(victim)
    try:
        with pytest.raises(OSError, match="Too many levels of symbolic links"):
            autostart(sock, wait=5)
    finally:
        _stop_daemon_of(sock)
    assert victim.read_text() == "precious"
    assert not sock.exists()


# -- 5. query strings and SQL text ----------------------------------------------------------


def _tables(repo: Path) -> list[tuple[str, str]]:
    uri = (repo / ".trackd" / "views.db").resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return sorted(conn.execute("SELECT type, name FROM sqlite_master").fetchall())
    finally:
        conn.close()


@integration
def test_sql_and_python_in_names_is_stored_literally_and_every_table_survives(
    daemon: _Daemon, repo_path: Path, tmp_path: Path
) -> None:
    """Names holding SQL (quotes, ``DROP TABLE``, ``LIKE`` wildcards) or Python code are
    stored and read back literally through the SDK and ``trackd runs ls`` / ``metrics``;
    no table or row disappears and no code runs."""
    canary = tmp_path / "canary"
    sql = [
        "x'); DROP TABLE containers; --",
        '"; DELETE FROM sequences; --',
        "' OR '1'='1",
        "%",
        "_",
        "name = ?",
        f"__import__('os').system('touch {canary}')",
        f"{{open({str(canary)!r}, 'w')}}",
    ]
    control = trackd.Run(repo=repo_path)
    control.track(1.0, "loss", step=0)
    control.close()
    tables = _tables(repo_path)

    run = trackd.Run(repo=repo_path)
    run.name, run.experiment, run.description = sql[0], sql[1], sql[6]
    run.tags = sql
    for i, text in enumerate(sql):
        run.track(float(i), text, step=i, context={"q": text})
        run[text] = text
    run.close()

    assert _tables(repo_path) == tables
    repo = trackd.Repo(repo_path)
    assert sorted(repo.container_hashes) == sorted([control.hash, run.hash])
    assert list(repo.get_container(control.hash).sequences["loss"].items()) == [(0, 1.0)]
    got = repo.get_container(run.hash)
    assert (got.name, got.experiment, got.description, got.tags) == (sql[0], sql[1], sql[6], sql)
    for i, text in enumerate(sql):
        assert list(got.sequences[(text, {"q": text})].items()) == [(i, float(i))]
        assert got[text] == text
    assert ("%", {}) not in got.sequences  # an exact match, never a LIKE pattern

    listed = _cli("runs", "ls", "--repo", repo_path, "--json", "--experiment", sql[1])
    assert listed.exit_code == 0, listed.output
    assert [r["hash"] for r in json.loads(listed.stdout)] == [run.hash]
    by_param = _cli("runs", "ls", "--repo", repo_path, "--json", "-p", f"{sql[0]}={sql[0]}")
    assert by_param.exit_code == 0, by_param.output
    assert [r["name"] for r in json.loads(by_param.stdout)] == [sql[0]]
    for i, text in enumerate(sql):
        shown = _cli(
            "metrics", run.hash, text, "--context", f"q={text}", "--repo", repo_path, "--json"
        )
        assert shown.exit_code == 0, shown.output
        doc = json.loads(shown.stdout)
        assert (doc["name"], doc["context"], [p["value"] for p in doc["points"]]) == (
            text,
            {"q": text},
            [float(i)],
        )
    assert _tables(repo_path) == tables
    assert not canary.exists()
