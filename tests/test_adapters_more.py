"""The optional-framework adapters against bnref.reference on one small well-conditioned float32 case.

Each test skips when its framework is not installed (they are optional extras, not the ``test``
extra). Bound, for a quantity q of scale s_q (``bnref.testing.scales``): |got - reference| <=
8 u kappa^2 s_q, u float32's unit roundoff, kappa = max|x| / sqrt(var + eps) (about 3 here):
two-pass statistics carry relative errors of a few u kappa, a one-pass variance E[x^2] - E[x]^2
(Haiku) up to u kappa^2, the output one more rounding; 8 covers those chained. A wrong
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
#: (keras-torch, in a child process, has its own test below)
MORE_ADAPTERS = {
    "equinox": ("equinox", (False, False)),
    "equinox-batch": ("equinox", (False, False)),
    "haiku": ("haiku", (False, False)),
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
    assert set(MORE_ADAPTERS) | {"keras-torch"} <= set(ADAPTERS)


def test_adapter_matches_reference(candidate):
    """y, and where provided dx, dgamma, dbeta, eval y and one running-statistics step."""
    assert_matches_reference(protocol_results(candidate), candidate.channel_axis, *MORE_ADAPTERS[candidate.name][1])


#: the child process for keras-torch: protocol_results of the adapter, saved to argv[1]
KERAS_TORCH_CHILD = """
import sys
import numpy as np
import test_adapters_more
from bnref.adapters import create
np.savez(sys.argv[1], **test_adapters_more.protocol_results(create("keras-torch")))
"""


def test_keras_torch_matches_reference_in_a_fresh_process(tmp_path):
    """Keras on the torch backend, in a process of its own; Keras' running-statistics convention:
    momentum weighs the old value, biased variance."""
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    out = tmp_path / "results.npz"
    env = {**os.environ, "KERAS_BACKEND": "torch",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, "-c", KERAS_TORCH_CHILD, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as results:
        assert set(results.files) == {"y", "dx", "dgamma", "dbeta", "eval y", "running mean", "running var"}
        assert_matches_reference(dict(results), -1, False, False)


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
