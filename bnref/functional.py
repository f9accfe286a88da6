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
accumulation dtype, also for float32 data: a float32 mean of data with a large
offset would lose the digits that ``backward`` needs to rebuild ``xhat``.
Full-size outputs have the dtype of ``x`` and its memory layout.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bnref import _checks, _kernels
from bnref._layout import Layout, layout_of

__all__ = ["forward_train", "forward_eval", "backward", "backward_eval", "double_backward",
           "update_running"]


class _Prepared:
    """Validated x, its channel axis, count m and canonical (A, C, B) view."""

    def __init__(self, x, channel_axis, *, training: bool, name: str = "x"):
        self.x = _checks.x_array(x, name)
        self.axis = _checks.channel_axis(channel_axis, self.x.ndim)
        self.channels = self.x.shape[self.axis]
        self.count = (_checks.training_count(self.x, self.axis) if training
                      else (self.x.size // self.channels if self.channels else 0))
        self.layout: Layout = layout_of(self.x, self.axis)
        self.x3 = self.layout.view(self.x)

    def vector(self, name, value, *, stats: bool = False) -> np.ndarray:
        """A (C,) argument as float64; parameters must match x's dtype, statistics may be either."""
        return self.parameter(name, value, stats=stats).astype(np.float64, copy=False)  # kernels only read it

    def parameter(self, name, value, *, stats: bool = False) -> np.ndarray:
        """A checked (C,) argument in its own dtype, for kernels that read it into float64 math
        themselves (the same bits, one conversion fewer per call)."""
        return _checks.per_channel(name, value, self.channels, None if stats else self.x.dtype)

    def like_x(self, name, value) -> np.ndarray:
        return self.layout.view(_checks.same_shape(name, value, self.x))

    def output(self, out, name="out"):
        """(result, its (A, C, B) view, finish) honoring an optional ``out=`` buffer."""
        out = _checks.out_array(name, out, self.x)
        if out is not None and self.layout.is_view_of(out):
            return out, self.layout.view(out), lambda: out
        result, result3 = self.layout.empty(self.x.dtype)
        if out is None:
            return result, result3, lambda: result

        def finish():
            out[...] = result
            return out

        return result, result3, finish

    def kernel(self, kernel):
        return _kernels.pick(kernel, self.x.size)

    def sums(self, mean, invstd, dy3, ddx3=None):
        """(5, C) float64 rows: sum dy, sum dy*xhat, sum ddx, sum ddx*xhat, sum ddx*dy.

        Without ``ddx`` (the backward) only the first two rows are computed; the rest are 0.
        """
        nchunks, rows = _kernels.chunking(self.x3.shape[0], self.x3.size)
        sums = self.kernel(_kernels.channel_sums)(self.x3, mean, dy3, ddx3, rows, nchunks)
        # the kernel sums v*(x - mean); xhat = (x - mean)*invstd, so scale once per channel
        sums[1] *= invstd
        if ddx3 is not None:
            sums[3] *= invstd
        return sums


# per-channel formulas that the fused kernels use too, so they live with them (jitted)
_invstd = _kernels.invstd
_dx_coefficients = _kernels.dx_coefficients


@njit(cache=True, nogil=True)
def _any_negative(values):
    for value in values:
        if value < 0:
            return True
    return False


def _nonnegative(name: str, var: np.ndarray) -> np.ndarray:
    if _any_negative(var):  # jitted: (var < 0).any() costs a (100, 784) backward 3 us
        raise ValueError(f"{name} must be >= 0 in every channel; got min {var.min()!r}")
    return var


def _local_moments(prep: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and M2 = sum (x - mean)^2 of x in float64 (zeros when x holds no value).

    Shared with :mod:`bnref.sync`, which merges these per-shard pairs across shards.
    """
    x3 = prep.x3
    a, c, b = x3.shape
    if a * b == 0:
        return np.zeros(c), np.zeros(c)
    shift = x3[0, :, 0].astype(np.float64)  # a sample of each channel
    nchunks, rows = _kernels.chunking(a, x3.size, c if b == 1 else 0)
    mean_shifted, m2 = prep.kernel(_kernels.channel_moments)(x3, shift, rows, nchunks, _kernels.block_rows(c, b))
    return shift + mean_shifted, m2


# The per-channel (C,) formulas below are jitted only to spare a call on a small input the
# overhead of a dozen NumPy calls (a (100, 784) forward spent a third of its time there).

@njit(cache=True, nogil=True)
def _var_and_scale(mean, m2, count, gamma, eps):
    """var = M2/m (biased), scale = gamma * invstd with invstd = 1/sqrt(var + eps), and whether
    mean and var are finite in every channel."""
    var = m2 / count
    scale = gamma * _invstd(var, eps)
    return var, scale, _kernels.all_finite(mean, var)


def _moments(prep: _Prepared, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel biased mean and variance of x in float64, stable for large offsets, and the
    forward's ``scale = gamma * invstd``."""
    mean, m2 = _local_moments(prep)
    var, scale, finite = _var_and_scale(mean, m2, float(prep.count), gamma, eps)
    if not finite:
        _checks.finite_stats("the batch mean or variance of x", mean + var, prep.axis)
    return mean, var, scale


def _dx(prep: _Prepared, dy3, gamma, mean, invstd, sum_dy, sum_dy_xhat, m: int, out=None):
    """dx of :func:`backward` from the per-channel sums over all ``m`` values of the batch.

    Shared with :mod:`bnref.sync`: there the sums and ``m`` are global, ``x`` one shard.
    """
    # dx = gamma*invstd*dy  -  gamma*invstd^2*sum(dy xhat)/m * (x - mean)  -  gamma*invstd*sum(dy)/m
    k_dy, k_xmu, k_const = _dx_coefficients(gamma, invstd, sum_dy, sum_dy_xhat, float(m))
    dx, dx3, finish = prep.output(out)
    prep.kernel(_kernels.combine)(prep.x3, mean, k_xmu, k_const, dx3, dy3, k_dy)
    return finish()


def forward_train(x, gamma, beta, eps=1e-5, channel_axis=1, *, out=None):
    r"""Training-mode batch norm: normalize with the batch's own statistics.

    .. math:: y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta,
        \quad \mu,\ \sigma^2 \text{ (biased, divide by } m) \text{ over every axis but } \texttt{channel\_axis}

    Args:
        x: ``(N, C, *spatial)`` with ``channel_axis=1`` or ``(N, *spatial, C)`` with
            ``channel_axis=-1``; any rank >= 2, float32 or float64, any strides.
        gamma, beta: ``(C,)``, the dtype of ``x``.
        eps: > 0, added to the variance inside the square root.
        channel_axis: the feature axis (1 = PyTorch, -1 = Flax/Keras).
        out: optional buffer for ``y`` (shape and dtype of ``x``), reused instead of allocating
            (if the call raises, its contents are unspecified).

    Returns:
        ``(y, mean, var)``: ``y`` like ``x``; ``mean`` and the biased ``var`` as ``(C,)`` float64.

    Raises:
        TypeError: non-float or mixed dtypes. ValueError: rank < 2, shape mismatch, eps <= 0
        or non-finite, channel_axis out of range, a single value per channel, non-finite data.
    """
    prep = _Prepared(x, channel_axis, training=True)
    gamma = prep.parameter("gamma", gamma)
    beta = prep.parameter("beta", beta)
    eps = _checks.eps_value(eps)
    a, c, b = prep.x3.shape
    width = _kernels.fused_width(a, c, b, prep.x.itemsize, _kernels.CHANNEL_GROUP)
    if not width:
        # the split kernels and formulas take float64 vectors (one specialization each)
        gamma, beta = gamma.astype(np.float64, copy=False), beta.astype(np.float64, copy=False)
        mean, var, scale = _moments(prep, gamma, eps)
        y, y3, finish = prep.output(out)
        prep.kernel(_kernels.combine)(prep.x3, mean, scale, beta, y3)
        return finish(), mean, var
    # x fits in cache a few channels at a time: statistics and normalization in one pass
    y, y3, finish = prep.output(out)
    mean, var, finite = prep.kernel(_kernels.forward_fused)(prep.x3, gamma, beta, eps, width,
                                                            _kernels.block_rows(width if b == 1 else c, b), y3)
    if not finite:
        _checks.finite_stats("the batch mean or variance of x", mean + var, prep.axis)
    return finish(), mean, var


def forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, channel_axis=1, *, out=None):
    r"""Inference-mode batch norm: an affine map with fixed statistics.

    .. math:: y = \gamma\,\frac{x-\mu_{run}}{\sqrt{\sigma^2_{run}+\epsilon}} + \beta

    Args:
        x: any rank >= 2 (see :func:`forward_train`); any number of values per channel.
        gamma, beta: ``(C,)``, the dtype of ``x``.
        running_mean, running_var: ``(C,)`` float32 or float64; ``running_var >= 0``.
        eps, channel_axis, out: as in :func:`forward_train`.

    Returns:
        ``y``, shape, dtype and layout of ``x``. Non-finite values in ``x`` propagate.
    """
    prep = _Prepared(x, channel_axis, training=False)
    gamma = prep.vector("gamma", gamma)
    beta = prep.vector("beta", beta)
    running_mean = prep.vector("running_mean", running_mean, stats=True)
    running_var = _nonnegative("running_var", prep.vector("running_var", running_var, stats=True))
    eps = _checks.eps_value(eps)
    y, y3, finish = prep.output(out)
    prep.kernel(_kernels.combine)(prep.x3, running_mean, gamma * _invstd(running_var, eps), beta, y3)
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
        ``(dx, dgamma, dbeta)``: ``dx`` like ``x``; ``dgamma``, ``dbeta`` ``(C,)`` in x's dtype.
    """
    prep = _Prepared(x, channel_axis, training=True)
    dy3 = prep.like_x("dy", dy)
    gamma = prep.parameter("gamma", gamma)
    mean = prep.vector("mean", mean, stats=True)
    var = _nonnegative("var", prep.vector("var", var, stats=True))
    eps = _checks.eps_value(eps)
    a, c, b = prep.x3.shape
    width = _kernels.fused_width(a, c, b, 2 * prep.x.itemsize)
    if width:  # x and dy fit in cache a few channels at a time: sums and dx in one pass
        dx, dx3, finish = prep.output(out)
        sums, finite = prep.kernel(_kernels.backward_fused)(prep.x3, dy3, gamma, mean, var, eps, width, dx3)
        dx = finish()
    else:
        gamma = gamma.astype(np.float64, copy=False)
        invstd = _invstd(var, eps)
        sums = prep.sums(mean, invstd, dy3)
        finite = _kernels.all_finite(sums[0], sums[1])
    sum_dy, sum_dy_xhat = sums[0], sums[1]
    if not finite:
        _checks.finite_stats("sum(dy) or sum(dy * xhat)", sum_dy + sum_dy_xhat, prep.axis)
    if not width:
        dx = _dx(prep, dy3, gamma, mean, invstd, sum_dy, sum_dy_xhat, prep.count, out)
    dtype = prep.x.dtype
    return dx, sum_dy_xhat.astype(dtype), sum_dy.astype(dtype)


def backward_eval(dy, x, gamma, running_mean, running_var, eps=1e-5, channel_axis=1, *, out=None):
    r"""Gradients of :func:`forward_eval` (the statistics are constants).

    .. math:: dx_i = \gamma\,\mathrm{invstd}_{run}\,dy_i,\quad d\gamma = \textstyle\sum_i dy_i\,\hat x_i,
        \quad d\beta = \sum_i dy_i,\quad \hat x_i = (x_i - \mu_{run})\,\mathrm{invstd}_{run}

    Returns ``(dx, dgamma, dbeta)`` with the shapes of :func:`backward`.
    """
    prep = _Prepared(x, channel_axis, training=False)
    dy3 = prep.like_x("dy", dy)
    gamma = prep.vector("gamma", gamma)
    running_mean = prep.vector("running_mean", running_mean, stats=True)
    running_var = _nonnegative("running_var", prep.vector("running_var", running_var, stats=True))
    invstd = _invstd(running_var, _checks.eps_value(eps))
    sums = prep.sums(running_mean, invstd, dy3)
    zeros = np.zeros_like(invstd)
    dx, dx3, finish = prep.output(out)
    prep.kernel(_kernels.combine)(prep.x3, running_mean, zeros, zeros, dx3, dy3, gamma * invstd)
    dtype = prep.x.dtype
    return finish(), sums[1].astype(dtype), sums[0].astype(dtype)


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
        ``(gx, ggamma, gdy)``: ``gx`` and ``gdy`` like ``x``, ``ggamma`` ``(C,)``.
    """
    prep = _Prepared(x, channel_axis, training=True)
    dy3 = prep.like_x("dy", dy)
    ddx3 = prep.like_x("ddx", np.zeros_like(prep.x) if ddx is None else ddx)
    gamma = prep.vector("gamma", gamma)
    zeros_c = np.zeros(prep.channels, dtype=prep.x.dtype)
    ddgamma = prep.vector("ddgamma", zeros_c if ddgamma is None else ddgamma)
    ddbeta = prep.vector("ddbeta", zeros_c if ddbeta is None else ddbeta)
    mean = prep.vector("mean", mean, stats=True)
    var = _nonnegative("var", prep.vector("var", var, stats=True))
    s = _invstd(var, _checks.eps_value(eps))
    sums = prep.sums(mean, s, dy3, ddx3)
    _checks.finite_stats("the sums over dy and ddx", sums.sum(axis=0), prep.axis)
    m = prep.count
    mean_dy, P, mean_ddx, Q, R = sums[0] / m, sums[1], sums[2] / m, sums[3], sums[4]
    g = gamma
    ggamma = s * (R - m * mean_dy * mean_ddx - P * Q / m)
    # gdy = g s ddx + (ddgamma s - g s^2 Q/m) (x - mean) + (ddbeta - g s M(ddx))
    gdy, gdy3, finish_gdy = prep.output(None)
    prep.kernel(_kernels.combine)(prep.x3, mean, ddgamma * s - g * s * s * Q / m, ddbeta - g * s * mean_ddx, gdy3,
                     ddx3, g * s)
    # gx, expanded in (x - mean), dy, ddx and a constant:
    c = g * s * s / m
    k_xmu = s * (c * (3 * P * Q / m - R + m * mean_dy * mean_ddx) - ddgamma * s * P / m)
    k_dy = -c * Q + ddgamma * s
    k_ddx = -c * P
    k_const = c * (Q * mean_dy + P * mean_ddx) - ddgamma * s * mean_dy
    gx, gx3, finish_gx = prep.output(None)
    prep.kernel(_kernels.combine)(prep.x3, mean, k_xmu, k_const, gx3, dy3, k_dy, ddx3, k_ddx)
    return finish_gx(), ggamma.astype(prep.x.dtype), finish_gdy()


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
        running_mean, running_var: ``(C,)`` float32 or float64 (not modified).
        mean, var: ``(C,)`` batch statistics from :func:`forward_train` (``var`` biased).
        count: ``m``, the number of values per channel in the batch (>= 2).
        momentum: in [0, 1]. unbiased: apply ``m/(m-1)`` to the variance (default, as PyTorch).

    Returns:
        ``(new_mean, new_var)`` in the dtype of ``running_mean`` / ``running_var``.
    """
    running_mean = _checks.as_float_array("running_mean", running_mean)
    if running_mean.ndim != 1:
        raise ValueError(f"running_mean must have shape (C,); got {running_mean.shape}")
    channels = running_mean.shape[0]
    running_var = _checks.per_channel("running_var", running_var, channels)
    mean = _checks.per_channel("mean", mean, channels).astype(np.float64)
    var = _nonnegative("var", _checks.per_channel("var", var, channels).astype(np.float64))
    count = _checks.count_value(count)
    momentum = _checks.momentum_value(momentum)
    batch_var = var * (count / (count - 1)) if unbiased else var
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * batch_var
    return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)
