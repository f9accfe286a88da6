"""Equinox: ``equinox.nn.BatchNorm`` (channels-first), gradients by ``jax.vjp``.

Equinox's layer sees one sample at a time, shape ``(C, ...)``, and pools its statistics
over a named ``jax.vmap`` axis: the adapter maps it over axis 0 of x (``axis_name="batch"``).
Its two running-statistics modes are two adapters:

* ``equinox`` -- ``mode="ema"``: the running statistics are updated *and used* in training
  (``mean = momentum * running + (1 - momentum) * batch``) except on the layer's first call,
  which normalizes with the batch statistics and stores them. ``forward_train`` and
  ``backward`` are that first call (fresh state: batch norm proper); ``update_running`` is a
  later call (``first_time`` False) from the given running statistics.
* ``equinox-batch`` -- ``mode="batch"``: training always normalizes with the batch statistics;
  the state holds a hidden running average and a step counter, and inference divides the hidden
  average by ``1 - momentum**counter`` (zero-debiasing). ``update_running`` returns the hidden
  average after one step and ``forward_eval`` runs with the counter at 0 (no debiasing), so
  both take the running statistics the protocol hands over as they are.

``eps`` and ``momentum`` are static fields of the module; the layer is built inside the
jitted function so that eps can be traced (one compilation per shape, not per eps).
Parameters and state are in x's dtype (``dtype=x.dtype``); 64-bit mode is on.
"""
from __future__ import annotations

import warnings

import numpy as np

from bnref.adapters._jax import JaxEvalMixin, JaxVjpMixin

BATCH_AXIS = "batch"


class EquinoxCandidate(JaxEvalMixin, JaxVjpMixin):
    name = "equinox"
    channel_axis = 1
    mode = "ema"

    def __init__(self):
        jax = self._start_jax()
        import equinox as eqx

        self._eqx = eqx
        self.version = f"equinox {eqx.__version__}, jax {jax.__version__}"

    def _layer(self, x, gamma, beta, eps, momentum=0.99):
        """The layer with gamma, beta as its weight and bias, and its fresh state."""
        eqx = self._eqx
        with warnings.catch_warnings():
            # eps is a tracer in a static field: the module lives and dies inside one trace
            warnings.filterwarnings("ignore", message="A JAX array is being set as static")
            layer, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
                x.shape[1], BATCH_AXIS, eps=eps, momentum=momentum, mode=self.mode, dtype=x.dtype)
        return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (gamma, beta)), state

    def _run(self, layer, state, x, inference):
        call = lambda xi, s: layer(xi, s, inference=inference)  # noqa: E731
        return self._jax.vmap(call, axis_name=BATCH_AXIS, in_axes=(0, None), out_axes=(0, None))(x, state)

    def _y(self, x, gamma, beta, eps):
        layer, state = self._layer(x, gamma, beta, eps)
        return self._run(layer, state, x, inference=False)[0]

    def _running_index(self, layer):
        return layer.ema_state_index if self.mode == "ema" else layer.batch_state_index

    def _eval(self, x, gamma, beta, running_mean, running_var, eps):
        layer, state = self._layer(x, gamma, beta, eps)
        state = state.set(self._running_index(layer), (running_mean, running_var))
        return self._run(layer, state, x, inference=True)[0]

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[1], rm.dtype)
        layer, state = self._layer(x, ones, 0 * ones, 1e-5, momentum=momentum)
        if self.mode == "ema":
            # past the first call: the first one overwrites the running statistics with the batch's
            state = state.set(layer.ema_first_time_index, self._jnp.array(False))
        state = state.set(self._running_index(layer), (rm, rv))
        _, state = self._run(layer, state, x, inference=False)
        mean, var = state.get(self._running_index(layer))
        return np.array(mean), np.array(var)


class EquinoxBatchCandidate(EquinoxCandidate):
    name = "equinox-batch"
    mode = "batch"
