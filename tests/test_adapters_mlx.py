"""The ``mlx`` adapter (``mlx.nn.BatchNorm`` on the CPU) against bnref.reference; skipped without MLX.

MLX is an optional extra (``bnref[mlx]``), not in the ``test`` extra. float32 uses the bound of
``tests/test_adapters_more.py``; float64 (a CPU type in MLX) the same bound with float64's unit
roundoff, which a float64 layer computing in float32 would miss by eight orders of magnitude.
"""
import ml_dtypes
import numpy as np
import pytest

from bnref import reference
from bnref.dtypes import unit_roundoff
from bnref.testing import condition_number, scales
from tests.test_adapters_more import EPS, MOMENTUM, assert_matches_reference, protocol_results

pytest.importorskip("mlx.core")

#: the layer's running-statistics convention: momentum weighs the new value, running variance unbiased
NEW_WEIGHTED, UNBIASED = True, True


@pytest.fixture(scope="module")
def candidate():
    from bnref.adapters import create

    return create("mlx")


def arrays(shape, dtype="float64", seed=0):
    """x (channels last), gamma, beta, dy, ddx, ddgamma, ddbeta in ``dtype``."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = rng.normal(0.5, 1.5, shape)
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels)
    dy, ddx = rng.standard_normal(shape), rng.standard_normal(shape)
    ddgamma, ddbeta = rng.standard_normal(channels), rng.standard_normal(channels)
    return tuple(a.astype(dtype) for a in (x, gamma, beta, dy, ddx, ddgamma, ddbeta))


def assert_close(name, got, expected, dtype, kappa, scale):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype}, expected {dtype}"
    tol = 8 * unit_roundoff(dtype) * kappa ** 2 * scale
    err = float(np.max(np.abs(got.astype(np.float64) - expected)))
    assert err <= tol, f"{name}: max |error| {err:.3g} > {tol:.3g}"


def test_float32_matches_reference(candidate):
    """y, dx, dgamma, dbeta, eval y and one running-statistics step (the layer's own update) in float32."""
    assert_matches_reference(protocol_results(candidate), candidate.channel_axis, NEW_WEIGHTED, UNBIASED)


@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 3), (2, 3, 2, 3)])
def test_float64_forward_backward_double_backward(candidate, shape):
    """Every declared rank in float64 at float64 precision, the double backward included."""
    x, gamma, beta, dy, ddx, ddgamma, ddbeta = arrays(shape)
    kappa = condition_number(x, -1, EPS)
    scale = scales(x, gamma, beta, EPS, -1, dy=dy, ddx=ddx, ddgamma=ddgamma, ddbeta=ddbeta)
    assert_close("y", candidate.forward_train(x, gamma, beta, EPS), reference.forward_train(x, gamma, beta, EPS, -1)[0],
                 "float64", kappa, scale["y"])
    got = candidate.backward(x, gamma, beta, EPS, dy)
    for name, g, want in zip(("dx", "dgamma", "dbeta"), got, reference.backward(dy, x, gamma, beta, EPS, -1)):
        assert_close(name, g, want, "float64", kappa, scale[name])
    got = candidate.double_backward(x, gamma, beta, EPS, dy, ddx, ddgamma, ddbeta)
    want = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, EPS, -1)
    for name, g, w in zip(("gx", "ggamma", "gdy"), got, want):
        assert_close(name, g, w, "float64", kappa, scale[name])


def test_running_statistics_over_steps(candidate):
    """Three training calls on one layer: the running statistics move three times, each step new-weighted
    with the unbiased batch variance, from the given state."""
    rng = np.random.default_rng(1)
    xs = [rng.normal(1, 2, (5, 2, 3)) for _ in range(3)]
    mean, var = rng.normal(0, 1, 3), rng.uniform(0.5, 2, 3)
    got = candidate.update_running_steps(xs, mean, var, MOMENTUM)
    for x in xs:
        _, batch_mean, batch_var = reference.forward_train(x, np.ones(3), np.zeros(3), EPS, -1)
        mean, var = reference.update_running(mean, var, batch_mean, batch_var, x.size // 3, MOMENTUM)
    np.testing.assert_allclose(got[0], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", ml_dtypes.bfloat16])
def test_half_dtypes_keep_x_dtype(candidate, dtype):
    """A half layer (``set_dtype``) returns y, dx, dgamma, dbeta in x's dtype, close to the reference on
    well-conditioned data (kappa ~ 3: a few units of the half type's roundoff)."""
    x, gamma, beta, dy, *_ = arrays((8, 2, 3), dtype)
    results = [candidate.forward_train(x, gamma, beta, EPS), *candidate.backward(x, gamma, beta, EPS, dy)]
    wide = [np.asarray(a, np.float64) for a in (x, gamma, beta, dy)]
    want = [reference.forward_train(*wide[:3], EPS, -1)[0], *reference.backward(wide[3], *wide[:3], EPS, -1)]
    for got, expected in zip(results, want):
        assert got.dtype == np.dtype(dtype)
        scale = float(np.max(np.abs(expected))) + 1
        assert np.max(np.abs(got.astype(np.float64) - expected)) <= 16 * unit_roundoff(np.dtype(dtype)) * scale


def test_declared_ranks_are_the_layers(candidate):
    """The adapter declares ranks 2-4: the layer raises on a rank-5 input."""
    assert candidate.ranks == (2, 3, 4)
    x, gamma, beta, *_ = arrays((2, 2, 2, 2, 3), "float32")
    with pytest.raises(ValueError, match="2, 3 or 4 dimensions"):
        candidate.forward_train(x, gamma, beta, EPS)


def test_inputs_unchanged_and_float64_not_narrowed(candidate):
    """mx.array would turn float64 into float32 unless told: results keep float64, inputs stay untouched."""
    x, gamma, beta, *_ = arrays((6, 3))
    copies = [a.copy() for a in (x, gamma, beta)]
    y = candidate.forward_train(x, gamma, beta, EPS)
    assert y.dtype == np.float64
    for a, c in zip((x, gamma, beta), copies):
        np.testing.assert_array_equal(a, c)
