"""The half-precision adapters against bnref.reference in float64, on a small well-conditioned case.

Each adapter takes x in its half dtype and parameters in its declared ``param_dtype`` (x's dtype
when None). The reference sees the same, already rounded, numbers in float64. Bound, for a
quantity q of scale s_q (``bnref.testing.scales``): |got - reference| <= 8 u kappa s_q, u the
unit roundoff of the half dtype, kappa = max|x| / sqrt(var + eps): the frameworks accumulate in
float32 (its errors are negligible at this size), then round to half the statistics (at most
u kappa of the normalized x when they are kept in half) and the result (u s_q); 8 covers the few
such roundings chained (mean, variance, gamma, output).
"""
import importlib.util

import numpy as np
import pytest

from bnref import reference
from bnref.adapters import ADAPTERS, create
from bnref.dtypes import DTYPES, unit_roundoff
from bnref.testing import condition_number, scales

BOTH, BF16 = ("float16", "bfloat16"), ("bfloat16",)
#: adapter -> (the modules its framework needs, its half dtypes, running statistics: momentum weighs the new value?, unbiased?)
HALF_ADAPTERS = {
    "torch": (("torch",), BOTH, True, True),
    "torch-channels-last": (("torch",), BOTH, True, True),
    "torch-mixed": (("torch",), BOTH, True, True),
    "flax-bf16": (("flax",), BF16, False, False),
    "keras-mixed-bf16": (("keras", "jax"), BF16, False, False),
    "tensorflow-fused": (("tensorflow",), BOTH, True, True),
    "tensorflow-fused-nchw": (("tensorflow",), BOTH, True, True),
}
EPS, MOMENTUM = 1e-3, 0.2
CASES = [pytest.param(name, dtype, id=f"{name}-{dtype}")
         for name, (_, dtypes, *_) in HALF_ADAPTERS.items() for dtype in dtypes]


@pytest.fixture(scope="module")
def candidates():
    return {}


def _candidate(cache, name):
    # found, not imported: Keras must not be imported before the adapter picks its backend
    for module in HALF_ADAPTERS[name][0]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    if name not in cache:
        cache[name] = create(name)
    return cache[name]


def _arrays(candidate, dtype, seed=0):
    """x (4D, the adapter's layout), gamma, beta, running stats, dy in the adapter's dtypes."""
    rng = np.random.default_rng(seed)
    param = np.dtype(getattr(candidate, "param_dtype", None) or dtype)
    shape = (4, 3, 2, 2) if candidate.channel_axis == 1 else (4, 2, 2, 3)
    x = rng.normal(0.5, 1.5, shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(param), rng.normal(0, 1, 3).astype(param)
    running_mean, running_var = rng.normal(0, 1, 3).astype(param), rng.uniform(0.5, 2, 3).astype(param)
    return x, gamma, beta, running_mean, running_var, dy


def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _assert_within(name, got, expected, dtype, kappa, scale):
    tol = 8 * unit_roundoff(dtype) * kappa * scale
    err = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    assert err <= tol, f"{name}: max |error| {err:.3g} > {tol:.3g} (scale {scale:.3g}, kappa {kappa:.3g})"


def test_every_half_adapter_is_registered():
    assert set(HALF_ADAPTERS) <= set(ADAPTERS)


@pytest.mark.parametrize("name, dtype", CASES)
def test_half_adapter_matches_reference(candidates, name, dtype):
    """y, dx, dgamma, dbeta, eval y and one running-statistics step, in the declared dtypes."""
    candidate = _candidate(candidates, name)
    assert set(HALF_ADAPTERS[name][1]) == set(candidate.dtypes) & {"float16", "bfloat16"}
    param = np.dtype(getattr(candidate, "param_dtype", None) or dtype)
    x, gamma, beta, running_mean, running_var, dy = _arrays(candidate, dtype)
    axis = candidate.channel_axis
    x64, g64, b64, rm64, rv64, dy64 = _f64(x, gamma, beta, running_mean, running_var, dy)
    kappa = condition_number(x64, axis, EPS)
    scale = scales(x64, g64, b64, EPS, axis, dy=dy64)

    y = candidate.forward_train(x, gamma, beta, EPS)
    assert y.dtype == x.dtype
    _assert_within("y", y, reference.forward_train(x64, g64, b64, EPS, axis)[0], dtype, kappa, scale["y"])

    grads = candidate.backward(x, gamma, beta, EPS, dy)
    assert [g.dtype for g in grads] == [x.dtype, param, param]
    for q, got, want in zip(("dx", "dgamma", "dbeta"), grads, reference.backward(dy64, x64, g64, b64, EPS, axis)):
        _assert_within(q, got, want, dtype, kappa, scale[q])

    y_eval = candidate.forward_eval(x, gamma, beta, running_mean, running_var, EPS)
    eval_kappa = float(np.max(np.abs(x64))) / float(np.sqrt(np.min(rv64) + EPS)) + 1
    _assert_within("eval y", y_eval, reference.forward_eval(x64, g64, b64, rm64, rv64, EPS, axis), dtype,
                   eval_kappa, scale["y"] + float(np.max(np.abs(g64 * rm64 / np.sqrt(rv64 + EPS)))))

    *_, new_weighted, unbiased = HALF_ADAPTERS[name]
    new = candidate.update_running(x, running_mean, running_var, MOMENTUM)
    assert [a.dtype for a in new] == [param, param]
    _, mean, var = reference.forward_train(x64, np.ones(3), np.zeros(3), EPS, axis)
    count = x.size // 3
    want = reference.update_running(rm64, rv64, mean, var, count, MOMENTUM if new_weighted else 1 - MOMENTUM,
                                    unbiased=unbiased)
    for q, got, w, old in zip(("running mean", "running var"), new, want, (rm64, rv64)):
        _assert_within(q, got, w, dtype, kappa, float(np.max(np.abs(old)) + np.max(np.abs(w))))


@pytest.mark.parametrize("name", ["torch-mixed", "flax-bf16", "keras-mixed-bf16"])
def test_mixed_adapter_casts_parameters_in_any_dtype(candidates, name):
    """Parameters arriving in x's dtype (the protocol without param_dtype) give the same results,
    in float32, as float32 parameters holding the same values."""
    candidate = _candidate(candidates, name)
    assert candidate.param_dtype == "float32"
    x, gamma, beta, _, _, dy = _arrays(candidate, "bfloat16", seed=1)
    half = [a.astype(x.dtype) for a in (gamma, beta)]
    exact = [a.astype(x.dtype).astype(np.float32) for a in (gamma, beta)]
    for got, want in zip(candidate.backward(x, *half, EPS, dy), candidate.backward(x, *exact, EPS, dy)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_torch_bfloat16_round_trip_is_bit_exact():
    """NumPy (ml_dtypes) bfloat16 crosses to torch and back unchanged, NaN and infinities included."""
    pytest.importorskip("torch")
    import torch

    from bnref.adapters._torch import to_numpy, to_torch

    bf16 = DTYPES["bfloat16"].numpy
    a = np.array([0.0, -0.0, 1.5, -3.0e38, np.inf, -np.inf, np.nan, 1e-40], dtype=np.float32).astype(bf16)
    t = to_torch(torch, a)
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), a.astype(np.float32))
    back = to_numpy(torch, t)
    assert back.dtype == bf16 and back.view(np.uint16).tolist() == a.view(np.uint16).tolist()
