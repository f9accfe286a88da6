"""The catalogue with bnref's own signatures, for the checks that take bnref-shaped implementations.

The catalogue follows the oracle's candidate protocol (statistics recomputed from x, the
channel axis fixed per instance). :class:`AsBnref` gives a catalogue class the signatures
of :mod:`bnref` (what :func:`bnref.testing.check_against_reference` calls) and
:class:`AsSync` those of :mod:`bnref.sync` (what :func:`bnref.sync.testing.run_sharded`
calls). The statistics bnref's signatures pass back in are the ones the same class's
forward returned, so the adapters recompute them rather than pass them through.
"""
from __future__ import annotations

import numpy as np

__all__ = ["AsBnref", "AsSync"]


class _Adapter:
    def __init__(self, mutant: type):
        self.mutant = mutant
        self.name = mutant.__name__

    def at(self, channel_axis: int):
        """The catalogue class instantiated for ``channel_axis``."""
        return self.mutant(channel_axis=channel_axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class AsBnref(_Adapter):
    """``forward_train``, ``backward``, ``double_backward`` with the signatures of :mod:`bnref`."""

    def forward_train(self, x, gamma, beta, eps=1e-5, channel_axis=1):
        """``(y, mean, var)``; mean and var ``(C,)`` float64 as the class computes them."""
        impl = self.at(channel_axis)
        mean, var = impl.stats(x)
        return impl.forward_train(x, gamma, beta, eps), mean.reshape(-1), var.reshape(-1)

    def backward(self, dy, x, gamma, mean, var, eps=1e-5, channel_axis=1):
        return self.at(channel_axis).backward(x, gamma, np.zeros_like(gamma), eps, dy)

    def double_backward(self, ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps=1e-5, channel_axis=1):
        return self.at(channel_axis).double_backward(x, gamma, np.zeros_like(gamma), eps, dy, ddx, ddgamma, ddbeta)


class AsSync(_Adapter):
    """The sharded functions of :mod:`bnref.sync` (in one process: ``comm`` must be None)."""

    def forward_train_sharded(self, xs, gamma, beta, eps=1e-5, channel_axis=1, *, comm=None):
        """``(ys, mean, var)``; mean and var ``(C,)``, the statistics the shards were normalized with."""
        impl = self._in_process(channel_axis, comm)
        mean, var = impl.sharded_stats(xs)
        return impl.forward_train_sharded(xs, gamma, beta, eps), mean.reshape(-1), var.reshape(-1)

    def backward_sharded(self, dys, xs, gamma, mean, var, eps=1e-5, channel_axis=1, *, comm=None):
        return self._in_process(channel_axis, comm).backward_sharded(xs, gamma, np.zeros_like(gamma), eps, dys)

    def update_running_sharded(self, running_mean, running_var, mean, var, xs, momentum=0.1, channel_axis=1, *,
                               comm=None):
        return self._in_process(channel_axis, comm).update_running_sharded(xs, running_mean, running_var, momentum)

    def _in_process(self, channel_axis, comm):
        if comm is not None:
            raise ValueError(f"{self!r} runs every shard in one process: comm must be None, got {comm!r}")
        return self.at(channel_axis)
