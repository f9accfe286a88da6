"""bnref's own Numba kernels as a candidate (must pass everything).

Every call runs with ``numba.set_num_threads(1)`` (restored afterwards): the oracle's
arrays are tiny, and on a loaded 2-core machine the parallel kernels' thread pool
made a forward + backward ~100x slower (110 ms instead of 1 ms).
"""
from __future__ import annotations

import functools

import numpy as np

import bnref


def _single_threaded(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import numba

        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            numba.set_num_threads(threads)

    return wrapper


class BnrefCandidate:
    name = "bnref"
    dtypes = ("float32", "float64")
    channel_axis = 1
    version = bnref.__version__

    @_single_threaded
    def forward_train(self, x, gamma, beta, eps):
        return bnref.forward_train(x, gamma, beta, eps, self.channel_axis)[0]

    @_single_threaded
    def backward(self, x, gamma, beta, eps, dy):
        _, mean, var = bnref.forward_train(x, gamma, beta, eps, self.channel_axis)
        return bnref.backward(dy, x, gamma, mean, var, eps, self.channel_axis)

    @_single_threaded
    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return bnref.forward_eval(x, gamma, beta, running_mean, running_var, eps, self.channel_axis)

    @_single_threaded
    def update_running(self, x, running_mean, running_var, momentum):
        channels = x.shape[self.channel_axis]
        ones = np.ones(channels, x.dtype)
        _, mean, var = bnref.forward_train(x, ones, 0 * ones, 1e-5, self.channel_axis)
        return bnref.update_running(running_mean, running_var, mean, var, x.size // channels, momentum)

    @_single_threaded
    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        _, mean, var = bnref.forward_train(x, gamma, beta, eps, self.channel_axis)
        return bnref.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, self.channel_axis)
