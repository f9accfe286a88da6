"""The oracle checked: every property is failed by the mutants that declare it; correct candidates raise no alarm.

Runs the oracle with the "ci" profile of bnref.profiles (its max_examples per property and dtype, seed 0).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnref import testing
from bnref.oracle import PROPERTIES, check, fingerprint, replay
from bnref.oracle.cli import main as cli_main
from bnref.oracle._guard import CandidateError, check_returns
from bnref.oracle.properties import candidate_tolerance
from bnref.oracle.protocol import HALF_DTYPES, validate
from bnref.strategies import make_case
from tests.mutants import MUTANTS, CorrectBN

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- mutants

PROPERTY_NAMES = tuple(p.name for p in PROPERTIES)


@pytest.mark.parametrize("prop", PROPERTY_NAMES)
def test_every_property_is_failed_by_a_mutant(prop):
    """A property no mutant fails could be vacuous: each needs a mutant, and each such mutant fails it."""
    declaring = [m for m in MUTANTS if prop in m.breaks]
    assert declaring, f"no mutant in tests/mutants declares that it breaks {prop}"
    for mutant in declaring:
        report = check(mutant(), profile="ci", properties=[prop])  # in the dtypes the mutant declares
        failed = report.failed
        assert failed, f"{mutant.__name__} ({mutant.__doc__.splitlines()[0]}) passed {prop}:\n{report.render()}"
        half = [d for d in mutant.dtypes if d in HALF_DTYPES]
        assert all(report.result(prop, d).failed for d in half), f"{mutant.__name__} passed {prop} in a half " \
                                                                   f"dtype it declares:\n{report.render()}"
        first = failed[0]
        assert first.failures, "a failure must say what was compared"
        if first.case:  # a shrunk example comes with a replay that reproduces it
            assert "make_case(" in first.replay and "replay(" in first.replay


#: a link in a docstring: a full https URL, nothing shorter
_URL = re.compile(r"https://[^\s,;()]+[^\s,;().]")
#: references that mean nothing outside the project's own notes
_PRIVATE = re.compile(r"\brows? \d|\bsection \d|\bissue \d|shared/|#\d", re.IGNORECASE)


@pytest.mark.parametrize("mutant", (CorrectBN, *MUTANTS), ids=lambda m: m.__name__)
def test_each_mutant_names_its_bug_and_what_it_must_fail(mutant):
    doc = mutant.__doc__ or ""
    assert doc.strip() and doc.strip().splitlines()[0].strip(), f"{mutant.__name__}: no bug class named"
    rest = _URL.sub("", doc)
    assert "http" not in rest and "github.com" not in rest and "www." not in rest, \
        f"{mutant.__name__}: a link that is not a full https URL: {doc}"
    assert not _PRIVATE.search(rest), f"{mutant.__name__}: {_PRIVATE.search(rest).group()!r} in {doc}"
    assert isinstance(mutant.breaks, tuple) and set(mutant.breaks) <= set(PROPERTY_NAMES), mutant.breaks
    if mutant is not CorrectBN:
        assert mutant.breaks or mutant.sync_breaks, f"{mutant.__name__} declares nothing it must fail"


def test_the_catalogue_has_no_duplicates():
    assert len(MUTANTS) >= 20
    assert len({m.__name__ for m in MUTANTS}) == len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert all(m.__module__ == "tests.mutants.catalogue" for m in MUTANTS)


def test_replay_reproduces_a_failure(capsys):
    report = check(MUTANTS[0](), profile="ci", properties=["forward"], dtypes=["float64"])
    failure = report.result("forward", "float64")
    assert failure.failed
    assert report.target == "tests.mutants.catalogue:NaiveVariance"
    code = failure.replay.split('-c "', 1)[1].rstrip('"')
    exec(code.replace("; ", "\n"), {})  # noqa: S102  (the printed one-liner, run as is)
    assert "FAIL" in capsys.readouterr().out


# --------------------------------------------------------------------------- no false alarms

def _assert_clean(report):
    assert report.ok, report.render()
    assert all(r.status in ("pass", "not provided") for r in report.results)


def test_no_false_alarm_numpy_base():
    """The mutants' unbroken base passes every property: what a mutant fails, its one change fails."""
    report = check(CorrectBN(), profile="ci")
    _assert_clean(report)
    assert {r.property for r in report.results if r.status == "pass"} == set(PROPERTY_NAMES)


