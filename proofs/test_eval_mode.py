r"""Proofs for inference mode (step 7): an affine map, its backward, and how it differs from training.

In inference the statistics are constants ``mu_run``, ``var_run``, so
``s_run = (var_run + eps)^(-1/2)`` is a constant too and enters as a symbol.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import bnref
from proofs import _numeric as num
from proofs._symbolic import (CLOSED, CONCRETE_SIZES, P, beta, concrete, dy_j, gamma, m, s, sum_dy,
                              symbolic, xhat_j)

mu_run = sp.Symbol("mu_run", real=True)
s_run = sp.Symbol("s_run", positive=True)
x_j = sp.Symbol("x_j", real=True)

#: inference-mode forward and backward, element j (bnref.forward_eval / backward_eval)
Y_EVAL = gamma * s_run * (x_j - mu_run) + beta
DX_EVAL = gamma * s_run * dy_j

BATCHES = [pytest.param(symbolic, id="general-m")] + [
    pytest.param(lambda size=size: concrete(size), id=f"m={size}") for size in CONCRETE_SIZES]


def y_eval(b, i):
    return Y_EVAL.xreplace({x_j: b.x(i)})


@pytest.mark.parametrize("batch", BATCHES)
def test_eval_backward(batch):
    r"""Step 7: the Jacobian is diagonal, gamma s_run I; dgamma and dbeta keep their form.

    > $$dx_i = \gamma\, s_{run}\, dy_i, \qquad d\gamma = \sum_i dy_i\,\hat x_i^{run}, \qquad d\beta = \sum_i dy_i$$
    """
    b = batch()
    at = b.some_index
    other = sp.Symbol("k", integer=True, positive=True) if b.m.is_Symbol else b.size
    delta = sp.KroneckerDelta(at, other) if b.m.is_Symbol else int(at == other)
    assert sp.expand(sp.diff(y_eval(b, at), b.x(other)) - gamma * s_run * delta) == 0
    L = b.total(lambda i: b.element("dy", i) * y_eval(b, i))
    b.assert_identity(sp.diff(L, b.x(at)), DX_EVAL.xreplace({dy_j: b.element("dy", at)}), "dx")
    xhat_run = lambda i: (b.x(i) - mu_run) * s_run  # noqa: E731
    b.assert_identity(sp.diff(L, gamma), b.total(lambda i: b.element("dy", i) * xhat_run(i)), "dgamma")
    b.assert_identity(sp.diff(L, beta), b.total(lambda i: b.element("dy", i)), "dbeta")


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_eval_matches_bnref(case):
    r"""Step 7, numerically: bnref.forward_eval and bnref.backward_eval are the affine map and its VJP.

    > $$y_i = \gamma\, s_{run}\,(x_i - \mu_{run}) + \beta, \qquad s_{run} = (\sigma^2_{run} + \epsilon)^{-1/2}$$
    > $$dx_i = \gamma\, s_{run}\, dy_i, \qquad d\gamma = \sum_i dy_i\,\hat x_i^{run}, \qquad d\beta = \sum_i dy_i$$
    """
    rng = np.random.default_rng(11)
    channels = case.gamma.shape[0]
    running_mean, running_var = rng.normal(size=channels), rng.uniform(0.5, 2.0, size=channels)
    s = 1.0 / np.sqrt(running_var + case.eps)
    x, dy = case.per_element(case.x), case.per_element(case.dy)
    y_expected = sp.lambdify((x_j, mu_run, s_run, gamma, beta), Y_EVAL)(
        x, running_mean, s, case.gamma, case.beta)
    dx_expected = sp.lambdify((dy_j, s_run, gamma), DX_EVAL)(dy, s, case.gamma)
    args = (case.gamma, running_mean, running_var, case.eps, case.channel_axis)
    y = bnref.forward_eval(case.x, case.gamma, case.beta, *args[1:])
    dx, dgamma, dbeta = bnref.backward_eval(case.dy, case.x, *args)
    num.assert_matches(y, y_expected, case, "forward_eval")
    num.assert_matches(dx, dx_expected, case, "backward_eval dx")
    num.assert_matches(dgamma, (dy * (x - running_mean) * s).sum(axis=0), case, "backward_eval dgamma")
    num.assert_matches(dbeta, dy.sum(axis=0), case, "backward_eval dbeta")


@pytest.mark.parametrize("batch", BATCHES)
def test_training_gradient_differs_from_eval(batch):
    r"""Step 7: even when the running statistics equal the batch's, the forward passes agree but
    the gradients do not -- training differentiates through mu and sigma^2.

    > $$dx^{train}_i - dx^{eval}_i = -\frac{\gamma s}{m}\Big(\sum_j dy_j + \hat x_i \sum_j dy_j \hat x_j\Big)$$
    """
    b = batch()
    at = b.some_index
    difference = CLOSED["dx"] - DX_EVAL.xreplace({s_run: s})
    claimed = -gamma * s / m * (sum_dy + xhat_j * P)
    b.assert_identity(b.instantiate(difference, at), b.instantiate(claimed, at), "dx_train - dx_eval")


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_training_gradient_differs_from_eval_in_bnref(case):
    r"""Step 7, numerically: with running stats := batch stats, forward_eval == forward_train, while
    backward - backward_eval is the term above (nonzero).

    > $$dx^{train}_i - dx^{eval}_i = -\frac{\gamma s}{m}\Big(\sum_j dy_j + \hat x_i \sum_j dy_j \hat x_j\Big)$$
    """
    y, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    args = (case.gamma, mean, var, case.eps, case.channel_axis)
    num.assert_matches(bnref.forward_eval(case.x, case.gamma, case.beta, *args[1:]),
                       case.per_element(y), case, "forward_eval with batch statistics")
    dx_train = bnref.backward(case.dy, case.x, *args)[0]
    dx_eval = bnref.backward_eval(case.dy, case.x, *args)[0]
    expected = num.evaluate(-gamma * s / m * (sum_dy + xhat_j * P), case)
    assert np.abs(expected).max() > 1e-3, "the difference should not vanish on random data"
    num.assert_matches(dx_train - dx_eval, expected, case, "backward - backward_eval")


def test_fresh_running_statistics():
    r"""Step 7: a freshly initialised layer (mu_run = 0, var_run = 1) is nearly the identity map.

    > $$\mu_{run} = 0,\ \sigma^2_{run} = 1:\quad y = \frac{\gamma\, x}{\sqrt{1+\epsilon}} + \beta$$
    """
    case = num.random_case(5)
    channels = case.gamma.shape[0]
    y = bnref.forward_eval(case.x, case.gamma, case.beta, np.zeros(channels), np.ones(channels),
                           case.eps, case.channel_axis)
    expected = Y_EVAL.xreplace({mu_run: 0, s_run: 1 / sp.sqrt(1 + sp.Symbol("eps"))})
    f = sp.lambdify((x_j, gamma, beta, sp.Symbol("eps")), expected)
    num.assert_matches(y, f(case.per_element(case.x), case.gamma, case.beta, case.eps), case,
                       "fresh forward_eval")

