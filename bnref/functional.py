r"""Batch normalization: the public functions (checks -> canonical layout -> kernels).

Notation, per channel ``c`` over the ``m`` values that share it (every axis but
``channel_axis``):

.. math::

    \mu = \tfrac1m \textstyle\sum_i x_i,\quad
    \sigma^2 = \tfrac1m \textstyle\sum_i (x_i-\mu)^2,\quad
    \mathrm{invstd} = (\sigma^2+\epsilon)^{-1/2},\quad
    \hat x_i = (x_i-\mu)\,\mathrm{invstd},\quad
    y_i = \gamma\,\hat x_i + \beta .

Statistics (``mean``, ``var``) are returned and accepted in float64, the
accumulation dtype, also for float32 and half-precision data: a float32 mean of data with a large
offset would lose the digits that ``backward`` needs to rebuild ``xhat``.
Full-size outputs have the dtype of ``x`` and its memory layout.

Empty inputs: an input with no values gives empty outputs and zero sums wherever the
math allows (inference; training without channels). Training statistics of channels
that hold fewer than two values are undefined: a ValueError.
"""
from __future__ import annotations

import numpy as np

from bnref import _checks, _core, _kernels

__all__ = ["forward_train", "forward_eval", "backward", "backward_eval", "double_backward",
           "update_running"]


def forward_train(x, gamma, beta, eps=1e-5, channel_axis=1, *, out=None):
    r"""Training-mode batch norm: normalize with the batch's own statistics.

    .. math:: y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta,
        \quad \mu,\ \sigma^2 \text{ (biased, divide by } m) \text{ over every axis but } \texttt{channel\_axis}

    Args:
        x: ``(N, C, *spatial)`` with ``channel_axis=1`` or ``(N, *spatial, C)`` with
            ``channel_axis=-1``; any rank >= 2, float32, float64, float16 or bfloat16
            (``ml_dtypes.bfloat16``), any strides. Half-precision data is widened exactly, and ``y``
            is the float64 result rounded once to x's dtype (nearest, ties to even).
        gamma, beta: ``(C,)``, the dtype of ``x``; for float16 or bfloat16 ``x`` also float32
            (half activations with float32 parameters, as PyTorch's mixed precision).
        eps: > 0, added to the variance inside the square root.
        channel_axis: the feature axis (1 = PyTorch, -1 = Flax/Keras).
        out: optional buffer for ``y`` (shape and dtype of ``x``), reused instead of allocating
            (if the call raises, its contents are unspecified).

    Returns:
        ``(y, mean, var)``: ``y`` like ``x``; ``mean`` and the biased ``var`` as ``(C,)`` float64.
        Without channels (``C = 0``) they are empty.

    Raises:
        TypeError: non-float dtypes, or parameters in a dtype the table of :mod:`bnref.dtypes` does not
        allow with x's (the message names the allowed ones). ValueError: rank < 2, shape mismatch, eps <= 0
        or non-finite, channel_axis out of range, an empty batch or a single value per channel,
        non-finite data.
    """
    prep = _core.Prepared(x, channel_axis, training=True)
    gamma = prep.parameter("gamma", gamma)
    beta = prep.parameter("beta", beta)
    eps = _checks.eps_value(eps)
    width = prep.fused_width(1, _kernels.CHANNEL_GROUP)
    if width:  # x fits in cache a few channels at a time
        return _core.forward_in_one_pass(prep, gamma, beta, eps, width, out)
    return _core.forward_in_two_passes(prep, gamma, beta, eps, out)


def forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, channel_axis=1, *, out=None):
    r"""Inference-mode batch norm: an affine map with fixed statistics.

    .. math:: y = \gamma\,\frac{x-\mu_{run}}{\sqrt{\sigma^2_{run}+\epsilon}} + \beta

    Args:
        x: any rank >= 2 (see :func:`forward_train`); any number of values per channel.
        gamma, beta: ``(C,)``, as in :func:`forward_train`.
        running_mean, running_var: ``(C,)`` float32 or float64 (or x's dtype, if half); ``running_var >= 0``.
        eps, channel_axis, out: as in :func:`forward_train`.

    Returns:
        ``y``, shape, dtype and layout of ``x`` (empty if ``x`` is). Non-finite values in ``x`` propagate.
    """
    prep = _core.Prepared(x, channel_axis, training=False)
    gamma = prep.vector("gamma", gamma)
    beta = prep.vector("beta", beta)
    running_mean, running_var = prep.statistics("running_mean", running_mean, "running_var", running_var)
    eps = _checks.eps_value(eps)
    y, y3, finish = prep.output(out)
    prep.combine(running_mean, gamma * _core.invstd(running_var, eps), beta, y3)
    return finish()


