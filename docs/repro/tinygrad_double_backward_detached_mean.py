"""tinygrad: the double backward of ``nn.BatchNorm`` in training is wrong, because the batch
variance is computed around a detached mean.

Run: ``DEV=CPU python docs/repro/tinygrad_double_backward_detached_mean.py`` (NumPy and tinygrad
only; tinygrad's CPU device needs clang).

``nn.BatchNorm.calc_stats`` computes ``var = mean((x - mean.detach())**2)``, with the comment
"d(var)/d(mean) = 0". That holds for the first derivative (sum(x - mean) = 0), so ``dx``,
``dgamma`` and ``dbeta`` are right. It does not hold for the second: the Hessian of the batch
variance is (2/m)(I - 1/m), and with the mean detached tinygrad differentiates (2/m) I. A double
backward (the gradient of <dx, ddx> + <dgamma, ddgamma> with respect to x: gradient penalties,
Hessian-vector products) therefore misses, in every element of a channel, the term

    gx_missing = -(2 / m^2) * dL/dvar * sum(ddx),   dL/dvar = -1/2 (var + eps)^(-3/2) sum(dy * gamma * (x - mean))

The script computes gx in float64 three ways: tinygrad's ``nn.BatchNorm`` under
``Context(TRAINING=1)``; central finite differences of the closed-form NumPy backward; and the same
tinygrad ops without the ``detach`` (``Tensor.batchnorm`` with the batch statistics). It prints:

    gx by finite differences of the NumPy backward: max |gx| = 36.47
    nn.BatchNorm     max |gx - finite differences| = 2.44
    without detach   max |gx - finite differences| = 2.51e-08
    nn.BatchNorm's gx plus the term the detached mean drops: max |error| = 2.51e-08

(2.5e-8 is the finite differences' own error): ``nn.BatchNorm``'s gx is off by 7 % of its scale,
by exactly the missing term; the same ops without the detach are right.
"""
import os

os.environ.setdefault("DEV", "CPU")

import numpy as np  # noqa: E402
from tinygrad import Tensor, nn  # noqa: E402
from tinygrad.helpers import Context  # noqa: E402

EPS = 1e-5
SHAPE = (4, 2)  # (m, C): 4 values in each of 2 channels


def case(seed=0):
    """x, gamma, beta, dy, ddx, ddgamma as float64 arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 0.5, SHAPE)
    gamma, beta, ddgamma = (rng.uniform(0.5, 2.0, SHAPE[1]) for _ in range(3))
    dy, ddx = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    return x, gamma, beta, dy, ddx, ddgamma


def numpy_backward(x, gamma, dy):
    """(dx, dgamma) of y = gamma * (x - mean) / sqrt(var + eps) + beta, biased var, closed form."""
    mean, var = x.mean(axis=0), x.var(axis=0)
    invstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * invstd
    dx = gamma * invstd * (dy - dy.mean(axis=0) - xhat * (dy * xhat).mean(axis=0))
    return dx, (dy * xhat).sum(axis=0)


def finite_difference_gx(x, gamma, dy, ddx, ddgamma, h=1e-5):
    """gx = d/dx (<dx, ddx> + <dgamma, ddgamma>) by central differences of :func:`numpy_backward`."""
    def pairing(x_):
        dx, dgamma = numpy_backward(x_, gamma, dy)
        return (dx * ddx).sum() + (dgamma * ddgamma).sum()

    gx = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        gx[i] = (pairing(x + step) - pairing(x - step)) / (2 * h)
    return gx


def missing_term(x, gamma, dy, ddx):
    """The term the detached mean drops from gx, per channel, broadcast over the batch."""
    m = x.shape[0]
    mean, var = x.mean(axis=0), x.var(axis=0)
    dl_dvar = -0.5 * (var + EPS) ** -1.5 * (dy * gamma * (x - mean)).sum(axis=0)
    return np.broadcast_to(-(2.0 / m ** 2) * dl_dvar * ddx.sum(axis=0), x.shape)


def tinygrad_gx(x, gamma, beta, dy, ddx, ddgamma, module=True):
    """gx from tinygrad: ``nn.BatchNorm`` (``module=True``) or the same ops without the detach."""
    x_, dy_ = Tensor(x).realize(), Tensor(dy).realize()
    weight, bias = Tensor(gamma).realize(), Tensor(beta).realize()
    with Context(TRAINING=1):
        if module:
            bn = nn.BatchNorm(SHAPE[1], eps=EPS)
            bn.weight, bn.bias = weight, bias
            bn.running_mean, bn.running_var = Tensor.zeros(SHAPE[1], dtype=x_.dtype), Tensor.ones(SHAPE[1], dtype=x_.dtype)
            y = bn(x_)
        else:
            mean = x_.mean(axis=0)
            var = ((x_ - mean) ** 2).mean(axis=0)
            y = x_.batchnorm(weight, bias, mean, (var + EPS).rsqrt())
        dx, dgamma = y.gradient(x_, weight, gradient=dy_)
        pairing = (dx * Tensor(ddx)).sum() + (dgamma * Tensor(ddgamma)).sum()
        return pairing.gradient(x_)[0].numpy()


def results(seed=0):
    """{name: gx} for one case, plus the reference (finite differences) and the predicted missing term."""
    x, gamma, beta, dy, ddx, ddgamma = case(seed)
    return {"finite differences": finite_difference_gx(x, gamma, dy, ddx, ddgamma),
            "nn.BatchNorm": tinygrad_gx(x, gamma, beta, dy, ddx, ddgamma),
            "without detach": tinygrad_gx(x, gamma, beta, dy, ddx, ddgamma, module=False),
            "missing term": missing_term(x, gamma, dy, ddx)}


def main():
    from importlib.metadata import version

    gx = results()
    exact = gx["finite differences"]
    scale = float(np.max(np.abs(exact)))
    print(f"tinygrad {version('tinygrad')}, float64, x of shape {SHAPE}, eps = {EPS}")
    print(f"gx by finite differences of the NumPy backward: max |gx| = {scale:.4g}")
    for name in ("nn.BatchNorm", "without detach"):
        print(f"{name:16} max |gx - finite differences| = {np.max(np.abs(gx[name] - exact)):.3g}")
    explained = gx["nn.BatchNorm"] + gx["missing term"]
    print(f"nn.BatchNorm's gx plus the term the detached mean drops: max |error| = "
          f"{np.max(np.abs(explained - exact)):.3g}")


if __name__ == "__main__":
    main()
