"""Keras 3's ``keras.layers.BatchNormalization`` driven through ``stateless_call``, on any backend.

What the ``keras`` (JAX), ``keras-torch`` and ``keras-tensorflow`` adapters share: Keras started on
the backend the adapter declares in ``environment``, and one built layer (``axis=-1``, channels-last,
Keras' default) per shape, dtype and momentum, called with the backend's arrays as its variables so
that gamma and beta stay differentiable in the backend's own autodiff.

``KERAS_BACKEND`` must name the backend before Keras is first imported, and Keras cannot switch
backends afterwards: :meth:`KerasLayerMixin._start_keras` sets it when Keras is not imported yet and
refuses (ImportError) a Keras already running on another backend, e.g. the ``keras`` adapter (JAX)
after ``keras-torch`` in one process. Run each in a process of its own (``bnref check NAME``).
"""
from __future__ import annotations

import os


class KerasLayerMixin:
    """The layer and its stateless call; a subclass declares ``environment = {"KERAS_BACKEND": ...}``."""

    channel_axis = -1
    #: the layer's dtype policy for x's dtype: None = the dtype's own name
    dtype_policy = None

    def _start_keras(self):
        """Import Keras on the declared backend (ImportError if it already runs on another)."""
        backend = self.environment["KERAS_BACKEND"]
        os.environ.setdefault("KERAS_BACKEND", backend)
        import keras

        if keras.backend.backend() != backend:
            raise ImportError(f"the {self.name} adapter needs KERAS_BACKEND={backend} before Keras is imported; "
                              f"Keras runs on {keras.backend.backend()!r} in this process (run the adapter in a "
                              f"fresh one)")
        self._keras = keras
        self._layers: dict = {}
        return keras

    def _layer(self, shape, dtype, momentum):
        """A built layer per (shape, dtype, momentum); eps is set per call (it may be a traced value)."""
        dtype = self._keras.backend.standardize_dtype(dtype)
        key = (shape, dtype, momentum)
        if key not in self._layers:
            layer = self._keras.layers.BatchNormalization(axis=-1, momentum=momentum,
                                                          dtype=self.dtype_policy or dtype)
            layer.build(shape)
            self._layers[key] = layer
        return self._layers[key]

    def _call(self, x, gamma, beta, eps, stats, *, training, momentum=0.99):
        """(y, (new_mean, new_var)): gamma/beta as the trainable variables, ``stats`` (mean, var) as the
        non-trainable ones, all arrays of the backend."""
        layer = self._layer(tuple(x.shape), x.dtype, momentum)
        layer.epsilon = eps
        trainable = {"gamma": gamma, "beta": beta}
        ordered = [trainable[v.name] for v in layer.trainable_variables]
        non_trainable = {"moving_mean": stats[0], "moving_variance": stats[1]}
        y, state = layer.stateless_call(ordered, [non_trainable[v.name] for v in layer.non_trainable_variables],
                                        x, training=training)
        new = dict(zip((v.name for v in layer.non_trainable_variables), state))
        return y, (new["moving_mean"], new["moving_variance"])
