"""PaddlePaddle: ``paddle.nn.functional.batch_norm`` on the CPU, gradients through ``paddle.grad``.

* ``forward_train`` -- ``training=True`` (batch statistics), on throwaway running statistics;
* ``backward`` -- ``paddle.grad`` of that forward; ``double_backward`` -- ``paddle.grad`` with
  ``create_graph=True``, then ``paddle.grad`` of the gradients paired with the directions
  (Paddle registers ``batch_norm_double_grad`` for the CPU);
* ``update_running`` -- the functional's in-place update of ``running_mean`` and ``running_var``
  by one training call, in Paddle's convention: ``momentum`` weighs the old value
  (``new = momentum * old + (1 - momentum) * batch``, default 0.9), the batch variance divided by m;
* ``forward_eval`` -- ``training=False`` with the given statistics.

Inputs are NCHW-style, channels on axis 1 (``data_format`` "NC", "NCL", "NCHW", "NCDHW" are one
layout to the kernel), ranks 2 to 5: the kernel refuses rank 6 and above. The CPU kernel is
registered for float32 and float64 only (float16 and bfloat16 raise "kernel ... is not registered").
``epsilon`` and ``momentum`` are float32 operator attributes: on float64 data both arrive rounded
to float32. Paddle writes the running statistics in place: it gets copies, never the caller's arrays.
A channel holding a single value in training (m = 1) is passed through: y = x, gamma and beta not
applied, running statistics unchanged (https://github.com/PaddlePaddle/Paddle/issues/11445).
"""
from __future__ import annotations

import warnings

import numpy as np


class PaddleCandidate:
    name = "paddle"
    dtypes = ("float32", "float64")
    channel_axis = 1
    ranks = (2, 3, 4, 5)

    def __init__(self):
        with warnings.catch_warnings():
            # paddle's C++-extension helper warns on import when ccache is absent; no extension is built here
            warnings.filterwarnings("ignore", message="No ccache found")
            import paddle
            import paddle.nn.functional as F

        paddle.set_device("cpu")
        self._paddle, self._F = paddle, F
        self.version = f"paddlepaddle {paddle.__version__} (CPU)"

    def _tensor(self, a, grad=False):
        """A Paddle tensor holding a copy of ``a`` (Paddle writes running statistics in place)."""
        t = self._paddle.to_tensor(np.array(a))
        t.stop_gradient = not grad
        return t

    def _bn(self, x, gamma, beta, eps, *, training, stats=None, momentum=0.9):
        if stats is None:  # batch statistics: the running ones are written and thrown away
            channels = x.shape[1]
            stats = (self._paddle.zeros([channels], x.dtype), self._paddle.ones([channels], x.dtype))
        return self._F.batch_norm(x, *stats, gamma, beta, training=training, momentum=momentum, epsilon=eps)

    @staticmethod
    def _np(t):
        return t.numpy().copy()

    def forward_train(self, x, gamma, beta, eps):
        with self._paddle.no_grad():
            return self._np(self._bn(self._tensor(x), self._tensor(gamma), self._tensor(beta), eps,
                                     training=True))

    def backward(self, x, gamma, beta, eps, dy):
        xs = [self._tensor(a, grad=True) for a in (x, gamma, beta)]
        y = self._bn(*xs, eps, training=True)
        return tuple(self._np(g) for g in self._paddle.grad([y], xs, [self._tensor(dy)]))

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        with self._paddle.no_grad():
            return self._np(self._bn(self._tensor(x), self._tensor(gamma), self._tensor(beta), eps, training=False,
                                     stats=(self._tensor(running_mean), self._tensor(running_var))))

    def update_running(self, x, running_mean, running_var, momentum):
        stats = (self._tensor(running_mean), self._tensor(running_var))
        with self._paddle.no_grad():
            self._F.batch_norm(self._tensor(x), *stats, training=True, momentum=momentum)
        return tuple(self._np(s) for s in stats)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x_, gamma_, beta_, dy_ = (self._tensor(a, grad=True) for a in (x, gamma, beta, dy))
        y = self._bn(x_, gamma_, beta_, eps, training=True)
        grads = self._paddle.grad([y], [x_, gamma_, beta_], [dy_], create_graph=True)
        pairing = sum((g * self._tensor(dd)).sum() for g, dd in zip(grads, (ddx, ddgamma, ddbeta)))
        out = self._paddle.grad([pairing], [x_, gamma_, dy_], allow_unused=True)
        return tuple(self._np(self._paddle.zeros_like(t) if g is None else g) for g, t in zip(out, (x_, gamma_, dy_)))
