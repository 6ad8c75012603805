"""Settings of trackd: one declarative schema, files, environment and flags.

Owns: the table of every setting (:data:`SCHEMA`) with its type, default, environment
variable, when a change takes effect and a one-line doc; reading ``config.toml`` files;
precedence (flags > environment > repository file > user file > defaults); where each
effective value came from; the socket path rule (:func:`default_socket_path`).
Imports only the standard library and :mod:`trackd.errors`, so every layer may use it.

Files:

- the user (daemon-wide) file ``$XDG_CONFIG_HOME/trackd/config.toml`` (default
  ``~/.config/trackd/config.toml``); ``TRACKD_CONFIG`` names another file, which must exist;
- the repository file ``<repo>/.trackd/config.toml``, read only when ``load_settings`` is
  given ``repo``. It may hold ``[client]`` keys only (the daemon serves many repositories,
  so daemon settings belong to the user file).

Unknown sections and keys are errors, as are unknown ``TRACKD_DAEMON_*`` and
``TRACKD_CLIENT_*`` environment variables, so a typo never passes silently. An empty
environment variable counts as unset.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from trackd.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "SCHEMA",
    "Applies",
    "ClientSettings",
    "DaemonSettings",
    "Explained",
    "Setting",
    "Settings",
    "default_socket_path",
    "diff_for_reload",
    "load_settings",
    "repo_config_file",
    "user_config_file",
]

CONFIG_ENV = "TRACKD_CONFIG"
SOCKET_NAME = "trackd.sock"
_DOT_DIR = ".trackd"  # the same name as trackd.eventlog.layout.DOT_DIR; config sits below it

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "journal", "text"]
ClientMode = Literal["normal", "disabled"]


class Applies(enum.Enum):
    """When a changed value takes effect."""

    RUNTIME = "runtime"
    """The running daemon applies it on SIGHUP."""
    RESTART = "restart"
    """The daemon must be restarted; SIGHUP logs that it is pending."""
    CLIENT = "client"
    """Read by the SDK when it opens a repository; the daemon never uses it."""


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The socket path rule shared by the daemon and the SDK.

    ``TRACKD_SOCKET`` if set; else ``$XDG_RUNTIME_DIR/trackd.sock`` when that folder exists;
    else ``/tmp/trackd-<uid>/trackd.sock``.

    Args:
        env: The environment to read; ``os.environ`` when None.

    Returns:
        The path (not checked for existence).
    """
    env = os.environ if env is None else env
    explicit = env.get("TRACKD_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / SOCKET_NAME
    return Path(f"/tmp/trackd-{os.getuid()}") / SOCKET_NAME


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the schema: a key, how its values are checked, and its default."""

    section: str
    key: str
    kind: Literal["path", "int", "float", "bool", "choice"]
    default: Any | Callable[[Mapping[str, str]], Any]
    """A value, or a function of the environment for defaults computed at load time."""
    applies: Applies
    doc: str
    env: str = ""
    """The environment variable; empty means ``TRACKD_<SECTION>_<KEY>``."""
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def name(self) -> str:
        """``section.key``."""
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        """The environment variable that sets this key."""
        return self.env or f"TRACKD_{self.section.upper()}_{self.key.upper()}"

    @property
    def flag(self) -> str:
        """The conventional command-line flag, used to name the source of a flag value."""
        return "--" + self.key.replace("_", "-")

    @property
    def expected(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "a boolean (true/false, or 0/1 in the environment)"
        what = {"int": "an integer", "float": "a number", "path": "a non-empty path"}[self.kind]
        if self.minimum is not None:
            what += f" >= {self.minimum:g}"
        return what


_RUN, _RESTART, _CLIENT = Applies.RUNTIME, Applies.RESTART, Applies.CLIENT

# fmt: off
SCHEMA: tuple[Setting, ...] = (
    Setting("daemon", "socket", "path", default_socket_path, _RESTART,
            "Unix socket the daemon serves and clients connect to", env="TRACKD_SOCKET"),
    Setting("daemon", "group_commit_max_wait_ms", "float", 0.0, _RUN,
            "extra wait to batch events into one fdatasync (0: events arriving during a "
            "sync form the next group anyway)", minimum=0),
    Setting("daemon", "max_pending_mb", "int", 32, _RUN,
            "unsynced bytes accepted before clients are slowed down", minimum=1),
    Setting("daemon", "segment_size_mb", "int", 64, _RESTART,
            "size at which the event log starts a new segment file", minimum=1),
    Setting("daemon", "max_frame_mb", "int", 64, _RESTART,
            "largest wire frame accepted (negotiated at handshake)", minimum=1),
    Setting("daemon", "idle_close_s", "float", 300.0, _RUN,
            "close a repository no client has used for this long, freeing its memory; the "
            "next client reopens it (0: never)", minimum=0),
    Setting("daemon", "log_level", "choice", "info", _RUN,
            "daemon log verbosity", choices=("debug", "info", "warning", "error")),
    Setting("daemon", "log_format", "choice", "auto", _RUN,
            "journal: <N> priority prefixes; text: time level name; auto: journal if stderr is",
            choices=("auto", "journal", "text")),
    Setting("client", "repo", "path", Path("."), _CLIENT,
            "repository used when code names none", env="TRACKD_REPO"),
    Setting("client", "mode", "choice", "normal", _CLIENT,
            "disabled: tracking calls do nothing", env="TRACKD_MODE",
            choices=("normal", "disabled")),
    Setting("client", "autostart", "bool", True, _CLIENT,
            "start a daemon when none answers", env="TRACKD_AUTOSTART"),
    Setting("client", "flush_interval_ms", "float", 50.0, _CLIENT,
            "how often the SDK sends buffered events", minimum=0.1),
    Setting("client", "flush_timeout_s", "float", 60.0, _CLIENT,
            "how long close()/flush() wait for durability", env="TRACKD_FLUSH_TIMEOUT",
            minimum=0.001),
)
# fmt: on

_BY_NAME: dict[str, Setting] = {s.name: s for s in SCHEMA}
_SECTIONS: dict[str, dict[str, Setting]] = {}
for _s in SCHEMA:
    _SECTIONS.setdefault(_s.section, {})[_s.key] = _s
_BY_ENV: dict[str, Setting] = {s.env_var: s for s in SCHEMA}
_REPO_SECTIONS = ("client",)
_NOT_IN_REPO_FILE = ("client.repo",)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The ``[daemon]`` section, typed. See :data:`SCHEMA` for the docs of each field."""

    socket: Path
    group_commit_max_wait_ms: float
    max_pending_mb: int
    segment_size_mb: int
    max_frame_mb: int
    idle_close_s: float
    log_level: LogLevel
    log_format: LogFormat


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The ``[client]`` section, typed. See :data:`SCHEMA` for the docs of each field."""

    repo: Path
    mode: ClientMode
    autostart: bool
    flush_interval_ms: float
    flush_timeout_s: float


@dataclass(frozen=True, slots=True)
class Explained:
    """One effective setting with where its value came from."""

    name: str
    value: Any
    source: str
    """``default``, ``env TRACKD_X``, ``file /path:section.key`` or ``flag --x``."""
    applies: Applies
    env_var: str
    doc: str


@dataclass(frozen=True, slots=True)
class Settings:
    """Every effective setting, typed, with the source of each value."""

    daemon: DaemonSettings
    client: ClientSettings
    sources: Mapping[str, str]
    """``section.key`` -> where the value came from (see :attr:`Explained.source`)."""
    files: tuple[Path, ...] = ()
    """The configuration files that were read, lowest precedence first."""

    def value(self, name: str) -> Any:
        """The value of ``section.key``.

        Raises:
            ConfigError: ``name`` is not a known setting.
        """
        setting = _BY_NAME.get(name)
        if setting is None:
            raise ConfigError(_unknown_msg(f"setting {name!r}", name, list(_BY_NAME)))
        return getattr(getattr(self, setting.section), setting.key)

    def explain(self) -> list[Explained]:
        """Every setting in schema order, with its value and source."""
        return [
            Explained(s.name, self.value(s.name), self.sources[s.name], s.applies, s.env_var, s.doc)
            for s in SCHEMA
        ]


def user_config_file(env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The user (daemon-wide) configuration file and whether it was named explicitly.

    Args:
        env: The environment; ``os.environ`` when None.

    Returns:
        ``(path, explicit)``: ``explicit`` is True when ``TRACKD_CONFIG`` named the file,
        which then must exist.
    """
    env = os.environ if env is None else env
    explicit = env.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser(), True
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or "~", ".config")
    return Path(base).expanduser() / "trackd" / "config.toml", False


