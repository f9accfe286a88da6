"""Broken batch norms, one real class of bug each, every one a single hook of :class:`CorrectBN` changed.

``breaks`` names the oracle properties (bnref.oracle.properties.PROPERTIES) each one must fail;
``sync_breaks`` the quantities of bnref.sync.testing.compare_with_unsharded its sharded methods
must get wrong. The first line of a docstring names the bug class.
"""
from __future__ import annotations

import numpy as np

from bnref.conventions import Convention
from tests.mutants._base import CorrectBN

# ----------------------------------------------------------------------------- statistics


class NaiveVariance(CorrectBN):
    """One-pass variance E[x^2] - E[x]^2 computed in the input dtype.

    Cancels catastrophically when the mean is large against the spread: relative error
    u * kappa^2, negative variances, NaN from rsqrt. Flax's fast variance and tf.nn.moments
    compute it this way (https://github.com/google/flax/issues/1491,
    https://github.com/tensorflow/tensorflow/issues/3290). In float32 a shift of the data by
    a few hundred already changes y, which is what shift_invariance sees.
    """

    name = "naive-variance"
    breaks = ("forward", "shift_invariance")

    def stats(self, x):
        mean = x.mean(axis=self.axes(x), keepdims=True)
        var = (x * x).mean(axis=self.axes(x), keepdims=True) - mean * mean
        return mean.astype(np.float64), var.astype(np.float64)


class NormalizeUnbiased(CorrectBN):
    """Normalizes with the unbiased variance (divided by m - 1) instead of the biased one.

    The running variance's m/(m-1) leaking into the training forward, or a framework port that
    flips which of the two variances normalizes.
    """

    name = "normalize-unbiased"
    breaks = ("forward",)

    def stats(self, x):
        mean, var = super().stats(x)
        m = self.count(x)
        return mean, var * m / (m - 1)


class StatsOverWrongAxes(CorrectBN):
    """Statistics over the batch axis only, one per position: per-activation where spatial was meant.

    cuDNN's PER_ACTIVATION mode against SPATIAL, or a wrong ``axes`` argument: correct for
    (N, C) input, wrong as soon as there is a spatial axis.
    """

    name = "stats-over-wrong-axes"
    breaks = ("forward",)

    def stats(self, x):
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0, keepdims=True)
        return mean, ((x - mean) ** 2).mean(axis=0, keepdims=True)


class ChannelsLastStats(CorrectBN):
    """Channels-first input reduced as if the channels were last: a layout port between frameworks.

    PyTorch holds channels on axis 1, Flax and Keras on the last axis; the reduction axes of one
    applied to the other's layout.
    """

    name = "channels-last-stats"
    breaks = ("forward",)

    def axes(self, x):
        return tuple(range(x.ndim - 1))


