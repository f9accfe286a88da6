"""Keras 3: ``keras.layers.BatchNormalization`` on the JAX backend, gradients by ``jax.vjp``.

``KERAS_BACKEND`` must be ``jax`` before Keras is first imported; the adapter
sets it when Keras is not imported yet and refuses another backend.

``keras-mixed-bf16`` builds the layer under the ``mixed_bfloat16`` dtype policy: float32
variables (gamma, beta, moving statistics), bfloat16 compute dtype and output. Keras'
``BatchNormalization`` computes in float32 for half inputs and casts y back.
"""
from __future__ import annotations

import os

import numpy as np

from bnref.adapters._jax import JaxVjpMixin


class KerasCandidate(JaxVjpMixin):
    name = "keras"
    environment = {"KERAS_BACKEND": "jax"}
    #: the layer's dtype policy for x's dtype: None = the dtype's own name
    dtype_policy = None

    def __init__(self):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        jax = self._start_jax()
        import keras

        if keras.backend.backend() != "jax":
            raise ImportError(f"the keras adapter needs KERAS_BACKEND=jax; Keras runs on "
                              f"{keras.backend.backend()!r}")
        self._keras = keras
        self._layers: dict = {}
        self.version = f"keras {keras.__version__} (jax {jax.__version__})"

    def _layer(self, shape, dtype, momentum):
        """A built layer per (shape, dtype, momentum); eps is set per call (it may be a JAX tracer)."""
        key = (shape, str(dtype), momentum)
        if key not in self._layers:
            layer = self._keras.layers.BatchNormalization(axis=-1, momentum=momentum,
                                                          dtype=self.dtype_policy or str(dtype))
            layer.build(shape)
            self._layers[key] = layer
        return self._layers[key]

    def _call(self, x, gamma, beta, eps, *, training, stats=None, momentum=0.99):
        """(y, (new_mean, new_var)) with gamma/beta as trainable and the stats as non-trainable state."""
        layer = self._layer(tuple(x.shape), x.dtype, momentum)
        layer.epsilon = eps
        channels, param_dtype = x.shape[-1], self.param_dtype or x.dtype
        if stats is None:
            stats = (self._jnp.zeros(channels, param_dtype), self._jnp.ones(channels, param_dtype))
        trainable = {"gamma": gamma, "beta": beta}
        ordered = [trainable[v.name] for v in layer.trainable_variables]
        non_trainable = {"moving_mean": stats[0], "moving_variance": stats[1]}
        y, state = layer.stateless_call(ordered, [non_trainable[v.name] for v in layer.non_trainable_variables],
                                        x, training=training)
        new = dict(zip((v.name for v in layer.non_trainable_variables), state))
        return y, (new["moving_mean"], new["moving_variance"])

    def _y(self, x, gamma, beta, eps):
        return self._call(x, gamma, beta, eps, training=True)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x, = self._arrays(x)
        gamma, beta, rm, rv = self._params(x, gamma, beta, running_mean, running_var)
        return np.array(self._call(x, gamma, beta, eps, training=False, stats=(rm, rv))[0])

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], rm.dtype)
        _, (mean, var) = self._call(x, ones, 0 * ones, 1e-3, training=True, stats=(rm, rv),
                                    momentum=momentum)
        return np.array(mean), np.array(var)


class KerasMixedBf16Candidate(KerasCandidate):
    """The ``mixed_bfloat16`` policy: bfloat16 x and y, float32 variables."""

    name = "keras-mixed-bf16"
    dtypes = ("bfloat16",)
    param_dtype = "float32"
    dtype_policy = "mixed_bfloat16"