@pytest.mark.parametrize("param_dtype", [None, "float32"])
def test_no_false_alarm_numpy_base_in_half(param_dtype):
    """float64 math rounded once passes every property in float16 and bfloat16, with either parameter dtype."""
    report = check(CorrectBN(dtypes=HALF_DTYPES, param_dtype=param_dtype), profile="ci")
    _assert_clean(report)
    assert {r.dtype for r in report.results} == set(HALF_DTYPES)
    rows = dict(report.fingerprint.rows())
    assert rows["statistics accumulated in (float16)"].startswith("float32 or wider")
    assert rows["output rounded once (float16)"].startswith("yes: all 32 probe values")
    large = rows["float32 running_var above float16's range"]
    assert large.startswith("finite and right") if param_dtype else large.startswith("not applicable")
    assert report.fingerprint.running.consistent


class _InfGx(CorrectBN):
    """CorrectBN whose double backward returns gx = +inf everywhere."""

    def double_backward(self, *args):
        gx, ggamma, gdy = super().double_backward(*args)
        return np.full_like(gx, np.inf), ggamma, gdy


def test_an_exact_value_beyond_the_half_range_may_come_back_as_inf():
    """float16 gx of 2.3e5 (above 65504): inf of its sign is the exact result rounded once and passes;
    inf where the exact value is in range (46.5 in the same gx) still fails."""
    case = make_case((2, 2, 1, 1), "float16", 1, "eps_scale", seed=0, eps=1e-06)
    outcomes = replay(CorrectBN(dtypes=("float16",), param_dtype="float32"), "double_backward", case)
    assert all(o.ok for o in outcomes), [o.text for o in outcomes]
    outcomes = replay(_InfGx(dtypes=("float16",), param_dtype="float32"), "double_backward", case)
    assert [o.ok for o in outcomes] == [False, True, True]


def test_no_false_alarm_float32_math_in_half():
    """A candidate that computes in float32 and rounds to the half type at the end (every framework's way) passes."""
    from tests.candidates.float32_math import Float32Math

    _assert_clean(check(Float32Math(), profile="ci", properties=["forward", "backward", "forward_eval",
                                                                  "shift_invariance", "scale_invariance"]))
    rows = dict(fingerprint(Float32Math()).rows())
    assert rows["output rounded once (float16)"].startswith("no: 32 of 32"), rows


def test_no_false_alarm_bnref():
    _assert_clean(check("bnref", profile="ci"))


def test_no_false_alarm_bnref_mixed():
    """bnref's half kernels with float32 parameters: dgamma, dbeta and the running statistics in float32."""
    report = check("bnref-mixed", profile="quick")
    _assert_clean(report)
    assert report.dtypes == ["float16", "bfloat16"]


def test_no_false_alarm_torch():
    """float64 must pass everything; float32 too, with the tolerance of a float32 computation."""
    pytest.importorskip("torch")
    report = check("torch", dtypes=["float32", "float64"], profile="ci")
    _assert_clean(report)
    assert report.fingerprint.float32_offset["error"] < 0.1
    rows = dict(report.fingerprint.rows())
    assert rows["eps"].startswith("inside the square root")
    assert rows["normalizing variance"].startswith("divides by m (biased)")
    assert rows["running variance"] == "divides by m - 1 (unbiased)"
    assert rows["momentum"].startswith("momentum=0.1 weighs the new value")
    assert rows["single value per channel (training)"].startswith("error (ValueError")


