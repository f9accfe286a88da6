r"""The shared core of bnref's public functions: checked inputs, per-channel formulas, kernel passes.

:mod:`bnref.functional` (one batch) and :mod:`bnref.sync` (a batch split into shards) are
thin compositions of what is here: :class:`Prepared` validates ``x`` and maps it onto the
kernels' canonical ``(A, C, B)`` view, :func:`local_moments` and :meth:`Prepared.sums` are the
reductions, :func:`dx_from_sums` the backward's elementwise pass from per-channel sums, and
the ``*_in_one_pass`` / ``*_in_two_passes`` helpers the two ways a training forward or backward
runs over memory. The per-channel ``(C,)`` formulas are jitted: on a small input a dozen NumPy
calls on ``(C,)`` vectors would cost as much as the kernels' work.

A tensor with no values is fine wherever the math is: the kernels loop over nothing, and a
reduction over no values is 0 in every channel.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from numba import njit

from bnref import _checks, _half, _kernels
from bnref._layout import Layout, layout_of
from bnref.conventions import PYTORCH, Convention
from bnref.dtypes import DType, dtype_info

__all__ = ["Prepared", "narrow", "invstd", "dx_coefficients", "nonnegative", "local_moments", "var_and_scale",
           "moments", "dx_from_sums", "forward_in_one_pass", "forward_in_two_passes",
           "backward_in_one_pass", "backward_in_two_passes", "prepare_backward", "running_convention"]

# per-channel formulas that the fused kernels use too, so they live with them (jitted)
invstd = _kernels.invstd
dx_coefficients = _kernels.dx_coefficients


class Prepared:
    """Validated ``x``, its channel axis, ``count`` (m, the values per channel) and canonical
    ``(A, C, B)`` view ``x3``.

    ``count`` is ``A * B``, also where there is no channel. With ``training``, statistics must be
    taken, so each channel needs at least two values (an input without channels has nothing to
    normalize and passes).

    A half-precision ``x`` (a row of :data:`bnref.dtypes.DTYPES` that is not ``native``) reaches
    the reductions as a float32 copy (:meth:`reducible`, exact) and the elementwise pass as its
    bit patterns (:meth:`combine`).
    """

    def __init__(self, x, channel_axis, *, training: bool, name: str = "x"):
        self.x = _checks.x_array(x, name)
        self.axis = _checks.channel_axis(channel_axis, self.x.ndim)
        self.layout: Layout = layout_of(self.x, self.axis)
        a, self.channels, b = self.layout.acb
        self.count = a * b
        if training and self.count < 2 and self.channels:
            _checks.training_values(self.count, self.x.shape, self.axis, name)
        self.x3 = self.layout.view(self.x)
        self.format: DType = dtype_info(self.x.dtype)
        self._x3_reducible = None

    def vector(self, name, value, *, stats: bool = False) -> np.ndarray:
        """A (C,) argument as float64 (its dtype checked as in :meth:`parameter`)."""
        return self.parameter(name, value, stats=stats).astype(np.float64, copy=False)  # kernels only read it

    def parameter(self, name, value, *, stats: bool = False) -> np.ndarray:
        """A checked (C,) argument in its own dtype, for kernels that read it into float64 math
        themselves (the same bits, one conversion fewer per call). Its dtype must be one that
        x's row of :data:`bnref.dtypes.DTYPES` allows: ``parameters`` (x's dtype; float32 too for
        the half formats) or, with ``stats``, ``statistics``."""
        arr = _checks.per_channel(name, value, self.channels)
        if stats:
            return _checks.one_of(name, arr, self.format.statistics, self.x.dtype, "statistics")
        return _checks.one_of(name, arr, self.format.parameters, self.x.dtype, "parameters")

    def fused_width(self, streams: int, group: int = 1) -> int:
        """:func:`bnref._kernels.fused_width` for ``streams`` arrays like x (0: use the split path,
        always for a half format)."""
        if not self.format.native:
            return 0
        return _kernels.fused_width(*self.x3.shape, streams * self.x.itemsize, group)

    def reducible(self, arr3: np.ndarray) -> np.ndarray:
        """An ``(A, C, B)`` array like x as the reduction kernels take it: itself, or for a half
        format its float32 copy (exact)."""
        if self.format.native:
            return arr3
        wide = np.empty(arr3.shape, np.float32)
        self.kernel(_kernels.widen)(arr3.view(np.uint16), self.format.fraction_bits, wide)
        return wide

    @property
    def x3_reducible(self) -> np.ndarray:
        """:meth:`reducible` of ``x3``, made once."""
        if self._x3_reducible is None:
            self._x3_reducible = self.reducible(self.x3)
        return self._x3_reducible

    def combine(self, mean, k_x, k_0, out3, u3=None, k_u=None, v3=None, k_v=None) -> None:
        """``out3 = k_x*(x - mean) + k_u*u3 + k_v*v3 + k_0`` (:func:`bnref._kernels.combine`; for a
        half format :func:`bnref._kernels.combine_half`, rounding once from float64)."""
        if not self.format.native:
            bits = lambda a: None if a is None else a.view(np.uint16)  # noqa: E731
            self.kernel(_kernels.combine_half)(bits(self.x3), mean, k_x, k_0, bits(out3), bits(u3), k_u,
                                               bits(v3), k_v, self.format.fraction_bits)
            return
        # trailing arguments left out, not passed as None: Numba types the two differently, and
        # each combination it sees is one more compiled specialization
        extra = [u3, k_u, v3, k_v]
        while extra and extra[-1] is None:
            extra.pop()
        self.kernel(_kernels.combine)(self.x3, mean, k_x, k_0, out3, *extra)

    def statistics(self, mean_name, mean, var_name, var) -> tuple[np.ndarray, np.ndarray]:
        """A (C,) mean and a non-negative (C,) variance, as float64."""
        return (self.vector(mean_name, mean, stats=True),
                nonnegative(var_name, self.vector(var_name, var, stats=True)))

    def like_x(self, name, value) -> np.ndarray:
        """An array of x's shape and dtype (``dy``, ``ddx``), as its ``(A, C, B)`` view."""
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
        dy3 = self.reducible(dy3)
        ddx3 = None if ddx3 is None else self.reducible(ddx3)
        sums = self.kernel(_kernels.channel_sums)(self.x3_reducible, mean, dy3, ddx3, rows, nchunks)
        # the kernel sums v*(x - mean); xhat = (x - mean)*invstd, so scale once per channel
        sums[1] *= invstd
        if ddx3 is not None:
            sums[3] *= invstd
        return sums


