"""Flax NNX: ``flax.nnx.BatchNorm`` (channels-last), gradients by ``jax.vjp``.

The same layer as Linen's ``flax.linen.BatchNorm`` in NNX's object form: the module holds its
``scale``, ``bias`` (``nnx.Param``) and running ``mean``, ``var`` (``nnx.BatchStat``), and a
call in training mode updates the latter in place. The adapter builds the module inside each
(jitted) function and sets its four variables to the oracle's arrays, so that gamma, beta and x
are traced through it. ``flax-nnx`` keeps Flax's default ``use_fast_variance=True``
(``E[x^2] - E[x]^2`` clamped at 0); ``flax-nnx-two-pass`` is ``use_fast_variance=False``.
Parameters and statistics are in x's dtype; 64-bit mode is on.
"""
from __future__ import annotations

from bnref.adapters._flax import FlaxBatchNormMixin


class FlaxNnxCandidate(FlaxBatchNormMixin):
    name = "flax-nnx"

    def __init__(self):
        jax = self._start_jax()
        import flax
        from flax import nnx

        self._nnx = nnx
        self.version = f"flax {flax.__version__} (nnx), jax {jax.__version__}"

    def _batch_norm(self, x, gamma, beta, eps, mean, var, *, use_running, momentum):
        nnx = self._nnx
        bn = nnx.BatchNorm(x.shape[-1], use_running_average=use_running, axis=-1, epsilon=eps,
                           momentum=momentum, use_fast_variance=self.use_fast_variance, dtype=x.dtype,
                           param_dtype=self.param_dtype or x.dtype, rngs=nnx.Rngs(0))
        # set_value replaces the array (dtype included); the running statistics start as float32
        for variable, value in ((bn.scale, gamma), (bn.bias, beta), (bn.mean, mean), (bn.var, var)):
            variable.set_value(value)
        y = bn(x)
        return y, bn.mean.get_value(), bn.var.get_value()


class FlaxNnxTwoPassCandidate(FlaxNnxCandidate):
    name = "flax-nnx-two-pass"
    use_fast_variance = False
