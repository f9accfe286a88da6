"""Broken batch norms, one real class of bug each (rows refer to the bug table, section 4 of
``shared/research/bn-conventions-and-bugs.md``). ``breaks`` names the oracle property that must fail.
"""
from __future__ import annotations

import numpy as np

from tests.mutants._base import CorrectBN


class NaiveVariance(CorrectBN):
    """var = E[x^2] - E[x]^2 in the input dtype (rows 3, 4, 5, 6, 26: Flax fast variance, tf.nn.moments,
    XLA, Keras' torch backend, TT-Metal). Cancels catastrophically on offset data: relative error
    u * kappa^2, negative variances, NaN from rsqrt."""

    name = "naive-variance"
    breaks = "forward"

    def stats(self, x):
        mean = x.mean(axis=self.axes(x), keepdims=True)
        var = (x * x).mean(axis=self.axes(x), keepdims=True) - mean * mean
        return self.f64(mean), self.f64(var)


class EpsOutsideSqrt(CorrectBN):
    """(x - mean) / (sqrt(var) + eps): eps added to the standard deviation, not the variance (a textbook
    slip named in issue 3; section 1: every framework adds eps inside the square root)."""

    name = "eps-outside-sqrt"
    breaks = "forward"

    def invstd(self, var, eps):
        return 1.0 / (np.sqrt(var) + eps)


class DxMissingMeanTerm(CorrectBN):
    """dx without the -sum(dy) term: the gradient through the batch mean is dropped (row 14: wrong dx)."""

    name = "dx-missing-mean-term"
    breaks = "backward"

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        return m * dy - xhat * sum_dy_xhat


class DxMissingVarianceTerm(CorrectBN):
    """dx without the -xhat * sum(dy xhat) term: the gradient through the batch variance is dropped
    (row 14: wrong dx; the 'treat the statistics as constants' mistake of row 16)."""

    name = "dx-missing-variance-term"
    breaks = "backward"

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        return m * dy - sum_dy


class StatsOverWrongAxes(CorrectBN):
    """Statistics over the batch axis only, one per position ('per-activation' where 'spatial' was
    meant: cuDNN PER_ACTIVATION vs SPATIAL, Theano's axes argument; rows 17-19 class: wrong reduction)."""

    name = "stats-over-wrong-axes"
    breaks = "forward"

    def stats(self, x):
        x = self.f64(x)
        mean = x.mean(axis=0, keepdims=True)
        return mean, ((x - mean) ** 2).mean(axis=0, keepdims=True)


class HardcodedEps(CorrectBN):
    """Uses eps = 1e-5 whatever eps it is given (section 2: Theano's tests pick eps = 5e-3 'to test if
    it's used'; row 24's missing eps; the seed post hard-codes 1e-5)."""

    name = "hardcoded-eps"
    breaks = "eps_honoured"

    def invstd(self, var, eps):
        return 1.0 / np.sqrt(var + 1e-5)


class MutatesInput(CorrectBN):
    """Centers x in place (x -= mean) to save memory, corrupting the caller's array (in-place mutation of
    x, named in issue 3; the oracle's protocol forbids writing into inputs)."""

    name = "mutates-input"
    breaks = "inputs_unchanged"

    def forward_train(self, x, gamma, beta, eps):
        mean, var = self.stats(x)
        x -= mean.astype(x.dtype)
        y = self.per_channel(gamma, x) * self.f64(x) * self.invstd(var, eps) + self.per_channel(beta, x)
        return y.astype(x.dtype)


class WrongDgamma(CorrectBN):
    """dgamma = sum(dy * x) instead of sum(dy * xhat) (row 14: wrong dgamma)."""

    name = "wrong-dgamma"
    breaks = "backward"

    def dgamma(self, x, dy, xhat):
        return (dy * self.f64(x)).sum(axis=self.axes(x))


class DbetaMean(CorrectBN):
    """dbeta = mean(dy) instead of sum(dy): a reduction that averages where it should sum (row 14)."""

    name = "dbeta-mean"
    breaks = "backward"

    def dbeta(self, dy, x):
        return dy.mean(axis=self.axes(x))


class EvalUsesBatchStats(CorrectBN):
    """Eval mode normalizes with the batch's own statistics and ignores the running ones (row 16:
    training-mode behaviour in eval; the seed post has no running averages at all)."""

    name = "eval-uses-batch-stats"
    breaks = "forward_eval"

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self.forward_train(x, gamma, beta, eps)


class EvalMissingEps(CorrectBN):
    """Eval divides by sqrt(running_var) without eps (row 24: Chainer's fixed_batch_normalization
    without eps; Equinox's zero-initialized running variance)."""

    name = "eval-missing-eps"
    breaks = "forward_eval"

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return super().forward_eval(x, gamma, beta, running_mean, running_var, 0.0)


