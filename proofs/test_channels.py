r"""Proofs for the 4D case (step 6): statistics per channel over (N, H, W), gamma and beta per channel.

A tiny (N, C, H, W) = (2, 2, 1, 2) tensor of symbols goes through the formula as a
framework writes it -- NumPy reductions over axes (0, 2, 3) on an object array of SymPy
symbols -- and its gradient is compared with the closed forms of steps 2-5 applied to
each channel as a batch of m = N*H*W values.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

import bnref
from proofs import _numeric as num
from proofs._symbolic import CLOSED, ConcreteBatch, beta, dy_j, eps, gamma, s, sum_dy, P, m, xhat_j

SHAPE = (2, 2, 1, 2)                 # N, C, H, W
N, C, H, W = SHAPE
M = N * H * W
CHANNELS = [ConcreteBatch(M, tag=f"c{c}") for c in range(C)]
GAMMA = sp.symbols(f"gamma0:{C}", real=True)
BETA = sp.symbols(f"beta0:{C}", real=True)


def element_index(n, h, w):
    """The position of (n, h, w) in its channel's batch, 1-based: the flattening of (N, H, W)."""
    return 1 + (n * H + h) * W + w


def tensor(name):
    t = np.empty(SHAPE, dtype=object)
    for n, c, h, w in itertools.product(*map(range, SHAPE)):
        t[n, c, h, w] = CHANNELS[c].element(name, element_index(n, h, w))
    return t


X, DY = tensor("x"), tensor("dy")


