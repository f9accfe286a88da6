r"""Proofs for the running statistics (step 8): the unbiased correction and the momentum conventions."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import bnref
from proofs._symbolic import CONCRETE_SIZES, concrete, m, normalize_sums, symbolic

mu, sigma2 = sp.symbols("mu sigma2", positive=True)
momentum, old, new = sp.symbols("momentum old new", real=True)

#: one step of the running average, PyTorch form (momentum weighs the new value)
UPDATE_TORCH = (1 - momentum) * old + momentum * new
#: Keras / Flax form (their momentum weighs the old value)
momentum_keras = sp.Symbol("momentum_keras", real=True)
UPDATE_KERAS = momentum_keras * old + (1 - momentum_keras) * new


def expected_biased_variance_general():
    """E[var_B] for iid x_i with mean mu and variance sigma^2, symbolic m.

    var_B = (1/m) sum_i x_i^2 - (1/m^2) sum_i sum_k x_i x_k (an identity on the graph,
    checked below). E is linear and commutes with the finite sums; the model gives
    E[x_i x_k] = mu^2 + sigma^2 delta_ik.
    """
    i, k = sp.symbols("i k", integer=True, positive=True)
    second_moment = mu**2 + sigma2 * sp.KroneckerDelta(i, k)
    expectation = (sp.Sum(second_moment.subs(k, i), (i, 1, m)) / m
                   - sp.Sum(sp.Sum(second_moment, (i, 1, m)), (k, 1, m)) / m**2)
    return sp.simplify(normalize_sums(expectation))


def expectation(b, expr):
    """E[expr] for a polynomial of degree <= 2 in the x_i of the concrete batch ``b``:
    x_i = mu + e_i with independent e_i, E[e_i] = 0, E[e_i^2] = sigma^2."""
    e = sp.symbols(f"e1:{b.size + 1}", real=True)
    noise = {b.x(i): mu + e[i - 1] for i in b.indices}
    poly = sp.Poly(sp.expand(expr.xreplace(noise)), *e)
    moments = {0: 1, 1: 0, 2: sigma2}
    if poly.total_degree() > 2:
        raise ValueError("the model fixes moments up to the second only")
    return sum(coeff * sp.Mul(*(moments[p] for p in powers)) for powers, coeff in poly.terms())


def update_running_var(old_var, batch_var, count):
    """bnref.update_running's variance: the PyTorch update with the unbiased batch variance."""
    return UPDATE_TORCH.xreplace({old: old_var, new: count / (count - 1) * batch_var})


def test_variance_as_double_sum_general_m():
    r"""Step 8 (the algebra behind the expectation), for a symbolic m.

    > $$\sigma^2 = \frac1m\sum_i x_i^2 - \frac1{m^2}\sum_i\sum_k x_i x_k$$
    """
    b = symbolic()
    double_sum = b.total(lambda i: b.x(i) ** 2) / m - b.total(lambda i: b.total(
        lambda k: b.x(i) * b.x(k))) / m**2
    b.assert_identity(b.var, double_sum, "var as a double sum")


def test_biased_variance_expectation_general_m():
    r"""Step 8, for a symbolic m: the batch variance underestimates sigma^2 by (m - 1)/m.

    > $$\mathbb E\big[\sigma^2\big] = \frac{m-1}{m}\,\sigma^2_{pop}, \qquad \mathbb E\Big[\frac{m}{m-1}\sigma^2\Big] = \sigma^2_{pop}$$
    """
    assert sp.simplify(expected_biased_variance_general() - (m - 1) / m * sigma2) == 0


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_biased_variance_expectation_every_m(size):
    r"""Step 8, for m = 2..6: x_i = mu + e_i with independent e_i, E[e_i] = 0, E[e_i^2] = sigma^2.

    > $$\mathbb E\big[\sigma^2\big] = \frac{m-1}{m}\,\sigma^2_{pop}, \qquad \mathbb E\Big[\frac{m}{m-1}\sigma^2\Big] = \sigma^2_{pop}$$
    """
    b = concrete(size)
    expected = expectation(b, b.var)
    assert sp.expand(expected - sp.Rational(size - 1, size) * sigma2) == 0
    assert sp.expand(sp.Rational(size, size - 1) * expected - sigma2) == 0