def test_no_false_alarm_flax_float64():
    pytest.importorskip("flax")
    # flax-two-pass: Flax's BatchNorm with use_fast_variance=False. The default (True) computes
    # E[x^2] - E[x]^2 and loses u64 * kappa^2 on offset data, which the oracle reports (docs/oracle.md).
    report = check("flax-two-pass", dtypes=["float64"], profile="ci")
    _assert_clean(report)
    running = report.fingerprint.running
    assert running.consistent and running.direction_mean == "old" and running.var_divisor == "m"


# --------------------------------------------------------------------------- fingerprint probes

@pytest.mark.parametrize("mutant, row, text", [
    ("EpsOutsideSqrt", "eps", "OUTSIDE"),
    ("HardcodedEps", "eps", "IGNORED"),
    ("NormalizeUnbiased", "normalizing variance", "m - 1"),
    ("InconsistentMomentum", "momentum", "inconsistent"),
    ("MomentumDropped", "momentum", "inconsistent"),
    ("RunningVarStoresInvstd", "running variance", "unrecognized"),
    # the half-precision rows
    ("HalfAccumulation", "statistics accumulated in (float16)", "the half type"),
    ("HalfNaiveVariance", "statistics accumulated in (float16)", "unrecognized"),
    ("ParamsDowncastToHalf", "float32 running_var above float16's range", "y = beta"),
])
def test_fingerprint_measures_what_the_mutant_does(mutant, row, text):
    import tests.mutants as mutants

    found = dict(fingerprint(getattr(mutants, mutant)()).rows())[row]
    assert text in found, found


def test_half_entries_need_a_half_dtype():
    fp = fingerprint(CorrectBN())
    rows = dict(fp.rows())
    assert rows["statistics accumulated in"] == rows["output rounded once"] == "no half dtype declared"
    assert json.loads(json.dumps(fp.to_dict()))["half_dtype"] is None


def test_ml_dtypes_rounds_float64_to_bfloat16_once():
    """CorrectBN's bfloat16 output is correctly rounded only if float64 -> bfloat16 does not go through float32.

    1 + 2^-8 + 2^-30 is above the midpoint 1 + 2^-8 of bfloat16's 1 and 1 + 2^-7, so it rounds up;
    through float32 it first becomes the midpoint, which ties-to-even rounds down to 1.
    """
    import ml_dtypes

    value = np.array([1 + 2.0**-8 + 2.0**-30])
    assert value.astype(ml_dtypes.bfloat16).astype(np.float64)[0] == 1 + 2.0**-7
    assert value.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)[0] == 1.0


def test_param_dtype_is_validated_and_returns_checked_in_it():
    with pytest.raises(ValueError, match="param_dtype"):
        validate(CorrectBN(param_dtype="float64"))
    x = np.ones((4, 2), np.float16)
    gamma = np.ones(2, np.float32)
    dx, dgamma, dbeta = check_returns("backward", (x, gamma, gamma), (x, gamma, gamma, 1e-5, x))
    assert dgamma.dtype == np.float32
    with pytest.raises(CandidateError, match=r"dgamma of dtype float16; .* \(the dtype of gamma\)"):
        check_returns("backward", (x, gamma.astype(np.float16), gamma), (x, gamma, gamma, 1e-5, x))


def test_half_tolerance_works_in_float32():
    """A half candidate is held to float32 working precision: u_half once for the output, u32 for the rest."""
    u16, u32 = 2.0**-11, 2.0**-24
    tol = candidate_tolerance("y", np.float16, kappa=10.0, m=100)
    assert math.isclose(tol, 2 * u16 + 16 * u32 * 10 * 10)
    assert math.isclose(candidate_tolerance("dgamma", np.float16, kappa=1.0, m=1, out_dtype=np.float32),
                        4 * u32 + 32 * u32)


def test_half_cases_are_drawn():
    from hypothesis import given, settings

    from bnref.strategies import bn_cases

    seen = set()

    @settings(max_examples=10, database=None, deadline=None)
    @given(bn_cases(dtypes=("float16", "bfloat16")))
    def draw(case):
        seen.add(case.x.dtype.name)
        assert case.gamma.dtype == case.x.dtype

    draw()
    assert seen <= set(HALF_DTYPES) and seen