def backward(dy, x, gamma, mean, var, eps=1e-5, channel_axis=1, *, out=None):
    r"""Gradients of :func:`forward_train` (statistics differentiated through).

    .. math::
        d\beta = \textstyle\sum_i dy_i,\qquad d\gamma = \sum_i dy_i\,\hat x_i,\qquad
        dx_i = \frac{\gamma\,\mathrm{invstd}}{m}\Big(m\,dy_i - \sum_j dy_j - \hat x_i \sum_j dy_j \hat x_j\Big)

    Args:
        dy: cotangent of ``y``, shape and dtype of ``x``.
        x, gamma, eps, channel_axis: as given to :func:`forward_train`.
        mean, var: ``(C,)`` as returned by :func:`forward_train` (``xhat`` is recomputed from them).
        out: optional buffer for ``dx`` (if the call raises, its contents are unspecified).

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` like ``x``; ``dgamma``, ``dbeta`` ``(C,)`` in gamma's dtype.
    """
    prep, dy3, gamma, mean, var, eps = _core.prepare_backward(dy, x, gamma, mean, var, eps, channel_axis,
                                                              training=True)
    width = prep.fused_width(2)
    if width:  # x and dy fit in cache a few channels at a time
        dx, sum_dy, sum_dy_xhat = _core.backward_in_one_pass(prep, dy3, gamma, mean, var, eps, width, out)
    else:
        dx, sum_dy, sum_dy_xhat = _core.backward_in_two_passes(prep, dy3, gamma, mean, var, eps, out)
    return dx, _core.narrow(sum_dy_xhat, gamma.dtype), _core.narrow(sum_dy, gamma.dtype)


def backward_eval(dy, x, gamma, running_mean, running_var, eps=1e-5, channel_axis=1, *, out=None):
    r"""Gradients of :func:`forward_eval` (the statistics are constants).

    .. math:: dx_i = \gamma\,\mathrm{invstd}_{run}\,dy_i,\quad d\gamma = \textstyle\sum_i dy_i\,\hat x_i,
        \quad d\beta = \sum_i dy_i,\quad \hat x_i = (x_i - \mu_{run})\,\mathrm{invstd}_{run}

    Returns ``(dx, dgamma, dbeta)`` with the shapes of :func:`backward` (for an empty ``x``:
    an empty ``dx`` and zero sums).
    """
    prep, dy3, gamma, running_mean, running_var, eps = _core.prepare_backward(
        dy, x, gamma, running_mean, running_var, eps, channel_axis, training=False)
    invstd = _core.invstd(running_var, eps)
    sums = prep.sums(running_mean, invstd, dy3)
    zeros = np.zeros_like(invstd)
    dx, dx3, finish = prep.output(out)
    prep.combine(running_mean, zeros, zeros, dx3, dy3, gamma.astype(np.float64) * invstd)
    return finish(), _core.narrow(sums[1], gamma.dtype), _core.narrow(sums[0], gamma.dtype)