def test_momentum_conventions():
    r"""Step 8: the two ways frameworks write the update are one map, momentum_keras = 1 - momentum.

    > $$\text{momentum}_{\text{Keras/Flax}} = 1 - \text{momentum}_{\text{PyTorch}}$$
    """
    assert sp.expand(UPDATE_TORCH - UPDATE_KERAS.subs(momentum_keras, 1 - momentum)) == 0


def test_running_average_weights_sum_to_one():
    r"""Step 8: after n updates the running value is a weighted average of the start and the n batch
    values, weights (1-momentum)^n and momentum (1-momentum)^(n-t), which sum to 1 for every n.

    > $$r_T = (1-\alpha)^T r_0 + \sum_{t=1}^T \alpha (1-\alpha)^{T-t} b_t, \qquad (1-\alpha)^T + \sum_{t=1}^T \alpha(1-\alpha)^{T-t} = 1$$
    """
    alpha = sp.Symbol("alpha", positive=True)
    n, t = sp.symbols("n t", integer=True, positive=True)
    total = (1 - alpha) ** n + sp.summation(alpha * (1 - alpha) ** (n - t), (t, 1, n))
    assert sp.simplify(total) == 1     # a small expression: simplify is cheap here
    # the recursion r_n = (1 - alpha) r_{n-1} + alpha b_n unrolls to the closed form, n = 1..5
    b = sp.symbols("b1:6")
    r0 = sp.Symbol("r0")
    r = r0
    for step in range(1, 6):
        r = UPDATE_TORCH.subs({old: r, new: b[step - 1], momentum: alpha})
        closed = (1 - alpha) ** step * r0 + sum(alpha * (1 - alpha) ** (step - u) * b[u - 1]
                                                for u in range(1, step + 1))
        assert sp.expand(r - closed) == 0


@pytest.mark.parametrize("unbiased", [True, False])
def test_update_running_matches_bnref(unbiased):
    r"""Step 8, numerically: bnref.update_running is the PyTorch update with m/(m-1) on the variance;
    with momentum = 1 - 0.99 and unbiased=False it is the Keras/Flax update.

    > $$\mu_{run} \leftarrow (1-\text{momentum})\,\mu_{run} + \text{momentum}\,\mu, \qquad \sigma^2_{run} \leftarrow (1-\text{momentum})\,\sigma^2_{run} + \text{momentum}\,\frac{m}{m-1}\,\sigma^2$$
    """
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(12, 4))
    _, mean, var = bnref.forward_train(x, np.ones(4), np.zeros(4))
    run_mean, run_var = rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    count = x.shape[0]
    torch_update = sp.lambdify((old, new, momentum), UPDATE_TORCH)
    keras_update = sp.lambdify((old, new, momentum_keras), UPDATE_KERAS)
    got_mean, got_var = bnref.update_running(run_mean, run_var, mean, var, count, 0.1, unbiased=unbiased)
    batch_var = var * count / (count - 1) if unbiased else var
    np.testing.assert_allclose(got_mean, torch_update(run_mean, mean, 0.1), rtol=1e-14)
    expected_var = sp.lambdify((old, new, momentum, m), update_running_var(old, new, m)) if unbiased else None
    np.testing.assert_allclose(got_var, expected_var(run_var, var, 0.1, count) if unbiased
                               else torch_update(run_var, var, 0.1), rtol=1e-14)
    np.testing.assert_allclose(batch_var if unbiased else var, x.var(axis=0, ddof=int(unbiased)), rtol=1e-12)
    if not unbiased:
        k_mean, k_var = bnref.update_running(run_mean, run_var, mean, var, count, 1 - 0.99, unbiased=False)
        np.testing.assert_allclose(k_mean, keras_update(run_mean, mean, 0.99), rtol=1e-12)
        np.testing.assert_allclose(k_var, keras_update(run_var, var, 0.99), rtol=1e-12)
