"""Shared gradient plumbing for the JAX-based adapters (Flax, Keras on JAX).

A subclass sets ``self._jax``/``self._jnp`` and defines ``_y(x, gamma, beta, eps)``,
the training-mode forward as a JAX function, and may declare ``param_dtype`` (the
protocol's: None for parameters in x's dtype, "float32" for float32 parameters with
half x); whatever dtype the parameters arrive in, they are cast to it, so that the
gradients with respect to them come back in it; this mixin derives ``forward_train``,
``backward`` (``jax.vjp``) and ``double_backward`` (``jax.grad`` of the VJP pairing).
Each is jitted once with eps as a traced argument: XLA compiles once per shape and
dtype (op-by-op dispatch would compile every primitive for every new shape, several
times slower on the oracle's many small shapes).
"""
from __future__ import annotations

import numpy as np


def enable_x64():
    """Import JAX with 64-bit mode on, so that float64 inputs are not silently cast to float32."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


class JaxVjpMixin:
    """What the JAX-based adapters share: channels-last, float32 and float64 by default, JAX in
    64-bit mode, gradients by ``jax.vjp`` of a jitted forward."""

    dtypes = ("float32", "float64")
    channel_axis = -1
    param_dtype = None

    def _start_jax(self):
        """Import JAX (64-bit mode on) and keep ``jax`` and ``jax.numpy`` on the instance."""
        jax = enable_x64()
        import jax.numpy as jnp

        self._jax, self._jnp = jax, jnp
        return jax

    def _jit(self, name, fn):
        cache = self.__dict__.setdefault("_jitted", {})
        if name not in cache:
            cache[name] = self._jax.jit(fn)
        return cache[name]

    def _arrays(self, *arrays):
        return [self._jnp.asarray(np.array(a)) for a in arrays]

    def _params(self, x, *arrays):
        """Per-channel arrays (parameters, running statistics) in the parameter dtype for ``x``."""
        dtype = self.param_dtype or x.dtype
        return [self._jnp.asarray(np.array(a), dtype=dtype) for a in arrays]

    def _eps(self, eps, x):
        # the frameworks take eps as a Python float, which joins their float32 (or float64)
        # arithmetic: rounding it to a half x's dtype would change it
        return self._jnp.asarray(eps, dtype=self._jnp.promote_types(x.dtype, self._jnp.float32))

    def forward_train(self, x, gamma, beta, eps):
        x, = self._arrays(x)
        gamma, beta = self._params(x, gamma, beta)
        return np.array(self._jit("forward", self._y)(x, gamma, beta, self._eps(eps, x)))

    def _backward(self, x, gamma, beta, eps, dy):
        _, vjp = self._jax.vjp(lambda a, g, b: self._y(a, g, b, eps), x, gamma, beta)
        return vjp(dy)

    def backward(self, x, gamma, beta, eps, dy):
        x, dy = self._arrays(x, dy)
        gamma, beta = self._params(x, gamma, beta)
        grads = self._jit("backward", self._backward)(x, gamma, beta, self._eps(eps, x), dy)
        return tuple(np.array(g) for g in grads)

    def _double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        def pairing(x_, gamma_, dy_):
            # <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>: its gradient is the double backward
            dx, dgamma, dbeta = self._backward(x_, gamma_, beta, eps, dy_)
            return (dx * ddx).sum() + (dgamma * ddgamma).sum() + (dbeta * ddbeta).sum()

        return self._jax.grad(pairing, argnums=(0, 1, 2))(x, gamma, dy)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x, dy, ddx = self._arrays(x, dy, ddx)
        gamma, beta, ddgamma, ddbeta = self._params(x, gamma, beta, ddgamma, ddbeta)
        grads = self._jit("double_backward", self._double_backward)(x, gamma, beta, self._eps(eps, x), dy, ddx,
                                                                    ddgamma, ddbeta)
        return tuple(np.array(g) for g in grads)


class JaxEvalMixin:
    """``forward_eval`` of a JAX-based adapter from its jittable
    ``_eval(x, gamma, beta, running_mean, running_var, eps)`` (next to :class:`JaxVjpMixin`)."""

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, = self._arrays(x)
        gamma, beta, rm, rv = self._params(x, gamma, beta, running_mean, running_var)
        return np.array(self._jit("eval", self._eval)(x, gamma, beta, rm, rv, self._eps(eps, x)))
