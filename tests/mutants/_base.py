"""A plain, correct NumPy batch norm that the mutants break one piece at a time.

Each hook is one step of the computation (statistics, normalization, the three
gradient terms, running statistics) so that a mutant overrides exactly the step
its bug lives in. Everything runs in float64 and is cast to x's dtype at the end.
"""
from __future__ import annotations

import numpy as np

from bnref import reference
from bnref.testing import per_channel, reduce_axes


class CorrectBN:
    """PyTorch-convention batch norm in NumPy: passes every property of the oracle."""

    name = "numpy-bn"
    dtypes = ("float32", "float64")
    channel_axis = 1
    version = "tests.mutants"
    #: the oracle property this implementation's bug breaks (None: no bug)
    breaks: str | None = None

    # ----------------------------------------------------------------- layout helpers
    def axes(self, x):
        return reduce_axes(x.ndim, self.channel_axis)

    def per_channel(self, v, x):
        return per_channel(v, x.ndim, self.channel_axis)

    def f64(self, x):
        return np.asarray(x, dtype=np.float64)

    # ----------------------------------------------------------------- hooks
    def stats(self, x):
        """Per-channel mean and biased variance, two-pass in float64, keepdims."""
        x = self.f64(x)
        mean = x.mean(axis=self.axes(x), keepdims=True)
        return mean, ((x - mean) ** 2).mean(axis=self.axes(x), keepdims=True)

    def invstd(self, var, eps):
        return 1.0 / np.sqrt(var + eps)

    def xhat(self, x, mean, var, eps):
        return (self.f64(x) - mean) * self.invstd(var, eps)

    def count(self, x):
        return x.size // x.shape[self.channel_axis]

    # ----------------------------------------------------------------- the protocol
    def forward_train(self, x, gamma, beta, eps):
        mean, var = self.stats(x)
        y = self.per_channel(gamma, x) * self.xhat(x, mean, var, eps) + self.per_channel(beta, x)
        return y.astype(x.dtype)

    def backward(self, x, gamma, beta, eps, dy):
        mean, var = self.stats(x)
        xhat, dy64, m = self.xhat(x, mean, var, eps), self.f64(dy), self.count(x)
        sum_dy = dy64.sum(axis=self.axes(x), keepdims=True)
        sum_dy_xhat = (dy64 * xhat).sum(axis=self.axes(x), keepdims=True)
        k = self.per_channel(gamma, x) * self.invstd(var, eps) / m
        dx = k * self.dx_terms(m, dy64, sum_dy, xhat, sum_dy_xhat)
        return dx.astype(x.dtype), self.dgamma(x, dy64, xhat).astype(x.dtype), \
            self.dbeta(dy64, x).astype(x.dtype)

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        """m dy - sum(dy) - xhat sum(dy xhat) (times gamma invstd / m)."""
        return m * dy - sum_dy - xhat * sum_dy_xhat

    def dgamma(self, x, dy, xhat):
        return (dy * xhat).sum(axis=self.axes(x))

    def dbeta(self, dy, x):
        return dy.sum(axis=self.axes(x))

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        invstd = self.per_channel(self.invstd(self.f64(running_var), eps), x)
        xhat = (self.f64(x) - self.per_channel(self.f64(running_mean), x)) * invstd
        return (self.per_channel(gamma, x) * xhat + self.per_channel(beta, x)).astype(x.dtype)

    def update_running(self, x, running_mean, running_var, momentum):
        mean, var = (s.reshape(-1) for s in self.stats(x))
        m = self.count(x)
        new_mean = (1 - momentum) * self.f64(running_mean) + momentum * mean
        new_var = (1 - momentum) * self.f64(running_var) + momentum * var * m / (m - 1)
        return new_mean.astype(x.dtype), new_var.astype(x.dtype)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        # autograd of autograd: the base needs a correct double backward, not a second derivation
        grads = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, eps, self.channel_axis)
        return tuple(np.asarray(g).astype(x.dtype) for g in grads)
