"""Flax: ``flax.linen.BatchNorm`` (channels-last), gradients by ``jax.vjp``.

The module is used with its defaults (so ``use_fast_variance=True``, Flax's
choice: ``E[x^2] - E[x]^2`` clamped at 0) except for ``epsilon`` and ``momentum``,
which the oracle passes. ``flax-two-pass`` is the same module with
``use_fast_variance=False`` (mean first, then ``E[(x - mean)^2]``).
64-bit mode is switched on so that float64 inputs stay float64.

``flax-bf16`` is Flax's mixed precision: ``dtype=jnp.bfloat16`` (bfloat16 x and y) with
``param_dtype=jnp.float32`` (float32 scale, bias and batch statistics); Flax computes the
statistics in at least float32 whatever the input dtype.
"""
from __future__ import annotations

import numpy as np

from bnref.adapters._jax import JaxVjpMixin


class FlaxBatchNormMixin(JaxVjpMixin):
    """What Flax's two BatchNorm APIs (Linen, NNX) share: the protocol's methods on one
    ``_batch_norm(x, gamma, beta, eps, mean, var, use_running, momentum) -> (y, mean, var)``
    that a subclass defines with its API (``use_running``: normalize with the given running
    statistics; otherwise with the batch's, returning the running statistics updated at ``momentum``,
    Flax's old-weighted form)."""

    use_fast_variance = True

    def _apply(self, x, gamma, beta, eps, *, stats=None, momentum=0.99):
        """y and the (updated) running statistics (mean, var) for parameters gamma, beta."""
        use_running = stats is not None and momentum is None
        if stats is None:
            ones = self._jnp.ones(x.shape[-1], self.param_dtype or x.dtype)
            stats = (0 * ones, ones)
        return self._batch_norm(x, gamma, beta, eps, *stats, use_running=use_running,
                                momentum=0.99 if momentum is None else momentum)

    def _y(self, x, gamma, beta, eps):
        return self._apply(x, gamma, beta, eps)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, = self._arrays(x)
        gamma, beta, rm, rv = self._params(x, gamma, beta, running_mean, running_var)
        return np.array(self._apply(x, gamma, beta, eps, stats=(rm, rv), momentum=None)[0])

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], rm.dtype)
        _, mean, var = self._apply(x, ones, 0 * ones, 1e-5, stats=(rm, rv), momentum=momentum)
        return np.array(mean), np.array(var)


class FlaxCandidate(FlaxBatchNormMixin):
    name = "flax"

    def __init__(self):
        jax = self._start_jax()
        import flax
        import flax.linen as nn

        self._nn = nn
        self.version = f"flax {flax.__version__}, jax {jax.__version__}"

    def _batch_norm(self, x, gamma, beta, eps, mean, var, *, use_running, momentum):
        bn = self._nn.BatchNorm(use_running_average=use_running, axis=-1, epsilon=eps,
                                use_fast_variance=self.use_fast_variance, momentum=momentum,
                                dtype=x.dtype, param_dtype=self.param_dtype or x.dtype)
        variables = {"params": {"scale": gamma, "bias": beta}, "batch_stats": {"mean": mean, "var": var}}
        if use_running:
            return bn.apply(variables, x), mean, var
        y, updated = bn.apply(variables, x, mutable=["batch_stats"])
        return y, updated["batch_stats"]["mean"], updated["batch_stats"]["var"]


class FlaxTwoPassCandidate(FlaxCandidate):
    name = "flax-two-pass"
    use_fast_variance = False


class FlaxBf16Candidate(FlaxCandidate):
    """``dtype=jnp.bfloat16``, ``param_dtype=jnp.float32``: Flax's mixed precision."""

    name = "flax-bf16"
    dtypes = ("bfloat16",)
    param_dtype = "float32"
