r"""Proofs of the double backward: the VJP of the backward with respect to (x, gamma, dy).

The formulas proved are the ones in the docstring of ``bnref.double_backward`` (and
in :data:`proofs._symbolic.CLOSED`). The backward being differentiated is not the
closed form: it is SymPy's own derivative of the forward graph, so these proofs do not
lean on step 5.
"""
from __future__ import annotations

import pytest
import sympy as sp

import bnref
from proofs import _numeric as num
from proofs._symbolic import (CLOSED, CONCRETE_SIZES, P, Q, R, beta, concrete, ddbeta,
                              ddgamma, gamma, j, m, s, sum_ddx, sum_dy, symbolic)

#: the double-backward loss in terms of the batch sums (step 9)
L2_IN_SUMS = gamma * s / m * (m * R - sum_dy * sum_ddx - P * Q) + ddgamma * P + ddbeta * sum_dy


def double_backward_loss(b):
    """``L2 = <ddx, dx> + ddgamma dgamma + ddbeta dbeta``, dx being SymPy's gradient of L."""
    L = b.loss()
    return (b.total(lambda i: b.element("ddx", i) * sp.diff(L, b.x(i)))
            + ddgamma * sp.diff(L, gamma) + ddbeta * sp.diff(L, beta))


def prove_double_backward(b, elements, ggamma=CLOSED["ggamma"], gdy=CLOSED["gdy"], gx=CLOSED["gx"]):
    L2 = double_backward_loss(b)
    b.assert_identity(sp.diff(L2, gamma), b.instantiate(ggamma, 1), "ggamma")
    for e in elements:
        b.assert_identity(sp.diff(L2, b.element("dy", e)), b.instantiate(gdy, e), f"gdy_{e}")
        b.assert_identity(sp.diff(L2, b.x(e)), b.instantiate(gx, e), f"gx_{e}")


def compare_double_backward(case, ggamma=CLOSED["ggamma"], gdy=CLOSED["gdy"], gx=CLOSED["gx"]):
    _, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    got_gx, got_ggamma, got_gdy = bnref.double_backward(
        case.ddx, case.ddgamma, case.ddbeta, case.dy, case.x, case.gamma, mean, var,
        case.eps, case.channel_axis)
    num.assert_matches(got_ggamma, num.evaluate(ggamma, case), case, "ggamma")
    num.assert_matches(got_gdy, num.evaluate(gdy, case), case, "gdy")
    num.assert_matches(got_gx, num.evaluate(gx, case), case, "gx")


def test_double_backward_loss_in_sums_general_m():
    r"""Step 9, for a symbolic m: the double-backward loss depends on the batch only through sums.

    > $$L_2 = \frac{\gamma s}{m}\big(m R - \textstyle\sum dy \sum ddx - P Q\big) + dd\gamma\, P + dd\beta \sum dy$$
    """
    b = symbolic()
    b.assert_identity(double_backward_loss(b), b.instantiate(L2_IN_SUMS, j), "L2")


def test_double_backward_general_m():
    r"""Step 9, for a symbolic m: SymPy differentiates L2 (built on its own dx) by gamma, dy[j], x[j].

    > $$g_\gamma = s\Big(R - m\,M(dy)\,M(ddx) - \frac{PQ}{m}\Big)$$
    > $$g_{dy} = \gamma s\Big(ddx - M(ddx) - \hat x\,\frac{Q}{m}\Big) + dd\gamma\,\hat x + dd\beta$$
    > $$g_x = \frac{\gamma s^2}{m}\Big[\hat x\Big(\frac{3PQ}{m} - R + m\,M(dy)M(ddx)\Big) - Q\,\big(dy - M(dy)\big) - P\,\big(ddx - M(ddx)\big)\Big] + dd\gamma\, s\Big(dy - M(dy) - \hat x\,\frac{P}{m}\Big)$$
    """
    prove_double_backward(symbolic(), [j])


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_double_backward_every_m(size):
    r"""Step 9, for m = 2..6 with explicit symbols, at the first and the last element.

    L2 is invariant under permuting the batch (x, dy and ddx together) and the closed
    forms permute along, so one element proves them all; two guard against an
    index-specific slip in the proof itself.

    > $$g_\gamma = s\Big(R - m\,M(dy)\,M(ddx) - \frac{PQ}{m}\Big)$$
    > $$g_{dy} = \gamma s\Big(ddx - M(ddx) - \hat x\,\frac{Q}{m}\Big) + dd\gamma\,\hat x + dd\beta$$
    > $$g_x = \frac{\gamma s^2}{m}\Big[\hat x\Big(\frac{3PQ}{m} - R + m\,M(dy)M(ddx)\Big) - Q\,\big(dy - M(dy)\big) - P\,\big(ddx - M(ddx)\big)\Big] + dd\gamma\, s\Big(dy - M(dy) - \hat x\,\frac{P}{m}\Big)$$
    """
    b = concrete(size)
    prove_double_backward(b, sorted({1, size}))


@pytest.mark.parametrize("case", num.cases(), ids=lambda c: f"{c.x.shape}-axis{c.channel_axis}")
def test_double_backward_matches_bnref(case):
    r"""Step 9, numerically: the lambdified closed forms are bnref.double_backward's outputs.

    > $$g_x = \frac{\gamma s^2}{m}\Big[\hat x\Big(\frac{3PQ}{m} - R + m\,M(dy)M(ddx)\Big) - Q\,\big(dy - M(dy)\big) - P\,\big(ddx - M(ddx)\big)\Big] + dd\gamma\, s\Big(dy - M(dy) - \hat x\,\frac{P}{m}\Big)$$
    """
    compare_double_backward(case)
