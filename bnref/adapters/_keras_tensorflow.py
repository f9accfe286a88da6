"""Keras 3 on the TensorFlow backend: ``keras.layers.BatchNormalization``, gradients by ``tf.GradientTape``.

The layer runs through :class:`~bnref.adapters._keras_layer.KerasLayerMixin`'s ``stateless_call``,
as in the ``keras`` adapter, with TensorFlow tensors as its variables, which the tapes of
:class:`~bnref.adapters._tf.TfTapeMixin` watch. On TensorFlow, Keras' ``ops.moments`` is
``tf.nn.moments``: the mean, then the mean of ``(x - mean)**2`` with the mean under
``tf.stop_gradient``. ``KERAS_BACKEND=tensorflow`` must hold before Keras is first imported: run
the adapter in a process of its own (``bnref check keras-tensorflow``).
"""
from __future__ import annotations

from bnref.adapters._keras_layer import KerasLayerMixin
from bnref.adapters._tf import TfTapeMixin


class KerasTensorflowCandidate(KerasLayerMixin, TfTapeMixin):
    name = "keras-tensorflow"
    environment = {"KERAS_BACKEND": "tensorflow"}

    def __init__(self):
        keras = self._start_keras()
        tf = self._start_tf()
        self.version = f"keras {keras.__version__} (tensorflow {tf.__version__})"

    def _y(self, x, gamma, beta, eps):
        stats = (self._tf.zeros_like(gamma), self._tf.ones_like(gamma))
        return self._call(x, gamma, beta, eps, stats, training=True)[0]

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        params = [self._param(a, x_) for a in (gamma, beta, running_mean, running_var)]
        return self._np(self._call(x_, *params[:2], eps, params[2:], training=False)[0])

    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        stats = (self._param(running_mean, x_), self._param(running_var, x_))
        ones = self._tf.ones_like(stats[0])
        _, (mean, var) = self._call(x_, ones, 0 * ones, 1e-3, stats, training=True, momentum=momentum)
        return self._np(mean), self._np(var)
