"""Correct or conventional candidates on which the oracle once misled: each differs from
:class:`tests.mutants.CorrectBN` only in what a real framework does, so the oracle must
measure it, not fail it (or fail it on the property that first sees the defect).
"""
from __future__ import annotations

import numpy as np

from tests.mutants import CorrectBN


class FourDOnly(CorrectBN):
    """A fused 4D kernel (``tf.nn.fused_batch_norm``): rank 4 only, float32 only, channels-last."""

    name = "four-d-only"
    dtypes = ("float32",)
    ranks = (4,)

    def __init__(self):
        super().__init__(channel_axis=-1)

    def _rank4(self, x):
        if np.ndim(x) != 4:
            raise ValueError(f"x must be 4-dimensional; got shape {np.shape(x)}")

    def forward_train(self, x, gamma, beta, eps):
        self._rank4(x)
        return super().forward_train(x, gamma, beta, eps)

    def backward(self, x, gamma, beta, eps, dy):
        self._rank4(x)
        return super().backward(x, gamma, beta, eps, dy)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        self._rank4(x)
        return super().forward_eval(x, gamma, beta, running_mean, running_var, eps)

    def update_running(self, x, running_mean, running_var, momentum):
        self._rank4(x)
        return super().update_running(x, running_mean, running_var, momentum)


class ForwardOnly:
    """An inference runtime's training-mode graph (ONNX Runtime): forward only, no gradients."""

    name = "forward-only"
    dtypes = ("float32", "float64")
    channel_axis = 1

    def __init__(self):
        self._bn = CorrectBN()

    def forward_train(self, x, gamma, beta, eps):
        return self._bn.forward_train(x, gamma, beta, eps)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self._bn.forward_eval(x, gamma, beta, running_mean, running_var, eps)


class NanOnLargeFloat32Mean(CorrectBN):
    """Correct on the drawn cases, NaN for float32 data whose mean is beyond 5000 (only the
    fingerprint's float32 offset probe reaches it)."""

    name = "nan-on-large-float32-mean"

    def forward_train(self, x, gamma, beta, eps):
        y = super().forward_train(x, gamma, beta, eps)
        if x.dtype == np.float32 and float(np.max(np.abs(x))) > 5000:
            y = np.full_like(y, np.nan)
        return y


class MomentumIgnored(CorrectBN):
    """update_running with a hard-coded weight 0.1 on the new value: the momentum passed has no effect."""

    name = "momentum-ignored"

    def update_running(self, x, running_mean, running_var, momentum):
        return super().update_running(x, running_mean, running_var, 0.1)


class Float32NaiveVariance(CorrectBN):
    """float32 variance E[x^2] - E[x]^2 summed in memory order: wrong for every layout (a forward
    defect), by amounts that differ between strided and contiguous input."""

    name = "float32-naive-variance"
    dtypes = ("float32",)

    def stats(self, x):
        x32, m = np.asarray(x, np.float32), self.count(x)
        per_channel = np.moveaxis(x32, self.channel_axis, 0)
        sums = [(np.add.accumulate(c.ravel(order="K"))[-1], np.add.accumulate((c * c).ravel(order="K"))[-1])
                for c in per_channel]
        mean = np.array([s for s, _ in sums], np.float32) / np.float32(m)
        var = np.maximum(np.array([q for _, q in sums], np.float32) / np.float32(m) - mean * mean, 0)
        shape = [1] * x32.ndim
        shape[self.channel_axis] = -1
        return mean.astype(np.float64).reshape(shape), var.astype(np.float64).reshape(shape)


class EpsInFloat32(CorrectBN):
    """eps and momentum held as float32 attributes (ONNX, Paddle, MXNet, tf_keras), the rest in float64."""

    name = "eps-in-float32"

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(x, gamma, beta, float(np.float32(eps)))

    def backward(self, x, gamma, beta, eps, dy):
        return super().backward(x, gamma, beta, float(np.float32(eps)), dy)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return super().forward_eval(x, gamma, beta, running_mean, running_var, float(np.float32(eps)))

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        return super().double_backward(x, gamma, beta, float(np.float32(eps)), dy, ddx, ddgamma, ddbeta)

    def update_running(self, x, running_mean, running_var, momentum):
        return super().update_running(x, running_mean, running_var, float(np.float32(momentum)))


class Float64InFloat32(CorrectBN):
    """float64 input computed in float32 and returned as float64 (Keras' result_type(x, "float32"))."""

    name = "float64-in-float32"

    def forward_train(self, x, gamma, beta, eps):
        x32 = np.asarray(x, np.float32)
        return super().forward_train(x32, gamma.astype(np.float32), beta.astype(np.float32), eps).astype(x.dtype)

    def backward(self, x, gamma, beta, eps, dy):
        out = super().backward(np.asarray(x, np.float32), gamma.astype(np.float32), beta.astype(np.float32), eps,
                               np.asarray(dy, np.float32))
        return tuple(o.astype(x.dtype) for o in out)


class DeclaresEnvironment(CorrectBN):
    """A correct base whose forward is wrong, declaring the environment its backend needs."""

    name = "declares-environment"
    environment = {"MY_BACKEND": "numpy"}

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(x, gamma, beta, eps) + 1.0


class DebiasedMovingAverage(CorrectBN):
    """Running statistics as Haiku's ExponentialMovingAverage: zero-started, old-weighted momentum
    (decay), debiased by 1 - decay^t; a biased running variance."""

    name = "debiased-moving-average"

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        from bnref.conventions import Convention

        haiku = Convention("haiku", running_var="biased", momentum="old", debiased=True)
        stats = [tuple(s.reshape(-1) for s in self.stats(x)) for x in xs]
        new = haiku.update_running_steps(running_mean, running_var, [s[0] for s in stats], [s[1] for s in stats],
                                         [self.count(x) for x in xs], momentum)
        return new[0].astype(running_mean.dtype), new[1].astype(running_var.dtype)
