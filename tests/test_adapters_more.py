"""The optional-framework adapters against bnref.reference on one small well-conditioned float32 case.

Each test skips when its framework is not installed (they are optional extras, not the ``test``
extra). Bound, for a quantity q of scale s_q (``bnref.testing.scales``): |got - reference| <=
8 u kappa s_q, u float32's unit roundoff, kappa = max|x| / sqrt(var + eps): the statistics carry
relative errors of a few u (a one-pass variance up to u kappa^2 of the variance, i.e. u kappa of
the normalized x after the square root's halving, at kappa this small), the output one more
rounding; 8 covers those chained.
"""
import importlib.util

import numpy as np
import pytest

from bnref import reference
from bnref.adapters import ADAPTERS, create
from bnref.dtypes import unit_roundoff
from bnref.testing import condition_number, scales

EPS, MOMENTUM, DTYPE = 1e-3, 0.2, "float32"
#: adapter -> (framework module, running statistics: (momentum weighs the new value?, unbiased?) or None)
MORE_ADAPTERS = {
    "equinox": ("equinox", (False, False)),
    "equinox-batch": ("equinox", (False, False)),
    "haiku": ("haiku", (False, False)),
}


@pytest.fixture(scope="module", params=list(MORE_ADAPTERS))
def candidate(request):
    """The adapter, built once per module; skipped where its framework is not installed."""
    module = MORE_ADAPTERS[request.param][0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    return create(request.param)


def _arrays(candidate, seed=0):
    """x (4D, the adapter's layout), gamma, beta, running statistics and dy, all float32."""
    rng = np.random.default_rng(seed)
    shape = (4, 3, 2, 2) if candidate.channel_axis == 1 else (4, 2, 2, 3)
    x = rng.normal(0.5, 1.5, shape).astype(DTYPE)
    dy = rng.standard_normal(shape).astype(DTYPE)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(DTYPE), rng.normal(0, 1, 3).astype(DTYPE)
    running_mean, running_var = rng.normal(0, 1, 3).astype(DTYPE), rng.uniform(0.5, 2, 3).astype(DTYPE)
    return x, gamma, beta, running_mean, running_var, dy


def _assert_within(name, got, expected, kappa, scale):
    tol = 8 * unit_roundoff(DTYPE) * kappa * scale
    err = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    assert err <= tol, f"{name}: max |error| {err:.3g} > {tol:.3g} (scale {scale:.3g}, kappa {kappa:.3g})"


def test_every_adapter_here_is_registered():
    assert set(MORE_ADAPTERS) <= set(ADAPTERS)


def test_adapter_matches_reference(candidate):
    """y, dx, dgamma, dbeta, and (where provided) eval y and one running-statistics step."""
    x, gamma, beta, running_mean, running_var, dy = _arrays(candidate)
    axis = candidate.channel_axis
    x64, g64, b64, rm64, rv64, dy64 = (np.asarray(a, np.float64) for a in (x, gamma, beta, running_mean,
                                                                            running_var, dy))
    kappa = condition_number(x64, axis, EPS)
    scale = scales(x64, g64, b64, EPS, axis, dy=dy64)

    y = candidate.forward_train(x, gamma, beta, EPS)
    assert y.dtype == x.dtype and y.shape == x.shape
    _assert_within("y", y, reference.forward_train(x64, g64, b64, EPS, axis)[0], kappa, scale["y"])

    grads = candidate.backward(x, gamma, beta, EPS, dy)
    for q, got, want in zip(("dx", "dgamma", "dbeta"), grads, reference.backward(dy64, x64, g64, b64, EPS, axis)):
        _assert_within(q, got, want, kappa, scale[q])

    if hasattr(candidate, "forward_eval"):
        y_eval = candidate.forward_eval(x, gamma, beta, running_mean, running_var, EPS)
        eval_kappa = float(np.max(np.abs(x64))) / float(np.sqrt(np.min(rv64) + EPS)) + 1
        _assert_within("eval y", y_eval, reference.forward_eval(x64, g64, b64, rm64, rv64, EPS, axis),
                       eval_kappa, scale["y"] + float(np.max(np.abs(g64 * rm64 / np.sqrt(rv64 + EPS)))))

    convention = MORE_ADAPTERS[candidate.name][1]
    if convention is not None:
        new_weighted, unbiased = convention
        new = candidate.update_running(x, running_mean, running_var, MOMENTUM)
        _, mean, var = reference.forward_train(x64, np.ones(3), np.zeros(3), EPS, axis)
        want = reference.update_running(rm64, rv64, mean, var, x.size // 3,
                                        MOMENTUM if new_weighted else 1 - MOMENTUM, unbiased=unbiased)
        for q, got, w, old in zip(("running mean", "running var"), new, want, (rm64, rv64)):
            _assert_within(q, got, w, kappa, float(np.max(np.abs(old)) + np.max(np.abs(w))))
