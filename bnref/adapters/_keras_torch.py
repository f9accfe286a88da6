"""Keras 3 on the PyTorch backend: ``keras.layers.BatchNormalization``, gradients through ``torch.autograd``.

The layer (``axis=-1``, channels-last, Keras' default) runs through ``stateless_call`` as in the
``keras`` adapter, with torch tensors as its variables, so that gamma and beta are leaves of torch's
graph; ``backward`` and ``double_backward`` are :class:`~bnref.adapters._torch.TorchCandidate`'s,
on this forward.

``KERAS_BACKEND`` must be ``torch`` before Keras is first imported, and Keras cannot switch
backends afterwards: the adapter sets it when Keras is not imported yet and refuses (ImportError)
a Keras already running on another backend, e.g. after the ``keras`` adapter (JAX) in the same
process. Run it in a process of its own (``bnref check keras-torch``).
"""
from __future__ import annotations

import os

from bnref._threads import single_threaded
from bnref.adapters._keras import KerasCandidate
from bnref.adapters._torch import TorchCandidate


class KerasTorchCandidate(TorchCandidate):
    name = "keras-torch"
    dtypes = ("float32", "float64")
    channel_axis = -1
    # the layer and its stateless call are the keras adapter's, on torch tensors (statistics always given)
    dtype_policy = None
    _layer = KerasCandidate._layer
    _call = KerasCandidate._call

    def __init__(self):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        if keras.backend.backend() != "torch":
            raise ImportError(f"the keras-torch adapter needs KERAS_BACKEND=torch before Keras is imported; Keras "
                              f"runs on {keras.backend.backend()!r} in this process (run the adapter in a fresh one)")
        super().__init__()
        self._keras = keras
        self._layers: dict = {}
        self.version = f"keras {keras.__version__} (torch {self._torch.__version__})"

    def _stats(self, x, running_mean, running_var):
        return self._param(running_mean, x), self._param(running_var, x)

    def _y(self, x, gamma, beta, eps):
        stats = (self._torch.zeros_like(gamma), self._torch.ones_like(gamma))
        return self._call(x, gamma, beta, eps, training=True, stats=stats)[0]

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        stats = self._stats(x_, running_mean, running_var)
        with self._torch.no_grad():
            return self._np(self._call(x_, self._param(gamma, x_), self._param(beta, x_), eps, training=False,
                                       stats=stats)[0])

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        stats = self._stats(x_, running_mean, running_var)
        ones = self._torch.ones_like(stats[0])
        with self._torch.no_grad():
            _, (mean, var) = self._call(x_, ones, 0 * ones, 1e-3, training=True, stats=stats, momentum=momentum)
        return self._np(mean), self._np(var)
