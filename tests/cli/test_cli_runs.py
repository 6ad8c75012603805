"""``trackd runs ls|show|rm``, ``metrics``, ``export`` and ``status`` against a repository
populated through the SDK and served by a real daemon process."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ALPHA, BETA, GAMMA, Populated, trackd

import trackd as td
from trackd.errors import NotFoundError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _ls(root: Path, *args: str) -> list[str]:
    out = trackd("runs", "ls", "--repo", root, "--json", *args)
    assert out.exit_code == 0, out.output
    return [r["hash"] for r in json.loads(out.stdout)]


def test_runs_ls_lists_and_filters(populated: Populated) -> None:
    """ls shows every run with state and metric count; --state, --experiment and -p filter
    on exact values, dotted nested keys and JSON-typed values."""
    root = populated.root
    out = trackd("runs", "ls", "--repo", root, "--json")
    assert out.exit_code == 0, out.output
    rows = {r["hash"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {ALPHA, BETA, GAMMA}
    assert rows[ALPHA]["metrics"] == 3  # loss[train], loss[val], epoch
    assert rows[BETA]["metrics"] == 1
    assert (rows[ALPHA]["state"], rows[GAMMA]["state"]) == ("finished", "active")
    assert rows[BETA]["params"] == {"hparams": {"lr": 0.01, "opt": "adam"}}

    assert _ls(root, "--state", "active") == [GAMMA]
    assert _ls(root, "--state", "finished") == [ALPHA, BETA]
    assert _ls(root, "--experiment", "exp1") == [ALPHA, GAMMA]
    assert _ls(root, "-p", "hparams.lr=0.001") == [ALPHA, GAMMA]
    assert _ls(root, "-p", "hparams.opt=adam") == [BETA]
    assert _ls(root, "-p", "hparams.lr=0.001", "--state", "finished") == [ALPHA]
    assert _ls(root, "-p", "flag=true") == [ALPHA]
    assert _ls(root, "-p", "flag=1") == []  # a bool param does not equal the number 1
    assert _ls(root, "-p", "layers=[64,64]") == [ALPHA]
    assert _ls(root, "-p", "hparams.lr=0.5") == []

    table = trackd("runs", "ls", "--repo", root)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["HASH", "NAME", "EXPERIMENT", "STATE", "CREATED", "METRICS"]
    alpha = next(line for line in lines if line.startswith(ALPHA)).split()
    assert (alpha[1], alpha[2], alpha[3], alpha[-1]) == ("alpha", "exp1", "finished", "3")


def test_runs_ls_hides_archived_runs(populated: Populated) -> None:
    """An archived run is left out of ls unless --all is given."""
    with td.Run(BETA, repo=populated.root) as beta:
        beta.archived = True
    assert _ls(populated.root) == [ALPHA, GAMMA]
    assert _ls(populated.root, "--all") == [ALPHA, BETA, GAMMA]
    assert _ls(populated.root, "--all", "--experiment", "exp2") == [BETA]


def test_runs_show_by_prefix(populated: Populated) -> None:
    """show takes a unique hash prefix and prints params, times and each sequence's count,
    steps and last value, as text and as JSON."""
    out = trackd("runs", "show", "aa1", "--repo", populated.root, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["hash"] == ALPHA
    assert doc["params"] == {
        "hparams": {"lr": 0.001, "opt": "sgd"},
        "layers": [64, 64],
        "flag": True,
    }
    assert doc["state"] == "finished"
    assert doc["duration_s"] == pytest.approx(doc["ended_at"] - doc["created_at"])
    seqs = {(s["name"], json.dumps(s["context"])): s for s in doc["sequences"]}
    train = seqs[("loss", '{"subset": "train"}')]
    assert (train["count"], train["first_step"], train["last_step"]) == (100, 0, 99)
    assert train["last_value"] == pytest.approx(1.0 / 100)
    val = seqs[("loss", '{"subset": "val"}')]
    assert (val["count"], val["last_step"], val["last_value"]) == (10, 90, pytest.approx(2 / 91))
    assert seqs[("epoch", "{}")]["last_value"] == 99

    text = trackd("runs", "show", "aa1", "--repo", populated.root)
    assert text.exit_code == 0
    assert "name:        alpha" in text.stdout
    assert "    lr: 0.001" in text.stdout
    assert "state:       finished" in text.stdout
    val_line = next(line for line in text.stdout.splitlines() if "subset=val" in line).split()
    assert val_line == ["loss", "subset=val", "10", "0", "90", f"{2 / 91:.6g}"]


def test_unknown_or_ambiguous_run_exits_1(populated: Populated) -> None:
    """An unknown run or an ambiguous prefix exits 1 and lists the candidates."""
    amb = trackd("runs", "show", "aa", "--repo", populated.root)
    assert amb.exit_code == 1
    assert "ambiguous" in amb.stderr
    assert ALPHA in amb.stderr
    assert BETA in amb.stderr
    assert GAMMA not in amb.stderr
    unknown = trackd("metrics", "zz", "--repo", populated.root)
    assert unknown.exit_code == 1
    assert "no run 'zz'" in unknown.stderr
    assert "Traceback" not in unknown.output


def test_metrics_list_table_csv_json(populated: Populated) -> None:
    """metrics lists a run's sequences, prints one metric's points as a table, CSV or JSON
    equal to the SDK's arrays, and asks for --context when a name has several."""
    root = populated.root
    listing = trackd("metrics", ALPHA, "--repo", root, "--json")
    assert listing.exit_code == 0
    assert sorted((s["name"], s["count"]) for s in json.loads(listing.stdout)) == [
        ("epoch", 100),
        ("loss", 10),
        ("loss", 100),
    ]

    ambiguous = trackd("metrics", ALPHA, "loss", "--repo", root)
    assert ambiguous.exit_code == 1
    assert "subset=train; subset=val" in ambiguous.stderr
    assert "--context" in ambiguous.stderr

    seq = td.Repo(root).get_container(ALPHA).sequences[("loss", {"subset": "val"})]
    steps, values = seq.numpy()
    got = trackd("metrics", ALPHA, "loss", "--context", "subset=val", "--repo", root, "--json")
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["context"] == {"subset": "val"}
    assert [p["step"] for p in doc["points"]] == steps.tolist()
    assert [p["value"] for p in doc["points"]] == values.tolist()
    assert all(p["timestamp"] > 1e9 for p in doc["points"])

    as_csv = trackd("metrics", "aa1", "loss", "--context", "subset=val", "--repo", root, "--csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [int(r["step"]) for r in rows] == steps.tolist()
    assert [float(r["value"]) for r in rows] == values.tolist()

    table = trackd("metrics", "aa1", "epoch", "--repo", root)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["STEP", "VALUE", "TIME"]
    assert len(lines) == 101
    assert lines[-1].split()[:2] == ["99", "99"]

    none = trackd("metrics", "aa1", "accuracy", "--repo", root)
    assert none.exit_code == 1
    assert "no metric 'accuracy'" in none.stderr


def _read_jsonl(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *points = [json.loads(line) for line in path.read_text().splitlines()]
    return header, points


def test_export_round_trip(populated: Populated, tmp_path: Path) -> None:
    """export writes a params header and every point; reading it back gives the SDK's numpy
    arrays for each sequence. CSV has one row per point."""
    out = tmp_path / "alpha.jsonl"
    res = trackd("export", "aa1", "--repo", populated.root, "-o", out)
    assert res.exit_code == 0, res.output
    assert "wrote 210 points of 3 metric(s)" in res.stderr
    header, points = _read_jsonl(out)
    assert header["run"] == ALPHA
    assert header["params"]["hparams"] == {"lr": 0.001, "opt": "sgd"}
    assert header["properties"]["name"] == "alpha"
    for seq in td.Repo(populated.root).get_container(ALPHA).sequences:
        steps, values = seq.numpy()
        mine = [p for p in points if p["name"] == seq.name and p["context"] == seq.context]
        assert np.array_equal(np.array([p["step"] for p in mine]), steps)
        assert np.array_equal(np.array([p["value"] for p in mine], dtype=values.dtype), values)
        stamps = seq.timestamps()
        assert stamps is not None
        assert [p["timestamp"] for p in mine] == stamps.tolist()

    as_csv = trackd("export", BETA, "--repo", populated.root, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 50
    assert (rows[3]["name"], rows[3]["context"], rows[3]["value"]) == (
        "loss",
        '{"subset":"train"}',
        "3.5",
    )


def test_runs_rm(populated: Populated) -> None:
    """rm refuses without -y when no terminal can confirm (exit 2), and with -y deletes the
    run through the daemon: it is gone from the SDK and from ls."""
    refused = trackd("runs", "rm", "aa2", "--repo", populated.root)
    assert refused.exit_code == 2
    assert "pass -y" in refused.stderr
    assert BETA in _ls(populated.root)

    done = trackd("runs", "rm", "aa2", "--repo", populated.root, "-y")
    assert done.exit_code == 0, done.output
    assert f"deleted {BETA} (beta)" in done.stdout
    with pytest.raises(NotFoundError):
        td.Repo(populated.root).get_container(BETA)
    assert _ls(populated.root) == [ALPHA, GAMMA]


def test_status_with_daemon(populated: Populated, daemon: Any) -> None:
    """status shows the daemon's pid and the repository's runs, points, log and lag."""
    out = trackd("status", "--repo", populated.root, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["daemon"]["running"] is True
    assert doc["daemon"]["pid"] == daemon.pid
    assert doc["daemon"]["serves_repository"] is True
    repo = doc["repository"]
    assert (repo["runs"], repo["active_runs"], repo["sequences"]) == (3, 1, 5)
    assert repo["points"] == 100 + 10 + 100 + 50 + 5
    assert repo["log"]["segments"] == 1
    assert repo["log"]["end_offset"] == repo["views"]["checkpoint"] > 0
    assert repo["views"]["lag_bytes"] == 0
    assert repo["spool"]["files"] == 0
    text = trackd("status", "--repo", populated.root)
    assert f"running, pid {daemon.pid}" in text.stdout
    assert "runs:        3 (1 active)" in text.stdout
