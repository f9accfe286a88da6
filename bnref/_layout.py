"""Canonical ``(A, C, B)`` views: one layout for every kernel.

Batch norm is elementwise plus per-channel reductions, so the order in which
elements sit in memory does not change the result. Any input is therefore
presented to the kernels as a C-contiguous ``(A, C, B)`` array, where ``C`` is
the channel axis, ``A`` the product of the axes before it and ``B`` the product
of the axes after it (in memory order):

* ``(N, C)``, and anything channels-last ``(N, *spatial, C)``: ``(N*prod(spatial), C, 1)``;
* ``(N, C, *spatial)`` channels-first: ``(N, C, prod(spatial))``;
* a channels-first *logical* array stored channels-last in memory (PyTorch's
  ``channels_last`` memory format): the axes are first permuted into memory
  order, so it streams as ``(N*H*W, C, 1)`` with no copy.

Only an array that is not a permutation of a contiguous block (a strided
slice, say) is copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Layout:
    """How an array of ``shape`` maps onto the canonical ``(A, C, B)`` view.

    ``perm`` orders the axes by memory (slowest first); ``channel`` is the
    position of the channel axis inside ``perm``. ``acb`` is derived once here:
    these methods run on every call, so they stay free of NumPy reductions.
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    channel: int
    acb: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    _identity: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        dims = [self.shape[p] for p in self.perm]
        acb = (math.prod(dims[: self.channel]), dims[self.channel], math.prod(dims[self.channel + 1 :]))
        object.__setattr__(self, "acb", acb)
        object.__setattr__(self, "_identity", self.perm == tuple(range(len(self.perm))))

    def _permuted(self, arr: np.ndarray) -> np.ndarray:
        return arr if self._identity else arr.transpose(self.perm)

    def view(self, arr: np.ndarray) -> np.ndarray:
        """The ``(A, C, B)`` C-contiguous view of ``arr`` (a copy only if unavoidable)."""
        permuted = self._permuted(arr)
        if not permuted.flags.c_contiguous:
            permuted = np.ascontiguousarray(permuted)
        return permuted.reshape(self.acb)

    def is_view_of(self, arr: np.ndarray) -> bool:
        """True when :meth:`view` of ``arr`` shares its memory (writes land in ``arr``)."""
        return self._permuted(arr).flags.c_contiguous

    def empty(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """A new array of ``shape`` laid out like the input, and its ``(A, C, B)`` view."""
        if self._identity:
            canonical = np.empty(self.shape, dtype=dtype)
            return canonical, canonical.reshape(self.acb)
        canonical = np.empty(tuple(self.shape[p] for p in self.perm), dtype=dtype)
        return canonical.transpose(np.argsort(self.perm)), canonical.reshape(self.acb)


#: layouts already worked out, by (shape, strides, channel axis): a training loop calls with
#: the same few arrays again and again, and this keeps per-call overhead in microseconds
_CACHE: dict[tuple, Layout] = {}
_CACHE_SIZE = 1024


def layout_of(x: np.ndarray, channel_axis: int) -> Layout:
    """The layout that streams ``x`` in its own memory order (``channel_axis`` already normalized)."""
    key = (x.shape, x.strides, channel_axis)
    layout = _CACHE.get(key)
    if layout is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        layout = _CACHE[key] = _memory_order_layout(x, channel_axis)
    return layout


def _memory_order_layout(x: np.ndarray, channel_axis: int) -> Layout:
    if x.ndim and x.size > 1 and not x.flags.c_contiguous:
        # Order axes by decreasing stride; ties (size-1 axes) keep their logical order.
        perm = tuple(sorted(range(x.ndim), key=lambda ax: (-abs(x.strides[ax]), ax)))
        if x.transpose(perm).flags.c_contiguous:
            return Layout(x.shape, perm, perm.index(channel_axis))
    return Layout(x.shape, tuple(range(x.ndim)), channel_axis)
