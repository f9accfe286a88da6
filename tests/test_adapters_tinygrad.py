"""The tinygrad adapter against bnref.reference on a few small cases.

Skipped when tinygrad is not installed (it is the ``tinygrad`` extra, not the ``test`` extra) or
when its CPU device cannot compile (no clang). tinygrad compiles a kernel per shape and
constant, 1-2 s each on first use, so the cases are few and small. The float32 case is the
other optional adapters' (``tests/test_adapters_more.py``), with PyTorch's running-statistics
convention; float64 cases are held to the core suite's tolerance.
"""
import importlib.util

import numpy as np
import pytest

from bnref import reference
from bnref.adapters import ADAPTERS, create
from bnref.conventions import PYTORCH
from bnref.dtypes import unit_roundoff
from tests.test_adapters_more import assert_matches_reference, protocol_results

EPS, MOMENTUM = 1e-3, 0.2


@pytest.fixture(scope="module")
def candidate():
    if importlib.util.find_spec("tinygrad") is None:
        pytest.skip("tinygrad is not installed")
    try:
        return create("tinygrad")
    except ImportError as e:  # tinygrad present, its CPU device without a compiler
        pytest.skip(str(e))


def float64_case(shape, seed=1):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = rng.normal(-1.0, 2.0, shape)
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels)
    dy, ddx = rng.standard_normal(shape), rng.standard_normal(shape)
    ddgamma, ddbeta = rng.standard_normal(channels), rng.standard_normal(channels)
    return x, gamma, beta, dy, ddx, ddgamma, ddbeta


def assert_close64(name, got, want):
    assert np.asarray(got).dtype == np.float64, name
    scale = float(np.max(np.abs(want))) + 1.0
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e3 * unit_roundoff("float64") * scale, f"{name}: max |error| {err:.3g} (scale {scale:.3g})"


def test_registered():
    assert ADAPTERS["tinygrad"].startswith("bnref.adapters._tinygrad:")


def test_float32_matches_reference(candidate):
    """y, dx, dgamma, dbeta, eval y and one running step (momentum on the new value, unbiased variance)."""
    assert_matches_reference(protocol_results(candidate), candidate.channel_axis, True, True)


@pytest.mark.parametrize("shape", [(5, 2), (2, 2, 1, 2, 3)])
def test_float64_forward_and_backward_in_ranks_2_and_5(candidate, shape):
    x, gamma, beta, dy, *_ = float64_case(shape)
    assert_close64("y", candidate.forward_train(x, gamma, beta, EPS), reference.forward_train(x, gamma, beta, EPS)[0])
    for name, got, want in zip(("dx", "dgamma", "dbeta"), candidate.backward(x, gamma, beta, EPS, dy),
                               reference.backward(dy, x, gamma, beta, EPS)):
        assert_close64(name, got, want)


def test_running_statistics_over_steps_follow_pytorch(candidate):
    """Three training steps of one module: each moves by momentum toward the batch mean and unbiased variance."""
    rng = np.random.default_rng(2)
    xs = [rng.normal(i, 1 + i, (5, 2)) for i in range(3)]
    old_mean, old_var = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    got = candidate.update_running_steps(xs, old_mean, old_var, MOMENTUM)
    want = PYTORCH.update_running_steps(old_mean, old_var, [x.mean(axis=0) for x in xs], [x.var(axis=0) for x in xs],
                                        [5] * 3, MOMENTUM)
    for name, g, w in zip(("running mean", "running var"), got, want):
        assert_close64(name, g, w)


def test_double_backward_gx_misses_the_detached_mean_term(candidate):
    """ggamma and gdy are the reference's; gx is off (nn.BatchNorm's variance around a detached mean),
    by -(2/m^2) dL/dvar sum(ddx) per channel: the adapter passes tinygrad's result on unchanged."""
    x, gamma, beta, dy, ddx, ddgamma, ddbeta = float64_case((4, 2))
    gx, ggamma, gdy = candidate.double_backward(x, gamma, beta, EPS, dy, ddx, ddgamma, ddbeta)
    want_gx, want_ggamma, want_gdy = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, EPS)
    assert_close64("ggamma", ggamma, want_ggamma)
    assert_close64("gdy", gdy, want_gdy)
    m, mean, var = x.shape[0], x.mean(axis=0), x.var(axis=0)
    dl_dvar = -0.5 * (var + EPS) ** -1.5 * (dy * gamma * (x - mean)).sum(axis=0)
    missing = -(2.0 / m ** 2) * dl_dvar * ddx.sum(axis=0)
    assert np.max(np.abs(gx - want_gx)) > 1e-3 * np.max(np.abs(want_gx))
    assert_close64("gx + missing term", gx + missing, want_gx)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_returns_its_dtype_and_agrees(candidate, dtype):
    """Parameters in x's dtype; y within a few units of the half type's rounding of the exact result."""
    if dtype not in candidate.dtypes:
        pytest.skip(f"{dtype} is not declared here ({candidate.version})")
    x, gamma, beta, *_ = (np.asarray(a).astype(dtype) for a in float64_case((6, 2)))
    y = candidate.forward_train(x, gamma, beta, EPS)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    exact = reference.forward_train(*(np.asarray(a, np.float64) for a in (x, gamma, beta)), EPS)[0]
    u = unit_roundoff(dtype)
    assert np.max(np.abs(np.asarray(y, np.float64) - exact)) <= 8 * u * (np.max(np.abs(exact)) + 1)
