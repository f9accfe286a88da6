"""Candidates that misbehave the way a user's first wrapper does: ``bnref check`` must report each
as a finding (never a traceback, never a hang) and go on with the other properties.

Each is :class:`tests.mutants.CorrectBN` with one method broken; ``breaks`` names a property
that must fail because of it.
"""
from __future__ import annotations

import sys
import time

import numba
import numpy as np

from tests.mutants import CorrectBN


class WrongShape(CorrectBN):
    """forward_train returns y without its batch axis (a reduction in the wrong place)."""

    name = "wrong-shape"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(x, gamma, beta, eps)[0]


class ReturnsFloat(CorrectBN):
    """forward_train returns a Python float (``.item()`` or ``float()`` on a tensor)."""

    name = "returns-float"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        return float(super().forward_train(x, gamma, beta, eps).ravel()[0])


class ReturnsNone(CorrectBN):
    """backward forgets its return statement."""

    name = "returns-none"
    breaks = "backward"

    def backward(self, x, gamma, beta, eps, dy):
        super().backward(x, gamma, beta, eps, dy)


class ShortTuple(CorrectBN):
    """backward returns (dx, dgamma) without dbeta; update_running returns only the mean."""

    name = "short-tuple"
    breaks = "backward"

    def backward(self, x, gamma, beta, eps, dy):
        return super().backward(x, gamma, beta, eps, dy)[:2]

    def update_running(self, x, running_mean, running_var, momentum):
        return super().update_running(x, running_mean, running_var, momentum)[:1]


class Unconvertible:
    """Stands in for a framework tensor left on a device: np.asarray cannot take it."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("can't convert cuda:0 device type tensor to numpy")


class ReturnsTensor(CorrectBN):
    """forward_train and forward_eval return an object whose ``__array__`` raises."""

    name = "returns-tensor"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        return Unconvertible()

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return Unconvertible()


class WrongDtype(CorrectBN):
    """double_backward returns float64 whatever x's dtype (a missing cast back)."""

    name = "wrong-dtype"
    dtypes = ("float32",)
    breaks = "double_backward"

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        return tuple(np.asarray(g, np.float64) for g in super().double_backward(x, gamma, beta, eps, dy, ddx,
                                                                                 ddgamma, ddbeta))


class ShardedWrong(CorrectBN):
    """The sharded methods return one array for the whole batch instead of one per shard."""

    name = "sharded-wrong"
    breaks = "sharded_uneven"

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return self.forward_train(np.concatenate(xs), gamma, beta, eps)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        return self.backward(np.concatenate(xs), gamma, beta, eps, np.concatenate(dys))


class Exits(CorrectBN):
    """backward calls sys.exit (a script's error handling copied into a library)."""

    name = "exits"
    breaks = "backward"

    def backward(self, x, gamma, beta, eps, dy):
        sys.exit(3)


class Spins(CorrectBN):
    """forward_train never returns: a Python loop that never ends."""

    name = "spins"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        while True:
            pass


class Sleeps(CorrectBN):
    """forward_train waits forever (polling a lock or a device that never answers).

    It sleeps in short steps, so that a call abandoned in a thread ends at the oracle's
    asynchronous CallTimeout instead of lingering in the test process."""

    name = "sleeps"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        while True:
            time.sleep(0.05)


class Prints(CorrectBN):
    """Every call prints to stdout, from Python and from C (file descriptor 1)."""

    name = "prints"

    def forward_train(self, x, gamma, beta, eps):
        print("forward_train called with", x.shape)
        import os

        os.write(1, b"raw write to fd 1\n")
        return super().forward_train(x, gamma, beta, eps)


class Interrupts(CorrectBN):
    """backward raises KeyboardInterrupt, as Ctrl-C during the call would."""

    name = "interrupts"

    def backward(self, x, gamma, beta, eps, dy):
        raise KeyboardInterrupt


class Inconsistent(CorrectBN):
    """forward_train returns a wrong shape, backward a float, forward_eval None, update_running a
    short tuple, update_running_steps a bare array, double_backward an unconvertible object: every
    method misbehaves at once."""

    name = "all-wrong"
    dtypes = ("float64",)

    def forward_train(self, x, gamma, beta, eps):
        return super().forward_train(x, gamma, beta, eps).T

    def backward(self, x, gamma, beta, eps, dy):
        return 0.0

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return None

    def update_running(self, x, running_mean, running_var, momentum):
        return (running_mean,)

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        return running_mean

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        return Unconvertible()

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return [np.zeros(1)] * len(xs)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        raise SystemExit("giving up")


@numba.njit("int64(int64)", nogil=True)  # compiled at import, so that the call itself never returns
def _spin_without_the_gil(n):
    i = 0
    while i >= 0:  # never false: i stays in [0, n)
        i = (i + 1) % n
    return i


class StuckInC(CorrectBN):
    """forward_train enters compiled code (Numba, GIL released) that never returns to Python:
    no signal handler can run there, so only the watchdog can end the run."""

    name = "stuck-in-c"
    breaks = "forward"

    def forward_train(self, x, gamma, beta, eps):
        _spin_without_the_gil(7)
        return super().forward_train(x, gamma, beta, eps)