class GhostBatchStats(CorrectBN):
    """Ghost (virtual-batch) batch norm that applies the first virtual batch's statistics to the whole batch.

    The statistics come from the first half of the samples only, so the output depends on the
    order of the samples in the batch.
    """

    name = "ghost-batch-stats"
    breaks = ("forward", "batch_permutation")

    def stats(self, x):
        return super().stats(x[: max(1, len(x) // 2)])


# ----------------------------------------------------------------------------- eps


class EpsOutsideSqrt(CorrectBN):
    """eps added to the standard deviation, (x - mean) / (sqrt(var) + eps), not to the variance.

    A textbook slip: every framework adds eps inside the square root.
    """

    name = "eps-outside-sqrt"
    breaks = ("forward", "eps_honoured")

    def invstd(self, var, eps):
        return 1.0 / (np.sqrt(var) + eps)


class HardcodedEps(CorrectBN):
    """A hard-coded eps = 1e-5 whatever eps the caller passes.

    Invisible at the default eps; wrong for any other, and scaling x by a while eps scales by
    a^2 no longer leaves y unchanged.
    """

    name = "hardcoded-eps"
    breaks = ("eps_honoured", "scale_invariance")

    def invstd(self, var, eps):
        return super().invstd(var, 1e-5)


class NanOnConstantChannel(CorrectBN):
    """Division by a zero variance: xhat = (x - mean) / sqrt(var) * sqrt(var / (var + eps)).

    Algebraically right, 0/0 = NaN on a constant channel.
    """

    name = "nan-on-constant-channel"
    breaks = ("constant_channel",)

    def xhat(self, x, mean, var, eps):
        with np.errstate(all="ignore"):
            return (np.asarray(x, dtype=np.float64) - mean) / np.sqrt(var) * np.sqrt(var / (var + eps))


# ----------------------------------------------------------------------------- gradients


class DxMissingMeanTerm(CorrectBN):
    """dx without the -sum(dy) term: the gradient through the batch mean is dropped.

    dx then has a component along a shift of x, which y ignores: sum(dx) != 0.
    """

    name = "dx-missing-mean-term"
    breaks = ("backward", "sum_dx_zero")

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        return m * dy - xhat * sum_dy_xhat


class DxMissingVarianceTerm(CorrectBN):
    """dx without the -xhat * sum(dy xhat) term: the batch variance treated as a constant."""

    name = "dx-missing-variance-term"
    breaks = ("backward",)

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        return m * dy - sum_dy


class HalfVarianceTerm(CorrectBN):
    """dx with the variance path at half its size: d sqrt(v)/dv = 1/(2 sqrt(v)) mis-derived."""

    name = "half-variance-term"
    breaks = ("backward",)

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        return m * dy - sum_dy - 0.5 * xhat * sum_dy_xhat


class DgammaWithX(CorrectBN):
    """dgamma = sum(dy * x) instead of sum(dy * xhat): the raw input where the normalized one belongs."""

    name = "dgamma-with-x"
    breaks = ("backward",)

    def dgamma(self, x, dy, xhat):
        return (dy * np.asarray(x, dtype=np.float64)).sum(axis=self.axes(x))


class DbetaMean(CorrectBN):
    """dbeta = mean(dy) instead of sum(dy): a reduction that averages where it should sum."""

    name = "dbeta-mean"
    breaks = ("backward",)

    def dbeta(self, dy, x):
        return dy.mean(axis=self.axes(x))


class DoubleBackwardMissingTerm(CorrectBN):
    """An incomplete hand-written double backward: gx ignores ddgamma.

    The path through dgamma = sum(dy xhat), which depends on x, is left out.
    """

    name = "double-backward-missing-term"
    breaks = ("double_backward",)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        _, ggamma, gdy = super().double_backward(x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta)
        gx, _, _ = super().double_backward(x, gamma, beta, eps, dy, ddx, np.zeros_like(ddgamma), ddbeta)
        return gx, ggamma, gdy


# ----------------------------------------------------------------------------- eval mode and running statistics


class EvalUsesBatchStats(CorrectBN):
    """Eval mode normalizes with the batch's own statistics and ignores the running ones."""

    name = "eval-uses-batch-stats"
    breaks = ("forward_eval",)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self.forward_train(x, gamma, beta, eps)


class EvalMissingEps(CorrectBN):
    """Eval divides by sqrt(running_var) without eps.

    Chainer's fixed_batch_normalization did until https://github.com/chainer/chainer/pull/2214.
    """

    name = "eval-missing-eps"
    breaks = ("forward_eval",)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return super().forward_eval(x, gamma, beta, running_mean, running_var, 0.0)


class InconsistentMomentum(CorrectBN):
    """Running mean new-weighted, running variance old-weighted: half a port between momentum conventions.

    PyTorch's momentum weighs the batch statistic, Keras' and Flax's the running value.
    """

    name = "inconsistent-momentum"
    breaks = ("running_stats",)

    def update_running(self, x, running_mean, running_var, momentum):
        new_mean, _ = super().update_running(x, running_mean, running_var, momentum)
        _, new_var = super().update_running(x, running_mean, running_var, 1 - momentum)
        return new_mean, new_var


class MomentumDropped(CorrectBN):
    """The running statistics never move: the momentum is replaced by 0 on one code path."""

    name = "momentum-dropped"
    breaks = ("running_stats",)

    def update_running(self, x, running_mean, running_var, momentum):
        return super().update_running(x, running_mean, running_var, 0.0)


#: a moving average of the batch's 1/sqrt(var + eps), stored as it comes
_RUNNING_INVSTD = Convention("running-invstd", running_var="biased")


class RunningVarStoresInvstd(CorrectBN):
    """The running-variance buffer holds a moving average of 1/sqrt(var + eps), read back as a variance.

    Torch7's nn once kept a running inverse standard deviation
    (https://github.com/torch/nn/pull/700); a port that keeps it in the variance's buffer.
    """

    name = "running-var-stores-invstd"
    breaks = ("running_stats",)

    def update_running(self, x, running_mean, running_var, momentum):
        mean, var = (s.reshape(-1) for s in self.stats(x))
        new = _RUNNING_INVSTD.update_running(running_mean, running_var, mean, self.invstd(var, 1e-5),
                                             self.count(x), momentum)
        return tuple(s.astype(x.dtype) for s in new)


# ----------------------------------------------------------------------------- memory


class MutatesInput(CorrectBN):
    """Centers x in place (x -= mean) to save memory, corrupting the caller's array."""

    name = "mutates-input"
    breaks = ("inputs_unchanged",)

    def forward_train(self, x, gamma, beta, eps):
        mean, var = self.stats(x)
        x -= mean.astype(x.dtype)
        return self.normalize(x, gamma, beta, eps, np.zeros_like(mean), var)


class IgnoresStrides(CorrectBN):
    """Reads x's memory as if it were C-contiguous, so strided or permuted input is scrambled.

    PyTorch's BatchNorm2d permuted the output of a non-contiguous input
    (https://github.com/pytorch/pytorch/issues/63224).
    """

    name = "ignores-strides"
    breaks = ("strides",)

    def _memory(self, a):
        return np.asarray(a).ravel(order="K").reshape(np.shape(a))

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(self._memory(x), gamma, beta, eps)

    def backward(self, x, gamma, beta, eps, dy):
        return super().backward(self._memory(x), gamma, beta, eps, self._memory(dy))


# ----------------------------------------------------------------------------- sharded (synchronized) batch norm


class AverageOfShardStatistics(CorrectBN):
    """Shard statistics merged by an unweighted average of the shards' means and variances.

    Right only for equal shards: unequal ones are weighted wrongly, the spread between the
    shards' means is lost, and an empty shard's 0/0 mean makes everything NaN. Paddle's
    SyncBatchNorm averaged per-device statistics this way
    (https://github.com/PaddlePaddle/Paddle/issues/32464).
    """

    name = "average-of-shard-statistics"
    breaks = ("sharded_uneven", "sharded_degenerate")
    sync_breaks = ("mean", "var")

    def sharded_stats(self, xs):
        means, variances = zip(*(self.stats(x) for x in xs))
        return np.mean(means, axis=0), np.mean(variances, axis=0)


class ShardUnbiasedVariance(CorrectBN):
    """Each shard's variance unbiased by its own count, M2_k / (m_k - 1), before the exact merge.

    A shard holding one value per channel divides 0 by 0 and the merged variance is NaN; with
    more values per channel the merge undoes the factor, so only such a shard exposes it.
    """

    name = "shard-unbiased-variance"
    breaks = ("sharded_degenerate",)

    def sharded_stats(self, xs):
        held = [x for x in xs if x.size]  # a shard without values sends nothing
        counts = [self.count(x) for x in held]
        moments = [self.stats(x) for x in held]
        m = sum(counts)
        mean = sum(k * mu for k, (mu, _) in zip(counts, moments)) / m
        with np.errstate(invalid="ignore", divide="ignore"):
            unbiased = [var * k / (k - 1) for k, (_, var) in zip(counts, moments)]
        m2 = sum((k - 1) * u + k * (mu - mean) ** 2 for k, u, (mu, _) in zip(counts, unbiased, moments))
        return mean, m2 / m


class LocalCountRunning(CorrectBN):
    """The running variance unbiased with one shard's local count instead of the whole batch's.

    The batch statistics are right; m/(m-1) uses the first shard's m
    (https://github.com/pytorch/pytorch/issues/22192). The oracle's sharded properties do not
    check running statistics, so only the comparison of bnref.sync.testing catches it.
    """

    name = "local-count-running"
    sync_breaks = ("running_var",)

    def running_count(self, xs):
        return self.count(xs[0])


MUTANTS = (NaiveVariance, NormalizeUnbiased, StatsOverWrongAxes, ChannelsLastStats, GhostBatchStats,
           EpsOutsideSqrt, HardcodedEps, NanOnConstantChannel, DxMissingMeanTerm, DxMissingVarianceTerm,
           HalfVarianceTerm, DgammaWithX, DbetaMean, DoubleBackwardMissingTerm, EvalUsesBatchStats,
           EvalMissingEps, InconsistentMomentum, MomentumDropped, RunningVarStoresInvstd, MutatesInput,
           IgnoresStrides, AverageOfShardStatistics, ShardUnbiasedVariance, LocalCountRunning)
