"""The seed post's Theano layer, transcribed to NumPy (``autograd.numpy`` for its gradients).

What the original code does, kept on purpose so that the oracle can say what it finds:

- statistics over axis 0 for 2D inputs and over (0, 2, 3) for 4D inputs, biased
  variance, ``eps = 1e-5`` hard-coded (the ``eps`` argument is ignored);
- ``gamma``/``beta`` of shape (C,) for 2D and (C, H, W) for 4D (one per position):
  the adapter repeats the oracle's per-channel values over the positions and sums the
  per-position gradients back to (C,), which is what Theano's autodiff gives;
- no running averages: test time normalizes with the test batch's own statistics,
  so ``forward_eval`` ignores the running statistics it is given and there is no
  ``update_running``;
- only ranks 2 and 4 exist.
"""
from __future__ import annotations

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp

EPS = 1e-5


def seed_forward(x, gamma, beta):
    """``BatchNormalizationLayer.output`` for 2D ``(N, C)`` or 4D ``(N, C, H, W)`` x.

    ``gamma``/``beta``: ``(C,)`` for 2D, ``(C, H, W)`` for 4D (one per position).
    """
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = anp.mean(x, axis=axes, keepdims=True)
    var = anp.var(x, axis=axes, keepdims=True)  # Theano's T.var: biased
    return gamma * (x - mean) / anp.sqrt(var + EPS) + beta


class SeedCandidate:
    name = "seed"
    dtypes = ("float64", "float32")
    channel_axis = 1
    ranks = (2, 4)
    version = "Qiita post (Theano, 2016), NumPy transcription"

    @staticmethod
    def _per_position(v, x):
        """(C,) -> the layer's parameter shape: (C,) for 2D, (C, H, W) for 4D."""
        return v if x.ndim == 2 else anp.broadcast_to(anp.reshape(v, (-1, 1, 1)), x.shape[1:])

    def _y(self, x, gamma, beta):
        return seed_forward(x, self._per_position(gamma, x), self._per_position(beta, x))

    def forward_train(self, x, gamma, beta, eps):
        return np.asarray(self._y(x, gamma, beta), dtype=x.dtype)

    def backward(self, x, gamma, beta, eps, dy):
        vjp, _ = make_vjp(self._y, argnum=(0, 1, 2))(x, gamma, beta)
        return tuple(np.asarray(g, dtype=x.dtype) for g in vjp(dy))

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self.forward_train(x, gamma, beta, eps)  # test time = the test batch's statistics

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        def pairing(x_, g_, dy_):
            vjp, _ = make_vjp(self._y, argnum=(0, 1, 2))(x_, g_, beta)
            dx, dgamma, dbeta = vjp(dy_)
            return anp.sum(dx * ddx) + anp.sum(dgamma * ddgamma) + anp.sum(dbeta * ddbeta)

        vjp, _ = make_vjp(pairing, argnum=(0, 1, 2))(x, gamma, dy)
        return tuple(np.asarray(g, dtype=x.dtype) for g in vjp(1.0))
