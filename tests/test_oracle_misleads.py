"""The oracle on candidates where it once misled: a convention or a limitation reported as a defect,
or a defect blamed on the wrong property. Each candidate is in tests/candidates/misleading.py.
"""
from __future__ import annotations

import json

import numpy as np

from bnref.oracle import check, fingerprint
from tests.candidates import misleading


def test_fingerprint_probes_within_the_candidates_ranks_and_dtypes():
    """A 4D-only, float32-only kernel gets every entry measured, none 'probe failed' or 'not supported'."""
    rows = dict(fingerprint(misleading.FourDOnly()).rows())
    assert rows["eps"].startswith("inside the square root"), rows
    assert rows["normalizing variance"].startswith("divides by m (biased)"), rows
    assert rows["running variance"].startswith("divides by m - 1"), rows
    assert rows["single value per channel (training)"].startswith("a value: y = beta"), rows
    assert rows["float32, offset data"].startswith("worst relative error"), rows


def test_four_d_only_candidate_passes():
    report = check(misleading.FourDOnly(), profile="quick")
    assert report.ok, report.render()


def test_nan_seen_only_by_the_fingerprint_fails_the_run():
    report = check(misleading.NanOnLargeFloat32Mean(), profile="quick", properties=["forward"])
    assert all(r.status == "pass" for r in report.results), report.render()
    assert not report.ok
    assert report.findings and "NaN" in report.findings[0]
    assert "FAIL (fingerprint)" in report.render()
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["fingerprint"]["findings"] == report.findings


def test_forward_only_candidate_is_checked_where_it_can_be():
    """backward is optional: a forward-only runtime passes what it provides; the rest is 'not provided'."""
    from bnref.oracle.protocol import validate

    candidate = misleading.ForwardOnly()
    validate(candidate)
    report = check(candidate, profile="quick", dtypes=["float64"])
    assert report.ok, report.render()
    status = {r.property: r.status for r in report.results}
    for prop in ("forward", "forward_eval", "batch_permutation", "strides", "inputs_unchanged", "shift_invariance"):
        assert status[prop] == "pass", status
    for prop in ("backward", "sum_dx_zero", "double_backward", "running_stats"):
        assert status[prop] == "not provided", status
    assert "not provided" in report.render()


def test_a_forward_defect_is_not_blamed_on_the_metamorphic_properties():
    """Wrong for every layout and order: forward fails; strides and batch_permutation, which compare the
    candidate with itself, do not (with seed 0 they did, each layout's rounding of the same defect differing)."""
    report = check(misleading.Float32NaiveVariance(), profile="dev", seed=0,
                   properties=["forward", "strides", "batch_permutation", "scale_invariance"])
    status = {r.property: r.status for r in report.results}
    assert status == {"forward": "FAIL", "strides": "pass", "batch_permutation": "pass",
                      "scale_invariance": "pass"}, report.render()


def test_an_ignored_momentum_is_a_measured_convention():
    """A hard-coded weight 0.1 looks like 'momentum=0.1 on the new value' at one probe; two tell them apart,
    and running_stats checks the candidate in the fixed-weight convention instead of failing it."""
    running = fingerprint(misleading.MomentumIgnored()).running
    assert running.consistent and running.direction_mean == "fixed"
    assert dict(fingerprint(misleading.MomentumIgnored()).rows())["momentum"].startswith(
        "momentum ignored: fixed weight 0.1 on the new value")
    convention = running.convention()
    assert convention.momentum == "fixed" and convention.weight(0.9) == convention.weight(0.01)
    assert abs(convention.weight(0.9) - 0.1) < 1e-12
    report = check(misleading.MomentumIgnored(), profile="quick", properties=["running_stats"])
    assert report.ok, report.render()


def test_dropped_momentum_is_not_a_fixed_weight():
    from tests.mutants import MomentumDropped

    assert not fingerprint(MomentumDropped()).running.consistent


def test_eps_and_momentum_held_in_float32_are_a_convention_not_an_accuracy_failure():
    rows = dict(fingerprint(misleading.EpsInFloat32()).rows())
    assert rows["eps stored as"].startswith("float32"), rows
    assert rows["momentum stored as"].startswith("float32"), rows
    clean = dict(fingerprint(misleading.MomentumIgnored()).rows())
    assert clean["eps stored as"] == "float64 (as given)", clean
    report = check(misleading.EpsInFloat32(), profile="quick", dtypes=["float64"],
                   properties=["forward", "backward", "forward_eval", "double_backward", "running_stats"])
    assert report.ok, report.render()


def test_float64_computed_in_float32_is_a_convention_checked_at_float32_precision():
    rows = dict(fingerprint(misleading.Float64InFloat32()).rows())
    assert rows["float64 computed in"].startswith("float32: float64 input computed in float32"), rows
    assert dict(fingerprint(misleading.MomentumIgnored()).rows())["float64 computed in"].startswith("float64: ")
    report = check(misleading.Float64InFloat32(), profile="quick", dtypes=["float64"],
                   properties=["forward", "backward", "sum_dx_zero", "shift_invariance", "batch_permutation"])
    assert report.ok, report.render()


def test_replay_line_sets_the_environment_the_candidate_declares():
    report = check(misleading.DeclaresEnvironment(), profile="quick", dtypes=["float64"], properties=["forward"])
    replay = report.result("forward", "float64").replay
    assert replay.startswith("MY_BACKEND=numpy python -c "), replay


def test_keras_adapters_declare_their_backend():
    """The class, not an instance: building one needs Keras."""
    import importlib

    from bnref.adapters import ADAPTERS

    backends = {"keras": "jax", "keras-mixed-bf16": "jax", "keras-torch": "torch", "keras-tensorflow": "tensorflow"}
    for name, backend in backends.items():
        module, cls = ADAPTERS[name].split(":")
        assert getattr(importlib.import_module(module), cls).environment == {"KERAS_BACKEND": backend}


def test_running_statistics_over_steps_are_checked_in_the_measured_convention():
    """A debiased moving average (Haiku's) is measured as one and passes; the plain base passes too."""
    from tests.mutants import CorrectBN, StepsDiscardUpdates

    fp = fingerprint(misleading.DebiasedMovingAverage())
    assert fp.steps_convention.debiased and fp.steps_convention.momentum == "old", fp.steps
    assert dict(fp.rows())["running statistics over steps"].startswith("debiased moving average")
    assert not fingerprint(CorrectBN()).steps_convention.debiased
    for candidate in (misleading.DebiasedMovingAverage(), CorrectBN()):
        report = check(candidate, profile="quick", properties=["running_stats_steps"])
        assert report.ok, report.render()
    assert not check(StepsDiscardUpdates(), profile="quick", properties=["running_stats_steps"]).ok
