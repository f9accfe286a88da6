r"""Which axes a normalization reduces over, and how its per-channel vectors broadcast.

Batch norm takes its statistics over every axis but the channel axis and holds
``gamma``, ``beta`` and the statistics as ``(C,)`` vectors along that axis. The rest
of the normalization family is the same math over other axis sets (LayerNorm:
statistics over the trailing axes; InstanceNorm: over the spatial axes; GroupNorm:
over channel groups and the spatial axes), so the two sets are kept apart here:
:class:`Axes` names the reduced axes and the parameter axes of one rank-``ndim`` input.

Every module of bnref (the kernels' wrappers, the autograd reference, the testing
helpers, the oracle's properties, the test suite's mutants) reshapes through these
functions; none keeps a copy of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Axes", "batch_norm_axes", "reduce_axes", "per_channel", "count"]


@dataclass(frozen=True)
class Axes:
    """The axes of a rank-``ndim`` input that a normalization reduces over and that its parameters span.

    ``reduce`` and ``params`` are sorted, non-negative and disjoint for the normalizations
    bnref knows; batch norm has ``params = (channel_axis,)`` and ``reduce`` = every other axis.
    """

    ndim: int
    reduce: tuple[int, ...]
    params: tuple[int, ...]

    def param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of a parameter vector for an input of ``shape`` (``(C,)`` for batch norm)."""
        return tuple(shape[ax] for ax in self.params)

    def broadcast(self, v, xp=np):
        """``v`` (of :meth:`param_shape`) reshaped to broadcast against the input.

        ``xp`` is the array module (``numpy`` or ``autograd.numpy``, whose reshape traces).
        """
        shape = [1] * self.ndim
        for ax, size in zip(self.params, np.shape(v)):
            shape[ax] = size
        return xp.reshape(v, shape)

    def count(self, shape: tuple[int, ...]) -> int:
        """Values that share one parameter entry: the product of the reduced sides (``m``)."""
        return int(np.prod([shape[ax] for ax in self.reduce], dtype=np.int64))


def batch_norm_axes(ndim: int, channel_axis: int) -> Axes:
    """Batch norm's axes: statistics over every axis but ``channel_axis``, parameters along it.

    Raises:
        ValueError: ``channel_axis`` out of range for ``ndim``.
    """
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis={channel_axis} is out of range for an input with {ndim} dimensions")
    channel = channel_axis % ndim
    return Axes(ndim, tuple(ax for ax in range(ndim) if ax != channel), (channel,))


def reduce_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    """The axes batch-norm statistics are taken over: every axis but ``channel_axis``."""
    return batch_norm_axes(ndim, channel_axis).reduce


def per_channel(v, ndim: int, channel_axis: int, xp=np):
    """A ``(C,)`` vector reshaped to broadcast along ``channel_axis`` of a rank-``ndim`` array."""
    shape = [1] * ndim
    shape[channel_axis % ndim] = -1
    return xp.reshape(v, shape)


def count(shape: tuple[int, ...], channel_axis: int) -> int:
    """``m``, the values per channel of an input of ``shape`` (0 when it has no channel)."""
    channels = shape[channel_axis % len(shape)]
    return int(np.prod(shape, dtype=np.int64)) // channels if channels else 0
