"""Broken batch norms, one real class of bug each, every one a single hook of :class:`CorrectBN` changed.

``breaks`` names the oracle properties (bnref.oracle.properties.PROPERTIES) each one must fail;
``sync_breaks`` the quantities of bnref.sync.testing.compare_with_unsharded its sharded methods
must get wrong. The first line of a docstring names the bug class. The half-precision mutants
declare the half dtypes they take (``dtypes``), and fail in each of them; the others are
checked in float32 and float64.
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
    # batch_permutation compares the candidate with itself only where y(x) is right: forward sees it first
    breaks = ("forward",)

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


class StepsDiscardUpdates(CorrectBN):
    """Each step updates a copy of the running buffers that is never written back: after several
    steps the statistics are those of one step from the initial state with the last batch."""

    name = "steps-discard-updates"
    breaks = ("running_stats_steps",)

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        return self.update_running(xs[-1], running_mean, running_var, momentum)


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


class OrderBlindCache(CorrectBN):
    """Results cached under a key blind to the order of the batch (shape and sum of x), so a permuted
    batch gets the cached output of the unpermuted one, rows in the old order.
    """

    name = "order-blind-cache"
    breaks = ("batch_permutation",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache = {}

    def _cached(self, method, compute, x, *args):
        order_blind = lambda a: (a.shape, a.dtype.str, float(np.sum(np.asarray(a, np.float64))))  # noqa: E731
        key = (method, order_blind(x), *(order_blind(a) if np.ndim(a) == np.ndim(x) else
                                         (np.asarray(a).tobytes() if np.ndim(a) else a) for a in args))
        if key not in self._cache:
            self._cache[key] = compute(x, *args)
        return self._cache[key]

    def forward_train(self, x, gamma, beta, eps):
        return self._cached("forward", super().forward_train, x, gamma, beta, eps)

    def backward(self, x, gamma, beta, eps, dy):
        return self._cached("backward", super().backward, x, gamma, beta, eps, dy)


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


# ----------------------------------------------------------------------------- half precision

HALF = ("float16", "bfloat16")


def _running_sum(values, axes, dtype) -> np.ndarray:
    """The sum over ``axes`` accumulated one value at a time in ``dtype``, rounded at every step (keepdims)."""
    moved = np.moveaxis(np.asarray(values).astype(dtype), axes, tuple(range(len(axes))))
    flat = moved.reshape((-1,) + moved.shape[len(axes):])
    total = np.add.accumulate(flat, axis=0, dtype=dtype)[-1] if len(flat) else np.zeros(flat.shape[1:], dtype)
    return np.expand_dims(total.astype(np.float64), axes)


class HalfAccumulation(CorrectBN):
    """Statistics accumulated in the half type: a float16/bfloat16 running sum stalls once its ulp outgrows the values.

    TensorFlow's moments computes them in float32 for this reason ("the dynamic range of fp16 is
    too limited", https://github.com/tensorflow/tensorflow/issues/8535); a kernel that sums in
    its storage type loses u_half * m of the mean.
    """

    name = "half-accumulation"
    dtypes = HALF
    breaks = ("forward",)

    def stats(self, x):
        axes, m = self.axes(x), self.count(x)
        mean = (_running_sum(x, axes, x.dtype) / m).astype(x.dtype).astype(np.float64)
        return mean, _running_sum((np.asarray(x, np.float64) - mean) ** 2, axes, x.dtype) / m


class HalfNaiveVariance(CorrectBN):
    """One-pass variance E[x^2] - E[x]^2 with both moments rounded to the half type before the subtraction.

    The sums are float32, but E[x^2] in float16 overflows above 65504 (|x| > 256) and cancels
    to u_half * kappa^2 of the variance below it: wrong, negative or infinite variances on
    offset data.
    """

    name = "half-naive-variance"
    dtypes = HALF
    breaks = ("forward", "shift_invariance")

    def stats(self, x):
        x32, axes = np.asarray(x, np.float32), self.axes(x)
        mean = x32.mean(axis=axes, keepdims=True).astype(x.dtype)
        square = (x32 * x32).mean(axis=axes, keepdims=True).astype(x.dtype)
        with np.errstate(all="ignore"):
            var = (square - mean * mean).astype(x.dtype)
        return mean.astype(np.float64), np.maximum(var.astype(np.float64), 0.0)


class ParamsDowncastToHalf(CorrectBN):
    """float32 parameters and running statistics cast down to float16: a running variance above 65504 becomes inf.

    The output of eval is then beta whatever x is, and gamma, beta lose their low bits
    (https://github.com/apple/coreai-torch/pull/54).
    """

    name = "params-downcast-to-half"
    dtypes = ("float16",)
    param_dtype = "float32"
    breaks = ("forward_eval_large_var",)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        with np.errstate(over="ignore"):
            down = [np.asarray(p).astype(x.dtype) for p in (gamma, beta, running_mean, running_var)]
        return super().forward_eval(x, down[0], down[1], down[2], down[3], eps)


class RunningStatsInBfloat16(CorrectBN):
    """Running statistics kept in bfloat16 although they are float32 buffers: small updates never move them.

    new = old + momentum (batch - old) rounded to bfloat16's 8 bits: an update below half an ulp
    of the running value (2^-9 of it) is lost, so a running variance near its limit stops
    converging.
    """

    name = "running-stats-in-bfloat16"
    dtypes = HALF
    param_dtype = "float32"
    breaks = ("running_stats",)

    def update_running(self, x, running_mean, running_var, momentum):
        import ml_dtypes

        kept = [np.asarray(r).astype(ml_dtypes.bfloat16) for r in (running_mean, running_var)]
        new = super().update_running(x, kept[0].astype(np.float64), kept[1].astype(np.float64), momentum)
        return tuple(n.astype(ml_dtypes.bfloat16).astype(np.asarray(r).dtype)
                     for n, r in zip(new, (running_mean, running_var)))


class HalfBackward(CorrectBN):
    """dx, dgamma and dbeta computed entirely in the half type from statistics stored in it.

    The forward is right; the backward kernel reads the saved mean and 1/std in float16/bfloat16
    and forms xhat, the products and both sums in it (no float32 opmath): x - mean loses
    u_half * kappa, which dgamma = sum(dy xhat) and dx carry. (In bfloat16 a spread above one ulp
    keeps kappa small enough that the drawn cases stay within bfloat16's own rounding.)
    """

    name = "half-backward"
    dtypes = ("float16",)
    breaks = ("backward",)

    def gradients(self, x, dy, gamma, eps, mean, var):
        h = x.dtype
        mean_h, invstd_h = np.asarray(mean).astype(h), np.asarray(self.invstd(var, eps)).astype(h)
        xhat = (np.asarray(x) - mean_h) * invstd_h
        dy_h, axes, m = np.asarray(dy).astype(h), self.axes(x), self.count(x)
        sum_dy = _running_sum(dy_h, axes, h).astype(h)
        sum_dy_xhat = _running_sum(dy_h * xhat, axes, h).astype(h)
        k = (self.per_channel(np.asarray(gamma).astype(h), x) * invstd_h / h.type(m)).astype(h)
        dx = k * (h.type(m) * dy_h - sum_dy - xhat * sum_dy_xhat)
        return (dx.astype(h), sum_dy_xhat.reshape(-1).astype(gamma.dtype), sum_dy.reshape(-1).astype(gamma.dtype))


class EpsFlushedInHalf(CorrectBN):
    """eps held in float16, where 1e-5 is subnormal, and flushed to zero as hardware without subnormals does.

    Every eps below float16's smallest normal value (6.1e-5) -- PyTorch's and Flax's default 1e-5
    among them -- becomes 0: a constant channel divides 0 by 0 (NaN), and a variance near eps is
    normalized as if there were no eps.
    """

    name = "eps-flushed-in-half"
    dtypes = ("float16",)
    breaks = ("forward", "constant_channel")

    def invstd(self, var, eps):
        half = np.float16(eps)
        flushed = 0.0 if abs(half) < np.finfo(np.float16).smallest_normal else float(half)
        with np.errstate(divide="ignore"):
            return super().invstd(var, flushed)


MUTANTS = (NaiveVariance, NormalizeUnbiased, StatsOverWrongAxes, ChannelsLastStats, GhostBatchStats,
           EpsOutsideSqrt, HardcodedEps, NanOnConstantChannel, DxMissingMeanTerm, DxMissingVarianceTerm,
           HalfVarianceTerm, DgammaWithX, DbetaMean, DoubleBackwardMissingTerm, EvalUsesBatchStats,
           EvalMissingEps, InconsistentMomentum, MomentumDropped, StepsDiscardUpdates, RunningVarStoresInvstd,
           MutatesInput, IgnoresStrides, OrderBlindCache, AverageOfShardStatistics, ShardUnbiasedVariance,
           LocalCountRunning, HalfAccumulation, HalfNaiveVariance, ParamsDowncastToHalf, RunningStatsInBfloat16,
           HalfBackward, EpsFlushedInHalf)
