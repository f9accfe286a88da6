"""Keras 3: ``keras.layers.BatchNormalization`` on the JAX backend, gradients by ``jax.vjp``.

The layer and its stateless call are :class:`~bnref.adapters._keras_layer.KerasLayerMixin`'s;
``KERAS_BACKEND`` must be ``jax`` before Keras is first imported (the adapter sets it when Keras
is not imported yet and refuses another backend).

``keras-mixed-bf16`` builds the layer under the ``mixed_bfloat16`` dtype policy: float32
variables (gamma, beta, moving statistics), bfloat16 compute dtype and output. Keras'
``BatchNormalization`` computes in float32 for half inputs and casts y back.
"""
from __future__ import annotations

import numpy as np

from bnref.adapters._jax import JaxVjpMixin
from bnref.adapters._keras_layer import KerasLayerMixin


class KerasCandidate(KerasLayerMixin, JaxVjpMixin):
    name = "keras"
    environment = {"KERAS_BACKEND": "jax"}

    def __init__(self):
        jax = self._start_jax()
        keras = self._start_keras()
        self.version = f"keras {keras.__version__} (jax {jax.__version__})"

    def _y(self, x, gamma, beta, eps):
        stats = (self._jnp.zeros_like(gamma), self._jnp.ones_like(gamma))
        return self._call(x, gamma, beta, eps, stats, training=True)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, = self._arrays(x)
        gamma, beta, rm, rv = self._params(x, gamma, beta, running_mean, running_var)
        return np.array(self._call(x, gamma, beta, eps, (rm, rv), training=False)[0])

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], rm.dtype)
        _, (mean, var) = self._call(x, ones, 0 * ones, 1e-3, (rm, rv), training=True, momentum=momentum)
        return np.array(mean), np.array(var)


class KerasMixedBf16Candidate(KerasCandidate):
    """The ``mixed_bfloat16`` policy: bfloat16 x and y, float32 variables."""

    name = "keras-mixed-bf16"
    dtypes = ("bfloat16",)
    param_dtype = "float32"
    dtype_policy = "mixed_bfloat16"
