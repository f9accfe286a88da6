"""Kernels against the autograd reference (tolerances: bnref.testing.TOLERANCES).

Bound: |kernel - reference| <= (a_q u_out + b_q u64 kappa sqrt(m)) * scale_q, where
u_out is the unit roundoff of x's dtype, kappa = max|x|/sqrt(var + eps) the condition of
the batch, m the values per channel and scale_q the size of the terms of quantity q.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import bnref
from bnref import reference
from bnref.dtypes import dtype_info
from bnref.strategies import CONDITIONS, bn_cases
from bnref.testing import assert_close, check_against_reference, condition_number, scales


@pytest.mark.parametrize("condition", CONDITIONS)
@given(data=st.data())
def test_train_forward_backward_double_backward(condition, data):
    """y, mean, var, dx, dgamma, dbeta, gx, ggamma, gdy all within the error-analysis bound,
    ranks 2-5, both channel axes, float32 and float64."""
    case = data.draw(bn_cases(conditions=(condition,)), label="case")
    check_against_reference(bnref, case)


@given(case=bn_cases(conditions=("well", "offset", "constant", "minimal")), data=st.data())
def test_eval_forward_and_backward(case, data):
    """forward_eval and backward_eval with arbitrary running statistics match the reference:
    y = gamma (x - rm)/sqrt(rv + eps) + beta; dx = gamma dy/sqrt(rv + eps) (a diagonal Jacobian)."""
    rng = np.random.default_rng(case.seed + 7)
    c = case.channels
    row = dtype_info(case.x.dtype)
    # half data: float32 parameters, as PyTorch's mixed precision (dgamma of a tiny running var
    # overflows a half gamma's range)
    gamma, beta = (v if row.native else v.astype(np.float32) for v in (case.gamma, case.beta))
    running_mean = rng.standard_normal(c) * data.draw(st.sampled_from([1.0, 100.0]), label="rm_scale")
    running_var = rng.uniform(0, 3, c) * data.draw(st.sampled_from([1.0, 1e-6, 7e4]), label="rv_scale")
    args = (gamma, beta, running_mean, running_var, case.eps, case.channel_axis)
    y = bnref.forward_eval(case.x, *args)
    y_ref = reference.forward_eval(case.x, *args)
    assume(np.abs(y_ref).max(initial=0) < row.max_finite)  # else inf is the right answer
    # the eval map's own condition: the data and running mean measured in running std units
    invstd = 1 / np.sqrt(running_var + case.eps)
    kappa = 1 + float(np.max((np.max(np.abs(case.x)) + np.abs(running_mean)) * invstd))
    xhat_max = float(np.max(np.abs(reference.forward_eval(case.x, np.ones(c), np.zeros(c), running_mean,
                                                          running_var, case.eps, case.channel_axis))))
    context = case.replay()
    assert_close("y", y, y_ref, dtype=case.x.dtype, kappa=kappa, context=context)
    dy = rng.standard_normal(case.x.shape).astype(case.x.dtype)
    dx, dgamma, dbeta = bnref.backward_eval(dy, case.x, *args[:1], *args[2:])
    dx_ref, dgamma_ref, dbeta_ref = reference.backward_eval(dy, case.x, *args)
    assert_close("dx", dx, dx_ref, dtype=case.x.dtype, kappa=kappa, m=case.count, context=context)
    assert_close("dgamma", dgamma, dgamma_ref, dtype=gamma.dtype, kappa=kappa, m=case.count,
                 scale=float(np.sum(np.abs(dy))) * xhat_max, context=context)
    assert_close("dbeta", dbeta, dbeta_ref, dtype=gamma.dtype, m=case.count,
                 scale=float(np.sum(np.abs(dy))), context=context)


@given(case=bn_cases(), momentum=st.floats(0, 1), data=st.data())
def test_update_running_matches_reference(case, momentum, data):
    """new = (1 - momentum) old + momentum batch, with m/(m-1) on the variance (or not)."""
    y, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    rng = np.random.default_rng(case.seed)
    rm, rv = rng.standard_normal(case.channels), rng.uniform(0, 2, case.channels)
    unbiased = data.draw(st.booleans(), label="unbiased")
    got = bnref.update_running(rm, rv, mean, var, case.count, momentum, unbiased=unbiased)
    want = reference.update_running(rm, rv, mean, var, case.count, momentum, unbiased=unbiased)
    for name, g, w in zip(("mean", "var"), got, want):
        assert_close(name, g, w, dtype=np.float64, scale=float(np.max(np.abs(w))) + 1)


def test_update_running_keeps_dtype_and_values():
    """PyTorch's documented example: one step with momentum 0.1 from rv=1 gives 0.9 + 0.1 * v * m/(m-1)."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    _, mean, var = bnref.forward_train(x, np.ones(1, np.float32), np.zeros(1, np.float32))
    new_mean, new_var = bnref.update_running(np.zeros(1, np.float32), np.ones(1, np.float32), mean, var, 4)
    assert new_mean.dtype == np.float32 and new_var.dtype == np.float32
    np.testing.assert_allclose(new_mean, [0.25], rtol=1e-7)
    np.testing.assert_allclose(new_var, [0.9 + 0.1 * 1.25 * 4 / 3], rtol=1e-7)


def test_scales_and_condition_are_what_the_docstring_says():
    """kappa = max|x|/sqrt(var+eps); y scale = max|gamma| max|xhat| + max|beta|."""
    x = np.array([[10.0], [12.0]])
    assert condition_number(x, 1, 0.0 + 1e-12) == pytest.approx(12.0, rel=1e-9)
    s = scales(x, np.array([2.0]), np.array([0.5]), 1e-12, 1)
    assert s["y"] == pytest.approx(2.0 * 1.0 + 0.5, rel=1e-6)
