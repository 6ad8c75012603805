"""Settings: schema, precedence, error messages, sources, reload diff and `config show`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from trackd.cli.service import config_group
from trackd.config import (
    SCHEMA,
    Applies,
    ClientSettings,
    DaemonSettings,
    default_socket_path,
    diff_for_reload,
    load_settings,
)
from trackd.errors import ConfigError
from trackd.wire.address import socket_path

# Per key: (user file, repo file, environment, flag) values, all different from the default;
# None where the layer cannot set the key. Then the typed values they must produce.
LAYERS: dict[str, tuple[Any, Any, str, Any]] = {
    "daemon.socket": ("/tmp/u.sock", None, "/tmp/e.sock", "/tmp/f.sock"),
    "daemon.group_commit_max_wait_ms": (1.5, None, "3.5", 4.5),
    "daemon.max_pending_mb": (10, None, "20", 30),
    "daemon.segment_size_mb": (11, None, "21", 31),
    "daemon.max_frame_mb": (12, None, "22", 32),
    "daemon.idle_close_s": (13, None, "23.5", 0),
    "daemon.log_level": ("debug", None, "warning", "error"),
    "daemon.log_format": ("journal", None, "text", "journal"),
    "client.repo": ("/r/user", None, "/r/env", "/r/flag"),
    "client.mode": ("disabled", "normal", "disabled", "normal"),
    "client.autostart": (False, True, "0", True),
    "client.flush_interval_ms": (10, 20.5, "30", 40.0),
    "client.flush_timeout_s": (1, 2, "3.25", 4),
}
TYPED: dict[str, tuple[Any, Any, Any, Any]] = {
    "daemon.socket": (Path("/tmp/u.sock"), None, Path("/tmp/e.sock"), Path("/tmp/f.sock")),
    "daemon.group_commit_max_wait_ms": (1.5, None, 3.5, 4.5),
    "daemon.max_pending_mb": (10, None, 20, 30),
    "daemon.segment_size_mb": (11, None, 21, 31),
    "daemon.max_frame_mb": (12, None, 22, 32),
    "daemon.idle_close_s": (13.0, None, 23.5, 0.0),
    "daemon.log_level": ("debug", None, "warning", "error"),
    "daemon.log_format": ("journal", None, "text", "journal"),
    "client.repo": (Path("/r/user"), None, Path("/r/env"), Path("/r/flag")),
    "client.mode": ("disabled", "normal", "disabled", "normal"),
    "client.autostart": (False, True, False, True),
    "client.flush_interval_ms": (10.0, 20.5, 30.0, 40.0),
    "client.flush_timeout_s": (1.0, 2.0, 3.25, 4.0),
}
BY_NAME = {s.name: s for s in SCHEMA}


def toml_value(v: Any) -> str:
    """A TOML literal for ``v``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_toml(path: Path, items: dict[str, Any]) -> Path:
    """Write ``section.key = value`` items as TOML tables to ``path``."""
    sections: dict[str, list[str]] = {}
    for name, v in items.items():
        section, key = name.split(".")
        sections.setdefault(section, []).append(f"{key} = {toml_value(v)}")
    text = "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no TRACKD_* variables and a private, empty XDG config home."""
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def user_file_of(env: dict[str, str]) -> Path:
    """Where load_settings looks for the user file under ``env``."""
    return Path(env["XDG_CONFIG_HOME"]) / "trackd" / "config.toml"


def test_schema_matches_typed_sections() -> None:
    """Every schema key is a field of the typed sections, and every field is in the schema."""
    fields = {f"daemon.{f.name}" for f in dataclasses.fields(DaemonSettings)}
    fields |= {f"client.{f.name}" for f in dataclasses.fields(ClientSettings)}
    assert fields == set(BY_NAME)
    assert set(LAYERS) == set(BY_NAME)


