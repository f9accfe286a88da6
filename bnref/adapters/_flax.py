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


class FlaxCandidate(JaxVjpMixin):
    name = "flax"
    use_fast_variance = True

    def __init__(self):
        jax = self._start_jax()
        import flax
        import flax.linen as nn

        self._nn = nn
        self.version = f"flax {flax.__version__}, jax {jax.__version__}"

    def _apply(self, x, gamma, beta, eps, *, stats=None, momentum=0.99):
        """y (and the updated batch_stats when training) for parameters gamma, beta."""
        use_running = stats is not None and momentum is None
        param_dtype = self.param_dtype or x.dtype
        bn = self._nn.BatchNorm(use_running_average=use_running, axis=-1, epsilon=eps,
                                use_fast_variance=self.use_fast_variance,
                                momentum=0.99 if momentum is None else momentum,
                                dtype=x.dtype, param_dtype=param_dtype)
        channels = x.shape[-1]
        if stats is None:
            stats = {"mean": self._jnp.zeros(channels, param_dtype), "var": self._jnp.ones(channels, param_dtype)}
        variables = {"params": {"scale": gamma, "bias": beta}, "batch_stats": stats}
        if use_running:
            return bn.apply(variables, x), stats
        return bn.apply(variables, x, mutable=["batch_stats"])

    def _y(self, x, gamma, beta, eps):
        return self._apply(x, gamma, beta, eps)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, = self._arrays(x)
        gamma, beta, rm, rv = self._params(x, gamma, beta, running_mean, running_var)
        y, _ = self._apply(x, gamma, beta, eps, stats={"mean": rm, "var": rv}, momentum=None)
        return np.array(y)

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], rm.dtype)
        _, updated = self._apply(x, ones, 0 * ones, 1e-5, stats={"mean": rm, "var": rv}, momentum=momentum)
        stats = updated["batch_stats"]
        return np.array(stats["mean"]), np.array(stats["var"])


class FlaxTwoPassCandidate(FlaxCandidate):
    name = "flax-two-pass"
    use_fast_variance = False


class FlaxBf16Candidate(FlaxCandidate):
    """``dtype=jnp.bfloat16``, ``param_dtype=jnp.float32``: Flax's mixed precision."""

    name = "flax-bf16"
    dtypes = ("bfloat16",)
    param_dtype = "float32"
