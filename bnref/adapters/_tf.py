"""Shared gradient plumbing for the TensorFlow-based adapters (Keras 3 on TensorFlow, tf_keras).

A subclass sets ``self._tf`` (:meth:`TfTapeMixin._start_tf`) and defines
``_y(x, gamma, beta, eps)``, the training-mode forward on TensorFlow values, and may override
``_sources(x, gamma, beta)``, what ``_y`` takes as gamma and beta and the tapes differentiate
(constant tensors by default; a layer's own variables for tf_keras). This mixin derives
``forward_train``, ``backward`` (``tf.GradientTape.gradient`` with ``output_gradients=dy``) and
``double_backward`` (a second tape around the first). Eager execution: the oracle's many small
shapes would each retrace a ``tf.function``.

``param_dtype`` is the protocol's: None for parameters in x's dtype, "float32" for float32
parameters with half x; whatever dtype the parameters arrive in, they are cast to it, so that
the gradients with respect to them come back in it.
"""
from __future__ import annotations

import os

import numpy as np


def start_tensorflow():
    """Import TensorFlow (C++ info logs off unless ``TF_CPP_MIN_LOG_LEVEL`` is set), on one thread:
    the oracle's arrays are tiny, and op-by-op dispatch costs less than tracing a ``tf.function``
    for each new shape."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started its thread pools in this process
        pass
    return tf


class TfTapeMixin:
    """What the TensorFlow-based adapters share: channels-last, float32 and float64 by default,
    gradients by ``tf.GradientTape``."""

    dtypes = ("float32", "float64")
    channel_axis = -1
    param_dtype = None

    def _start_tf(self):
        """Import TensorFlow (:func:`start_tensorflow`) and keep it on the instance."""
        self._tf = start_tensorflow()
        return self._tf

    def _tensor(self, a):
        return self._tf.constant(np.array(a))

    def _param(self, a, x):
        """A per-channel tensor in the parameter dtype for input ``x`` (x's own dtype unless declared)."""
        tf = self._tf
        dtype = tf.dtypes.as_dtype(self.param_dtype) if self.param_dtype else x.dtype
        return tf.cast(self._tensor(a), dtype)

    def _sources(self, x, gamma, beta):
        """gamma and beta as ``_y`` takes them and the tapes watch them."""
        return self._param(gamma, x), self._param(beta, x)

    def _np(self, t):
        return np.array(t.numpy())

    def forward_train(self, x, gamma, beta, eps):
        x_ = self._tensor(x)
        return self._np(self._y(x_, *self._sources(x_, gamma, beta), eps))

    def _gradients(self, tape, x, gamma, beta, eps, dy):
        """(dx, dgamma, dbeta) of ``_y`` at (x, gamma, beta) for ``dy``, recorded by ``tape``."""
        with tape:
            tape.watch([x, gamma, beta])
            y = self._y(x, gamma, beta, eps)
        return tape.gradient(y, [x, gamma, beta], output_gradients=dy,
                             unconnected_gradients=self._tf.UnconnectedGradients.ZERO)

    def backward(self, x, gamma, beta, eps, dy):
        x_ = self._tensor(x)
        grads = self._gradients(self._tf.GradientTape(), x_, *self._sources(x_, gamma, beta), eps,
                                self._tensor(dy))
        return tuple(self._np(g) for g in grads)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        tf = self._tf
        x_, dy_ = self._tensor(x), self._tensor(dy)
        gamma_, beta_ = self._sources(x_, gamma, beta)
        directions = (self._tensor(ddx), self._param(ddgamma, x_), self._param(ddbeta, x_))
        with tf.GradientTape() as outer:
            outer.watch([x_, gamma_, dy_])
            grads = self._gradients(tf.GradientTape(), x_, gamma_, beta_, eps, dy_)
            # <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>: its gradient is the double backward; each term
            # in float64, as TensorFlow adds no half x's term to a float32 parameter's
            pairing = sum(tf.cast(tf.reduce_sum(g * dd), tf.float64) for g, dd in zip(grads, directions))
        out = outer.gradient(pairing, [x_, gamma_, dy_], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tuple(self._np(g) for g in out)
