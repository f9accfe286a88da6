"""Keras 3 on the PyTorch backend: ``keras.layers.BatchNormalization``, gradients through ``torch.autograd``.

The layer runs through :class:`~bnref.adapters._keras_layer.KerasLayerMixin`'s ``stateless_call``,
as in the ``keras`` adapter, with torch tensors as its variables, so that gamma and beta are leaves
of torch's graph; ``backward`` and ``double_backward`` are :class:`~bnref.adapters._torch.TorchCandidate`'s,
on this forward. ``KERAS_BACKEND=torch`` must hold before Keras is first imported: run the adapter
in a process of its own (``bnref check keras-torch``).
"""
from __future__ import annotations

from bnref._threads import single_threaded
from bnref.adapters._keras_layer import KerasLayerMixin
from bnref.adapters._torch import TorchCandidate


class KerasTorchCandidate(KerasLayerMixin, TorchCandidate):
    name = "keras-torch"
    dtypes = ("float32", "float64")
    channel_axis = -1
    environment = {"KERAS_BACKEND": "torch"}

    def __init__(self):
        keras = self._start_keras()
        super().__init__()
        self.version = f"keras {keras.__version__} (torch {self._torch.__version__})"

    def _stats(self, x, running_mean, running_var):
        return self._param(running_mean, x), self._param(running_var, x)

    def _y(self, x, gamma, beta, eps):
        stats = (self._torch.zeros_like(gamma), self._torch.ones_like(gamma))
        return self._call(x, gamma, beta, eps, stats, training=True)[0]

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        stats = self._stats(x_, running_mean, running_var)
        with self._torch.no_grad():
            return self._np(self._call(x_, self._param(gamma, x_), self._param(beta, x_), eps, stats,
                                       training=False)[0])

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        stats = self._stats(x_, running_mean, running_var)
        ones = self._torch.ones_like(stats[0])
        with self._torch.no_grad():
            _, (mean, var) = self._call(x_, ones, 0 * ones, 1e-3, stats, training=True, momentum=momentum)
        return self._np(mean), self._np(var)