def test_env_var_names() -> None:
    """Fixed names for the five public variables, TRACKD_<SECTION>_<KEY> for the rest."""
    assert {s.name: s.env_var for s in SCHEMA} == {
        "daemon.socket": "TRACKD_SOCKET",
        "daemon.group_commit_max_wait_ms": "TRACKD_DAEMON_GROUP_COMMIT_MAX_WAIT_MS",
        "daemon.max_pending_mb": "TRACKD_DAEMON_MAX_PENDING_MB",
        "daemon.segment_size_mb": "TRACKD_DAEMON_SEGMENT_SIZE_MB",
        "daemon.max_frame_mb": "TRACKD_DAEMON_MAX_FRAME_MB",
        "daemon.idle_close_s": "TRACKD_DAEMON_IDLE_CLOSE_S",
        "daemon.log_level": "TRACKD_DAEMON_LOG_LEVEL",
        "daemon.log_format": "TRACKD_DAEMON_LOG_FORMAT",
        "client.repo": "TRACKD_REPO",
        "client.mode": "TRACKD_MODE",
        "client.autostart": "TRACKD_AUTOSTART",
        "client.flush_interval_ms": "TRACKD_CLIENT_FLUSH_INTERVAL_MS",
        "client.flush_timeout_s": "TRACKD_FLUSH_TIMEOUT",
    }


def test_defaults(base_env: dict[str, str]) -> None:
    """With no file, variable or flag, every value is its documented default."""
    s = load_settings(env=base_env)
    assert s.daemon == DaemonSettings(
        socket=default_socket_path(base_env),
        group_commit_max_wait_ms=0.0,
        max_pending_mb=32,
        segment_size_mb=64,
        max_frame_mb=64,
        idle_close_s=300.0,
        log_level="info",
        log_format="auto",
    )
    assert s.client == ClientSettings(
        repo=Path("."), mode="normal", autostart=True, flush_interval_ms=50.0, flush_timeout_s=60.0
    )
    assert set(s.sources.values()) == {"default"}
    assert s.files == ()


@pytest.mark.parametrize("name", list(LAYERS))
def test_precedence_key_by_key(name: str, base_env: dict[str, str], tmp_path: Path) -> None:
    """flags > environment > repository file > user file > default, for every key."""
    setting = BY_NAME[name]
    v_user, v_repo, v_env, v_flag = LAYERS[name]
    t_user, t_repo, t_env, t_flag = TYPED[name]
    user = write_toml(user_file_of(base_env), {name: v_user})
    repo = tmp_path / "repo"
    repo_file = repo / ".trackd" / "config.toml"
    if v_repo is not None:
        write_toml(repo_file, {name: v_repo})
    env = {**base_env, setting.env_var: v_env}

    def load(*, flag: bool, with_env: bool, with_repo: bool) -> tuple[Any, str]:
        s = load_settings(
            flags={name: v_flag} if flag else None,
            env=env if with_env else base_env,
            repo=repo if with_repo else None,
        )
        return s.value(name), s.sources[name]

    assert load(flag=True, with_env=True, with_repo=True) == (t_flag, f"flag {setting.flag}")
    assert load(flag=False, with_env=True, with_repo=True) == (t_env, f"env {setting.env_var}")
    if v_repo is not None:
        assert load(flag=False, with_env=False, with_repo=True) == (
            t_repo,
            f"file {repo_file}:{name}",
        )
    assert load(flag=False, with_env=False, with_repo=False) == (t_user, f"file {user}:{name}")
    user.unlink()
    value, source = load(flag=False, with_env=False, with_repo=False)
    assert source == "default"
    default = setting.default(base_env) if callable(setting.default) else setting.default
    assert value == default


