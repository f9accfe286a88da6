"""Analytic gradients against central finite differences (float64, small shapes).

The projected check of autograd's ``check_grads``: <u, vjp(v)> against d/dt <v, F(x + t u)>.
Bound: |analytic - numeric| <= 10 * (Richardson error estimate) + 1e-9 * (|analytic| + |v||u|-size),
the estimate coming from bnref.finite_diff (truncation O(h^4) + rounding u|f|/h).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bnref
from bnref import finite_diff
from bnref.strategies import bn_cases


def _x_scale(case, var):
    """The length on which batch norm bends in x: the step is taken relative to it (an
    eps-scale channel, std 1e-3, would otherwise be stepped across by a step sized for |x|)."""
    return float(min(np.max(np.abs(case.x)), np.sqrt(np.min(var) + case.eps))) or 1.0


def _assert_projected(check, what, case):
    tol = 10 * check.numeric_error + 1e-8 * max(1.0, abs(check.analytic))
    assert check.error <= tol, f"{what}: {check} > tol {tol:.3g}\nreplay: {case.replay()}"


fd_cases = bn_cases(dtypes=("float64",), conditions=("well", "eps_scale", "minimal", "constant"),
                    max_size=120, max_side=4)


@given(case=fd_cases)
def test_backward_matches_finite_differences(case):
    """d<dy, y>/d(x, gamma, beta) from bnref.backward equals the numeric derivative."""
    rng = np.random.default_rng(case.seed)
    dy = rng.standard_normal(case.x.shape)
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    dx, dgamma, dbeta = bnref.backward(dy, case.x, case.gamma, mean, var, case.eps, case.channel_axis)
    check = finite_diff.check_vjp(
        lambda x, g, b: bnref.forward_train(x, g, b, case.eps, case.channel_axis)[0],
        [case.x, case.gamma, case.beta], dy, [dx, dgamma, dbeta], rng, scale=_x_scale(case, var))
    _assert_projected(check, "backward", case)


@given(case=fd_cases)
def test_double_backward_matches_finite_differences_of_backward(case):
    """The VJP of backward w.r.t. (x, gamma, dy), with statistics recomputed from x, equals
    the numeric derivative of <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>."""
    rng = np.random.default_rng(case.seed)
    c, eps, axis = case.channels, case.eps, case.channel_axis
    dy = rng.standard_normal(case.x.shape)
    ddx, ddgamma, ddbeta = rng.standard_normal(case.x.shape), rng.standard_normal(c), rng.standard_normal(c)
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, eps, axis)
    gx, ggamma, gdy = bnref.double_backward(ddx, ddgamma, ddbeta, dy, case.x, case.gamma, mean, var, eps, axis)

    def grads(x, gamma, dy_):
        _, mean_, var_ = bnref.forward_train(x, gamma, case.beta, eps, axis)
        return bnref.backward(dy_, x, gamma, mean_, var_, eps, axis)

    check = finite_diff.check_vjp(grads, [case.x, case.gamma, dy], (ddx, ddgamma, ddbeta), [gx, ggamma, gdy], rng,
                                  scale=_x_scale(case, var))
    _assert_projected(check, "double_backward", case)


@given(case=fd_cases, data=st.data())
def test_eval_backward_matches_finite_differences(case, data):
    """forward_eval is affine in x: its VJP equals the numeric derivative."""
    rng = np.random.default_rng(case.seed)
    rm, rv = rng.standard_normal(case.channels), rng.uniform(0.1, 2, case.channels)
    dy = rng.standard_normal(case.x.shape)
    dx, dgamma, dbeta = bnref.backward_eval(dy, case.x, case.gamma, rm, rv, case.eps, case.channel_axis)
    check = finite_diff.check_vjp(
        lambda x, g, b: bnref.forward_eval(x, g, b, rm, rv, case.eps, case.channel_axis),
        [case.x, case.gamma, case.beta], dy, [dx, dgamma, dbeta], rng)
    _assert_projected(check, "backward_eval", case)


# ---------------------------------------------------------------- the finite-difference module itself

def test_directional_derivative_is_accurate_on_known_functions():
    """d/dt sin(x + t u) . 1 = cos(x) . u to ~1e-10; Richardson beats the plain central difference."""
    x = np.linspace(-2, 2, 7)
    u = np.cos(np.arange(7.0))
    exact = float(np.sum(np.cos(x) * u))
    rich, err = finite_diff.directional_derivative(lambda a: np.sum(np.sin(a)), [x], [u])
    plain, _ = finite_diff.directional_derivative(lambda a: np.sum(np.sin(a)), [x], [u], richardson=False)
    assert abs(rich - exact) < 1e-10
    assert abs(rich - exact) <= err
    assert abs(rich - exact) < abs(plain - exact)


def test_gradient_of_a_quadratic():
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    x = np.array([0.5, -1.5])
    np.testing.assert_allclose(finite_diff.gradient(lambda v: v @ a @ v / 2, x), a @ x, rtol=1e-9)


def test_check_vjp_catches_a_wrong_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5)
    good = finite_diff.check_vjp(lambda v: v ** 3, [x], np.ones(5), [3 * x ** 2], rng)
    bad = finite_diff.check_vjp(lambda v: v ** 3, [x], np.ones(5), [2 * x ** 2], rng)
    assert good.error <= 10 * good.numeric_error + 1e-9
    assert bad.error > 1e-3


def test_directions_must_match():
    with pytest.raises(ValueError, match="direction 0"):
        finite_diff.directional_derivative(np.sum, [np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="all zero"):
        finite_diff.directional_derivative(np.sum, [np.zeros(3)], [np.zeros(3)])