def batch_norm_4d(x, gamma_, beta_):
    """y as a framework writes it: statistics over axes (0, 2, 3), parameters broadcast."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    invstd = np.vectorize(lambda v: (v + eps) ** sp.Rational(-1, 2))(var)
    return gamma_ * (x - mean) * invstd + beta_


def per_channel(values):
    return np.array(values, dtype=object).reshape(1, C, 1, 1)


def test_4d_gradients_are_per_channel():
    r"""Step 6: each channel is an independent batch of m = N H W values; the 4D gradients are the
    formulas of steps 2-5 with sums over that channel's (n, h, w) only.

    > $$m = N H W, \qquad \sum_i \;\to\; \sum_{n,h,w} \text{ within channel } c, \qquad \gamma_c,\ \beta_c \text{ one per channel}$$
    """
    y = batch_norm_4d(X, per_channel(GAMMA), per_channel(BETA))
    L = sp.Add(*(DY * y).ravel())
    for c, b in enumerate(CHANNELS):
        own = {gamma: GAMMA[c], beta: BETA[c]}
        b.assert_identity(sp.diff(L, GAMMA[c]), b.instantiate(CLOSED["dgamma"], 1), f"dgamma_{c}")
        b.assert_identity(sp.diff(L, BETA[c]), b.instantiate(CLOSED["dbeta"], 1), f"dbeta_{c}")
        for n, h, w in itertools.product(range(N), range(H), range(W)):
            i = element_index(n, h, w)
            closed = b.instantiate(CLOSED["dx"], i).xreplace(own)
            b.assert_identity(sp.diff(L, X[n, c, h, w]), closed, f"dx[{n},{c},{h},{w}]")


def roll_w(t):
    """A circular shift by one position along W: a translation of the image."""
    return np.roll(t, 1, axis=3)


def test_per_channel_affine_commutes_with_translation():
    r"""Step 6: with gamma, beta per channel, BN commutes with translating the image (as a
    convolution does), so a conv layer followed by BN is still translation-equivariant.

    > $$\mathrm{BN}(\mathcal T x) = \mathcal T\,\mathrm{BN}(x) \text{ for per-channel } \gamma, \beta \text{; not for per-position } \gamma_{chw}, \beta_{chw}$$
    """
    g, bt = per_channel(GAMMA), per_channel(BETA)
    residual = batch_norm_4d(roll_w(X), g, bt) - roll_w(batch_norm_4d(X, g, bt))
    assert all(sp.expand(r) == 0 for r in residual.ravel())


def test_per_position_affine_breaks_translation():
    r"""Step 6: with one gamma per (c, h, w) -- as in the post bnref grew from -- translating the
    input does not translate the output; it does again once gamma is constant over (h, w).

    > $$\mathrm{BN}(\mathcal T x) = \mathcal T\,\mathrm{BN}(x) \text{ for per-channel } \gamma, \beta \text{; not for per-position } \gamma_{chw}, \beta_{chw}$$
    """
    g = np.array(sp.symbols(f"g0:{C * H * W}", real=True), dtype=object).reshape(1, C, H, W)
    bt = np.array(sp.symbols(f"b0:{C * H * W}", real=True), dtype=object).reshape(1, C, H, W)
    residual = batch_norm_4d(roll_w(X), g, bt) - roll_w(batch_norm_4d(X, g, bt))
    assert any(sp.expand(r) != 0 for r in residual.ravel())
    tied = {g[0, c, h, w]: GAMMA[c] for c, h, w in itertools.product(range(C), range(H), range(W))}
    tied.update({bt[0, c, h, w]: BETA[c] for c, h, w in itertools.product(range(C), range(H), range(W))})
    assert all(sp.expand(r.xreplace(tied)) == 0 for r in residual.ravel())


def test_per_position_gamma_needs_gamma_inside_the_sums():
    r"""Step 6: with per-position gamma the backward is the compact formula applied to g = gamma dy
    (gamma inside the sums); the per-channel formula, gamma factored out, is then wrong.

    > $$\gamma_{chw}:\quad dx_i = \frac{s}{m}\Big(m\,\gamma_i\, dy_i - \sum_j \gamma_j\, dy_j - \hat x_i \sum_j \gamma_j\, dy_j\, \hat x_j\Big)$$
    """
    b = CHANNELS[0]
    gammas = {i: sp.Symbol(f"gp_{i}", real=True) for i in b.indices}
    L = b.total(lambda i: b.element("dy", i) * (gammas[i] * b.xhat(i) + beta))
    g = {i: gammas[i] * b.element("dy", i) for i in b.indices}
    with_g = (s / m * (m * dy_j - sum_dy - xhat_j * P)).xreplace({m: M})
    for i in b.indices:
        claimed = with_g.xreplace({
            dy_j: g[i], xhat_j: b.xhat_s(i),
            sum_dy: sp.Add(*g.values()), P: sp.Add(*(g[k] * b.xhat_s(k) for k in b.indices))})
        b.assert_identity(sp.diff(L, b.x(i)), claimed, f"dx_{i} with per-position gamma")
    per_channel_formula = b.instantiate(CLOSED["dx"], 1).xreplace({gamma: gammas[1]})
    with pytest.raises(AssertionError):
        b.assert_identity(sp.diff(L, b.x(1)), per_channel_formula, "dx_1, gamma factored out")


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_4d_matches_2d_in_bnref(channel_axis):
    r"""Step 6, numerically: bnref on (N, C, H, W) equals bnref on the (N H W, C) matrix of the same values.

    > $$m = N H W, \qquad \sum_i \;\to\; \sum_{n,h,w} \text{ within channel } c, \qquad \gamma_c,\ \beta_c \text{ one per channel}$$
    """
    case = num.random_case(13, (3, 4, 5, 2) if channel_axis == 1 else (3, 5, 2, 4), channel_axis)
    flat = {name: case.per_element(getattr(case, name)) for name in ("x", "dy")}
    y4, mean4, var4 = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, channel_axis)
    y2, mean2, var2 = bnref.forward_train(flat["x"], case.gamma, case.beta, case.eps, 1)
    np.testing.assert_allclose(case.per_element(y4), y2, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(var4, var2, rtol=1e-13)
    dx4, dg4, db4 = bnref.backward(case.dy, case.x, case.gamma, mean4, var4, case.eps, channel_axis)
    dx2, dg2, db2 = bnref.backward(flat["dy"], flat["x"], case.gamma, mean2, var2, case.eps, 1)
    np.testing.assert_allclose(case.per_element(dx4), dx2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dg4, dg2, rtol=1e-12)
    np.testing.assert_allclose(db4, db2, rtol=1e-12)
