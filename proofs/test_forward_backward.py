r"""Proofs of the backward pass: dbeta, dgamma, the Jacobian of xhat and the compact dx.

Each proof quotes the step of docs/derivation.md it checks (the ``>`` lines).
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import bnref
from proofs import _numeric as num
from proofs._symbolic import (CLOSED, CONCRETE_SIZES, beta, concrete, gamma, j, m, s,
                              symbolic)

i = sp.Symbol("i", integer=True, positive=True)


# ---------------------------------------------------------------- the parts, reused by test_wrong_formulas
def prove_affine_grads_general(dbeta=CLOSED["dbeta"], dgamma=CLOSED["dgamma"]):
    b = symbolic()
    L = b.loss()
    b.assert_identity(sp.diff(L, beta), b.instantiate(dbeta, j), "dbeta")
    b.assert_identity(sp.diff(L, gamma), b.instantiate(dgamma, j), "dgamma")


def prove_dx_general(dx=CLOSED["dx"]):
    b = symbolic()
    b.assert_identity(sp.diff(b.loss(), b.x(j)), b.instantiate(dx, j), "dx")


def prove_dx_concrete(size, dx=CLOSED["dx"]):
    b = concrete(size)
    L = b.loss()
    for jj in b.indices:
        b.assert_identity(sp.diff(L, b.x(jj)), b.instantiate(dx, jj), f"dx_{jj}")


def compare_backward(case, dx=CLOSED["dx"], dgamma=CLOSED["dgamma"], dbeta=CLOSED["dbeta"]):
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    got_dx, got_dgamma, got_dbeta = bnref.backward(case.dy, case.x, case.gamma, mean, var,
                                                   case.eps, case.channel_axis)
    num.assert_matches(got_dx, num.evaluate(dx, case), case, "dx")
    num.assert_matches(got_dgamma, num.evaluate(dgamma, case), case, "dgamma")
    num.assert_matches(got_dbeta, num.evaluate(dbeta, case), case, "dbeta")


# ---------------------------------------------------------------- step 2: dbeta, dgamma
def test_dbeta_dgamma_general_m():
    r"""Step 2, for a symbolic batch size m.

    > $$d\beta = \frac{\partial L}{\partial \beta} = \sum_i dy_i, \qquad d\gamma = \frac{\partial L}{\partial \gamma} = \sum_i dy_i\,\hat x_i$$
    """
    prove_affine_grads_general()


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_dbeta_dgamma_every_m(size):
    r"""Step 2, for m = 2..6 with explicit symbols.

    > $$d\beta = \frac{\partial L}{\partial \beta} = \sum_i dy_i, \qquad d\gamma = \frac{\partial L}{\partial \gamma} = \sum_i dy_i\,\hat x_i$$
    """
    b = concrete(size)
    L = b.loss()
    b.assert_identity(sp.diff(L, beta), b.instantiate(CLOSED["dbeta"], 1), "dbeta")
    b.assert_identity(sp.diff(L, gamma), b.instantiate(CLOSED["dgamma"], 1), "dgamma")


# ---------------------------------------------------------------- step 3: the statistics
def test_statistics_partials_general_m():
    r"""Step 3, for a symbolic m: the partial derivatives of the batch statistics.

    > $$\frac{\partial\mu}{\partial x_j} = \frac1m, \qquad \frac{\partial\sigma^2}{\partial x_j} = \frac2m (x_j-\mu), \qquad \frac{\partial s}{\partial x_j} = -\frac{s^2}{m}\,\hat x_j$$
    """
    b = symbolic()
    b.assert_identity(sp.diff(b.mean, b.x(j)), 1 / m, "d mean / d x_j")
    b.assert_identity(sp.diff(b.var, b.x(j)), 2 * (b.x(j) - b.mean) / m, "d var / d x_j")
    b.assert_identity(sp.diff(b.invstd, b.x(j)), -s**2 * b.xhat_s(j) / m, "d invstd / d x_j")


def test_statistics_partials_match_bnref():
    r"""Step 3, numerically: central differences of bnref.forward_train's mean and var.

    The mean is linear and the variance quadratic in x, so a central difference is exact
    up to rounding.

    > $$\frac{\partial\mu}{\partial x_j} = \frac1m, \qquad \frac{\partial\sigma^2}{\partial x_j} = \frac2m (x_j-\mu), \qquad \frac{\partial s}{\partial x_j} = -\frac{s^2}{m}\,\hat x_j$$
    """
    case = num.random_case(7, (5, 2, 3), 1)
    h = 1e-3
    for index in [(0, 0, 0), (3, 1, 2)]:
        step = np.zeros_like(case.x)
        step[index] = h
        _, mean_p, var_p = bnref.forward_train(case.x + step, case.gamma, case.beta)
        _, mean_m, var_m = bnref.forward_train(case.x - step, case.gamma, case.beta)
        c = index[1]
        mu, mcount = case.mean[c], case.m
        np.testing.assert_allclose((mean_p[c] - mean_m[c]) / (2 * h), 1 / mcount, rtol=1e-9)
        np.testing.assert_allclose((var_p[c] - var_m[c]) / (2 * h), 2 * (case.x[index] - mu) / mcount,
                                   rtol=1e-8)


# ---------------------------------------------------------------- step 4: the Jacobian of xhat
def jacobian_entry(xhat_i, xhat_j, delta_ij):
    """The claimed entry J_ij = d xhat_i / d x_j."""
    return s * (delta_ij - 1 / m - xhat_i * xhat_j / m)


def test_xhat_jacobian_general_m():
    r"""Step 4, for a symbolic m and symbolic indices i, j (the Kronecker delta stays symbolic).

    > $$J_{ij} = \frac{\partial \hat x_i}{\partial x_j} = s\Big(\delta_{ij} - \frac1m - \frac{\hat x_i \hat x_j}{m}\Big), \qquad J = s\Big(I - \frac{\mathbf 1\mathbf 1^\top}{m} - \frac{\hat x\hat x^\top}{m}\Big)$$
    """
    b = symbolic()
    claimed = jacobian_entry(b.xhat_s(i), b.xhat_s(j), sp.KroneckerDelta(i, j))
    b.assert_identity(sp.diff(b.xhat(i), b.x(j)), claimed, "J_ij")


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_xhat_jacobian_every_m(size):
    r"""Step 4, for m = 2..6: the full m x m Jacobian, entry by entry.

    > $$J_{ij} = \frac{\partial \hat x_i}{\partial x_j} = s\Big(\delta_{ij} - \frac1m - \frac{\hat x_i \hat x_j}{m}\Big), \qquad J = s\Big(I - \frac{\mathbf 1\mathbf 1^\top}{m} - \frac{\hat x\hat x^\top}{m}\Big)$$
    """
    b = concrete(size)
    for ii in b.indices:
        for jj in b.indices:
            claimed = jacobian_entry(b.xhat_s(ii), b.xhat_s(jj), int(ii == jj)).subs(m, size)
            b.assert_identity(sp.diff(b.xhat(ii), b.x(jj)), claimed, f"J_{ii}{jj}")


def test_xhat_jacobian_matches_bnref():
    r"""Step 4, numerically: gamma J^T dy, with J built entry by entry, is bnref.backward's dx.

    > $$J_{ij} = \frac{\partial \hat x_i}{\partial x_j} = s\Big(\delta_{ij} - \frac1m - \frac{\hat x_i \hat x_j}{m}\Big), \qquad J = s\Big(I - \frac{\mathbf 1\mathbf 1^\top}{m} - \frac{\hat x\hat x^\top}{m}\Big)$$
    """
    xi, xj, delta = sp.symbols("xhat_i xhat_j delta_ij")
    entry = sp.lambdify((xi, xj, delta, s, m), jacobian_entry(xi, xj, delta), "numpy")
    case = num.random_case(3, (6, 3, 4), 1)
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps)
    dx = case.per_element(bnref.backward(case.dy, case.x, case.gamma, mean, var, case.eps)[0])
    xhat, dy = case.xhat, case.per_element(case.dy)
    eye = np.eye(case.m)
    for c in range(xhat.shape[1]):
        J = entry(xhat[:, c, None], xhat[None, :, c], eye, case.invstd[c], case.m)
        np.testing.assert_allclose(dx[:, c], case.gamma[c] * J.T @ dy[:, c], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- step 5: the compact dx
def test_dx_from_jacobian_structure_general_m():
    r"""Step 5, for a symbolic m, as matrix algebra: dx = gamma J^T dy with J from step 4.

    SymPy's matrix expressions keep the dimension m symbolic: J is symmetric, and
    ``1 1^T dy = 1 (sum dy)``, ``xhat xhat^T dy = xhat (sum dy xhat)``.

    > $$dx = \gamma J^\top dy = \frac{\gamma s}{m}\Big(m\,dy - \mathbf 1 \sum_j dy_j - \hat x \sum_j dy_j \hat x_j\Big)$$
    """
    xhat = sp.MatrixSymbol("xhat", m, 1)
    dy = sp.MatrixSymbol("dy", m, 1)
    one = sp.OneMatrix(m, 1)
    J = s * (sp.Identity(m) - one * one.T / m - xhat * xhat.T / m)
    compact = gamma * s / m * (m * dy - one * (one.T * dy) - xhat * (xhat.T * dy))
    assert (gamma * J.T * dy - compact).expand().doit() == sp.ZeroMatrix(m, 1)
    assert (J.T - J).expand().doit() == sp.ZeroMatrix(m, m), "J is symmetric"


def test_dx_general_m():
    r"""Step 5, for a symbolic m, directly: SymPy differentiates L = sum_i dy_i y_i, written with
    ``Sum`` over an ``IndexedBase``, with respect to ``x[j]``; the result minus the compact
    formula reduces to 0 (see proofs/_symbolic.py for how sums are normalized).

    > $$dx_i = \frac{\gamma\, s}{m}\Big(m\,dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j\,\hat x_j\Big)$$
    """
    prove_dx_general()


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_dx_every_m(size):
    r"""Step 5, for m = 2..6 with explicit symbols, every element j.

    > $$dx_i = \frac{\gamma\, s}{m}\Big(m\,dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j\,\hat x_j\Big)$$
    """
    prove_dx_concrete(size)


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_backward_matches_bnref(case):
    r"""Steps 2 and 5, numerically: the lambdified closed forms are bnref.backward's outputs.

    > $$dx_i = \frac{\gamma\, s}{m}\Big(m\,dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j\,\hat x_j\Big)$$
    """
    compare_backward(case)