def repo_config_file(repo: Path) -> Path:
    """``<repo>/.trackd/config.toml`` (``repo`` may also name the ``.trackd`` folder)."""
    root = Path(os.path.abspath(os.path.expanduser(repo)))
    if root.name == _DOT_DIR:
        root = root.parent
    return root / _DOT_DIR / "config.toml"


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    repo: Path | None = None,
    user_file: Path | None = None,
) -> Settings:
    """Resolve every setting: flags > environment > repository file > user file > defaults.

    Args:
        flags: Command-line values keyed ``section.key``; None values are ignored (unset
            click options).
        env: The environment; ``os.environ`` when None.
        repo: A repository whose ``.trackd/config.toml`` is read (``[client]`` keys only).
            None reads no repository file; the daemon passes None.
        user_file: The user file to read instead of the ``TRACKD_CONFIG``/XDG rule; it must
            exist.

    Returns:
        The typed settings and the source of every value.

    Raises:
        ConfigError: an unknown section, key, environment variable or flag; a value of the
            wrong type or out of range; a file that is not valid TOML or cannot be read.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    files: list[Path] = []

    if user_file is None:
        user_file, must_exist = user_config_file(env)
    else:
        must_exist = True
    for path, allowed, required in (
        (user_file, tuple(_SECTIONS), must_exist),
        *(((repo_config_file(repo), _REPO_SECTIONS, False),) if repo is not None else ()),
    ):
        data = _read_toml(path, required=required)
        if data is None:
            continue
        files.append(path)
        for name, raw in _flatten(data, path, allowed):
            where = f"file {path}:{name}"
            values[name] = _coerce(_BY_NAME[name], raw, where, from_text=False)
            sources[name] = where

    _check_env_names(env)
    for s in SCHEMA:
        text = env.get(s.env_var)
        if text is not None and text != "":
            where = f"env {s.env_var}"
            values[s.name] = _coerce(s, text, where, from_text=True)
            sources[s.name] = where

    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        flagged = _BY_NAME.get(name)
        if flagged is None:
            raise ConfigError(_unknown_msg(f"flag setting {name!r}", name, list(_BY_NAME)))
        where = f"flag {flagged.flag}"
        values[name] = _coerce(flagged, raw, where, from_text=isinstance(raw, str))
        sources[name] = where

    for s in SCHEMA:
        if s.name not in values:
            default = s.default(env) if callable(s.default) else s.default
            values[s.name] = _coerce(s, default, "default", from_text=False)
            sources[s.name] = "default"

    def section(cls: type[Any], name: str) -> Any:
        return cls(**{f.name: values[f"{name}.{f.name}"] for f in fields(cls)})

    return Settings(
        daemon=section(DaemonSettings, "daemon"),
        client=section(ClientSettings, "client"),
        sources=dict(sources),
        files=tuple(files),
    )


def diff_for_reload(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """Split the daemon keys whose value changed between two loads, for SIGHUP.

    Args:
        old: The settings the daemon runs with.
        new: The settings just loaded.

    Returns:
        ``(applied, restart_needed)``: names (``section.key``) of changed keys the daemon
        applies now, and of changed keys that take effect only after a restart. ``[client]``
        keys are not the daemon's and appear in neither list.
    """
    applied: list[str] = []
    restart: list[str] = []
    for s in SCHEMA:
        if s.applies is Applies.CLIENT or old.value(s.name) == new.value(s.name):
            continue
        (applied if s.applies is Applies.RUNTIME else restart).append(s.name)
    return applied, restart


# -- reading and checking ---------------------------------------------------------------


def _read_toml(path: Path, *, required: bool) -> dict[str, Any] | None:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        if required:
            raise ConfigError(f"configuration file {path} does not exist") from e
        return None
    except tomllib.TOMLDecodeError as e:
        # The message carries "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason})") from e


def _flatten(
    data: Mapping[str, Any], path: Path, allowed: tuple[str, ...]
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for section, table in data.items():
        if section not in _SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{path}: key {section!r} is outside any section; settings belong in "
                    f"a [{'] or ['.join(allowed)}] table"
                )
            raise ConfigError(
                _unknown_msg(f"section [{section}] in {path}", section, list(allowed))
            )
        if section not in allowed:
            raise ConfigError(
                f"{path}: section [{section}] is not allowed in a repository's config; "
                "put it in the user config file"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a table ([{section}])")
        known = _SECTIONS[section]
        for key, raw in table.items():
            if key not in known:
                raise ConfigError(
                    _unknown_msg(f"key '{section}.{key}' in {path}", key, list(known))
                )
            name = f"{section}.{key}"
            if allowed == _REPO_SECTIONS and name in _NOT_IN_REPO_FILE:
                raise ConfigError(f"{path}: {name} cannot be set inside the repository itself")
            out.append((name, raw))
    return out


def _check_env_names(env: Mapping[str, str]) -> None:
    prefixes = tuple(f"TRACKD_{sec.upper()}_" for sec in _SECTIONS)
    for var in env:
        if var.startswith(prefixes) and var not in _BY_ENV:
            raise ConfigError(_unknown_msg(f"environment variable {var}", var, sorted(_BY_ENV)))


def _unknown_msg(what: str, got: str, known: list[str]) -> str:
    msg = f"unknown {what}"
    close = difflib.get_close_matches(got, known, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg + f" (known: {', '.join(sorted(known))})"


_TRUE = ("1", "true")
_FALSE = ("0", "false")


def _coerce(s: Setting, raw: Any, where: str, *, from_text: bool) -> Any:
    def bad(why: str = "") -> ConfigError:
        detail = f" ({why})" if why else ""
        return ConfigError(
            f"{s.name} = {raw!r} from {where} is invalid{detail}: expected {s.expected}"
        )

    if s.kind == "path":
        if isinstance(raw, os.PathLike):
            raw = os.fspath(raw)
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise bad()
        return Path(raw).expanduser()
    if s.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if from_text and isinstance(raw, str):
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        raise bad()
    if s.kind == "choice":
        if not isinstance(raw, str):
            raise bad()
        low = raw.strip().lower()
        if low not in s.choices:
            raise bad()
        return low
    number: int | float
    if s.kind == "int":
        if isinstance(raw, bool):
            raise bad()
        if isinstance(raw, int):
            number = raw
        elif from_text and isinstance(raw, str):
            try:
                number = int(raw.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
    else:
        if isinstance(raw, bool):
            raise bad()
        if isinstance(raw, (int, float)):
            number = float(raw)
        elif from_text and isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
        if not math.isfinite(number):
            raise bad("not finite")
    if s.minimum is not None and number < s.minimum:
        raise bad("too small")
    return number
