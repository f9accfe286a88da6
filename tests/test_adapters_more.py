"""The optional-framework adapters against bnref.reference on one small well-conditioned float32 case.

Each test skips when its framework is not installed (they are optional extras, not the ``test``
extra). Bound, for a quantity q of scale s_q (``bnref.testing.scales``): |got - reference| <=
8 u kappa^2 s_q, u float32's unit roundoff, kappa = max|x| / sqrt(var + eps) (about 3 here):
two-pass statistics carry relative errors of a few u kappa, a one-pass variance E[x^2] - E[x]^2
(Haiku, Flax's default) up to u kappa^2, the output one more rounding; 8 covers those chained. A wrong
convention (unbiased variance, momentum on the other side, eps outside the root) is off by
orders of magnitude more.

keras-torch runs in a child process: Keras picks its backend once per process, and the
``keras`` adapter (JAX) may already have imported it in this one.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from bnref import reference
from bnref.adapters import ADAPTERS, create
from bnref.dtypes import unit_roundoff
from bnref.oracle import check
from bnref.oracle.protocol import provides
from bnref.testing import condition_number, scales

EPS, MOMENTUM, DTYPE = 1e-3, 0.2, "float32"
#: adapter -> (framework module, running statistics: (momentum weighs the new value?, unbiased?) or None)
#: (keras-torch and keras-tensorflow, in a child process, have their own test below)
MORE_ADAPTERS = {
    "equinox": ("equinox", (False, False)),
    "equinox-batch": ("equinox", (False, False)),
    "haiku": ("haiku", (False, False)),
    "flax-nnx": ("flax", (False, False)),
    "flax-nnx-two-pass": ("flax", (False, False)),
    "torch-compile": ("torch", (True, True)),
    "onnxruntime": ("onnxruntime", (False, False)),
}


@pytest.fixture(scope="module", params=list(MORE_ADAPTERS))
def candidate(request):
    """The adapter, built once per module; skipped where its framework is not installed."""
    module = MORE_ADAPTERS[request.param][0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    try:
        return create(request.param)
    except ImportError as e:  # a framework present but unusable here (torch-compile without a C++ compiler)
        pytest.skip(str(e))


def case_arrays(channel_axis, seed=0):
    """x (4D, channels on ``channel_axis``), gamma, beta, running_mean, running_var, dy: float32."""
    rng = np.random.default_rng(seed)
    shape = (4, 3, 2, 2) if channel_axis == 1 else (4, 2, 2, 3)
    x = rng.normal(0.5, 1.5, shape).astype(DTYPE)
    dy = rng.standard_normal(shape).astype(DTYPE)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(DTYPE), rng.normal(0, 1, 3).astype(DTYPE)
    running_mean, running_var = rng.normal(0, 1, 3).astype(DTYPE), rng.uniform(0.5, 2, 3).astype(DTYPE)
    return x, gamma, beta, running_mean, running_var, dy


def protocol_results(candidate):
    """What ``candidate`` returns on :func:`case_arrays`: y, and dx, dgamma, dbeta, eval y,
    the new running statistics where it provides them (a dict of arrays)."""
    x, gamma, beta, running_mean, running_var, dy = case_arrays(candidate.channel_axis)
    results = {"y": candidate.forward_train(x, gamma, beta, EPS)}
    if provides(candidate, "backward"):
        results.update(zip(("dx", "dgamma", "dbeta"), candidate.backward(x, gamma, beta, EPS, dy)))
    if provides(candidate, "forward_eval"):
        results["eval y"] = candidate.forward_eval(x, gamma, beta, running_mean, running_var, EPS)
    if provides(candidate, "update_running"):
        results.update(zip(("running mean", "running var"),
                           candidate.update_running(x, running_mean, running_var, MOMENTUM)))
    return results


def _assert_within(name, got, expected, kappa, scale):
    tol = 8 * unit_roundoff(DTYPE) * kappa ** 2 * scale
    err = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    assert err <= tol, f"{name}: max |error| {err:.3g} > {tol:.3g} (scale {scale:.3g}, kappa {kappa:.3g})"


def assert_matches_reference(results, channel_axis, new_weighted, unbiased):
    """Each of ``results`` (:func:`protocol_results`) against bnref.reference; the running statistics
    in the convention given (momentum weighs the new value?, unbiased running variance?)."""
    axis = channel_axis
    x, gamma, beta, rm, rv, dy = (np.asarray(a, np.float64) for a in case_arrays(axis))
    kappa = condition_number(x, axis, EPS)
    scale = scales(x, gamma, beta, EPS, axis, dy=dy)
    assert results["y"].dtype == np.dtype(DTYPE) and results["y"].shape == x.shape
    y, mean, var = reference.forward_train(x, gamma, beta, EPS, axis)
    want = {"y": y, **dict(zip(("dx", "dgamma", "dbeta"), reference.backward(dy, x, gamma, beta, EPS, axis))),
            "eval y": reference.forward_eval(x, gamma, beta, rm, rv, EPS, axis)}
    want.update(zip(("running mean", "running var"),
                    reference.update_running(rm, rv, mean, var, x.size // 3,
                                             MOMENTUM if new_weighted else 1 - MOMENTUM, unbiased=unbiased)))
    eval_kappa = float(np.max(np.abs(x))) / float(np.sqrt(np.min(rv) + EPS)) + 1
    scale["eval y"] = scale["y"] + float(np.max(np.abs(gamma * rm / np.sqrt(rv + EPS))))
    scale["running mean"] = float(np.max(np.abs(rm)) + np.max(np.abs(want["running mean"])))
    scale["running var"] = float(np.max(np.abs(rv)) + np.max(np.abs(want["running var"])))
    for q, got in results.items():
        _assert_within(q, got, want[q], eval_kappa if q == "eval y" else kappa, scale[q])


def test_every_adapter_here_is_registered():
    assert set(MORE_ADAPTERS) | {"keras-torch", "keras-tensorflow"} <= set(ADAPTERS)


def test_adapter_matches_reference(candidate):
    """y, and where provided dx, dgamma, dbeta, eval y and one running-statistics step."""
    assert_matches_reference(protocol_results(candidate), candidate.channel_axis, *MORE_ADAPTERS[candidate.name][1])


#: the child process of :func:`protocol_results_in_a_fresh_process`: protocol_results of adapter argv[1], saved to argv[2]
CHILD = """
import sys
import numpy as np
import test_adapters_more
from bnref.adapters import create
np.savez(sys.argv[2], **test_adapters_more.protocol_results(create(sys.argv[1])))
"""


def protocol_results_in_a_fresh_process(name, tmp_path):
    """:func:`protocol_results` of the adapter ``name`` in a child process with the environment it declares:
    Keras picks its backend once per process, and another Keras adapter may have imported it in this one."""
    module, factory = ADAPTERS[name].split(":")
    environment = getattr(importlib.import_module(module), factory).environment
    out = tmp_path / "results.npz"
    env = {**os.environ, **environment, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as results:
        return dict(results)


@pytest.mark.parametrize("name, modules", [("keras-torch", ("keras", "torch")),
                                           ("keras-tensorflow", ("keras", "tensorflow"))])
def test_keras_backend_matches_reference_in_a_fresh_process(tmp_path, name, modules):
    """Keras on the torch or TensorFlow backend, in a process of its own; Keras' running-statistics
    convention: momentum weighs the old value, biased variance."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    results = protocol_results_in_a_fresh_process(name, tmp_path)
    assert set(results) == {"y", "dx", "dgamma", "dbeta", "eval y", "running mean", "running var"}
    assert_matches_reference(results, -1, False, False)


