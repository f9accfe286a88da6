"""Keras 2 (``tf_keras``): ``tf_keras.layers.BatchNormalization``, gradients by ``tf.GradientTape``.

The layer (``axis=-1``, channels-last) takes one of two code paths, with different running
variances, so each has its adapter:

* ``tf-keras``: the default ``fused=None`` on what it fuses, 4D and 5D inputs in float32 or half
  precision: ``tf.compat.v1.nn.fused_batch_norm`` (NHWC/NDHWC). The layer keeps the kernel's
  Bessel-corrected batch variance in its moving variance (m - 1). Half x comes with float32
  variables (the layer's ``_param_dtype``), the protocol's ``param_dtype = "float32"``.
* ``tf-keras-nonfused``: ``fused=False``, the layer's own ops (``tf.nn.moments``,
  ``tf.nn.batch_normalization``), what the default gives 2D and 3D inputs and float64 at every
  rank; its moving variance takes the biased batch variance (m).

gamma and beta are the layer's own variables, assigned the
oracle's values before each call, which the tapes of :class:`~bnref.adapters._tf.TfTapeMixin`
watch. eps is the layer's ``epsilon`` attribute, set before each call; the fused kernel takes it,
and the moving-average step ``1 - momentum``, as float32 attributes, and the non-fused update
converts ``1 - momentum`` to a float32 tensor before casting it to the variable's dtype.

Running statistics: ``moving = momentum * moving + (1 - momentum) * batch``.
"""
from __future__ import annotations

from bnref.adapters._tf import TfTapeMixin


class TfKerasCandidate(TfTapeMixin):
    name = "tf-keras"
    dtypes = ("float32", "float16", "bfloat16")
    ranks = (4, 5)
    param_dtype = "float32"
    #: the layer's ``fused`` argument
    fused = None

    def __init__(self):
        tf = self._start_tf()
        import tf_keras

        self._tf_keras = tf_keras
        self._layers: dict = {}
        self.version = f"tf-keras {tf_keras.__version__} (tensorflow {tf.__version__})"

    def _layer(self, x, momentum=0.99):
        """A built layer per (shape, dtype, momentum); eps is set per call."""
        key = (tuple(x.shape), x.dtype.name, momentum)
        if key not in self._layers:
            layer = self._tf_keras.layers.BatchNormalization(axis=-1, momentum=momentum, fused=self.fused,
                                                             dtype=x.dtype.name)
            layer.build(x.shape)
            self._layers[key] = layer
        return self._layers[key]

    def _sources(self, x, gamma, beta):
        """The layer's gamma and beta variables, holding the given values."""
        layer = self._layer(x)
        layer.gamma.assign(self._param(gamma, x))
        layer.beta.assign(self._param(beta, x))
        return layer.gamma, layer.beta

    def _y(self, x, gamma, beta, eps):
        # gamma and beta are the layer's variables (_sources), which the layer reads itself
        layer = self._layer(x)
        layer.epsilon = eps
        return layer(x, training=True)

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        layer = self._layer(x_)
        for variable, value in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                                   (gamma, beta, running_mean, running_var)):
            variable.assign(self._param(value, x_))
        layer.epsilon = eps
        return self._np(layer(x_, training=False))

    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        layer = self._layer(x_, momentum)
        layer.moving_mean.assign(self._param(running_mean, x_))
        layer.moving_variance.assign(self._param(running_var, x_))
        layer(x_, training=True)
        return self._np(layer.moving_mean), self._np(layer.moving_variance)


class TfKerasNonFusedCandidate(TfKerasCandidate):
    """``fused=False``: the path of 2D and 3D inputs, and of float64, under the default."""

    name = "tf-keras-nonfused"
    dtypes = ("float32", "float64")
    ranks = (2, 3, 4, 5)
    param_dtype = None
    fused = False
