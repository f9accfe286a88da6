"""bnref's own Numba kernels as a candidate (must pass everything).

Every call runs on one thread, restored afterwards (:func:`bnref._threads.single_threaded`).
"""
from __future__ import annotations

import numpy as np

import bnref
from bnref import sync
from bnref._threads import single_threaded
from bnref.dtypes import DTYPES, KERNEL_NAMES


def _forward_and_backward(forward_train, backward):
    """The candidate's ``forward_train`` and ``backward`` methods over one pair of bnref's functions
    (whole batch, or sharded over replicas): the backward recomputes the forward's statistics."""

    @single_threaded
    def forward_method(self, x, gamma, beta, eps):
        return forward_train(x, gamma, beta, eps, self.channel_axis)[0]

    @single_threaded
    def backward_method(self, x, gamma, beta, eps, dy):
        _, mean, var = forward_train(x, gamma, beta, eps, self.channel_axis)
        return backward(dy, x, gamma, mean, var, eps, self.channel_axis)

    return forward_method, backward_method


class BnrefCandidate:
    name = "bnref"
    dtypes = KERNEL_NAMES
    channel_axis = 1
    version = bnref.__version__

    forward_train, backward = _forward_and_backward(bnref.forward_train, bnref.backward)
    forward_train_sharded, backward_sharded = _forward_and_backward(sync.forward_train_sharded,
                                                                    sync.backward_sharded)

    @single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return bnref.forward_eval(x, gamma, beta, running_mean, running_var, eps, self.channel_axis)

    @single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        channels = x.shape[self.channel_axis]
        ones = np.ones(channels, x.dtype)
        _, mean, var = bnref.forward_train(x, ones, 0 * ones, 1e-5, self.channel_axis)
        return bnref.update_running(running_mean, running_var, mean, var, x.size // channels, momentum)

    @single_threaded
    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        _, mean, var = bnref.forward_train(x, gamma, beta, eps, self.channel_axis)
        return bnref.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, self.channel_axis)


class BnrefMixedCandidate(BnrefCandidate):
    """bnref's kernels in the mixed convention: half-precision x, float32 parameters and running
    statistics (dgamma, dbeta in float32), as PyTorch's autocast and Flax's ``param_dtype`` run BN."""

    name = "bnref-mixed"
    dtypes = tuple(name for name in KERNEL_NAMES if "float32" in DTYPES[name].parameters and name != "float32")
    param_dtype = "float32"
