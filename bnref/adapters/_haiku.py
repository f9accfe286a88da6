"""Haiku: ``haiku.BatchNorm`` (channels-last), gradients by ``jax.vjp``.

The module is built with ``create_scale=True, create_offset=True`` (gamma and beta are its
``scale`` and ``offset`` parameters, shaped ``(1, ..., 1, C)``) under ``hk.transform_with_state``;
``eps`` and ``decay_rate`` are the oracle's. Haiku computes the batch variance in one pass,
``E[x^2] - E[x]^2``, in x's dtype, without clamping it at 0.

Running statistics: each is a ``hk.ExponentialMovingAverage`` with Adam's zero-debiasing,
``hidden <- decay * hidden + (1 - decay) * value`` and ``average = hidden / (1 - decay**counter)``;
``forward_eval`` normalizes with ``average``. The first steps of a fresh average are thus not a
one-step update of given statistics (the first one returns the batch's value whatever came
before). ``update_running`` is the step of an average long past its start: ``counter`` is set
to 2**30, where ``decay**counter`` is 0 and the division by ``1 - decay**counter`` is exact, so
the step is ``decay * old + (1 - decay) * batch`` from the given statistics (``hidden`` and
``average`` both set to them). ``update_running_steps`` is the layer's own average from a fresh
state (counter 0, hidden 0, whatever running statistics are given): the oracle measures it as a
debiased moving average and checks it as one. 64-bit mode is on.
"""
from __future__ import annotations

import numpy as np

from bnref.adapters._jax import JaxEvalMixin, JaxVjpMixin

#: an EMA step counter far past the start: decay**counter underflows to 0 for every decay < 1 the oracle uses
STEADY_COUNTER = 2 ** 30


class HaikuCandidate(JaxEvalMixin, JaxVjpMixin):
    name = "haiku"

    def __init__(self):
        jax = self._start_jax()
        import haiku as hk

        self._hk = hk
        self.version = f"dm-haiku {hk.__version__}, jax {jax.__version__}"

    def _transformed(self, eps, decay_rate, is_training):
        hk = self._hk

        def layer(x):
            bn = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=decay_rate, eps=eps,
                              data_format="channels_last", name="batch_norm")
            return bn(x, is_training=is_training)

        return hk.transform_with_state(layer)

    def _variables(self, x, gamma, beta, running_mean=None, running_var=None):
        """(params, state) for ``haiku.BatchNorm`` named ``batch_norm``."""
        shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
        params = {"batch_norm": {"scale": gamma.reshape(shape), "offset": beta.reshape(shape)}}
        if running_mean is None:
            return params, {}
        counter = self._jnp.asarray(STEADY_COUNTER, self._jnp.int32)
        state = {f"batch_norm/~/{name}_ema": {"counter": counter, "hidden": value.reshape(shape),
                                              "average": value.reshape(shape)}
                 for name, value in (("mean", running_mean), ("var", running_var))}
        return params, state

    def _apply(self, x, gamma, beta, eps, *, is_training=True, stats=(None, None), decay_rate=0.99):
        """(y, new state) of one call."""
        params, state = self._variables(x, gamma, beta, *stats)
        transformed = self._transformed(eps, decay_rate, is_training)
        if not state:
            _, state = transformed.init(None, x)
        return transformed.apply(params, state, None, x)

    def _y(self, x, gamma, beta, eps):
        return self._apply(x, gamma, beta, eps)[0]

    def _eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self._apply(x, gamma, beta, eps, is_training=False, stats=(running_mean, running_var))[0]

    def update_running(self, x, running_mean, running_var, momentum):
        x, = self._arrays(x)
        rm, rv = self._params(x, running_mean, running_var)
        ones = self._jnp.ones(x.shape[-1], rm.dtype)
        _, state = self._apply(x, ones, 0 * ones, 1e-5, stats=(rm, rv), decay_rate=momentum)
        return tuple(np.array(state[f"batch_norm/~/{name}_ema"]["average"]).reshape(-1) for name in ("mean", "var"))

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        if step is not None:
            raise ValueError("haiku's moving averages start from a fresh state (counter 0): step must be None")
        xs = [self._arrays(x)[0] for x in xs]
        ones = self._jnp.ones(xs[0].shape[-1], self._params(xs[0], running_mean)[0].dtype)
        params, _ = self._variables(xs[0], ones, 0 * ones)
        transformed = self._transformed(1e-5, momentum, True)
        _, state = transformed.init(None, xs[0])
        for x in xs:
            _, state = transformed.apply(params, state, None, x)
        return tuple(np.array(state[f"batch_norm/~/{name}_ema"]["average"]).reshape(-1) for name in ("mean", "var"))