def narrow(values: np.ndarray, dtype) -> np.ndarray:
    """Float64 ``values`` (any shape) in ``dtype``, each rounded once (NumPy's cast to bfloat16
    goes through float32: two roundings)."""
    row = dtype_info(dtype)
    if row.native:
        return values.astype(row.numpy)
    values = np.ascontiguousarray(values, dtype=np.float64)
    bits = np.empty(values.shape, np.uint16)
    _half.narrow_bits(values.reshape(-1), row.fraction_bits, bits.reshape(-1))
    return bits.view(row.numpy)


@njit(cache=True, nogil=True)
def _any_negative(values):
    for value in values:
        if value < 0:
            return True
    return False


def nonnegative(name: str, var: np.ndarray) -> np.ndarray:
    """``var``, or a ValueError naming ``name`` if any channel is negative."""
    if _any_negative(var):  # jitted: (var < 0).any() costs a small backward a tenth of its time
        raise ValueError(f"{name} must be >= 0 in every channel; got min {var.min()!r}")
    return var


def local_moments(prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and M2 = sum (x - mean)^2 of x in float64 (zeros when x holds no value).

    :mod:`bnref.sync` merges these per-shard pairs across shards.
    """
    x3 = prep.x3_reducible
    a, c, b = x3.shape
    if x3.size == 0:
        return np.zeros(c), np.zeros(c)
    shift = x3[0, :, 0].astype(np.float64)  # a sample of each channel
    nchunks, rows = _kernels.chunking(a, x3.size, c if b == 1 else 0)
    mean_shifted, m2 = prep.kernel(_kernels.channel_moments)(x3, shift, rows, nchunks, _kernels.block_rows(c, b))
    return shift + mean_shifted, m2


@njit(cache=True, nogil=True)
def var_and_scale(mean, m2, count, gamma, eps):
    """var = M2/m (biased), scale = gamma * invstd with invstd = 1/sqrt(var + eps), and whether
    mean and var are finite in every channel."""
    var = m2 / count
    scale = gamma * invstd(var, eps)
    return var, scale, _kernels.all_finite(mean, var)


def _finite_batch_statistics(prep: Prepared, mean, var, finite: bool) -> None:
    if not finite:
        _checks.finite_stats("the batch mean or variance of x", mean + var, prep.axis)


def moments(prep: Prepared, gamma: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel biased mean and variance of x in float64, stable for large offsets, and the
    forward's ``scale = gamma * invstd``."""
    mean, m2 = local_moments(prep)
    var, scale, finite = var_and_scale(mean, m2, float(prep.count), gamma, eps)
    _finite_batch_statistics(prep, mean, var, finite)
    return mean, var, scale


def forward_in_two_passes(prep: Prepared, gamma, beta, eps: float, out):
    """Training forward as a statistics pass, then a normalization pass: ``(y, mean, var)``."""
    # the split kernels and formulas take float64 vectors (one specialization each)
    gamma, beta = gamma.astype(np.float64, copy=False), beta.astype(np.float64, copy=False)
    mean, var, scale = moments(prep, gamma, eps)
    y, y3, finish = prep.output(out)
    prep.combine(mean, scale, beta, y3)
    return finish(), mean, var


def forward_in_one_pass(prep: Prepared, gamma, beta, eps: float, width: int, out):
    """Training forward over ``width`` channels at a time, statistics and normalization while they
    are in cache (:func:`bnref._kernels.forward_fused`): ``(y, mean, var)``."""
    b = prep.x3.shape[2]
    y, y3, finish = prep.output(out)
    rows_per_block = _kernels.block_rows(width if b == 1 else prep.channels, b)
    mean, var, finite = prep.kernel(_kernels.forward_fused)(prep.x3, gamma, beta, eps, width, rows_per_block, y3)
    _finite_batch_statistics(prep, mean, var, finite)
    return finish(), mean, var


def dx_from_sums(prep: Prepared, dy3, gamma, mean, invstd, sum_dy, sum_dy_xhat, m: int, out=None):
    """dx of :func:`bnref.backward` from the per-channel sums over all ``m`` values of the batch.

    In :mod:`bnref.sync` the sums and ``m`` are global, ``x`` one shard.
    """
    # dx = gamma*invstd*dy  -  gamma*invstd^2*sum(dy xhat)/m * (x - mean)  -  gamma*invstd*sum(dy)/m
    k_dy, k_xmu, k_const = dx_coefficients(gamma, invstd, sum_dy, sum_dy_xhat, float(m))
    dx, dx3, finish = prep.output(out)
    prep.combine(mean, k_xmu, k_const, dx3, dy3, k_dy)
    return finish()


def _finite_sums(prep: Prepared, sum_dy, sum_dy_xhat, finite: bool) -> None:
    if not finite:
        _checks.finite_stats("sum(dy) or sum(dy * xhat)", sum_dy + sum_dy_xhat, prep.axis)


def backward_in_two_passes(prep: Prepared, dy3, gamma, mean, var, eps: float, out):
    """Training backward as a pass of sums, then a pass for dx: ``(dx, sum dy, sum dy*xhat)``."""
    gamma = gamma.astype(np.float64, copy=False)
    channel_invstd = invstd(var, eps)
    sums = prep.sums(mean, channel_invstd, dy3)
    sum_dy, sum_dy_xhat = sums[0], sums[1]
    _finite_sums(prep, sum_dy, sum_dy_xhat, _kernels.all_finite(sum_dy, sum_dy_xhat))
    return dx_from_sums(prep, dy3, gamma, mean, channel_invstd, sum_dy, sum_dy_xhat, prep.count, out), sum_dy, sum_dy_xhat


def backward_in_one_pass(prep: Prepared, dy3, gamma, mean, var, eps: float, width: int, out):
    """Training backward over ``width`` channels at a time, sums and dx while x and dy are in cache
    (:func:`bnref._kernels.backward_fused`): ``(dx, sum dy, sum dy*xhat)``."""
    dx, dx3, finish = prep.output(out)
    sums, finite = prep.kernel(_kernels.backward_fused)(prep.x3, dy3, gamma, mean, var, eps, width, dx3)
    dx = finish()
    _finite_sums(prep, sums[0], sums[1], finite)
    return dx, sums[0], sums[1]


def prepare_backward(dy, x, gamma, mean, var, eps, channel_axis, *, training: bool):
    """The checked inputs of a backward: ``(prep, dy3, gamma, mean, var, eps)``.

    ``gamma`` keeps its dtype; ``mean`` and ``var`` are float64 (the batch statistics with
    ``training``, else the running ones, named so in errors).
    """
    prep = Prepared(x, channel_axis, training=training)
    dy3 = prep.like_x("dy", dy)
    gamma = prep.parameter("gamma", gamma)
    prefix = "" if training else "running_"
    mean, var = prep.statistics(prefix + "mean", mean, prefix + "var", var)
    return prep, dy3, gamma, mean, var, _checks.eps_value(eps)


#: PyTorch's update, with the unbiased running variance (``unbiased=True``) or the biased one
_RUNNING_CONVENTIONS = {True: PYTORCH, False: replace(PYTORCH, running_var="biased")}


def running_convention(unbiased: bool) -> Convention:
    """PyTorch's convention with an unbiased (``m/(m-1)``) or biased running variance."""
    return _RUNNING_CONVENTIONS[bool(unbiased)]