def test_typed_access_and_explain_sources(base_env: dict[str, str], tmp_path: Path) -> None:
    """explain() lists every key in schema order with value, source and when it applies."""
    user = write_toml(user_file_of(base_env), {"daemon.log_level": "debug"})
    env = {**base_env, "TRACKD_FLUSH_TIMEOUT": "5"}
    s = load_settings(flags={"daemon.max_pending_mb": 8, "client.mode": None}, env=env)
    assert s.daemon.log_level == "debug"
    assert s.daemon.max_pending_mb == 8
    assert s.client.flush_timeout_s == 5.0
    rows = {r.name: r for r in s.explain()}
    assert [r.name for r in s.explain()] == [x.name for x in SCHEMA]
    assert rows["daemon.log_level"].source == f"file {user}:daemon.log_level"
    assert rows["daemon.max_pending_mb"].source == "flag --max-pending-mb"
    assert rows["client.flush_timeout_s"].source == "env TRACKD_FLUSH_TIMEOUT"
    assert rows["client.mode"].source == "default"
    assert rows["daemon.log_level"].applies is Applies.RUNTIME
    assert rows["daemon.segment_size_mb"].applies is Applies.RESTART
    assert s.files == (user,)


def test_trackd_config_env_names_the_user_file(base_env: dict[str, str], tmp_path: Path) -> None:
    """TRACKD_CONFIG replaces the XDG path; a missing file it names is an error."""
    write_toml(user_file_of(base_env), {"daemon.max_frame_mb": 1})
    other = write_toml(tmp_path / "other.toml", {"daemon.max_frame_mb": 2})
    assert load_settings(env={**base_env, "TRACKD_CONFIG": str(other)}).daemon.max_frame_mb == 2
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing} does not exist")):
        load_settings(env={**base_env, "TRACKD_CONFIG": str(missing)})


def test_xdg_default_falls_back_to_home(tmp_path: Path) -> None:
    """Without XDG_CONFIG_HOME the user file is ~/.config/trackd/config.toml."""
    home = tmp_path / "h"
    write_toml(home / ".config" / "trackd" / "config.toml", {"client.autostart": False})
    assert load_settings(env={"HOME": str(home)}).client.autostart is False


def test_unknown_key_names_key_file_and_suggestion(base_env: dict[str, str]) -> None:
    """An unknown key is an error naming the key, the file, the closest key and the known keys."""
    path = user_file_of(base_env)
    path.parent.mkdir(parents=True)
    path.write_text("[daemon]\nlog_levle = 'debug'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env=base_env)
    msg = str(info.value)
    assert "daemon.log_levle" in msg
    assert str(path) in msg
    assert "did you mean 'log_level'" in msg
    assert "max_pending_mb" in msg


def test_unknown_section_names_section_and_suggestion(base_env: dict[str, str]) -> None:
    """An unknown section is an error naming it, the file and the closest section."""
    path = user_file_of(base_env)
    path.parent.mkdir(parents=True)
    path.write_text("[deamon]\nlog_level = 'debug'\n")
    with pytest.raises(ConfigError, match=r"unknown section \[deamon\]") as info:
        load_settings(env=base_env)
    assert str(path) in str(info.value)
    assert "did you mean 'daemon'" in str(info.value)


def test_key_outside_a_section_is_an_error(base_env: dict[str, str]) -> None:
    """A bare top-level key is refused with a hint to put it in a table."""
    path = user_file_of(base_env)
    path.parent.mkdir(parents=True)
    path.write_text("log_level = 'debug'\n")
    with pytest.raises(ConfigError, match="outside any section"):
        load_settings(env=base_env)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("daemon.max_pending_mb", "'lots'", "an integer"),
        ("daemon.max_pending_mb", "true", "an integer"),
        ("daemon.max_pending_mb", "0", "an integer >= 1"),
        ("daemon.group_commit_max_wait_ms", "-1.0", "a number >= 0"),
        ("daemon.log_level", "'loud'", "one of debug, info, warning, error"),
        ("client.autostart", "'yes'", "a boolean"),
        ("client.flush_interval_ms", "0", "a number >= 0.1"),
        ("daemon.socket", "''", "a non-empty path"),
    ],
)
def test_bad_value_in_file_names_key_value_source_and_expectation(
    name: str, raw: str, expected: str, base_env: dict[str, str]
) -> None:
    """A value of the wrong type or range names the key, the value, the file and what is valid."""
    section, key = name.split(".")
    path = user_file_of(base_env)
    path.parent.mkdir(parents=True)
    path.write_text(f"[{section}]\n{key} = {raw}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env=base_env)
    msg = str(info.value)
    assert name in msg
    assert f"file {path}:{name}" in msg
    assert f"expected {expected}" in msg


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("TRUE", True), ("0", False), ("false", False)],
)
def test_autostart_env_accepts_0_1_true_false(
    text: str, value: bool, base_env: dict[str, str]
) -> None:
    """TRACKD_AUTOSTART accepts 0/1/true/false."""
    assert load_settings(env={**base_env, "TRACKD_AUTOSTART": text}).client.autostart is value


