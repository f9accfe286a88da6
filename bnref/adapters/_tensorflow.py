"""TensorFlow: the composite batch norm users write, and the fused kernel, gradients by ``tf.GradientTape``.

``tensorflow`` -- ``tf.nn.moments`` over every axis but the last, then
``tf.nn.batch_normalization(x, mean, variance, offset, scale, eps)``, channels-last and of any
rank, float32 and float64:

* ``backward`` -- one ``tf.GradientTape``; ``double_backward`` -- a tape around it, watching
  x, gamma and dy, differentiating ``<ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>``;
* ``forward_eval`` -- ``tf.nn.batch_normalization`` with the running statistics;
* ``update_running`` -- ``tf.compat.v1.train.ExponentialMovingAverage(decay=momentum)``, the
  moving average TensorFlow's own tutorials pair with ``tf.nn.moments``: a shadow variable
  started at the old running value, then ``old * decay + batch * (1 - decay)`` with the
  moments' biased variance (``zero_debias=False``, its default).

The composite computes in x's dtype: for float16 ``tf.nn.moments`` accumulates in float32 and
rounds the mean and variance to float16, for bfloat16 it keeps them in bfloat16, and
``batch_normalization`` then forms ``x * inv + (offset - mean * inv)`` in the half type. No
half dtype is declared: half batch norm in TensorFlow is the fused kernel's (float32
statistics), checked by the adapters below.

``tensorflow-fused`` (NHWC/NDHWC) and ``tensorflow-fused-nchw`` (NCHW/NCDHW) --
``tf.compat.v1.nn.fused_batch_norm``, the ``FusedBatchNormV3`` kernel (oneDNN's on the CPU),
which takes 4D and 5D x only, in float32, float16 and bfloat16 with float32 scale, offset and
statistics (``param_dtype = "float32"``; it has no float64):

* ``forward_train`` -- ``is_training=True``, y normalized with the batch's biased variance;
* ``forward_eval`` -- ``is_training=False`` with the given mean and variance;
* ``update_running`` -- ``is_training=True`` with the running statistics and
  ``exponential_avg_factor=momentum``: ``(1 - momentum) * old + momentum * batch``, the batch
  variance unbiased (m - 1);
* gradients -- ``FusedBatchNormGradV3`` through the tape; its registered gradient (an autodiff
  of a composite of the backward formula, in float32 for half x) gives the double backward.

``epsilon`` and ``exponential_avg_factor`` are float32 op attributes.

Every call runs eagerly on one thread; the gradients are :class:`~bnref.adapters._tf.TfTapeMixin`'s.
"""
from __future__ import annotations

import numpy as np

from bnref.adapters._tf import TfTapeMixin


class TensorFlowCandidate(TfTapeMixin):
    """``tf.nn.moments`` + ``tf.nn.batch_normalization``, channels-last, any rank."""

    name = "tensorflow"

    def __init__(self):
        tf = self._start_tf()
        self.version = f"tensorflow {tf.__version__} (tf.nn.moments + tf.nn.batch_normalization)"

    def _y(self, x, gamma, beta, eps):
        mean, variance = self._tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
        return self._tf.nn.batch_normalization(x, mean, variance, beta, gamma, eps)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        mean, variance, scale, offset = (self._param(a, x_) for a in (running_mean, running_var, gamma, beta))
        return self._np(self._tf.nn.batch_normalization(x_, mean, variance, offset, scale, eps))

    def update_running(self, x, running_mean, running_var, momentum):
        tf = self._tf
        x_ = self._tensor(x)
        stats = [tf.Variable(self._param(a, x_)) for a in (running_mean, running_var)]
        ema = tf.compat.v1.train.ExponentialMovingAverage(decay=momentum)
        # the shadow variables start at the old running values: this first update leaves them there
        ema.apply(stats)
        for variable, batch in zip(stats, tf.nn.moments(x_, axes=list(range(x_.shape.rank - 1)))):
            variable.assign(batch)
        ema.apply(stats)
        return tuple(self._np(ema.average(v)) for v in stats)


class TensorFlowFusedCandidate(TfTapeMixin):
    """``tf.compat.v1.nn.fused_batch_norm`` in NHWC (NDHWC for 5D)."""

    name = "tensorflow-fused"
    dtypes = ("float32", "float16", "bfloat16")
    ranks = (4, 5)
    param_dtype = "float32"
    #: the kernel's data_format for 4D and 5D x
    data_formats = {4: "NHWC", 5: "NDHWC"}

    def __init__(self):
        tf = self._start_tf()
        self.version = f"tensorflow {tf.__version__} (tf.compat.v1.nn.fused_batch_norm, {self.data_formats[4]})"

    def _fused(self, x, gamma, beta, eps, **kwargs):
        if x.shape.rank not in self.data_formats:
            raise ValueError(f"{self.name} takes x of rank 4 or 5 (fused_batch_norm's data formats "
                             f"{', '.join(self.data_formats.values())}); got x of shape {tuple(x.shape)}")
        return self._tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=eps,
                                                      data_format=self.data_formats[x.shape.rank], **kwargs)

    def _y(self, x, gamma, beta, eps):
        return self._fused(x, gamma, beta, eps, is_training=True)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        scale, offset, mean, variance = (self._param(a, x_) for a in (gamma, beta, running_mean, running_var))
        return self._np(self._fused(x_, scale, offset, eps, mean=mean, variance=variance, is_training=False)[0])

    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        ones = self._tf.ones(x_.shape[self.channel_axis], self._tf.float32)
        _, mean, variance = self._fused(x_, ones, 0 * ones, 1e-3, mean=self._param(running_mean, x_),
                                        variance=self._param(running_var, x_), is_training=True,
                                        exponential_avg_factor=momentum)
        return self._np(mean), self._np(variance)


class TensorFlowFusedNchwCandidate(TensorFlowFusedCandidate):
    """The same kernel in NCHW (NCDHW for 5D)."""

    name = "tensorflow-fused-nchw"
    channel_axis = 1
    data_formats = {4: "NCHW", 5: "NCDHW"}
