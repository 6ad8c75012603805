"""Unit files: checked-in templates, systemd-analyze verify/security, `trackd systemd install`.

PID 1 here is not systemd, so systemd's offline tools are how units are tested:
``systemd-analyze verify`` loads the units the way the manager would (it exits 0 even on
unknown keys, so any output at all fails), and ``systemd-analyze security --offline=true``
scores the sandbox of the system service from the file alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner

from trackd.cli.service import systemd_group
from trackd.daemon.systemd import PYTHON_PLACEHOLDER, render_units

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (package systemd)"
)
Scope = Literal["user", "system"]
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d) (\w+)")


def write_units(scope: Scope, folder: Path, python: str = sys.executable) -> list[Path]:
    """Render ``scope``'s units with ``python`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_units(scope, python).items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze with ``args``; stdout and stderr merged into ``.stdout``."""
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def user_manager_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``systemd-analyze --user`` can resolve %t."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}


@pytest.mark.parametrize("scope", ["user", "system"])
def test_checked_in_units_are_the_templates(scope: Scope) -> None:
    """systemd/<scope>/ holds exactly what the installer renders, with the @PYTHON@ placeholder."""
    rendered = render_units(scope, PYTHON_PLACEHOLDER)
    folder = REPO_ROOT / "systemd" / scope
    on_disk = {p.name: p.read_text() for p in folder.iterdir() if p.suffix != ".md"}
    assert on_disk == rendered


def test_unit_contents_required_by_the_design() -> None:
    """The settings the design names are present in each unit."""
    user = render_units("user", "/usr/bin/python3")
    system = render_units("system", "/usr/bin/python3")
    assert "ListenStream=%t/trackd.sock\n" in user["trackd.socket"]
    assert "SocketMode=0600\n" in user["trackd.socket"]
    assert "ListenStream=/run/trackd/trackd.sock\n" in system["trackd.socket"]
    assert "SocketMode=0660\n" in system["trackd.socket"]
    assert "SocketGroup=trackd\n" in system["trackd.socket"]
    for units in (user, system):
        service = units["trackd.service"]
        for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure"):
            assert line + "\n" in service
        assert "ExecStart=/usr/bin/python3 -m trackd daemon run\n" in service
        assert re.search(r"^WatchdogSec=\d+s$", service, re.M)
        # The socket must not live in a folder systemd deletes when the service stops.
        assert "RuntimeDirectory=" not in service
    for line in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateNetwork=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "CapabilityBoundingSet=",
    ):
        assert line + "\n" in system["trackd.service"]


def test_exec_start_quoting() -> None:
    """Interpreter paths with spaces, % or $ are quoted and escaped for systemd."""
    service = render_units("user", "/opt/my env/100%/$x/python")["trackd.service"]
    assert 'ExecStart="/opt/my env/100%%/$$x/python" -m trackd daemon run\n' in service
    with pytest.raises(ValueError, match="absolute"):
        render_units("user", "python3")


@needs_systemd_analyze
@pytest.mark.timeout(120)
def test_verify_system_units_prints_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` of the rendered system units prints nothing and exits 0."""
    paths = write_units("system", tmp_path / "system")
    result = analyze("verify", "--man=no", *map(str, paths))
    assert (result.returncode, result.stdout) == (0, "")


@needs_systemd_analyze
@pytest.mark.timeout(120)
def test_verify_user_units_prints_nothing(tmp_path: Path) -> None:
    """`systemd-analyze --user verify` of the rendered user units prints nothing and exits 0."""
    paths = write_units("user", tmp_path / "user")
    result = analyze(
        "--user", "verify", "--man=no", *map(str, paths), env=user_manager_env(tmp_path)
    )
    assert (result.returncode, result.stdout) == (0, "")


@needs_systemd_analyze
@pytest.mark.timeout(120)
def test_verify_reports_unknown_keys(tmp_path: Path) -> None:
    """The verify check is live: a unit with an unknown key does produce output."""
    socket_unit, service = write_units("system", tmp_path / "system")
    service.write_text(service.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    result = analyze("verify", "--man=no", str(socket_unit), str(service))
    assert "NoSuchKey" in result.stdout


@needs_systemd_analyze
@pytest.mark.timeout(120)
def test_system_service_is_rated_safe(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` rates the system service SAFE (below 1.0)."""
    _, service = write_units("system", tmp_path / "system")
    # --threshold is in tenths: 9 fails anything rated OK (1.0) or worse.
    result = analyze("security", "--offline=true", "--threshold=9", str(service))
    match = OVERALL.search(result.stdout)
    assert match is not None, result.stdout
    assert match.group(3) in ("SAFE", "PERFECT"), match.group(0)
    assert float(match.group(2)) < 1.0
    assert result.returncode == 0, result.stdout


def test_install_print_writes_nothing(tmp_path: Path) -> None:
    """`install --print` prints both units with this interpreter and writes no file."""
    for scope in ("--user", "--system"):
        result = CliRunner().invoke(
            systemd_group, ["install", scope, "--print", "--prefix", str(tmp_path / "out")]
        )
        assert result.exit_code == 0, result.output
        assert f"ExecStart={sys.executable} -m trackd daemon run" in result.stdout
        assert f"# {tmp_path / 'out' / 'trackd.socket'}" in result.stdout
        assert "[Socket]" in result.stdout
        assert "enable --now trackd.socket" in result.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "systemctl"), [("--user", "systemctl --user"), ("--system", "systemctl")]
)
def test_install_prefix_writes_units(tmp_path: Path, flag: str, systemctl: str) -> None:
    """`install --prefix DIR` writes both rendered units into DIR and prints systemctl commands."""
    out = tmp_path / "units"
    result = CliRunner().invoke(systemd_group, ["install", flag, "--prefix", str(out)])
    assert result.exit_code == 0, result.output
    scope: Scope = "user" if flag == "--user" else "system"
    expected = render_units(scope, sys.executable)
    assert {p.name: p.read_text() for p in out.iterdir()} == expected
    assert (out / "trackd.service").stat().st_mode & 0o777 == 0o644
    assert f"ExecStart={sys.executable} " in (out / "trackd.service").read_text()
    assert f"{systemctl} daemon-reload && {systemctl} enable --now trackd.socket" in result.output


def test_install_user_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --prefix, user units go to $XDG_CONFIG_HOME/systemd/user."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    result = CliRunner().invoke(systemd_group, ["install"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cfg" / "systemd" / "user"
    assert sorted(p.name for p in folder.iterdir()) == ["trackd.service", "trackd.socket"]