def test_fingerprint_of_the_correct_base():
    rows = dict(fingerprint(CorrectBN()).rows())
    assert rows["running variance"] == "divides by m - 1 (unbiased)"
    assert rows["single value per channel (training)"] == "a value: y = beta (var = 0), no error"


def test_fingerprint_names_a_skipped_normalization_of_a_single_value():
    """PaddlePaddle's convention: a one-value channel passes x through, gamma and beta not applied."""

    class SkipsSingleValues(CorrectBN):
        def forward_train(self, x, gamma, beta, eps):
            if self.count(x) == 1:
                return np.array(x, copy=True)
            return super().forward_train(x, gamma, beta, eps)

    rows = dict(fingerprint(SkipsSingleValues()).rows())
    assert rows["single value per channel (training)"].startswith("a value: y = x (normalization skipped")


def test_candidate_tolerance_is_the_core_table_in_float64():
    for quantity in testing.TOLERANCES:
        assert math.isclose(candidate_tolerance(quantity, np.float64, kappa=30.0, m=8),
                            testing.tolerance(quantity, np.float64, kappa=30.0, m=8))
    assert candidate_tolerance("y", np.float32, kappa=1e6, m=4, gross_only=True) == 0.1


# --------------------------------------------------------------------------- CLI and report

def test_cli_exit_codes_and_json(tmp_path, capsys):
    assert cli_main(["no-such-adapter"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert cli_main(["no_such_module_xyz:thing"]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert cli_main(["tests.mutants:NoSuchMutant"]) == 2
    assert cli_main(["bnref", "--profile", "nope"]) == 2
    out = tmp_path / "report.json"
    code = cli_main(["tests.mutants:IgnoresStrides", "--only", "strides", "--dtype", "float64",
                     "--profile", "ci", "--json", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert printed.startswith("bnref ") and "tests.mutants:IgnoresStrides" in printed.splitlines()[0]
    assert "version tests.mutants" in printed.splitlines()[0]
    assert "minimal example" in printed and "replay" in printed
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["results"][0]["status"] == "FAIL"
    assert cli_main(["tests.mutants:CorrectBN", "--only", "forward", "--profile", "quick", "--no-progress"]) == 0


def test_inputs_left_untouched_by_the_oracle():
    case = make_case((3, 2, 4), "float64", 1, "well", seed=5, eps=1e-3)
    x = case.x.copy()
    outcomes = replay(CorrectBN(), "forward", case)
    assert all(o.ok for o in outcomes) and np.array_equal(case.x, x)


# --------------------------------------------------------------------------- docs example and plugin

def test_docs_example_candidate_passes():
    spec = importlib.util.spec_from_file_location("wrap_candidate", ROOT / "docs" / "examples" / "wrap_candidate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = check(module.MyCandidate(), profile="ci")
    _assert_clean(report)
    assert report.result("forward_eval", "float64").status == "not provided"


def _plugin_args() -> list[str]:
    from importlib.metadata import entry_points

    installed = any(ep.value == "bnref.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "bnref.pytest_plugin"]


def test_pytest_plugin_runs_the_properties(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", *_plugin_args(), "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
           "--bnref-candidate", "tests.mutants:IgnoresStrides", "--bnref-dtype", "float64",
           "--bnref-profile", "quick", str(tmp_path)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED ::bnref[float64-strides]" in run.stdout, run.stdout
    assert "passed" in run.stdout and "minimal example" in run.stdout


def test_docs_list_the_catalogue():
    """docs/oracle.md shows the mutant catalogue as it is (names, bugs, the properties each fails)."""
    from pathlib import Path

    from tests.mutants import markdown_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "oracle.md").read_text()
    assert markdown_table() in page, "docs/oracle.md's mutant table differs from tests.mutants.markdown_table()"
