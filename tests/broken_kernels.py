"""Deliberately broken batch norms with bnref's signatures: each one a real class of BN bug.

The meta-test (test_checks_check.py) feeds them through the same assertion helpers as the
real kernels and requires every one to be caught.
"""
import numpy as np

import bnref
from bnref.testing import per_channel, reduce_axes


def _axes(x, axis):
    return reduce_axes(x.ndim, axis)


def _bc(v, x, axis):
    return per_channel(v, x.ndim, axis)


class Correct:
    """Plain NumPy formulas (float64 inside) with hooks that the mutants override."""

    name = "correct"

    def stats(self, x, axis):
        x = x.astype(np.float64)
        axes = _axes(x, axis)
        mean = x.mean(axis=axes)
        return mean, ((x - _bc(mean, x, axis)) ** 2).mean(axis=axes)

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + eps)

    def forward_train(self, x, gamma, beta, eps, axis):
        mean, var = self.stats(x, axis)
        xhat = (x - _bc(mean, x, axis)) * _bc(self.invstd(var, eps), x, axis)
        return (_bc(gamma, x, axis) * xhat + _bc(beta, x, axis)).astype(x.dtype), mean, var

    def dx_terms(self, dy, xhat, m, axes):
        """The three terms of m*dy - sum(dy) - xhat*sum(dy*xhat)."""
        return m * dy, dy.sum(axis=axes, keepdims=True), xhat * (dy * xhat).sum(axis=axes, keepdims=True)

    def backward(self, dy, x, gamma, mean, var, eps, axis):
        axes, m = _axes(x, axis), x.size // x.shape[axis]
        dy = dy.astype(np.float64)
        invstd = _bc(self.invstd(var, eps), x, axis)
        xhat = (x - _bc(mean, x, axis)) * invstd
        t1, t2, t3 = self.dx_terms(dy, xhat, m, axes)
        dx = _bc(gamma, x, axis) * invstd / m * (t1 - t2 - t3)
        return dx.astype(x.dtype), self.dgamma(dy, x, xhat, axes).astype(x.dtype), dy.sum(axis=axes).astype(x.dtype)

    def dgamma(self, dy, x, xhat, axes):
        return (dy * xhat).sum(axis=axes)

    def double_backward(self, ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, axis):
        return bnref.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, axis)


class DroppedSumDy(Correct):
    """dx without the -sum(dy) term (a missing mean-gradient path)."""

    def dx_terms(self, dy, xhat, m, axes):
        t1, _, t3 = super().dx_terms(dy, xhat, m, axes)
        return t1, 0.0, t3


class DroppedXhatTerm(Correct):
    """dx without the -xhat*sum(dy*xhat) term (the variance path forgotten)."""

    def dx_terms(self, dy, xhat, m, axes):
        t1, t2, _ = super().dx_terms(dy, xhat, m, axes)
        return t1, t2, 0.0


class HalfXhatTerm(Correct):
    """The variance path with a factor 1/2 lost (d sqrt(v)/dv mis-derived)."""

    def dx_terms(self, dy, xhat, m, axes):
        t1, t2, t3 = super().dx_terms(dy, xhat, m, axes)
        return t1, t2, 0.5 * t3


class WrongAxes(Correct):
    """Statistics over the first axis only, per position (the seed post's 4D gamma/beta layout)."""

    def stats(self, x, axis):
        x = x.astype(np.float64)
        mean = x.mean(axis=0, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=0, keepdims=True)
        # collapse to per-channel vectors the way a buggy port would: take position 0
        take = tuple(0 if i != axis % x.ndim else slice(None) for i in range(x.ndim))
        return mean[take], var[take]


class UnbiasedNormalization(Correct):
    """Normalizing with the unbiased variance (m-1) instead of the biased one."""

    def stats(self, x, axis):
        mean, var = super().stats(x, axis)
        m = x.size // x.shape[axis]
        return mean, var * m / (m - 1)


class EpsOutsideSqrt(Correct):
    """1/(sqrt(var) + eps) instead of 1/sqrt(var + eps)."""

    def invstd(self, var, eps):
        return 1 / (np.sqrt(var) + eps)


class IgnoredEps(Correct):
    """eps dropped from the normalization (a fixed 1e-8 instead of the given eps)."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + 1e-8)


class NaiveVarianceFloat32(Correct):
    """E[x^2] - E[x]^2 accumulated in float32 (bugs #3-#6, #26)."""

    def stats(self, x, axis):
        x32 = x.astype(np.float32)
        axes = _axes(x, axis)
        mean = x32.mean(axis=axes, dtype=np.float32)
        var = np.maximum((x32 * x32).mean(axis=axes, dtype=np.float32) - mean * mean, 0)
        return mean.astype(np.float64), var.astype(np.float64)


class DgammaWithX(Correct):
    """dgamma = sum(dy * x) instead of sum(dy * xhat)."""

    def dgamma(self, dy, x, xhat, axes):
        return (dy * x).sum(axis=axes)


class DoubleBackwardDroppedTerm(Correct):
    """gx without its ddgamma * invstd * (dy - mean(dy) - ...) part (what bnref would lose by
    treating dgamma as a constant in x)."""

    def double_backward(self, ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, axis):
        gx, ggamma, gdy = bnref.double_backward(ddx, np.zeros_like(ddgamma), ddbeta, dy, x, gamma, mean, var,
                                                eps, axis)
        _, _, gdy_full = bnref.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, axis)
        return gx, ggamma, gdy_full


MUTANTS = [DroppedSumDy, DroppedXhatTerm, HalfXhatTerm, WrongAxes, UnbiasedNormalization, EpsOutsideSqrt,
           IgnoredEps, NaiveVarianceFloat32, DgammaWithX, DoubleBackwardDroppedTerm]