class InconsistentMomentum(CorrectBN):
    """The mean is new-weighted, the variance old-weighted: half a port between PyTorch's and Keras'
    conventions (rows 21, 23: d2l's textbook code, OneFlow passing 1 - momentum)."""

    name = "inconsistent-momentum"
    breaks = "running_stats"

    def update_running(self, x, running_mean, running_var, momentum):
        new_mean, _ = super().update_running(x, running_mean, running_var, momentum)
        _, new_var = super().update_running(x, running_mean, running_var, 1 - momentum)
        return new_mean, new_var


class MomentumDropped(CorrectBN):
    """The running statistics never move: the momentum factor is initialised to 0 on one code path
    (row 22: pytorch#18525, exponential_average_factor = 0.0 in the export path)."""

    name = "momentum-dropped"
    breaks = "running_stats"

    def update_running(self, x, running_mean, running_var, momentum):
        return super().update_running(x, running_mean, running_var, 0.0)


class RunningVarStoresInvstd(CorrectBN):
    """The 'running variance' buffer holds a moving average of 1/sqrt(var + eps), as the cuDNN v4
    header did (section 1, cuDNN row: a v4 bug class), read back as a variance by the framework."""

    name = "running-var-stores-invstd"
    breaks = "running_stats"

    def update_running(self, x, running_mean, running_var, momentum):
        mean, var = (s.reshape(-1) for s in self.stats(x))
        new_mean = (1 - momentum) * self.f64(running_mean) + momentum * mean
        new_var = (1 - momentum) * self.f64(running_var) + momentum / np.sqrt(var + 1e-5)
        return new_mean.astype(x.dtype), new_var.astype(x.dtype)


class NanOnConstantChannel(CorrectBN):
    """xhat = (x - mean) / sqrt(var) * sqrt(var / (var + eps)): algebraically right, 0/0 = NaN on a
    constant channel (rows 1, 2, 24: constant channels, division by a zero variance)."""

    name = "nan-on-constant-channel"
    breaks = "constant_channel"

    def xhat(self, x, mean, var, eps):
        with np.errstate(all="ignore"):
            return (self.f64(x) - mean) / np.sqrt(var) * np.sqrt(var / (var + eps))


class NormalizeUnbiased(CorrectBN):
    """Normalizes with the unbiased m/(m-1) variance (row 21: Keras 2 flipping biased/unbiased; row 20's
    N-1 leaking from the running variance into the forward)."""

    name = "normalize-unbiased"
    breaks = "forward"

    def stats(self, x):
        mean, var = super().stats(x)
        m = self.count(x)
        return mean, var * m / (m - 1)


class DoubleBackwardMissingTerm(CorrectBN):
    """gx ignores ddgamma (the path through dgamma = sum(dy xhat)): an incomplete hand-written double
    backward (row 15: double backward through cuDNN BN; row 16: nested AD giving ~0)."""

    name = "double-backward-missing-term"
    breaks = "double_backward"

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        _, ggamma, gdy = super().double_backward(x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta)
        gx, _, _ = super().double_backward(x, gamma, beta, eps, dy, ddx, np.zeros_like(ddgamma), ddbeta)
        return gx, ggamma, gdy


class IgnoresStrides(CorrectBN):
    """Reads x's memory as if it were C-contiguous (row 11: pytorch#63224, permuted non-contiguous
    input gave permuted output; row 10: channels_last vs contiguous)."""

    name = "ignores-strides"
    breaks = "strides"

    def _memory(self, a):
        return np.asarray(a).ravel(order="K").reshape(np.shape(a))

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(self._memory(x), gamma, beta, eps)

    def backward(self, x, gamma, beta, eps, dy):
        return super().backward(self._memory(x), gamma, beta, eps, self._memory(dy))


class ChannelsLastStats(CorrectBN):
    """Takes channels-first input but reduces as if the channels were last (a layout port between
    PyTorch and Flax/Keras; rows 10, 19: layout-dependent wrong statistics)."""

    name = "channels-last-stats"
    breaks = "forward"

    def axes(self, x):
        return tuple(range(x.ndim - 1))


MUTANTS = (NaiveVariance, EpsOutsideSqrt, DxMissingMeanTerm, DxMissingVarianceTerm, StatsOverWrongAxes,
           HardcodedEps, MutatesInput, WrongDgamma, DbetaMean, EvalUsesBatchStats, EvalMissingEps,
           InconsistentMomentum, MomentumDropped, RunningVarStoresInvstd, NanOnConstantChannel,
           NormalizeUnbiased, DoubleBackwardMissingTerm, IgnoresStrides, ChannelsLastStats)
