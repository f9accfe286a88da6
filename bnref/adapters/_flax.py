"""Flax: ``flax.linen.BatchNorm`` (channels-last), gradients by ``jax.vjp``.

The module is used with its defaults (so ``use_fast_variance=True``, Flax's
choice: ``E[x^2] - E[x]^2`` clamped at 0) except for ``epsilon`` and ``momentum``,
which the oracle passes. ``flax-two-pass`` is the same module with
``use_fast_variance=False`` (mean first, then ``E[(x - mean)^2]``).
64-bit mode is switched on so that float64 inputs stay float64.
"""
from __future__ import annotations

import numpy as np

from bnref.adapters._jax import JaxVjpMixin, enable_x64


class FlaxCandidate(JaxVjpMixin):
    name = "flax"
    dtypes = ("float32", "float64")
    channel_axis = -1
    use_fast_variance = True

    def __init__(self):
        jax = enable_x64()
        import flax
        import flax.linen as nn
        import jax.numpy as jnp

        self._jax, self._jnp, self._nn = jax, jnp, nn
        self.version = f"flax {flax.__version__}, jax {jax.__version__}"

    def _apply(self, x, gamma, beta, eps, *, stats=None, momentum=0.99):
        """y (and the updated batch_stats when training) for parameters gamma, beta."""
        use_running = stats is not None and momentum is None
        bn = self._nn.BatchNorm(use_running_average=use_running, axis=-1, epsilon=eps,
                                use_fast_variance=self.use_fast_variance,
                                momentum=0.99 if momentum is None else momentum,
                                dtype=x.dtype, param_dtype=x.dtype)
        channels = x.shape[-1]
        if stats is None:
            stats = {"mean": self._jnp.zeros(channels, x.dtype), "var": self._jnp.ones(channels, x.dtype)}
        variables = {"params": {"scale": gamma, "bias": beta}, "batch_stats": stats}
        if use_running:
            return bn.apply(variables, x), stats
        return bn.apply(variables, x, mutable=["batch_stats"])

    def _y(self, x, gamma, beta, eps):
        return self._apply(x, gamma, beta, eps)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, gamma, beta, rm, rv = self._arrays(x, gamma, beta, running_mean, running_var)
        y, _ = self._apply(x, gamma, beta, eps, stats={"mean": rm, "var": rv}, momentum=None)
        return np.array(y)

    def update_running(self, x, running_mean, running_var, momentum):
        x, rm, rv = self._arrays(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], x.dtype)
        _, updated = self._apply(x, ones, 0 * ones, 1e-5, stats={"mean": rm, "var": rv}, momentum=momentum)
        stats = updated["batch_stats"]
        return np.array(stats["mean"]), np.array(stats["var"])


class FlaxTwoPassCandidate(FlaxCandidate):
    name = "flax-two-pass"
    use_fast_variance = False
