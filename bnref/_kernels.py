"""Numba kernels over the canonical ``(A, C, B)`` view (see ``_layout``).

Three kernels do all the full-size work; every per-channel formula lives in
``functional.py`` on ``(C,)`` float64 vectors, next to the math it implements.

* :func:`channel_moments` -- per-channel mean and M2 = sum (x - mean)^2, one pass over memory.
* :func:`channel_sums` -- the per-channel reductions of the backward (2 sums) and double backward (5).
* :func:`combine` -- the one elementwise pass: ``out = k_x*(x - mean) + k_u*u + k_v*v + k_0``.

Accuracy. All accumulation is in float64, also for float32 data. Results do not depend on the
thread count: a reduction over ``A`` is split into a fixed number of chunks (:func:`chunking`),
each chunk is summed by one thread, and the chunk partials are merged in chunk order.

Speed. Batch norm is memory-bound, so each kernel streams memory in order and vectorizes its
inner loop, with one loop order per layout:

* channels-first (``B > 1``): a channel's values sit in contiguous runs of ``B``; the inner loop
  runs over ``b`` and the work is split over (chunk, channel) pairs, so a small ``A`` (even 1)
  still keeps every thread busy;
* channels-last (``B == 1``): a row holds one value of every channel; the inner loop runs over
  ``c`` with one accumulator per channel, and the work is split over chunks of rows.

The reductions are compiled with ``fastmath={"reassoc"}`` and nothing else: it lets LLVM split a
sum over ``b`` into SIMD lanes (a fixed, thread-independent order, as accurate as sequential
summation or better); no-NaN, no-Inf and contraction flags stay off, so NaN still propagates to
the finiteness checks and each ``x - shift`` is rounded exactly as written.
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

#: a statistics block holds about this many values of one channel (channels-first) or of all
#: channels (channels-last), so its second pass reads the L2 cache, not memory
BLOCK_ELEMENTS = 1 << 15
#: the reduction over A is split into at most this many chunks, whatever the thread count
MAX_CHUNKS = 16
#: ... each of at least this many rows (unless there is only one): the statistics pass reads
#: that many rows at once (see :func:`_runs_shifted_sum`)
ROWS_IN_FLIGHT = 4
#: ... and of at least this many elements (unless there is only one)
CHUNK_MIN_ELEMENTS = 1 << 15
#: channels-last kernels split the channels into tiles of at most this many, so that a tile's
#: float64 accumulators (a few x 4 KB) stay in L1 while rows stream through
CHANNEL_TILE = 512
#: :func:`combine` hands out work in blocks of about this many elements (whole rows or runs)
COMBINE_BLOCK_ELEMENTS = 1 << 14
#: below this many elements a kernel runs single-threaded: waking threads costs more than the
#: work, and on a loaded machine (pytest -n auto) parallel regions on tiny arrays stall badly
PARALLEL_MIN_ELEMENTS = 1 << 17


def _prange_only() -> dict:
    """Numba's parallel options with only ``prange`` on: one parallel region per kernel call.

    With ``parallel=True`` Numba would also turn every ``np.zeros``, array expression and slice
    assignment into a parallel region of its own; each costs a thread wake-up and a barrier for
    O(C) work, and on a busy machine every barrier can wait a whole time slice (measured under a
    load average of 9: channel_sums on (32, 256, 784) float32 took 224 ms, prange only 8-12 ms).
    (A fresh dict each time: Numba consumes it.)
    """
    return dict(prange=True, comprehension=False, reduction=False, inplace_binop=False,
                setitem=False, numpy=False, stencil=False, fusion=False)


def _kernel(*, reassoc: bool = False):
    """Compile a kernel with ``parallel=True`` and attach ``.serial``, its single-threaded twin.

    Both run the same loops over the same fixed chunks; :func:`pick` chooses by size only,
    never by thread count. ``reassoc`` allows reordering sums (see the module docstring).
    The twin gets its own qualified name so that Numba's on-disk cache keeps both.
    """
    options = dict(cache=True, nogil=True, fastmath={"reassoc"} if reassoc else False)

    def wrap(py):
        twin = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__,
                                  py.__closure__)
        twin.__qualname__ = py.__qualname__ + "_serial"
        twin.__doc__ = py.__doc__
        kernel = njit(parallel=_prange_only(), **options)(py)
        kernel.serial = njit(**options)(twin)
        return kernel

    return wrap


def pick(kernel, size: int):
    """The parallel kernel for large inputs, its serial twin for small ones."""
    return kernel if size >= PARALLEL_MIN_ELEMENTS else kernel.serial


def chunking(a: int, size: int | None = None) -> tuple[int, int]:
    """(number of chunks, rows per chunk) for a reduction over the ``a`` rows of ``size`` elements.

    Depends on the shape only (never on the thread count): at most :data:`MAX_CHUNKS`, and, when
    ``size`` is given, no chunk under :data:`CHUNK_MIN_ELEMENTS`, so small inputs skip partials
    they do not need.
    """
    nchunks = max(1, min(a // ROWS_IN_FLIGHT, MAX_CHUNKS))
    if size is not None:
        nchunks = max(1, min(nchunks, size // CHUNK_MIN_ELEMENTS))
    return nchunks, -(-a // nchunks) if a else 0


def block_rows(channels: int, b: int) -> int:
    """Rows per statistics block: about :data:`BLOCK_ELEMENTS` values of one channel
    (channels-first, runs of ``b``) or of one tile of channels (channels-last, ``b == 1``)."""
    return max(1, BLOCK_ELEMENTS // max(1, min(channels, CHANNEL_TILE) if b == 1 else b))


@njit(cache=True, nogil=True)
def _tile(kt, ntiles, C):
    """Work item ``kt`` of the channels-last split into (chunk, channel tile): k, t, c0, c1."""
    k = kt // ntiles
    t = kt - k * ntiles
    c0 = t * CHANNEL_TILE
    return k, t, c0, min(C, c0 + CHANNEL_TILE)


@njit(cache=True, nogil=True)
def _chunk_rows(k, rows_per_chunk, A):
    """Rows ``[a_start, a_stop)`` of chunk ``k``."""
    a_start = k * rows_per_chunk
    return a_start, min(A, a_start + rows_per_chunk)


@njit(cache=True, nogil=True)
def _chunk_channel(kc, C, rows_per_chunk, A):
    """Work item ``kc`` of the channels-first split into (chunk, channel) pairs: k, c, a_start, a_stop."""
    k = kc // C
    c = kc - k * C
    a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
    return k, c, a_start, a_stop


@njit(cache=True, nogil=True)
def _merge_weights(n, n_other):
    """The weights of :func:`_chan_merge` for sets of ``n`` and ``n_other`` values (once per block)."""
    w_other = n_other / (n + n_other)
    return w_other, n * w_other


@njit(cache=True, nogil=True)
def _chan_merge(mean, m2, mean_other, m2_other, w_other, w_cross):
    """Chan, Golub & LeVeque: (mean, M2) of the union of two disjoint sets of n and n_other values.

    ``w_other = n_other/(n + n_other)``, ``w_cross = n*n_other/(n + n_other)`` (:func:`_merge_weights`).
    """
    delta = mean_other - mean
    return mean + delta * w_other, m2 + m2_other + delta * delta * w_cross


# The statistics pass reads memory that no earlier pass has touched, and one stream of loads per
# thread cannot cover the memory latency (measured on (64, 64, 56, 56) float32, x evicted from
# cache: 15 GB/s for one stream per thread, 30 GB/s for the two of the backward's sums). So the
# block helpers below keep four streams in flight: four rows of a channel (channels-first), or
# the four quarters of a block of rows (channels-last). The adds stay in float64, in a fixed
# order that depends on the shape only.

@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _runs_shifted_sum(x, c, s, e, shift_c):
    """sum over rows s..e-1 and all b of (x[a, c, b] - shift_c), four rows (runs) at a time."""
    total = 0.0
    a = s
    while a + 4 <= e:
        r0, r1, r2, r3 = x[a, c], x[a + 1, c], x[a + 2, c], x[a + 3, c]
        for b in range(r0.shape[0]):
            total += ((r0[b] - shift_c) + (r1[b] - shift_c)) + ((r2[b] - shift_c) + (r3[b] - shift_c))
        a += 4
    while a < e:
        r0 = x[a, c]
        for b in range(r0.shape[0]):
            total += r0[b] - shift_c
        a += 1
    return total


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _runs_shifted_m2(x, c, s, e, shift_c, block_mean):
    """sum over rows s..e-1 and all b of ((x[a, c, b] - shift_c) - block_mean)^2, four rows at a time."""
    total = 0.0
    a = s
    while a + 4 <= e:
        r0, r1, r2, r3 = x[a, c], x[a + 1, c], x[a + 2, c], x[a + 3, c]
        for b in range(r0.shape[0]):
            d0 = (r0[b] - shift_c) - block_mean
            d1 = (r1[b] - shift_c) - block_mean
            d2 = (r2[b] - shift_c) - block_mean
            d3 = (r3[b] - shift_c) - block_mean
            total += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        a += 4
    while a < e:
        r0 = x[a, c]
        for b in range(r0.shape[0]):
            d = (r0[b] - shift_c) - block_mean
            total += d * d
        a += 1
    return total


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _rows_shifted_sum(xf, C, c0, c1, s, e, shift, acc):
    """acc += sum over rows s..e-1 of (x[a, c0:c1] - shift[c0:c1]), for a tile of the flat
    channels-last ``xf``: the four quarters of the rows at a time, then the rows left over."""
    w = c1 - c0
    sh = shift[c0:c1]
    q = (e - s) // 4
    for i in range(q):
        p = (s + i) * C + c0
        r0, r1 = xf[p: p + w], xf[p + q * C: p + q * C + w]
        r2, r3 = xf[p + 2 * q * C: p + 2 * q * C + w], xf[p + 3 * q * C: p + 3 * q * C + w]
        for j in range(w):
            sc = sh[j]
            acc[j] += ((r0[j] - sc) + (r1[j] - sc)) + ((r2[j] - sc) + (r3[j] - sc))
    for a in range(s + 4 * q, e):
        r0 = xf[a * C + c0: a * C + c1]
        for j in range(w):
            acc[j] += r0[j] - sh[j]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _rows_shifted_m2(xf, C, c0, c1, s, e, shift, block_mean, acc):
    """acc += sum over rows s..e-1 of ((x[a, c0:c1] - shift[c0:c1]) - block_mean)^2
    (the second pass of a block, in the order of :func:`_rows_shifted_sum`)."""
    w = c1 - c0
    sh = shift[c0:c1]
    q = (e - s) // 4
    for i in range(q):
        p = (s + i) * C + c0
        r0, r1 = xf[p: p + w], xf[p + q * C: p + q * C + w]
        r2, r3 = xf[p + 2 * q * C: p + 2 * q * C + w], xf[p + 3 * q * C: p + 3 * q * C + w]
        for j in range(w):
            sc = sh[j]
            bm = block_mean[j]
            d0 = (r0[j] - sc) - bm
            d1 = (r1[j] - sc) - bm
            d2 = (r2[j] - sc) - bm
            d3 = (r3[j] - sc) - bm
            acc[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for a in range(s + 4 * q, e):
        r0 = xf[a * C + c0: a * C + c1]
        for j in range(w):
            d = (r0[j] - sh[j]) - block_mean[j]
            acc[j] += d * d


@_kernel(reassoc=True)
def channel_moments(x, shift, rows_per_chunk, nchunks, rows_per_block):
    """Per-channel mean and M2 of ``x`` (A, C, B) about ``shift`` (C,), both float64 (C,).

    Returns ``(mean - shift, M2)``; ``shift`` is a sample of each channel. Each block of
    rows is summed, then its M2 about its own mean is taken while the block is still in cache,
    and blocks are merged with Chan, Golub & LeVeque's pairwise update -- a one-pass,
    two-pass-accurate scheme. Shifting by a sample of the channel makes a constant channel give
    exactly 0 and 0.
    """
    A, C, B = x.shape
    chunk_count = np.zeros(nchunks)
    chunk_mean = np.zeros((nchunks, C))
    chunk_m2 = np.zeros((nchunks, C))
    if B == 1:
        xf = x.reshape(A * C)
        ntiles = -(-C // CHANNEL_TILE)
        for kt in prange(nchunks * ntiles):
            k, t, c0, c1 = _tile(kt, ntiles, C)
            a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
            block_mean = np.empty(c1 - c0)
            block_m2 = np.empty(c1 - c0)
            n = 0.0
            for s in range(a_start, a_stop, rows_per_block):
                e = min(a_stop, s + rows_per_block)
                n_block = float(e - s)
                block_mean[:] = 0.0  # the block's sum, then its mean
                block_m2[:] = 0.0
                _rows_shifted_sum(xf, C, c0, c1, s, e, shift, block_mean)
                block_mean /= n_block
                _rows_shifted_m2(xf, C, c0, c1, s, e, shift, block_mean, block_m2)
                w_other, w_cross = _merge_weights(n, n_block)
                for c in range(c0, c1):
                    chunk_mean[k, c], chunk_m2[k, c] = _chan_merge(
                        chunk_mean[k, c], chunk_m2[k, c], block_mean[c - c0], block_m2[c - c0], w_other, w_cross)
                n += n_block
            if t == 0:
                chunk_count[k] = n
    else:
        for kc in prange(nchunks * C):
            k, c, a_start, a_stop = _chunk_channel(kc, C, rows_per_chunk, A)
            shift_c = shift[c]
            n = 0.0
            mean = 0.0
            m2 = 0.0
            for s in range(a_start, a_stop, rows_per_block):
                e = min(a_stop, s + rows_per_block)
                n_block = float((e - s) * B)
                block_mean = _runs_shifted_sum(x, c, s, e, shift_c) / n_block
                block_m2 = _runs_shifted_m2(x, c, s, e, shift_c, block_mean)
                w_other, w_cross = _merge_weights(n, n_block)
                mean, m2 = _chan_merge(mean, m2, block_mean, block_m2, w_other, w_cross)
                n += n_block
            chunk_mean[k, c] = mean
            chunk_m2[k, c] = m2
            if c == 0:
                chunk_count[k] = n
    mean = np.zeros(C)  # of x - shift
    m2 = np.zeros(C)
    n = 0.0
    for k in range(nchunks):
        if chunk_count[k] == 0.0:
            continue
        w_other, w_cross = _merge_weights(n, chunk_count[k])
        for c in range(C):
            mean[c], m2[c] = _chan_merge(mean[c], m2[c], chunk_mean[k, c], chunk_m2[k, c], w_other, w_cross)
        n += chunk_count[k]
    return mean, m2


@_kernel(reassoc=True)
def channel_sums(x, mean, dy, ddx, rows_per_chunk, nchunks):
    """Per-channel sums over (A, B), float64 (5, C), with xmu = x - mean:

    row 0: sum dy        1: sum dy*xmu        2: sum ddx
    row 3: sum ddx*xmu   4: sum ddx*dy

    ``ddx=None`` (the backward) compiles a version that computes rows 0-1 only and leaves
    2-4 at zero (Numba prunes the ``ddx`` branches when its type is None). Sums use ``x - mean``,
    not ``xhat``: the caller multiplies by ``invstd`` once per channel.
    """
    A, C, B = x.shape
    partial = np.zeros((nchunks, 2 if ddx is None else 5, C))
    if B == 1:
        for k in prange(nchunks):
            a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
            acc = partial[k]
            for a in range(a_start, a_stop):
                for c in range(C):
                    xmu = x[a, c, 0] - mean[c]
                    dy_v = np.float64(dy[a, c, 0])
                    acc[0, c] += dy_v
                    acc[1, c] += dy_v * xmu
                    if ddx is not None:
                        ddx_v = np.float64(ddx[a, c, 0])
                        acc[2, c] += ddx_v
                        acc[3, c] += ddx_v * xmu
                        acc[4, c] += ddx_v * dy_v
    else:
        for kc in prange(nchunks * C):
            k, c, a_start, a_stop = _chunk_channel(kc, C, rows_per_chunk, A)
            mean_c = mean[c]
            s_dy = 0.0
            s_dy_xmu = 0.0
            s_ddx = 0.0
            s_ddx_xmu = 0.0
            s_ddx_dy = 0.0
            for a in range(a_start, a_stop):
                for b in range(B):
                    xmu = x[a, c, b] - mean_c
                    dy_v = np.float64(dy[a, c, b])
                    s_dy += dy_v
                    s_dy_xmu += dy_v * xmu
                    if ddx is not None:
                        ddx_v = np.float64(ddx[a, c, b])
                        s_ddx += ddx_v
                        s_ddx_xmu += ddx_v * xmu
                        s_ddx_dy += ddx_v * dy_v
            partial[k, 0, c] = s_dy
            partial[k, 1, c] = s_dy_xmu
            if ddx is not None:
                partial[k, 2, c] = s_ddx
                partial[k, 3, c] = s_ddx_xmu
                partial[k, 4, c] = s_ddx_dy
    sums = np.zeros((5, C))
    for k in range(nchunks):
        sums[: partial.shape[1]] += partial[k]
    return sums


@njit(cache=True, nogil=True)
def _combine_value(x_v, mean_c, u, v, a, c, b, k_x, k_u, k_v, k_0):
    """k_x*(x - mean) + k_u*u + k_v*v + k_0 at one element; a None ``u``/``v`` drops its term."""
    value = k_x * (x_v - mean_c)
    if u is not None:
        value += k_u * u[a, c, b]
    if v is not None:
        value += k_v * v[a, c, b]
    return value + k_0


@njit(cache=True, nogil=True)
def _block_from_end(i, size, n):
    """Items ``[lo, hi)`` of block ``i`` when ``n`` items in blocks of ``size`` are taken last block
    first (each block still runs forward, which the hardware prefetchers need)."""
    lo = (-(-n // size) - 1 - i) * size
    return lo, min(n, lo + size)


@_kernel()
def combine(x, mean, k_x, k_0, out, u=None, k_u=None, v=None, k_v=None):
    """out = k_x*(x - mean) + k_u*u + k_v*v + k_0, with per-channel (C,) float64 coefficients.

    ``u``/``v`` (arrays like ``x``) are optional: the forward is ``combine(x, mean, scale, beta, out)``,
    the backward passes ``u=dy``. The subtraction ``x - mean`` is done in float64. Blocks of rows
    (channels-last) or of (row, channel) runs (channels-first) are split over threads.

    The blocks run last to first: the reduction before this pass streamed x (and dy) first to
    last, so the part it read most recently, the part still in cache when x does not fit, is
    read again first.
    """
    A, C, B = x.shape
    block = max(1, COMBINE_BLOCK_ELEMENTS // (C * B if B == 1 else B))
    if B == 1:
        for i in prange(-(-A // block)):
            lo, hi = _block_from_end(i, block, A)
            for a in range(lo, hi):
                for c in range(C):
                    out[a, c, 0] = _combine_value(x[a, c, 0], mean[c], u, v, a, c, 0, k_x[c],
                                                  0.0 if k_u is None else k_u[c],
                                                  0.0 if k_v is None else k_v[c], k_0[c])
    else:
        for i in prange(-(-(A * C) // block)):
            lo, hi = _block_from_end(i, block, A * C)
            for ac in range(lo, hi):
                a = ac // C
                c = ac - a * C
                mean_c = mean[c]
                kx = k_x[c]
                ku = 0.0 if k_u is None else k_u[c]
                kv = 0.0 if k_v is None else k_v[c]
                k0 = k_0[c]
                for b in range(B):
                    out[a, c, b] = _combine_value(x[a, c, b], mean_c, u, v, a, c, b, kx, ku, kv, k0)
