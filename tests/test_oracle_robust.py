"""bnref check never crashes and never hangs on a misbehaving candidate (tests/candidates/misbehaving.py).

Whatever a candidate does -- a wrong shape or dtype, a float, None, a short tuple, an object
np.asarray cannot take, an exception, SystemExit, a loop that never ends, prints -- is a finding
on the property that called it, and the run goes on.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnref.oracle import check, fingerprint
from bnref.oracle.check import CheckInterrupted
from bnref.oracle.properties import PROPERTIES
from tests.candidates import misbehaving
from tests.mutants import CorrectBN, InconsistentMomentum, NaiveVariance

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = "tests.candidates.misbehaving"


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _bnref_check(*args, cwd=ROOT, timeout=240) -> subprocess.CompletedProcess:
    """``bnref check ARGS`` as the console script runs it: -P keeps the current directory off sys.path."""
    code = "import sys; from bnref.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-P", "-c", code, "check", *args, "--no-progress"], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name, expected", [
    ("WrongShape", "forward_train returned y of shape"),
    ("ReturnsFloat", "forward_train returned y as a scalar float; expected an array of shape"),
    ("ReturnsNone", "backward returned None; expected a tuple of 3 (dx, dgamma, dbeta)"),
    ("ShortTuple", "backward returned a tuple of 2; expected a tuple of 3 (dx, dgamma, dbeta)"),
    ("ReturnsTensor", "which np.asarray cannot convert (RuntimeError: can't convert cuda:0"),
    ("WrongDtype", "double_backward returned gx of dtype float64; expected an array of shape"),
    ("ShardedWrong", "forward_train_sharded returned ys as an array of shape"),
    ("Exits", "backward raised SystemExit: 3"),
])
def test_misbehaviour_is_a_finding_on_its_property(name, expected):
    cls = getattr(misbehaving, name)
    report = check(cls(), dtypes=[cls.dtypes[0]], profile="quick", properties=[cls.breaks, "forward_eval"])
    broken = report.results[0]
    assert broken.failed and any(expected in f for f in broken.failures), broken.failures
    others = report.results[1]
    assert others.status in ("pass", "FAIL") and others.examples > 0  # the next property still ran
    assert not report.ok


def test_every_method_and_probe_misbehaving_at_once_gives_a_report():
    report = check(misbehaving.Inconsistent(), profile="quick")
    assert len(report.failed) == len(PROPERTIES)
    rows = dict(report.fingerprint.rows())
    for row in ("eps", "running variance", "single value per channel (training)"):
        assert rows[row].startswith("probe failed: "), rows[row]
    assert "update_running returned a tuple of 1; expected a tuple of 2" in rows["momentum"]
    text = report.render()
    assert "backward returned a scalar float" in text and "forward_eval returned y as None" in text
    assert "forward_train_sharded returned ys[0] of shape (1,)" in text
    assert "double_backward returned a tests.candidates.misbehaving.Unconvertible" in text


def test_fingerprint_never_raises():
    for cls in (misbehaving.ReturnsFloat, misbehaving.ReturnsTensor, misbehaving.Exits, misbehaving.ShortTuple):
        rows = dict(fingerprint(cls()).rows())
        assert all(isinstance(v, str) for v in rows.values())
    assert dict(fingerprint(misbehaving.ReturnsFloat()).rows())["eps"].startswith("probe failed: forward_train")


def test_cli_exit_1_without_traceback_for_misbehaviour():
    run = _bnref_check(f"{CANDIDATES}:Inconsistent", "--profile", "quick")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert f"{len(PROPERTIES)} of {len(PROPERTIES)} property checks FAILED" in run.stdout


@pytest.mark.parametrize("name", ["Spins", "Sleeps"])
def test_a_call_that_never_returns_times_out_and_the_run_goes_on(name):
    # the subprocess's own timeout is the guard against a hang of the oracle itself
    run = _bnref_check(f"{CANDIDATES}:{name}", "--timeout", "1", "--profile", "quick", "--dtype", "float64",
                       "--only", "forward", "--only", "backward", "--only", "eps_honoured", timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "forward_train timed out after 1 s" in run.stdout
    table = {line.split()[0]: line.split()[2] for line in run.stdout.splitlines()
             if line.split() and line.split()[0] in ("forward", "backward", "eps_honoured")}
    assert table == {"forward": "FAIL", "backward": "pass", "eps_honoured": "FAIL"}, run.stdout


def test_timeout_outside_the_main_thread_abandons_the_call():
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(report=check(
        misbehaving.Sleeps(), dtypes=["float64"], profile="quick", properties=["forward", "backward"],
        timeout=0.5)))
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    report = box["report"]
    assert report.result("forward", "float64").failed and not report.result("backward", "float64").failed
    assert "forward_train timed out after 0.5 s" in report.result("forward", "float64").failures[0]


def test_json_to_stdout_survives_a_printing_candidate():
    run = _bnref_check(f"{CANDIDATES}:Prints", "--json", "-", "--profile", "quick", "--dtype", "float64",
                       "--only", "forward")
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(run.stdout)
    assert data["ok"] is True and data["results"][0]["property"] == "forward"
    assert "forward_train called with" in run.stderr and "raw write to fd 1" in run.stderr
    assert "all 1 property checks passed" in run.stderr


def test_keyboard_interrupt_gives_the_partial_report():
    with pytest.raises(CheckInterrupted) as info:
        check(misbehaving.Interrupts(), dtypes=["float64"], profile="quick",
              properties=["forward", "backward", "forward_eval"])
    report = info.value.report
    assert [r.status for r in report.results] == ["pass", "not run", "not run"]
    assert not report.ok and "STOPPED: interrupted" in report.render()


def test_cli_exit_130_on_keyboard_interrupt():
    run = _bnref_check(f"{CANDIDATES}:Interrupts", "--profile", "quick", "--dtype", "float64",
                       "--only", "forward", "--only", "backward")
    assert run.returncode == 130, run.stdout + run.stderr
    assert "not run" in run.stdout and "STOPPED: interrupted" in run.stdout


def test_module_in_the_current_directory_is_found(tmp_path):
    (tmp_path / "mymodule.py").write_text(textwrap.dedent("""
        from tests.mutants import CorrectBN

        class MyCandidate(CorrectBN):
            name = "mine"
    """))
    run = _bnref_check("mymodule:MyCandidate", "--profile", "quick", "--dtype", "float64", "--only", "forward",
                       cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mymodule:MyCandidate (mine" in run.stdout


def test_documented_mutant_target_from_the_repository_root():
    run = _bnref_check("tests.mutants:NaiveVariance", "--profile", "quick", "--dtype", "float32",
                       "--only", "forward")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "No module named" not in run.stderr


def test_inconsistent_momentum_message_has_the_probe_batch_statistics():
    running = fingerprint(InconsistentMomentum()).running
    assert not running.consistent and running.convention() is None
    text = running.describe()
    assert "(batch mean 3)" in text and "(biased 4, unbiased 5.333)" in text, text


def test_measured_running_convention_is_a_convention_record():
    from bnref.conventions import PYTORCH

    convention = fingerprint(CorrectBN()).running.convention()
    assert (convention.momentum, convention.running_var) == (PYTORCH.momentum, PYTORCH.running_var)
    old, x_mean, x_var = np.array([1.0]), np.array([3.0]), np.array([4.0])
    np.testing.assert_allclose(convention.update_running(old, old, x_mean, x_var, 4, 0.1),
                               PYTORCH.update_running(old, old, x_mean, x_var, 4, 0.1))


def _run_replay(line: str, cwd=ROOT) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    assert argv[:2] == ["python", "-c"], line
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("mutant", [NaiveVariance, InconsistentMomentum], ids=lambda m: m.__name__)
def test_oracle_replay_lines_run_as_printed(mutant):
    report = check(mutant(), profile="quick", properties=[mutant.breaks[0]], dtypes=["float32"])
    failure = report.failed[0]
    run = _run_replay(failure.replay)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL " in run.stdout


def test_a_call_stuck_in_c_code_ends_the_run_with_the_partial_report():
    run = _bnref_check(f"{CANDIDATES}:StuckInC", "--timeout", "1", "--profile", "quick", "--dtype", "float64",
                       "--only", "backward", "--only", "forward", "--json", "-", timeout=180)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "forward_train has not returned" in run.stderr and "cannot be interrupted" in run.stderr
    data = json.loads(run.stdout)  # the partial report, as JSON on stdout
    assert data["fingerprint"] is None  # the eps probe is the first call, and it never returns
    assert [r["status"] for r in data["results"]] == ["not run", "not run"], data
    assert data["ok"] is False and "could not be interrupted" in data["stopped"]
