"""PyTorch: ``torch.nn.functional.batch_norm``, gradients through ``torch.autograd``.

Running statistics go through the functional's buffers (``running_mean`` and
``running_var`` updated in place by one training call). The channels-last
variant hands 4D/5D inputs over in the ``channels_last`` memory format (NHWC
strides, same logical NCHW shape).

Every call runs on one thread, restored afterwards (:func:`bnref._threads.single_threaded`):
the oracle's arrays are tiny, and waking the intra-op thread pool for each costs more than the work.
"""
from __future__ import annotations

import numpy as np

from bnref._threads import single_threaded


class TorchCandidate:
    name = "torch"
    dtypes = ("float32", "float64")
    channel_axis = 1

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self._torch, self._F = torch, F
        self.version = torch.__version__

    def _tensor(self, a, grad=False):
        t = self._torch.from_numpy(np.array(a))  # a copy: torch never sees the caller's memory
        if t.ndim == 4:
            t = t.contiguous(memory_format=self._memory_format(4))
        elif t.ndim == 5:
            t = t.contiguous(memory_format=self._memory_format(5))
        return t.requires_grad_(grad)

    def _memory_format(self, ndim):
        return self._torch.contiguous_format

    def _y(self, x, gamma, beta, eps):
        return self._F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)

    @staticmethod
    def _np(t):
        return t.detach().numpy().copy()

    @single_threaded
    def forward_train(self, x, gamma, beta, eps):
        with self._torch.no_grad():
            return self._np(self._y(self._tensor(x), self._tensor(gamma), self._tensor(beta), eps))

    @single_threaded
    def backward(self, x, gamma, beta, eps, dy):
        xs = [self._tensor(a, grad=True) for a in (x, gamma, beta)]
        y = self._y(*xs, eps)
        return tuple(self._np(g) for g in self._torch.autograd.grad(y, xs, self._tensor(dy)))

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        with self._torch.no_grad():
            return self._np(self._F.batch_norm(self._tensor(x), self._tensor(running_mean),
                                               self._tensor(running_var), self._tensor(gamma),
                                               self._tensor(beta), training=False, eps=eps))

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        rm, rv = self._tensor(running_mean), self._tensor(running_var)
        with self._torch.no_grad():
            self._F.batch_norm(self._tensor(x), rm, rv, None, None, training=True, momentum=momentum)
        return self._np(rm), self._np(rv)

    @single_threaded
    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        x_, gamma_, beta_, dy_ = (self._tensor(a, grad=True) for a in (x, gamma, beta, dy))
        y = self._y(x_, gamma_, beta_, eps)
        grads = self._torch.autograd.grad(y, (x_, gamma_, beta_), dy_, create_graph=True)
        pairing = sum((g * self._tensor(dd)).sum() for g, dd in zip(grads, (ddx, ddgamma, ddbeta))
                      if g.requires_grad)
        out = self._torch.autograd.grad(pairing, (x_, gamma_, dy_), allow_unused=True)
        return tuple(np.zeros_like(a) if g is None else self._np(g) for g, a in zip(out, (x, gamma, dy)))


class TorchChannelsLastCandidate(TorchCandidate):
    name = "torch-channels-last"

    def _memory_format(self, ndim):
        return self._torch.channels_last if ndim == 4 else self._torch.channels_last_3d