def double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps=1e-5, channel_axis=1):
    r"""Vector-Jacobian product of :func:`backward` with respect to ``(x, gamma, dy)``.

    With ``L = <ddx, dx> + <ddgamma, dgamma> + <ddbeta, dbeta>`` and the statistics
    differentiated through (PyTorch's batch-norm double backward), writing
    ``s = invstd``, ``M(v) = sum(v)/m``, ``P = sum(dy xhat)``, ``Q = sum(ddx xhat)``,
    ``R = sum(ddx dy)``:

    .. math::
        g_\gamma &= s\,(R - m\,M(dy)M(ddx) - PQ/m) \\
        g_{dy} &= \gamma s\,(ddx - M(ddx) - \hat x\,Q/m) + dd\gamma\,\hat x + dd\beta \\
        g_x &= \tfrac{\gamma s^2}{m}\big[\hat x\,(3PQ/m - R + m M(dy)M(ddx))
               - Q\,(dy - M(dy)) - P\,(ddx - M(ddx))\big]
               + dd\gamma\, s\,(dy - M(dy) - \hat x\,P/m)

    Args:
        ddx: cotangent of ``dx`` (shape of ``x``), or None for zeros.
        ddgamma, ddbeta: cotangents of ``dgamma``, ``dbeta``: ``(C,)``, or None for zeros.
        dy, x, gamma, mean, var, eps, channel_axis: as given to :func:`backward`.

    Returns:
        ``(gx, ggamma, gdy)``: ``gx`` and ``gdy`` like ``x``, ``ggamma`` ``(C,)`` in gamma's dtype.
    """
    prep, dy3, gamma, mean, var, eps = _core.prepare_backward(dy, x, gamma, mean, var, eps, channel_axis,
                                                              training=True)
    gamma_dtype = gamma.dtype
    gamma = gamma.astype(np.float64, copy=False)
    ddx3 = prep.like_x("ddx", np.zeros_like(prep.x) if ddx is None else ddx)
    zeros_c = np.zeros(prep.channels, dtype=prep.x.dtype)
    ddgamma = prep.vector("ddgamma", zeros_c if ddgamma is None else ddgamma)
    ddbeta = prep.vector("ddbeta", zeros_c if ddbeta is None else ddbeta)
    s = _core.invstd(var, eps)
    sums = prep.sums(mean, s, dy3, ddx3)
    _checks.finite_stats("the sums over dy and ddx", sums.sum(axis=0), prep.axis)
    m = prep.count
    mean_dy, P, mean_ddx, Q, R = sums[0] / m, sums[1], sums[2] / m, sums[3], sums[4]
    g = gamma
    ggamma = s * (R - m * mean_dy * mean_ddx - P * Q / m)
    # gdy = g s ddx + (ddgamma s - g s^2 Q/m) (x - mean) + (ddbeta - g s M(ddx))
    gdy, gdy3, finish_gdy = prep.output(None)
    prep.combine(mean, ddgamma * s - g * s * s * Q / m, ddbeta - g * s * mean_ddx, gdy3, ddx3, g * s)
    # gx, expanded in (x - mean), dy, ddx and a constant:
    c = g * s * s / m
    k_xmu = s * (c * (3 * P * Q / m - R + m * mean_dy * mean_ddx) - ddgamma * s * P / m)
    k_dy = -c * Q + ddgamma * s
    k_ddx = -c * P
    k_const = c * (Q * mean_dy + P * mean_ddx) - ddgamma * s * mean_dy
    gx, gx3, finish_gx = prep.output(None)
    prep.combine(mean, k_xmu, k_const, gx3, dy3, k_dy, ddx3, k_ddx)
    return finish_gx(), _core.narrow(ggamma, gamma_dtype), finish_gdy()


def update_running(running_mean, running_var, mean, var, count, momentum=0.1, *, unbiased=True):
    r"""One step of the running statistics (PyTorch convention), returned as new arrays.

    .. math::
        \mu_{run} \leftarrow (1-\text{momentum})\,\mu_{run} + \text{momentum}\,\mu_B,\qquad
        \sigma^2_{run} \leftarrow (1-\text{momentum})\,\sigma^2_{run}
            + \text{momentum}\,\tfrac{m}{m-1}\,\sigma^2_B

    ``momentum`` weighs the *new* batch statistic. Keras and Flax write the same update
    with ``momentum_keras = 1 - momentum`` weighing the *old* value (their default 0.99
    is ``momentum=0.01`` here) and store the biased variance: pass ``unbiased=False``.

    Args:
        running_mean, running_var: ``(C,)`` of any dtype bnref takes (not modified).
        mean, var: ``(C,)`` batch statistics from :func:`forward_train` (``var`` biased).
        count: ``m``, the number of values per channel in the batch (>= 2).
        momentum: in [0, 1]. unbiased: apply ``m/(m-1)`` to the variance (default, as PyTorch).

    Returns:
        ``(new_mean, new_var)`` in the dtype of ``running_mean`` / ``running_var`` (rounded once).
    """
    running_mean = _checks.as_float_array("running_mean", running_mean)
    if running_mean.ndim != 1:
        raise ValueError(f"running_mean must have shape (C,); got {running_mean.shape}")
    channels = running_mean.shape[0]
    running_var = _checks.per_channel("running_var", running_var, channels)
    mean = _checks.per_channel("mean", mean, channels)
    var = _core.nonnegative("var", _checks.per_channel("var", var, channels))
    count = _checks.count_value(count)
    momentum = _checks.momentum_value(momentum)
    new_mean, new_var = _core.running_convention(unbiased).update_running(running_mean, running_var, mean, var,
                                                                          count, momentum)
    return _core.narrow(new_mean, running_mean.dtype), _core.narrow(new_var, running_var.dtype)