def test_flax_nnx_is_the_linen_layer():
    """flax.nnx.BatchNorm and flax.linen.BatchNorm share their statistics code: the same bits for y,
    the gradients, eval y and the running statistics, fast and two-pass variance alike."""
    pytest.importorskip("flax")
    for nnx_name, linen_name in (("flax-nnx", "flax"), ("flax-nnx-two-pass", "flax-two-pass")):
        nnx_results, linen_results = protocol_results(create(nnx_name)), protocol_results(create(linen_name))
        assert set(nnx_results) == set(linen_results) == {"y", "dx", "dgamma", "dbeta", "eval y", "running mean",
                                                          "running var"}
        for q, got in nnx_results.items():
            np.testing.assert_array_equal(got, linen_results[q], err_msg=f"{nnx_name} {q}")


def test_flax_nnx_fast_variance_differs_from_two_pass_on_offset_data():
    """The two adapters do compute the variance differently: on float32 data of mean 1e4 and std 1
    the fast variance E[x^2] - E[x]^2 cancels to a wrong y, the two-pass one does not."""
    pytest.importorskip("flax")
    rng = np.random.default_rng(1)
    x = rng.normal(1e4, 1.0, (64, 2)).astype(DTYPE)
    gamma, beta = np.ones(2, DTYPE), np.zeros(2, DTYPE)
    exact = reference.forward_train(x.astype(np.float64), gamma, beta, EPS, -1)[0]
    errors = {name: float(np.max(np.abs(create(name).forward_train(x, gamma, beta, EPS) - exact)))
              for name in ("flax-nnx", "flax-nnx-two-pass")}
    assert errors["flax-nnx"] > 0.1 and errors["flax-nnx-two-pass"] < 0.01, errors


def test_onnxruntime_is_checked_forward_only():
    """ONNX Runtime: y of a training_mode=1 node, eval y of a training_mode=0 node and the running
    statistics a training_mode=1 node outputs pass; what needs gradients is "not provided"."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    report = check(create("onnxruntime"), dtypes=["float64"], profile="quick",
                   properties=["forward", "forward_eval", "running_stats", "backward", "double_backward",
                               "sum_dx_zero"])
    status = {r.property: r.status for r in report.results}
    assert status == {"forward": "pass", "forward_eval": "pass", "running_stats": "pass",
                      "backward": "not provided", "double_backward": "not provided", "sum_dx_zero": "not provided"}


def test_haiku_running_statistics_over_steps_are_a_debiased_average():
    """Haiku's ExponentialMovingAverage from a fresh state: zero-started, divided by 1 - decay^t (the
    given running statistics play no part), momentum on the old value, biased variance."""
    if importlib.util.find_spec("haiku") is None:
        pytest.skip("haiku is not installed")
    from bnref.conventions import Convention

    rng = np.random.default_rng(3)
    xs = [rng.normal(2.0, 1.5, (6, 3)) for _ in range(3)]
    decay = 0.7
    got = create("haiku").update_running_steps(xs, np.full(3, 5.0), np.full(3, 5.0), decay)
    haiku = Convention("haiku", running_var="biased", momentum="old", debiased=True)
    expected = haiku.update_running_steps(np.full(3, 5.0), np.full(3, 5.0), [x.mean(axis=0) for x in xs],
                                          [x.var(axis=0) for x in xs], [6] * 3, decay)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    plain = Convention("plain", running_var="biased", momentum="old").update_running_steps(
        np.full(3, 5.0), np.full(3, 5.0), [x.mean(axis=0) for x in xs], [x.var(axis=0) for x in xs], [6] * 3, decay)
    assert np.max(np.abs(got[0] - plain[0])) > 0.1
