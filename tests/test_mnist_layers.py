"""Hand-written backward of every MNIST layer, and of a whole network, against autograd."""
from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad

from bnref import reference
from bnref.mnist.layers import INITS, BatchNorm, Dropout, Linear, LogSoftmaxNLL, Network, Sigmoid, Tanh

RTOL = 1e-9  # float64 throughout: the hand-written and the autodiff gradients agree to rounding


def assert_grad(name, got, want, rtol=RTOL, scale=None):
    """Worst error relative to ``scale`` (default: the largest entry of ``want``)."""
    scale = np.max(np.abs(want)) if scale is None else scale
    err = np.max(np.abs(got - want)) / max(scale, 1e-300)
    assert err <= rtol, f"{name}: worst relative error {err:.2e} > {rtol:.0e}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def vjp_check(layer, fn, x, rng, training=True):
    """``layer.backward(dy)`` against the gradient of ``sum(dy * fn(x))`` by autograd."""
    y = layer.forward(x.copy(), training)
    np.testing.assert_allclose(y, fn(x), rtol=1e-12, atol=1e-15, err_msg=f"{type(layer).__name__} forward")
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)
    assert_grad(f"{type(layer).__name__} dx", dx, grad(lambda x_: anp.sum(dy * fn(x_)))(x))


def test_tanh(rng):
    vjp_check(Tanh(), anp.tanh, rng.normal(size=(6, 5)), rng)


def test_sigmoid(rng):
    x = rng.normal(scale=4, size=(6, 5))
    x[0, 0], x[0, 1] = 200.0, -200.0  # no overflow warnings: computed through tanh
    vjp_check(Sigmoid(), lambda v: 1 / (1 + anp.exp(-v)), x, rng)


def test_linear(rng):
    layer = Linear(5, 3, rng, dtype=np.float64)
    layer.bias[...] = rng.normal(size=3)
    x = rng.normal(size=(4, 5))
    vjp_check(layer, lambda v: anp.dot(v, layer.weight) + layer.bias, x, rng)
    dy = rng.normal(size=(4, 3))
    layer.forward(x, True)
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads[0], x.T @ dy, rtol=1e-12)
    np.testing.assert_allclose(layer.grads[1], dy.sum(axis=0), rtol=1e-12)
    assert layer.backward(dy, input_grad=False) is None


def test_linear_rejects_unknown_init(rng):
    with pytest.raises(ValueError, match="init must be one of"):
        Linear(3, 2, rng, init="xavier-magic")


@pytest.mark.parametrize("init", sorted(INITS))
def test_inits_have_the_documented_scale(init):
    w = INITS[init](np.random.default_rng(0), 400, 200)
    expected_std = {"glorot": np.sqrt(2 / 600), "glorot-normal": np.sqrt(2 / 600), "torch": np.sqrt(1 / 1200),
                    "he": np.sqrt(2 / 400), "normal": 1.0, "small": 0.01}[init]
    assert w.shape == (400, 200)
    assert abs(w.std() / expected_std - 1) < 0.02, (init, w.std(), expected_std)


def test_dropout_mask_and_gradient(rng):
    layer = Dropout(0.3, rng)
    x = rng.normal(size=(200, 50))
    y = layer.forward(x, True)
    mask = layer.mask
    assert set(np.unique(mask)) <= {0.0, 1 / 0.7}
    assert abs((mask == 0).mean() - 0.3) < 0.02  # 10 000 Bernoulli draws
    np.testing.assert_array_equal(y, x * mask)
    dy = rng.normal(size=y.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy * mask)
    assert layer.forward(x, False) is x  # identity in evaluation
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0, rng)


def test_log_softmax_nll(rng):
    loss_layer = LogSoftmaxNLL()
    z = rng.normal(scale=3, size=(7, 10))
    z[0, 0] = 1e4  # the shifted log-sum-exp must not overflow
    t = rng.integers(0, 10, 7)

    def nll(z_):
        shifted = z_ - anp.max(z_, axis=1, keepdims=True)
        logp = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
        return -anp.mean(logp[np.arange(7), t])

    assert loss_layer.forward(z, t) == pytest.approx(nll(z), rel=1e-12)
    assert_grad("dlogits", loss_layer.backward(), grad(nll)(z))


def bn_train(x, gamma, beta, eps=1e-5):
    mean = anp.mean(x, axis=0)
    var = anp.mean((x - mean) ** 2, axis=0)
    return gamma * (x - mean) / anp.sqrt(var + eps) + beta


