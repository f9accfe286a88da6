"""MLX: ``mlx.nn.BatchNorm`` (channels-last) on the CPU, gradients by ``mx.vjp``.

The layer takes ``NC``, ``NLC`` and ``NHWC`` input (ranks 2 to 4; it raises ValueError on
any other rank) and normalizes over every axis but the last. Its conventions, read from
``mlx/nn/layers/normalization.py``, are what the oracle measures:

* training: ``(x - mean) * rsqrt(var + eps)`` with the biased batch variance (``mx.var``, two-pass);
* running statistics, updated by the training call itself: new-weighted momentum,
  ``running = (1 - momentum) * running + momentum * batch``, with the *unbiased* batch
  variance (``ddof=1``) for ``running_var``;
* eval (``bn.eval()``): the stored ``running_mean``, ``running_var``.

``eps`` and ``momentum`` are the layer's Python-float attributes; the oracle's values are set on the
layer before each call. Parameters and running statistics are the layer's own arrays, replaced by the
given ones in x's dtype (``Module.set_dtype`` on the whole layer, as ``module.half()`` in PyTorch):
float16 and bfloat16 layers compute in their own dtype, as MLX does. float64 exists on the CPU only.

``mx.array`` turns a float64 NumPy array into float32 unless given the dtype, so every array
crosses with its dtype named; bfloat16 comes back through its 16 bits (NumPy's buffer protocol
does not know MLX's bfloat16).

``backward`` is ``mx.vjp`` of the training-mode forward with respect to x, gamma and beta (the
layer's weight and bias, passed in through ``Module.update``); ``double_backward`` is ``mx.grad``
of the pairing ``<ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>`` with respect to x, gamma and dy.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

#: ml_dtypes' bfloat16, which NumPy's buffer protocol cannot take from an MLX array
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class MlxCandidate:
    name = "mlx"
    dtypes = ("float32", "float64", "float16", "bfloat16")
    channel_axis = -1
    ranks = (2, 3, 4)

    def __init__(self):
        import mlx.core as mx
        import mlx.nn as nn

        self._mx, self._nn = mx, nn
        # float64 is a CPU type in MLX: the whole adapter runs on the CPU
        mx.set_default_device(mx.cpu)
        self.version = f"mlx {mx.__version__} (CPU)"

    def _array(self, a):
        a = np.array(a)  # a copy: MLX never sees the caller's memory
        return self._mx.array(a, dtype=getattr(self._mx, a.dtype.name))

    def _np(self, t):
        self._mx.eval(t)
        if t.dtype == self._mx.bfloat16:
            return np.array(t.view(self._mx.uint16)).view(BFLOAT16)
        return np.array(t)

    def _layer(self, x, eps, momentum=0.1, running=None, training=True):
        """A BatchNorm layer for x (an MLX array) in x's dtype, with the given running statistics."""
        bn = self._nn.BatchNorm(x.shape[-1], eps=float(eps), momentum=float(momentum))
        bn.set_dtype(x.dtype)
        if running is not None:
            bn.running_mean, bn.running_var = self._params(x, *running)
        bn.train(training)
        return bn

    def _y(self, x, gamma, beta, eps):
        bn = self._layer(x, eps)
        bn.update({"weight": gamma, "bias": beta})
        return bn(x)

    def _params(self, x, *arrays):
        return [self._array(a).astype(x.dtype) for a in arrays]

    def forward_train(self, x, gamma, beta, eps):
        x = self._array(x)
        return self._np(self._y(x, *self._params(x, gamma, beta), eps))

    def _vjp(self, x, gamma, beta, eps, dy):
        _, grads = self._mx.vjp(lambda a, g, b: self._y(a, g, b, eps), [x, gamma, beta], [dy])
        return grads

    def backward(self, x, gamma, beta, eps, dy):
        x, dy = self._array(x), self._array(dy)
        return tuple(self._np(g) for g in self._vjp(x, *self._params(x, gamma, beta), eps, dy))

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x, dy, ddx = self._array(x), self._array(dy), self._array(ddx)
        gamma, beta, ddgamma, ddbeta = self._params(x, gamma, beta, ddgamma, ddbeta)

        def pairing(x_, gamma_, dy_):
            dx, dgamma, dbeta = self._vjp(x_, gamma_, beta, eps, dy_)
            return (dx * ddx).sum() + (dgamma * ddgamma).sum() + (dbeta * ddbeta).sum()

        grads = self._mx.grad(pairing, argnums=(0, 1, 2))(x, gamma, dy)
        return tuple(self._np(g) for g in grads)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x = self._array(x)
        bn = self._layer(x, eps, running=(running_mean, running_var), training=False)
        bn.update(dict(zip(("weight", "bias"), self._params(x, gamma, beta))))
        return self._np(bn(x))

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        xs = [self._array(x) for x in xs]
        bn = self._layer(xs[0], 1e-5, momentum, running=(running_mean, running_var))
        for x in xs:
            self._mx.eval(bn(x))
        return self._np(bn.running_mean), self._np(bn.running_var)

    def update_running(self, x, running_mean, running_var, momentum):
        return self.update_running_steps([x], running_mean, running_var, momentum)
