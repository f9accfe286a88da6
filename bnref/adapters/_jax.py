"""Shared gradient plumbing for the JAX-based adapters (Flax, Keras on JAX).

A subclass sets ``self._jax``/``self._jnp`` and defines ``_y(x, gamma, beta, eps)``,
the training-mode forward as a JAX function; this mixin derives ``forward_train``,
``backward`` (``jax.vjp``) and ``double_backward`` (``jax.grad`` of the VJP pairing).
"""
from __future__ import annotations

import numpy as np


def enable_x64():
    """Import JAX with 64-bit mode on, so that float64 inputs are not silently cast to float32."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


class JaxVjpMixin:
    def _arrays(self, *arrays):
        return [self._jnp.asarray(np.array(a)) for a in arrays]

    def forward_train(self, x, gamma, beta, eps):
        return np.array(self._y(*self._arrays(x, gamma, beta), eps))

    def backward(self, x, gamma, beta, eps, dy):
        _, vjp = self._jax.vjp(lambda *a: self._y(*a, eps), *self._arrays(x, gamma, beta))
        return tuple(np.array(g) for g in vjp(self._jnp.asarray(dy)))

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x, gamma, beta, dy, ddx, ddgamma, ddbeta = self._arrays(x, gamma, beta, dy, ddx, ddgamma, ddbeta)

        def pairing(x_, gamma_, dy_):
            # <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>: its gradient is the double backward
            _, vjp = self._jax.vjp(lambda a, g, b: self._y(a, g, b, eps), x_, gamma_, beta)
            dx, dgamma, dbeta = vjp(dy_)
            return (dx * ddx).sum() + (dgamma * ddgamma).sum() + (dbeta * ddbeta).sum()

        return tuple(np.array(g) for g in self._jax.grad(pairing, argnums=(0, 1, 2))(x, gamma, dy))
