"""Repo construction and the empty repository, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

import trackd
from trackd.errors import ConfigError, NotFoundError


def test_from_path_requires_an_existing_repository_unless_init(tmp_path: Path) -> None:
    """from_path() refuses a folder without .trackd (naming it); init=True creates one."""
    with pytest.raises(NotFoundError, match=str(tmp_path)):
        trackd.Repo.from_path(tmp_path)
    assert not trackd.Repo.exists(tmp_path)
    repo = trackd.Repo.from_path(tmp_path, init=True)
    assert trackd.Repo.exists(tmp_path)
    assert (tmp_path / ".trackd").is_dir()
    assert trackd.Repo.from_path(tmp_path / ".trackd") == repo  # the .trackd folder works too


def test_default_repo_follows_trackd_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repo.default() is TRACKD_REPO when set, else the current folder."""
    monkeypatch.setenv("TRACKD_REPO", str(tmp_path / "a"))
    assert trackd.Repo.default().path == tmp_path / "a"
    monkeypatch.delenv("TRACKD_REPO")
    monkeypatch.chdir(tmp_path)
    assert trackd.Repo.default().path == tmp_path


def test_repository_without_views_reads_as_empty(tmp_path: Path) -> None:
    """Before any daemon built views, a repository has no containers; lookups say so."""
    repo = trackd.Repo.init(tmp_path)
    assert repo.container_hashes == []
    assert list(repo.containers()) == []
    with pytest.raises(NotFoundError, match="'abc'"):
        repo.get_container("abc")


def test_bad_client_setting_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad TRACKD_MODE fails Run() with a ConfigError naming the variable; nothing runs."""
    monkeypatch.setenv("TRACKD_MODE", "sometimes")
    with pytest.raises(ConfigError, match="TRACKD_MODE"):
        trackd.Run(repo=tmp_path)
    assert not (tmp_path / ".trackd").exists()
