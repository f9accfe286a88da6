r"""Proofs of the identities the property suite relies on (step 10 of docs/derivation.md)."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import bnref
from proofs import _numeric as num
from proofs._symbolic import CLOSED, CONCRETE_SIZES, P, concrete, eps, gamma, j, s, symbolic

BATCHES = [pytest.param(symbolic, id="general-m")] + [
    pytest.param(lambda size=size: concrete(size), id=f"m={size}") for size in CONCRETE_SIZES]


def backward_of(case):
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    dx, _, _ = bnref.backward(case.dy, case.x, case.gamma, mean, var, case.eps, case.channel_axis)
    return case.per_element(dx), var


@pytest.mark.parametrize("batch", BATCHES)
def test_sum_dx_is_zero(batch):
    r"""Step 10: the gradient is orthogonal to the constant vector (a shift of x changes nothing).

    > $$\sum_i dx_i = 0$$
    """
    b = batch()
    b.assert_identity(b.total(lambda i: b.instantiate(CLOSED["dx"], i)), 0, "sum dx")


@pytest.mark.parametrize("batch", BATCHES)
def test_sum_dx_xhat(batch):
    r"""Step 10: the component of dx along xhat is damped by eps/(var + eps).

    > $$\sum_i dx_i\,\hat x_i = \gamma\, s \sum_i dy_i \hat x_i \cdot \frac{\epsilon}{\sigma^2+\epsilon}$$
    """
    b = batch()
    lhs = b.total(lambda i: b.instantiate(CLOSED["dx"], i) * b.xhat_s(i))
    rhs = b.instantiate(gamma * s * P, j) * eps / (b.var + eps)
    b.assert_identity(lhs, rhs, "sum dx xhat")


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_sum_identities_match_bnref(case):
    r"""Step 10, numerically, on bnref.backward's dx.

    > $$\sum_i dx_i = 0$$
    > $$\sum_i dx_i\,\hat x_i = \gamma\, s \sum_i dy_i \hat x_i \cdot \frac{\epsilon}{\sigma^2+\epsilon}$$
    """
    dx, var = backward_of(case)
    scale = np.abs(dx).sum(axis=0)
    np.testing.assert_allclose(dx.sum(axis=0), 0.0, atol=1e-13 * scale.max())
    expected = num.evaluate(gamma * s * P, case) * case.eps / (var + case.eps)
    np.testing.assert_allclose((dx * case.xhat).sum(axis=0), expected, rtol=1e-8,
                               atol=1e-13 * scale.max())


@pytest.mark.parametrize("batch", BATCHES)
def test_shift_invariance(batch):
    r"""Step 10: adding a constant to every x changes neither xhat nor y.

    > $$\hat x(x + K\mathbf 1) = \hat x(x)$$
    """
    b = batch()
    c = sp.Symbol("c", real=True)
    at = b.some_index
    b.assert_identity(b.map_x(b.xhat(at), lambda e: e + c), b.xhat(at), "xhat(x + c)")


@pytest.mark.parametrize("batch", BATCHES)
def test_scale_invariance(batch):
    r"""Step 10: scaling x by a > 0 is the same as dividing eps by a^2.

    The batch statistics transform as mean(a x) = a mean(x), var(a x) = a^2 var(x)
    (proved on the graph); the rest is the one-line identity
    a (x - mu) / sqrt(a^2 var + eps) = (x - mu) / sqrt(var + eps / a^2) for a > 0.

    > $$\hat x_\epsilon(a x) = \hat x_{\epsilon/a^2}(x) \quad (a > 0)$$
    """
    b = batch()
    a = sp.Symbol("a", positive=True)
    b.assert_identity(b.map_x(b.mean, lambda e: a * e), a * b.mean, "mean(a x)")
    b.assert_identity(b.map_x(b.var, lambda e: a * e), a**2 * b.var, "var(a x)")
    centred, var = sp.symbols("centred var", positive=True)
    scaled = a * centred / sp.sqrt(a**2 * var + eps)
    assert sp.simplify(scaled - centred / sp.sqrt(var + eps / a**2)) == 0


@pytest.mark.parametrize("batch", BATCHES)
def test_output_mean_and_variance(batch):
    r"""Step 10: xhat has mean 0 and variance var/(var + eps), so y has mean beta.

    > $$\frac1m\sum_i \hat x_i = 0, \qquad \frac1m \sum_i \hat x_i^2 = \frac{\sigma^2}{\sigma^2+\epsilon}$$
    """
    b = batch()
    b.assert_identity(b.total(b.xhat) / b.m, 0, "mean of xhat")
    b.assert_identity(b.total(lambda i: b.xhat(i) ** 2) / b.m, b.var / (b.var + eps), "var of xhat")


def test_two_values_closed_form():
    r"""Step 10, m = 2: whatever the data, the outputs are -/+ sqrt(var/(var + eps)).

    > $$m = 2:\quad \hat x = \mp\sqrt{\frac{\sigma^2}{\sigma^2+\epsilon}}$$
    """
    b = concrete(2)
    b.assert_identity(b.xhat(1) + b.xhat(2), 0, "xhat_1 + xhat_2")
    b.assert_identity(b.xhat(1) ** 2, b.var / (b.var + eps), "xhat_1^2")


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_invariances_match_bnref(case):
    r"""Step 10, numerically, on bnref.forward_train.

    > $$\hat x(x + K\mathbf 1) = \hat x(x)$$
    > $$\hat x_\epsilon(a x) = \hat x_{\epsilon/a^2}(x) \quad (a > 0)$$
    > $$\frac1m\sum_i \hat x_i = 0, \qquad \frac1m \sum_i \hat x_i^2 = \frac{\sigma^2}{\sigma^2+\epsilon}$$
    """
    args = (case.gamma, case.beta)
    y, mean, var = bnref.forward_train(case.x, *args, case.eps, case.channel_axis)
    y_shift, _, _ = bnref.forward_train(case.x + 1e3, *args, case.eps, case.channel_axis)
    y_scale, _, _ = bnref.forward_train(8.0 * case.x, *args, 64.0 * case.eps, case.channel_axis)
    np.testing.assert_allclose(y_shift, y, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y_scale, y, rtol=1e-13, atol=1e-13)
    xhat = (case.per_element(y) - case.beta) / case.gamma
    np.testing.assert_allclose(xhat.mean(axis=0), 0.0, atol=1e-13)
    np.testing.assert_allclose((xhat**2).mean(axis=0), var / (var + case.eps), rtol=1e-12)
