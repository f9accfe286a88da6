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

Every call runs eagerly on one intra-op thread (set when TensorFlow starts in this process):
the oracle's arrays are tiny, and op-by-op dispatch costs less than tracing a ``tf.function``
for each new shape.
"""
from __future__ import annotations

import os

import numpy as np


def start_tensorflow():
    """Import TensorFlow (C++ info logs off unless ``TF_CPP_MIN_LOG_LEVEL`` is set), on one thread."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started its thread pools in this process
        pass
    return tf


class _TapeGradients:
    """``backward`` and ``double_backward`` by ``tf.GradientTape`` for a subclass that defines
    ``_y(x, gamma, beta, eps)`` on tensors and ``_x``/``_param`` converting NumPy arrays."""

    def _wide(self, t):
        tf = self._tf
        return tf.cast(t, tf.float32) if t.dtype in (tf.float16, tf.bfloat16) else t

    def backward(self, x, gamma, beta, eps, dy):
        tf = self._tf
        x_ = self._x(x)
        xs = [x_, self._param(gamma, x_), self._param(beta, x_)]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = self._y(*xs, eps)
        return tuple(g.numpy() for g in tape.gradient(y, xs, output_gradients=self._x(dy)))

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        tf = self._tf
        x_, dy_ = self._x(x), self._x(dy)
        gamma_, beta_ = self._param(gamma, x_), self._param(beta, x_)
        directions = (self._x(ddx), self._param(ddgamma, x_), self._param(ddbeta, x_))
        wrt = [x_, gamma_, dy_]
        with tf.GradientTape() as outer:
            outer.watch(wrt)
            with tf.GradientTape() as inner:
                inner.watch([x_, gamma_, beta_])
                y = self._y(x_, gamma_, beta_, eps)
            grads = inner.gradient(y, [x_, gamma_, beta_], output_gradients=dy_)
            # <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>: its gradient is the double backward
            # (summed in float32 for half x: the pairing is a scalar of the whole batch)
            pairing = tf.add_n([tf.reduce_sum(self._wide(g) * self._wide(d)) for g, d in zip(grads, directions)])
        out = outer.gradient(pairing, wrt, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tuple(g.numpy() for g in out)


class TensorFlowCandidate(_TapeGradients):
    """``tf.nn.moments`` + ``tf.nn.batch_normalization``, channels-last, any rank."""

    name = "tensorflow"
    dtypes = ("float32", "float64")
    channel_axis = -1

    def __init__(self):
        tf = start_tensorflow()
        self._tf = tf
        self.version = f"tensorflow {tf.__version__} (tf.nn.moments + tf.nn.batch_normalization)"

    def _x(self, a):
        return self._tf.constant(np.array(a))

    def _param(self, a, x):
        return self._tf.constant(np.array(a), dtype=x.dtype)

    def _y(self, x, gamma, beta, eps):
        mean, variance = self._tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
        return self._tf.nn.batch_normalization(x, mean, variance, beta, gamma, eps)

    def forward_train(self, x, gamma, beta, eps):
        x_ = self._x(x)
        return self._y(x_, self._param(gamma, x_), self._param(beta, x_), eps).numpy()

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._x(x)
        mean, variance, scale, offset = (self._param(a, x_) for a in (running_mean, running_var, gamma, beta))
        return self._tf.nn.batch_normalization(x_, mean, variance, offset, scale, eps).numpy()

    def update_running(self, x, running_mean, running_var, momentum):
        tf = self._tf
        x_ = self._x(x)
        stats = [tf.Variable(self._param(a, x_)) for a in (running_mean, running_var)]
        ema = tf.compat.v1.train.ExponentialMovingAverage(decay=momentum)
        # the shadow variables start at the old running values: this first update leaves them there
        ema.apply(stats)
        for variable, batch in zip(stats, tf.nn.moments(x_, axes=list(range(x_.shape.rank - 1)))):
            variable.assign(batch)
        ema.apply(stats)
        return tuple(ema.average(v).numpy() for v in stats)


class TensorFlowFusedCandidate(_TapeGradients):
    """``tf.compat.v1.nn.fused_batch_norm`` in NHWC (NDHWC for 5D)."""

    name = "tensorflow-fused"
    dtypes = ("float32", "float16", "bfloat16")
    channel_axis = -1
    ranks = (4, 5)
    param_dtype = "float32"
    #: the kernel's data_format for 4D and 5D x
    data_formats = {4: "NHWC", 5: "NDHWC"}

    def __init__(self):
        tf = start_tensorflow()
        self._tf = tf
        self.version = f"tensorflow {tf.__version__} (tf.compat.v1.nn.fused_batch_norm, {self.data_formats[4]})"

    def _x(self, a):
        return self._tf.constant(np.array(a))

    def _param(self, a, x):
        return self._tf.constant(np.array(a), dtype=self._tf.float32)

    def _fused(self, x, gamma, beta, eps, **kwargs):
        if x.shape.rank not in self.data_formats:
            raise ValueError(f"{self.name} takes x of rank 4 or 5 (fused_batch_norm's data formats "
                             f"{', '.join(self.data_formats.values())}); got x of shape {tuple(x.shape)}")
        return self._tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=eps,
                                                      data_format=self.data_formats[x.shape.rank], **kwargs)

    def _y(self, x, gamma, beta, eps):
        return self._fused(x, gamma, beta, eps, is_training=True)[0]

    def forward_train(self, x, gamma, beta, eps):
        x_ = self._x(x)
        return self._y(x_, self._param(gamma, x_), self._param(beta, x_), eps).numpy()

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._x(x)
        scale, offset, mean, variance = (self._param(a, x_) for a in (gamma, beta, running_mean, running_var))
        return self._fused(x_, scale, offset, eps, mean=mean, variance=variance, is_training=False)[0].numpy()

    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._x(x)
        ones = self._tf.ones(x_.shape[self.channel_axis], self._tf.float32)
        _, mean, variance = self._fused(x_, ones, 0 * ones, 1e-3, mean=self._param(running_mean, x_),
                                        variance=self._param(running_var, x_), is_training=True,
                                        exponential_avg_factor=momentum)
        return mean.numpy(), variance.numpy()


class TensorFlowFusedNchwCandidate(TensorFlowFusedCandidate):
    """The same kernel in NCHW (NCDHW for 5D)."""

    name = "tensorflow-fused-nchw"
    channel_axis = 1
    data_formats = {4: "NCHW", 5: "NCDHW"}
