"""PyTorch: ``torch.nn.functional.batch_norm``, gradients through ``torch.autograd``.

Running statistics go through the functional's buffers (``running_mean`` and
``running_var`` updated in place by one training call). The channels-last
variant hands 4D/5D inputs over in the ``channels_last`` memory format (NHWC
strides, same logical NCHW shape).

Half precision comes in PyTorch's two conventions:

* ``torch`` (and ``torch-channels-last``): parameters and running statistics in
  x's dtype, what ``module.half()`` / ``module.bfloat16()`` gives;
* ``torch-mixed``: half x with float32 parameters and running statistics, as
  under ``torch.autocast`` (``param_dtype = "float32"``); dgamma, dbeta and the
  running statistics come back in float32.

Whatever dtype the parameters arrive in, they are cast to the adapter's parameter
dtype first, so the adapters follow the protocol with or without ``param_dtype``.
``torch.from_numpy`` does not take ml_dtypes' bfloat16: those arrays cross as
their 16 bits (:func:`to_torch`, :func:`to_numpy`).

Every call runs on one thread, restored afterwards (:func:`bnref._threads.single_threaded`):
the oracle's arrays are tiny, and waking the intra-op thread pool for each costs more than the work.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from bnref._threads import single_threaded

#: ml_dtypes' bfloat16, which torch.from_numpy does not take: it crosses bit for bit as int16
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def to_torch(torch, a):
    """A torch tensor holding a copy of the NumPy array ``a`` (bfloat16 included)."""
    a = np.array(a)  # a copy: torch never sees the caller's memory
    if a.dtype == BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def to_numpy(torch, t):
    """A NumPy copy of the tensor ``t``, torch.bfloat16 as ml_dtypes.bfloat16."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(BFLOAT16).copy()
    return t.numpy().copy()


class TorchCandidate:
    name = "torch"
    dtypes = ("float32", "float64", "float16", "bfloat16")
    channel_axis = 1
    #: None: parameters and running statistics in x's dtype; "float32": float32 for half x
    param_dtype = None

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self._torch, self._F = torch, F
        self.version = torch.__version__

    def _tensor(self, a, grad=False):
        t = to_torch(self._torch, a)
        if t.ndim == 4:
            t = t.contiguous(memory_format=self._memory_format(4))
        elif t.ndim == 5:
            t = t.contiguous(memory_format=self._memory_format(5))
        return t.requires_grad_(grad)

    def _param(self, a, x, grad=False):
        """A per-channel array in the parameter dtype for input ``x`` (x's own dtype unless declared)."""
        dtype = getattr(self._torch, self.param_dtype) if self.param_dtype else x.dtype
        return to_torch(self._torch, a).to(dtype).requires_grad_(grad)

    def _memory_format(self, ndim):
        return self._torch.contiguous_format

    def _y(self, x, gamma, beta, eps):
        return self._F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)

    def _np(self, t):
        return to_numpy(self._torch, t)

    @single_threaded
    def forward_train(self, x, gamma, beta, eps):
        x_ = self._tensor(x)
        with self._torch.no_grad():
            return self._np(self._y(x_, self._param(gamma, x_), self._param(beta, x_), eps))

    @single_threaded
    def backward(self, x, gamma, beta, eps, dy):
        x_ = self._tensor(x, grad=True)
        xs = [x_, self._param(gamma, x_, grad=True), self._param(beta, x_, grad=True)]
        y = self._y(*xs, eps)
        return tuple(self._np(g) for g in self._torch.autograd.grad(y, xs, self._tensor(dy)))

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        x_ = self._tensor(x)
        with self._torch.no_grad():
            return self._np(self._F.batch_norm(x_, self._param(running_mean, x_), self._param(running_var, x_),
                                               self._param(gamma, x_), self._param(beta, x_),
                                               training=False, eps=eps))

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        x_ = self._tensor(x)
        rm, rv = self._param(running_mean, x_), self._param(running_var, x_)
        with self._torch.no_grad():
            self._F.batch_norm(x_, rm, rv, None, None, training=True, momentum=momentum)
        return self._np(rm), self._np(rv)

    @single_threaded
    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x_, dy_ = self._tensor(x, grad=True), self._tensor(dy, grad=True)
        gamma_, beta_ = self._param(gamma, x_, grad=True), self._param(beta, x_, grad=True)
        y = self._y(x_, gamma_, beta_, eps)
        grads = self._torch.autograd.grad(y, (x_, gamma_, beta_), dy_, create_graph=True)
        directions = (self._tensor(ddx), self._param(ddgamma, x_), self._param(ddbeta, x_))
        pairing = sum((g * dd).sum() for g, dd in zip(grads, directions) if g.requires_grad)
        out = self._torch.autograd.grad(pairing, (x_, gamma_, dy_), allow_unused=True)
        return tuple(self._np(self._torch.zeros_like(t) if g is None else g)
                     for g, t in zip(out, (x_, gamma_, dy_)))


class TorchChannelsLastCandidate(TorchCandidate):
    name = "torch-channels-last"

    def _memory_format(self, ndim):
        return self._torch.channels_last if ndim == 4 else self._torch.channels_last_3d


class TorchMixedCandidate(TorchCandidate):
    """Half x, float32 parameters and running statistics: PyTorch's mixed precision (autocast)."""

    name = "torch-mixed"
    dtypes = ("float16", "bfloat16")
    param_dtype = "float32"
