r"""The plain reference: batch norm written with ``autograd.numpy``, derivatives by autodiff.

Nothing here is hand-derived: :func:`backward` and :func:`double_backward` are
vector-Jacobian products that ``autograd`` computes from :func:`forward_train`.
Everything runs in float64 (inputs are promoted), so for float32 data it gives
the exact answer that a float32 kernel should round to.
"""
from __future__ import annotations

from dataclasses import replace

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp

from bnref.axes import per_channel, reduce_axes
from bnref.conventions import PYTORCH

__all__ = ["forward_train", "forward_eval", "backward", "double_backward", "backward_eval",
           "update_running"]


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _forward(x, gamma, beta, eps, channel_axis):
    axes = reduce_axes(x.ndim, channel_axis)
    mean = anp.mean(x, axis=axes, keepdims=True)                    # 1, C, 1, ...
    var = anp.mean((x - mean) ** 2, axis=axes, keepdims=True)       # 1, C, 1, ...
    xhat = (x - mean) / anp.sqrt(var + eps)                         # like x
    y = per_channel(gamma, x.ndim, channel_axis, xp=anp) * xhat + per_channel(beta, x.ndim, channel_axis, xp=anp)
    return y, anp.reshape(mean, (-1,)), anp.reshape(var, (-1,))


def forward_train(x, gamma, beta, eps=1e-5, channel_axis=1):
    """``(y, mean, var)`` as in :func:`bnref.forward_train`, in float64: two-pass statistics, biased var."""
    x, gamma, beta = _f64(x, gamma, beta)
    return _forward(x, gamma, beta, eps, channel_axis)


def _eval(x, gamma, beta, running_mean, running_var, eps, channel_axis):
    bc = lambda v: per_channel(v, x.ndim, channel_axis, xp=anp)  # noqa: E731
    return bc(gamma) * (x - bc(running_mean)) / anp.sqrt(bc(running_var) + eps) + bc(beta)


def forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, channel_axis=1):
    """``y = gamma (x - running_mean) / sqrt(running_var + eps) + beta``, float64."""
    return _eval(*_f64(x, gamma, beta, running_mean, running_var), eps, channel_axis)


def _y(x, gamma, beta, eps, channel_axis):
    return _forward(x, gamma, beta, eps, channel_axis)[0]


def backward(dy, x, gamma, beta, eps=1e-5, channel_axis=1):
    """``(dx, dgamma, dbeta)``: the VJP of the training forward with cotangent ``dy`` (float64)."""
    dy, x, gamma, beta = _f64(dy, x, gamma, beta)
    vjp, _ = make_vjp(lambda x_, g_, b_: _y(x_, g_, b_, eps, channel_axis), argnum=(0, 1, 2))(x, gamma, beta)
    return vjp(dy)


def _backward_of(x, gamma, dy, beta, eps, channel_axis):
    """(dx, dgamma, dbeta) as a differentiable function of (x, gamma, dy)."""
    vjp, _ = make_vjp(lambda x_, g_, b_: _y(x_, g_, b_, eps, channel_axis), argnum=(0, 1, 2))(x, gamma, beta)
    return vjp(dy)


def double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, eps=1e-5, channel_axis=1):
    """``(gx, ggamma, gdy)``: the VJP of :func:`backward` w.r.t. ``(x, gamma, dy)`` (autograd of autograd)."""
    ddx, ddgamma, ddbeta, dy, x, gamma, beta = _f64(ddx, ddgamma, ddbeta, dy, x, gamma, beta)

    def pairing(x_, g_, dy_):
        dx, dgamma, dbeta = _backward_of(x_, g_, dy_, beta, eps, channel_axis)
        return anp.sum(dx * ddx) + anp.sum(dgamma * ddgamma) + anp.sum(dbeta * ddbeta)

    vjp, _ = make_vjp(pairing, argnum=(0, 1, 2))(x, gamma, dy)
    return vjp(1.0)


def backward_eval(dy, x, gamma, beta, running_mean, running_var, eps=1e-5, channel_axis=1):
    """``(dx, dgamma, dbeta)``: the VJP of :func:`forward_eval` (statistics held constant)."""
    dy, x, gamma, beta, running_mean, running_var = _f64(dy, x, gamma, beta, running_mean, running_var)

    def f(x_, g_, b_):
        return _eval(x_, g_, b_, running_mean, running_var, eps, channel_axis)

    vjp, _ = make_vjp(f, argnum=(0, 1, 2))(x, gamma, beta)
    return vjp(dy)


def update_running(running_mean, running_var, mean, var, count, momentum=0.1, unbiased=True):
    """PyTorch-convention running statistics (float64), by :meth:`bnref.conventions.Convention.update_running`;
    ``unbiased=False`` moves the running variance toward the biased batch variance."""
    convention = replace(PYTORCH, running_var="unbiased" if unbiased else "biased")
    return convention.update_running(*_f64(running_mean, running_var, mean, var), count, momentum)