def test_bad_env_value_names_variable(base_env: dict[str, str]) -> None:
    """A bad environment value names the variable, the value and what is expected."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={**base_env, "TRACKD_AUTOSTART": "maybe"})
    msg = str(info.value)
    assert "client.autostart = 'maybe' from env TRACKD_AUTOSTART" in msg
    assert "expected a boolean" in msg


def test_unknown_env_var_in_settings_namespace(base_env: dict[str, str]) -> None:
    """A misspelt TRACKD_DAEMON_* variable is an error with the closest name."""
    with pytest.raises(ConfigError, match="did you mean 'TRACKD_DAEMON_LOG_LEVEL'"):
        load_settings(env={**base_env, "TRACKD_DAEMON_LOG_LEVL": "debug"})


def test_bad_flag_value_names_flag(base_env: dict[str, str]) -> None:
    """A bad flag value names the flag; an unknown flag key is an error."""
    with pytest.raises(ConfigError, match="from flag --log-level"):
        load_settings(flags={"daemon.log_level": "chatty"}, env=base_env)
    with pytest.raises(ConfigError, match=r"unknown flag setting 'daemon\.nope'"):
        load_settings(flags={"daemon.nope": 1}, env=base_env)


def test_invalid_toml_names_file_and_line(base_env: dict[str, str]) -> None:
    """A file that is not TOML is an error naming the file and the line."""
    path = user_file_of(base_env)
    path.parent.mkdir(parents=True)
    path.write_text("[daemon]\nlog_level = = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env=base_env)
    assert str(path) in str(info.value)
    assert "line 2" in str(info.value)


def test_repo_file_may_not_hold_daemon_settings(base_env: dict[str, str], tmp_path: Path) -> None:
    """[daemon] in a repository's file is refused, naming the file."""
    repo_file = write_toml(tmp_path / "r" / ".trackd" / "config.toml", {"daemon.log_level": "x"})
    with pytest.raises(ConfigError, match="not allowed in a repository") as info:
        load_settings(env=base_env, repo=tmp_path / "r")
    assert str(repo_file) in str(info.value)


def test_repo_file_may_not_set_client_repo(base_env: dict[str, str], tmp_path: Path) -> None:
    """client.repo inside the repository itself is refused."""
    write_toml(tmp_path / "r" / ".trackd" / "config.toml", {"client.repo": "/elsewhere"})
    with pytest.raises(ConfigError, match=r"client\.repo cannot be set"):
        load_settings(env=base_env, repo=tmp_path / "r")


def test_repo_given_as_dot_trackd_folder(base_env: dict[str, str], tmp_path: Path) -> None:
    """repo may name the .trackd folder itself."""
    write_toml(tmp_path / "r" / ".trackd" / "config.toml", {"client.mode": "disabled"})
    assert load_settings(env=base_env, repo=tmp_path / "r" / ".trackd").client.mode == "disabled"