def test_batchnorm_training_gradients_and_running_stats(rng):
    layer = BatchNorm(4, momentum=0.2, dtype=np.float64)
    layer.gamma[...] = rng.normal(size=4)
    layer.beta[...] = rng.normal(size=4)
    x = rng.normal(loc=3, scale=2, size=(8, 4))
    x_before = x.copy()
    vjp_check(layer, lambda v: bn_train(v, layer.gamma, layer.beta), x, rng)
    np.testing.assert_array_equal(x, x_before)  # the caller's array is not modified
    dy = rng.normal(size=x.shape)
    layer.forward(x, True)
    layer.backward(dy)
    assert_grad("dgamma", layer.grads[0], grad(lambda g: anp.sum(dy * bn_train(x, g, layer.beta)))(layer.gamma))
    assert_grad("dbeta", layer.grads[1], dy.sum(axis=0))
    # two training forwards so far, each: run <- 0.8 run + 0.2 batch (unbiased variance)
    mean, var = x.mean(axis=0), x.var(axis=0, ddof=1)
    np.testing.assert_allclose(layer.running_mean, 0.2 * mean + 0.8 * 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.64 + 0.2 * var + 0.8 * 0.2 * var, rtol=1e-12)


@pytest.mark.parametrize("eval_stats", ["running", "batch"])
def test_batchnorm_evaluation(rng, eval_stats):
    layer = BatchNorm(3, eval_stats=eval_stats, dtype=np.float64)
    layer.running_mean[...] = [1.0, -2.0, 0.5]
    layer.running_var[...] = [4.0, 0.25, 1.0]
    x = rng.normal(size=(5, 3))
    y = layer.forward(x, False)
    if eval_stats == "running":
        want = reference.forward_eval(x, layer.gamma, layer.beta, layer.running_mean, layer.running_var)
    else:
        want = bn_train(x, layer.gamma, layer.beta)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.running_mean, [1.0, -2.0, 0.5])  # evaluation leaves them alone
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(x))
    with pytest.raises(ValueError, match="eval_stats"):
        BatchNorm(3, eval_stats="population")


def test_whole_network_gradient_against_autograd(rng):
    """FC -> BN -> tanh -> dropout -> FC -> BN -> sigmoid -> dropout -> FC, with the masks fixed."""
    dt = np.float64
    net = Network([
        Linear(6, 5, rng, bias=False, dtype=dt), BatchNorm(5, dtype=dt), Tanh(), Dropout(0.25, rng),
        Linear(5, 4, rng, bias=True, dtype=dt), BatchNorm(4, dtype=dt), Sigmoid(), Dropout(0.5, rng),
        Linear(4, 3, rng, dtype=dt),
    ])
    for bn in net.batchnorms():
        bn.gamma[...] = rng.uniform(0.5, 1.5, size=bn.gamma.shape)
        bn.beta[...] = rng.normal(size=bn.beta.shape)
    x = rng.normal(size=(9, 6))
    t = rng.integers(0, 3, 9)
    loss = net.loss_and_grad(x, t)
    masks = [net.layers[3].mask.copy(), net.layers[7].mask.copy()]  # drawn in that forward, now fixed
    params = [p.copy() for layer in net.layers for p in layer.params]
    grads = [g.copy() for layer in net.layers for g in layer.grads]

    def reference_loss(ps):
        w1, g1, b1, w2, bias2, g2, b2, w3, bias3 = ps
        h = anp.tanh(bn_train(anp.dot(x, w1), g1, b1)) * masks[0]
        h = 1 / (1 + anp.exp(-bn_train(anp.dot(h, w2) + bias2, g2, b2))) * masks[1]
        z = anp.dot(h, w3) + bias3
        shifted = z - anp.max(z, axis=1, keepdims=True)
        logp = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
        return -anp.mean(logp[np.arange(len(t)), t])

    assert loss == pytest.approx(reference_loss(params), rel=1e-12)
    want = grad(reference_loss)(params)
    names = ["W1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2", "W3", "b3"]
    assert len(grads) == len(names)
    # b2 feeds a batch norm, which subtracts it again: its gradient is 0 up to rounding, so every
    # error is measured against the largest gradient entry of the network
    scale = max(np.max(np.abs(w)) for w in want)
    for name, got, w in zip(names, grads, want):
        assert_grad(name, got, w, rtol=1e-10, scale=scale)


def test_sgd_step(rng):
    layer = Linear(3, 2, rng, dtype=np.float64)
    net = Network([layer])
    w0 = layer.weight.copy()
    layer.grads[0][...] = 1.0
    net.sgd_step(0.5)
    np.testing.assert_allclose(layer.weight, w0 - 0.5)
