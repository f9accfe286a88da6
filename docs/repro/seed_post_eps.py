"""The Theano batch-norm layer of the 2016 Qiita post bnref grew from: eps is fixed at 1e-5 whatever the
caller asks for, and test time normalizes with the test batch's own statistics.

Run: ``python docs/repro/seed_post_eps.py`` (NumPy only).

The layer's output, as the post writes it (for a fully connected input, statistics over axis 0)::

    mean = input.mean((0,), keepdims=True)
    var = input.var((0,), keepdims=True)
    self.output = gamma * (input - mean) / T.sqrt(var + 1e-5) + beta

eps is a literal: the layer has no way to take another one, so a model that needs eps = 1e-3 (Keras'
default) or any eps other than 1e-5 gets y normalized with the wrong denominator. The error is largest
where the batch variance is comparable to eps: for 64 values of variance about 1e-3, y at eps = 1e-3
is off by 0.47 of its size (sqrt(var + 1e-3) / sqrt(var + 1e-5), about sqrt(2)), and
BN(a x; eps a^2) = BN(x; eps) -- x rescaled, eps with it -- no longer holds. With eps = 1e-5 the
formula is the paper's, to rounding.

There are no running averages either: the layer computes ``mean`` and ``var`` of whatever batch it is
given, at test time too, so a test sample's output depends on the other samples of its batch, and a
batch of one sample gives y = beta for every input (x - mean = 0). The paper normalizes at inference
with population statistics instead.
"""
import numpy as np

POST_EPS = 1e-5


def post_layer(x, gamma, beta):
    """The post's ``BatchNormalizationLayer.output`` for a fully connected input x of shape (N, C)."""
    mean = x.mean(axis=0, keepdims=True)
    var = x.var(axis=0, keepdims=True)  # Theano's T.var: biased
    return gamma * (x - mean) / np.sqrt(var + 1e-5) + beta


def paper_batch_norm(x, gamma, beta, eps):
    """Ioffe & Szegedy's training transform with the eps asked for (biased batch variance)."""
    mean = x.mean(axis=0, keepdims=True)
    var = x.var(axis=0, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def batch(std, n=64, channels=3, seed=0):
    """(x, gamma, beta): float64 x of shape (n, channels), mean 1, the given std."""
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, std, (n, channels)), rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels)


def eps_errors(std=np.sqrt(1e-3), eps_values=(1e-5, 1e-4, 1e-3, 1e-2)):
    """eps -> max |post - paper| / max |paper - beta| for a batch of the given std."""
    x, gamma, beta = batch(std)
    out = {}
    for eps in eps_values:
        want = paper_batch_norm(x, gamma, beta, eps)
        out[eps] = float(np.max(np.abs(post_layer(x, gamma, beta) - want)) / np.max(np.abs(want - beta)))
    return out


def test_time_outputs(seed=1):
    """The post's y for one test sample: alone, in one batch of 8 and in another batch of 8."""
    x, gamma, beta = batch(1.0, n=15, seed=seed)
    sample = x[:1]
    return {"alone": post_layer(sample, gamma, beta)[0],
            "batch A": post_layer(np.concatenate([sample, x[1:8]]), gamma, beta)[0],
            "batch B": post_layer(np.concatenate([sample, x[8:15]]), gamma, beta)[0],
            "beta": beta}


def main():
    print("eps asked for -> relative error of the post's y against the paper's (channel variance 1e-3):")
    for eps, error in eps_errors().items():
        print(f"  eps = {eps:g}: {error:.3g}")
    print("\none test sample at test time (no running averages):")
    for name, y in test_time_outputs().items():
        print(f"  {name:8} y = {np.round(y, 4)}")


if __name__ == "__main__":
    main()