def test_default_socket_rule(tmp_path: Path) -> None:
    """TRACKD_SOCKET, else an existing $XDG_RUNTIME_DIR, else /tmp/trackd-<uid>; as wire's rule."""
    runtime = tmp_path / "rt"
    runtime.mkdir()
    cases = [
        {"TRACKD_SOCKET": "/x/y.sock", "XDG_RUNTIME_DIR": str(runtime)},
        {"XDG_RUNTIME_DIR": str(runtime)},
        {"XDG_RUNTIME_DIR": str(tmp_path / "missing")},
        {},
    ]
    expected = [
        Path("/x/y.sock"),
        runtime / "trackd.sock",
        Path(f"/tmp/trackd-{os.getuid()}/trackd.sock"),
        Path(f"/tmp/trackd-{os.getuid()}/trackd.sock"),
    ]
    for env, want in zip(cases, expected, strict=True):
        assert default_socket_path(env) == want
        assert socket_path(env) == want
    assert load_settings(env={"HOME": str(tmp_path), **cases[1]}).daemon.socket == expected[1]


def test_diff_for_reload_splits_runtime_and_restart(base_env: dict[str, str]) -> None:
    """Changed runtime keys are applied, restart keys reported, client keys ignored."""
    old = load_settings(env=base_env)
    new = load_settings(
        flags={
            "daemon.log_level": "debug",
            "daemon.group_commit_max_wait_ms": 0.5,
            "daemon.segment_size_mb": 128,
            "client.mode": "disabled",
        },
        env=base_env,
    )
    assert diff_for_reload(old, new) == (
        ["daemon.group_commit_max_wait_ms", "daemon.log_level"],
        ["daemon.segment_size_mb"],
    )
    assert diff_for_reload(old, old) == ([], [])


def test_config_show_json(
    base_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config show --json` gives every key with value and source, including the repo file."""
    for var in list(os.environ):
        if var.startswith("TRACKD_"):
            monkeypatch.delenv(var)
    for k, v in base_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TRACKD_DAEMON_MAX_PENDING_MB", "7")
    user = write_toml(user_file_of(base_env), {"daemon.log_level": "warning"})
    repo_file = write_toml(tmp_path / "r" / ".trackd" / "config.toml", {"client.autostart": False})
    result = CliRunner().invoke(config_group, ["show", "--json", "--repo", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    settings = doc["settings"]
    assert set(settings) == set(BY_NAME)
    assert settings["daemon.max_pending_mb"] == {
        "value": 7,
        "source": "env TRACKD_DAEMON_MAX_PENDING_MB",
        "applies": "runtime",
        "env": "TRACKD_DAEMON_MAX_PENDING_MB",
        "doc": BY_NAME["daemon.max_pending_mb"].doc,
    }
    assert settings["daemon.log_level"]["source"] == f"file {user}:daemon.log_level"
    assert settings["client.autostart"]["value"] is False
    assert settings["client.autostart"]["source"] == f"file {repo_file}:client.autostart"
    assert settings["client.repo"] == {
        "value": str(tmp_path / "r"),
        "source": "flag --repo",
        "applies": "client",
        "env": "TRACKD_REPO",
        "doc": BY_NAME["client.repo"].doc,
    }
    assert doc["files"] == [str(user), str(repo_file)]


def test_config_show_table_and_error_exit(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table has one aligned row per key with its source; a bad setting exits 1."""
    for var in list(os.environ):
        if var.startswith("TRACKD_"):
            monkeypatch.delenv(var)
    for k, v in base_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TRACKD_MODE", "disabled")
    result = CliRunner().invoke(config_group, ["show"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "SOURCE", "APPLIES"]
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(SCHEMA)]}
    assert set(rows) == set(BY_NAME)
    assert rows["client.mode"].split()[1:] == ["disabled", "env", "TRACKD_MODE", "client"]
    source_col = lines[0].index("SOURCE")
    assert all(row[source_col - 2 : source_col] == "  " for row in rows.values())
    monkeypatch.setenv("TRACKD_MODE", "off")
    bad = CliRunner().invoke(config_group, ["show"])
    assert bad.exit_code == 1
    assert "TRACKD_MODE" in bad.output
