"""``bnref conformance``: every target in its own process, a time limit per target, one matrix and one JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnref import conformance
from bnref.adapters import ADAPTERS
from bnref.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _report(target, version, dtype, statuses, fingerprint=None) -> dict:
    """A ``bnref check --json`` report as the oracle writes it, cut to what conformance reads."""
    return {"target": target, "candidate": target, "version": version, "dtypes": [dtype], "profile": "quick",
            "fingerprint": fingerprint,
            "results": [{"property": p, "dtype": dtype, "status": s} for p, s in statuses.items()]}


def test_registered_as_a_command():
    assert COMMANDS["conformance"][0] == "bnref.conformance"


def test_every_adapter_names_its_framework():
    """An adapter missing from REQUIRES counts as installed: its run would be an error row, not "not installed"."""
    assert set(conformance.REQUIRES) == set(ADAPTERS)


def test_end_to_end_on_two_adapters(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bnref", "conformance", "bnref", "seed", "--profile", "quick", "--dtype", "float64",
         "--only", "forward", "--only", "eps_honoured", "--only", "running_stats", "--out", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conformance [" in proc.stderr  # the progress bar
    for name in ("bnref.json", "seed.json", "conformance.json", "conformance.md", "conformance.txt"):
        assert (out / name).is_file(), name

    markdown = (out / "conformance.md").read_text()
    properties, conventions_md = markdown.split("## Properties")[1].split("## Conventions")
    matrix = {line.split(" | ")[0].lstrip("| "): line for line in properties.splitlines() if line.startswith("| ")}
    header = matrix["implementation"]
    assert header.split(" | ")[1:] == ["dtype", "forward", "running_stats", "eps_honoured", "fingerprint |"]
    bnref_row = next(line for key, line in matrix.items() if key.startswith("bnref ("))
    seed_row = next(line for key, line in matrix.items() if key.startswith("seed ("))
    assert bnref_row.split(" | ")[1:] == ["float64", "pass", "pass", "pass", "pass |"]
    # the seed post ignores eps and keeps no running statistics
    assert seed_row.split(" | ")[1:] == ["float64", "FAIL", "not provided", "FAIL", "pass |"]

    data = json.loads((out / "conformance.json").read_text())
    assert data["format"] == "bnref-conformance"
    assert [run["outcome"] for run in data["runs"]] == ["report", "report"]
    conventions = {c["implementation"]: c for c in data["conventions"]}
    assert conventions["seed"]["eps"].startswith("IGNORED")
    assert conventions["bnref"]["eps"].startswith("inside the square root")
    assert conventions["bnref"]["running variance"].startswith("divides by m - 1")
    assert "| seed | float64 | IGNORED" in conventions_md
    assert "IGNORED" in (out / "conformance.txt").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "conformance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_past_its_time_limit_is_timed_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    target = "tests.candidates.misbehaving:Sleeps"  # forward_train never returns
    code = conformance.main([target, "--dtype", "float64", "--timeout", "4", "--out", str(tmp_path),
                             "--no-progress"])
    assert code == 1  # no report: not every report was produced
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert [(r["target"], r["outcome"]) for r in data["runs"]] == [(target, "timed out")]
    assert "timed out" in capsys.readouterr().out
    assert "timed out" in (tmp_path / "conformance.md").read_text()


def test_missing_framework_is_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(conformance.REQUIRES, "seed", "no_such_framework_for_bnref")
    code = conformance.main(["seed", "--out", str(tmp_path), "--no-progress"])
    assert code == 0  # skipped, not failed
    assert not (tmp_path / "seed.json").exists()  # never started
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["runs"][0]["outcome"] == "not installed"
    assert "not installed" in capsys.readouterr().out


def test_installed_looks_up_the_framework(monkeypatch):
    assert conformance.installed("seed") and conformance.installed("tests.mutants:NaiveVariance")
    monkeypatch.setitem(conformance.REQUIRES, "torch", "no_such_framework_for_bnref")
    assert not conformance.installed("torch")
    monkeypatch.setitem(conformance.REQUIRES, "torch", "json")
    assert conformance.installed("torch")
    # a framework that needs two modules (Keras and its backend) is installed only with both
    monkeypatch.setitem(conformance.REQUIRES, "keras-torch", ("json", "no_such_backend_for_bnref"))
    assert not conformance.installed("keras-torch")
    assert conformance.missing_modules("keras-torch") == ["no_such_backend_for_bnref"]
    monkeypatch.setitem(conformance.REQUIRES, "keras-torch", ("json", "os"))
    assert conformance.installed("keras-torch")


def test_merge_by_target_and_dtype(tmp_path, capsys):
    fingerprint = {"dtype": "float32", "eps": "inside the square root", "normalizing_variance": "divides by m",
                   "statistics_accumulated_in_(bfloat16)": "float32"}
    here = {"format": "bnref-conformance", "runs": [
        {"target": "torch", "outcome": "report",
         "report": _report("torch", "2.13.0", "float32", {"forward": "FAIL", "backward": "pass"}, fingerprint)},
        {"target": "keras", "outcome": "not installed", "message": "no module 'keras'"}]}
    elsewhere = _report("keras", "3.15.1", "float32", {"forward": "pass", "backward": "not provided"})
    rerun = _report("torch", "2.13.0", "float32", {"forward": "pass", "backward": "pass"})
    (tmp_path / "a.json").write_text(json.dumps(here))
    (tmp_path / "b.json").write_text(json.dumps(elsewhere))
    (tmp_path / "c.json").write_text(json.dumps(rerun))
    out = tmp_path / "out"
    code = conformance.main(["merge", *(str(tmp_path / n) for n in ("a.json", "b.json", "c.json")),
                             "--out", str(out)])
    assert code == 0
    data = json.loads((out / "conformance.json").read_text())
    cells = {(m["implementation"], m["dtype"]): (m["forward"], m["backward"]) for m in data["matrix"]}
    # the later torch report wins its (target, dtype); keras' report replaces "not installed"
    assert cells == {("torch (2.13.0)", "float32"): ("pass", "pass"),
                     ("keras (3.15.1)", "float32"): ("pass", "not provided")}
    # the conventions come from the last report with a fingerprint; a missing key reads "not measured"
    (torch,) = data["conventions"]
    assert torch["eps"] == "inside the square root" and torch["accumulation precision"] == "float32"
    assert torch["momentum"] == "not measured"
    assert "not installed" not in capsys.readouterr().out


def test_usage_errors(tmp_path, capsys):
    assert conformance.main(["no-such-adapter", "--out", str(tmp_path)]) == 2
    assert "unknown target" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{not json")
    assert conformance.main(["merge", str(tmp_path / "x.json"), "--out", str(tmp_path)]) == 2
    (tmp_path / "y.json").write_text("[1, 2]")
    assert conformance.main(["merge", str(tmp_path / "y.json"), "--out", str(tmp_path)]) == 2
    assert conformance.main(["--profile", "nope"]) == 2
    assert conformance.main(["seed", "--only", "no_such_property"]) == 2
    assert conformance.main(["seed", "--timeout", "-1"]) == 2


def test_fingerprint_defects_have_a_column():
    """A NaN only a fingerprint probe sees fails the run: the matrix shows it in the dtype the probe names
    (or, naming none, in the dtype the fingerprint was measured in)."""
    report = _report("haiku", "1", "float32", {"forward": "pass"},
                     fingerprint={"dtype": "float64", "findings": [
                         "forward_train returned NaN/inf for finite input of shape (256, 3) (float32 offset probe)"]})
    report["dtypes"] = ["float32", "float64"]
    _, rows = conformance.merge([conformance.Run("haiku", conformance.REPORT, report)])
    header, body = conformance.matrix_rows(rows)
    column = header.index(conformance.FINGERPRINT)
    assert {row[1]: row[column] for row in body} == {"float32": "FAIL", "float64": "pass"}
    report["fingerprint"]["findings"] = ["update_running returned NaN/inf for finite input of shape (4, 1) (running probe)"]
    _, rows = conformance.merge([conformance.Run("haiku", conformance.REPORT, report)])
    assert {row[1]: row[column] for row in conformance.matrix_rows(rows)[1]} == {"float32": "pass", "float64": "FAIL"}
    report["fingerprint"]["findings"] = []
    _, rows = conformance.merge([conformance.Run("haiku", conformance.REPORT, report)])
    assert {row[column] for row in conformance.matrix_rows(rows)[1]} == {"pass"}
