"""Numba kernels over the canonical ``(A, C, B)`` view (see ``_layout``).

Three kernels do all the full-size work; the per-channel formulas on ``(C,)`` float64 vectors
live with the functions that apply them (:mod:`bnref._core`, :mod:`bnref.functional`), except
:func:`invstd` and :func:`dx_coefficients`, which the fused kernels share. The helpers
between them are the loops of one block of work, written once for each layout.

* :func:`channel_moments` -- per-channel mean and M2 = sum (x - mean)^2, one pass over memory.
* :func:`channel_sums` -- the per-channel reductions of the backward (2 sums) and double backward (5).
* :func:`combine` -- the one elementwise pass: ``out = k_x*(x - mean) + k_u*u + k_v*v + k_0``.

Accuracy. All accumulation is in float64, also for float32 data. Results do not depend on the
thread count: a reduction over ``A`` is split into a fixed number of chunks (:func:`chunking`),
each chunk is summed by one thread, and the chunk partials are merged in chunk order.

Speed. Batch norm is memory-bound, so each kernel streams memory in order, keeps several
streams of loads in flight per thread, and vectorizes its inner loop, with one loop order per
layout (docs/performance.md has the measurements behind each choice):

* channels-first (``B > 1``): a channel's values sit in contiguous runs of ``B``; inner loops run
  over ``b`` with scalar accumulators, over two or four rows at once, and the work is split over
  (chunk, channel or group of channels) items, so a small ``A`` (even 1) keeps every thread busy;
* channels-last (``B == 1``): a row holds one value of every channel; inner loops run over a
  tile of at most :data:`LANES` channels with one float64 accumulator per channel (in L1), over
  the four quarters of a block of rows at once, and the work is split over (chunk, tile) items.

The statistics take one pass per block about the running mean, with a second pass only for a
block whose one-pass M2 would cancel (see :data:`CANCELLATION_LIMIT`), and :func:`combine` takes
its blocks last to first, so that it starts on the part of x the pass before it left in cache.
Where a work item's channels fit in cache, :func:`forward_fused` and :func:`backward_fused` do a
whole pass (reduction, then elementwise) per item, so x crosses the memory bus once. A large
channels-last output of :func:`combine` is written with non-temporal stores
(:mod:`bnref._nontemporal`).

The loops over values are compiled with two fastmath flags and no others. ``reassoc`` (the
reductions only) lets LLVM split a sum over ``b`` into SIMD lanes: a fixed, thread-independent
order, as accurate as sequential summation or better. ``contract`` lets it fuse ``a*b + c`` into
one FMA (``d*d`` into a sum of squares, ``k_x*(x - mean) + k_0`` in :func:`combine`): one
rounding instead of two, so never less accurate, and one instruction fewer per value. No-NaN and
no-Inf stay off, so NaN still propagates to the finiteness checks, and each ``x - shift`` is
rounded exactly as written (a constant channel still gives exactly 0 and ``beta``).
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from bnref._half import BFLOAT16_FRACTION_BITS, half_bits_branch_free, half_value, widen_bits
from bnref._nontemporal import LINE, fence, line_nt

#: a statistics block holds about this many values of one channel (channels-first) or of one
#: tile of channels (channels-last): 512 KB of float32, so that the rare second pass reads the
#: L2 cache, not memory; longer blocks mean fewer restarts of the four streams and fewer merges
#: (measured: blocks of 128k values make the statistics pass 10 % faster than blocks of 32k)
BLOCK_ELEMENTS = 1 << 17
#: the reduction over A is split into at most this many chunks, whatever the thread count
MAX_CHUNKS = 16
#: ... each of at least this many rows (unless there is only one): the statistics pass reads
#: that many rows at once (see :func:`_lanes_s1s2`)
ROWS_IN_FLIGHT = 4
#: ... and of at least this many elements (unless there is only one)
CHUNK_MIN_ELEMENTS = 1 << 15
#: channels-last kernels work on tiles of at most this many channels (the lanes of their inner
#: loops), so that the float64 accumulators, one per channel (a few x 4 KB), stay in L1
LANES = 512
#: channels-first statistics take up to this many channels per work item (fewer, longer items)
CHANNEL_GROUP = 8
#: :func:`combine` hands out work in blocks of about this many elements (whole rows or runs):
#: each block restarts the hardware prefetchers (measured: blocks of 64k 3-5 % faster than of 16k)
COMBINE_BLOCK_ELEMENTS = 1 << 16
#: ... and in at least this many blocks, so that threads get equal shares of a small input
COMBINE_MIN_BLOCKS = 8
#: channels-last, :func:`combine` (without ``v``) writes an output of at least this many bytes with
#: non-temporal stores (:mod:`bnref._nontemporal`): more than any L2 and half this L3, so it
#: would leave the cache before anyone reads it, and its reads for ownership would evict x
STREAM_MIN_BYTES = 1 << 24
#: float32 values in a cache line (the most of any dtype)
LINE_ELEMENTS = LINE // 4
#: below this many elements a kernel runs single-threaded: waking threads costs more than the
#: work, and on a loaded machine (pytest -n auto) parallel regions on tiny arrays stall badly
PARALLEL_MIN_ELEMENTS = 1 << 16
#: :func:`forward_fused` and :func:`backward_fused` take work items of at most this many bytes
#: of what they read (x; x and dy), so that the elementwise half re-reads the item from L2 or
#: from a thread's share of L3, not from memory: 4 MB, measured float32 at 2 threads on a 1 MB
#: L2, 32 MB L3 machine: the backward on 64x64x56x56 and 128x64x56x56 NCHW (1.6 and 3.2 MB a
#: channel) 15-18 % faster fused than split, items of 6 MB no faster, 1 thread a tie
FUSED_ITEM_BYTES = 1 << 22
#: ... but channels-first items over this many bytes (those re-read from L3) only where there are
#: :data:`FUSED_MIN_ITEMS` of them: with fewer, the threads' shares are uneven (measured:
#: (8, 3, 224, 224) and (16, 5, 160, 160), 1.5 MB a channel, 5-15 % slower fused)
FUSED_L2_BYTES = 1 << 20
#: ... at least this many of them where the channels allow (balance)
FUSED_MIN_ITEMS = 8
#: ... and, channels-last, tiles of at least this many channels
FUSED_MIN_LANES = 64
#: ... over at most this many rows: beyond them the split kernels, whose work items are
#: chunks of whole rows, win (measured, float32, 2 threads: (1000, 784) 28 % faster split,
#: (512, 784) a tie, (200, 784) and (384, 2048) about 20 % faster fused)
FUSED_MAX_ROWS = 512


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


def _kernel(*, reassoc: bool = False, contract: bool = False):
    """Compile a kernel with ``parallel=True`` and attach ``.serial``, its single-threaded twin.

    Both run the same loops over the same fixed chunks; :func:`pick` chooses by size only,
    never by thread count. ``reassoc`` allows reordering sums, ``contract`` fusing multiply-adds
    (see the module docstring). The twin gets its own qualified name so that Numba's on-disk
    cache keeps both.
    """
    flags = {name for name, on in (("reassoc", reassoc), ("contract", contract)) if on}
    options = dict(cache=True, nogil=True, fastmath=flags or False)

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


def chunking(a: int, size: int | None = None, channels_last_width: int = 0) -> tuple[int, int]:
    """(number of chunks, rows per chunk) for a reduction over the ``a`` rows of ``size`` elements.

    Depends on the shape only (never on the thread count): at most :data:`MAX_CHUNKS`, and, when
    ``size`` is given, no chunk under :data:`CHUNK_MIN_ELEMENTS`, so small inputs skip partials
    they do not need. A channels-last input of ``channels_last_width`` > :data:`LANES` channels
    is already split into that many tiles of channels, so it takes fewer chunks (fewer merges,
    and blocks of rows long enough to overlap their two passes).
    """
    nchunks = max(1, min(a // ROWS_IN_FLIGHT, MAX_CHUNKS))
    if size is not None:
        nchunks = max(1, min(nchunks, size // CHUNK_MIN_ELEMENTS))
    tiles = -(-channels_last_width // LANES)
    if tiles > 1:
        nchunks = max(1, min(nchunks, -(-MAX_CHUNKS // tiles)))
    if not a:
        return nchunks, 0
    rows = -(-a // nchunks)
    # no empty chunk: 100 rows in 16 chunks of 7 would leave the last two with none
    return -(-a // rows), rows


def block_rows(channels: int, b: int) -> int:
    """Rows per statistics block: about :data:`BLOCK_ELEMENTS` values of one channel
    (channels-first, runs of ``b``) or of one tile of at most :data:`LANES` channels
    (channels-last, ``b == 1``)."""
    return max(1, BLOCK_ELEMENTS // max(1, min(channels, LANES) if b == 1 else b))


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
# thread cannot cover the memory latency (measured on (64, 64, 56, 56) float32 with x evicted
# from cache: 15 GB/s for one stream per thread, 30 GB/s for the backward's two). So the helpers
# below keep four streams in flight: four rows of one channel (channels-first), or the four
# quarters of a block of rows (channels-last). The adds are float64, in an order fixed by the
# shape.
#
# One pass per block: the sums S1 = sum d and S2 = sum d^2 of d = x - center, about a center
# close to the mean (the running mean of the blocks before; a sample of the channel for the
# first block), give the block's M2 = S2 - S1^2/n. That subtraction loses log2(S2/M2) bits, so
# it is accepted only while S2 <= CANCELLATION_LIMIT * M2, and otherwise the block, still in
# cache, takes a second pass about its own mean (the two-pass M2). Either way M2 keeps all but
# at most log2(CANCELLATION_LIMIT) = 4 of the bits of a two-pass.

#: the most cancellation a one-pass block M2 may carry (S2 / M2; see above)
CANCELLATION_LIMIT = 16.0


@njit(cache=True, nogil=True)
def _block_m2(s1, s2, n):
    """(mean of d, M2) of a block of ``n`` values d from S1 = sum d, S2 = sum d^2, and whether
    the one-pass M2 is within :data:`CANCELLATION_LIMIT` (False for NaN: the second pass then
    carries the NaN on)."""
    block_mean = s1 / n
    m2 = s2 - s1 * block_mean
    return block_mean, m2, s2 <= CANCELLATION_LIMIT * m2 or s2 == 0.0


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _runs_s1s2(x, c, s, e, center):
    """(sum, sum of squares) over rows s..e-1 and all b of d = x[a, c, b] - center, four rows
    (runs) at a time."""
    s1 = 0.0
    s2 = 0.0
    a = s
    while a + 4 <= e:
        r0, r1, r2, r3 = x[a, c], x[a + 1, c], x[a + 2, c], x[a + 3, c]
        for b in range(r0.shape[0]):
            d0, d1, d2, d3 = r0[b] - center, r1[b] - center, r2[b] - center, r3[b] - center
            s1 += (d0 + d1) + (d2 + d3)
            s2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        a += 4
    while a < e:
        r0 = x[a, c]
        for b in range(r0.shape[0]):
            d = r0[b] - center
            s1 += d
            s2 += d * d
        a += 1
    return s1, s2


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _runs_m2(x, c, s, e, center):
    """sum over rows s..e-1 and all b of (x[a, c, b] - center)^2, four rows at a time (the
    second pass of a block that failed the cancellation test, about its own mean)."""
    total = 0.0
    a = s
    while a + 4 <= e:
        r0, r1, r2, r3 = x[a, c], x[a + 1, c], x[a + 2, c], x[a + 3, c]
        for b in range(r0.shape[0]):
            d0, d1, d2, d3 = r0[b] - center, r1[b] - center, r2[b] - center, r3[b] - center
            total += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        a += 4
    while a < e:
        r0 = x[a, c]
        for b in range(r0.shape[0]):
            d = r0[b] - center
            total += d * d
        a += 1
    return total


@njit(cache=True, nogil=True)
def _group_moments(x, shift, c_lo, c_hi, a_start, a_stop, rows_per_block, mean_out, m2_out):
    """Channels-first: the mean (of x - shift) and M2 of channels c_lo..c_hi over rows
    a_start..a_stop, into ``mean_out``/``m2_out`` (indexed by channel): blocks of
    ``rows_per_block`` rows down the channels, one pass each (see above), merged in order.

    Within a block, four rows at a time, channel after channel: the group's runs of a row are
    adjacent in memory, so the four streams are as long as the group's runs together, not one
    run (measured, float32, 2 threads, forward: 32x256x28x28 NCHW 18 % faster with groups of 8
    channels than channel after channel, its runs being 3 KB)."""
    B = x.shape[2]
    g = c_hi - c_lo
    center, s1, s2 = np.empty(g), np.empty(g), np.empty(g)
    for j in range(g):
        center[j] = x[a_start, c_lo + j, 0]  # a sample of the channel: the first block's center
        mean_out[c_lo + j] = 0.0
        m2_out[c_lo + j] = 0.0
    n = 0.0
    for s in range(a_start, a_stop, rows_per_block):
        e = min(a_stop, s + rows_per_block)
        n_block = float((e - s) * B)
        s1[:] = 0.0
        s2[:] = 0.0
        for a in range(s, e, ROWS_IN_FLIGHT):
            for j in range(g):
                step_s1, step_s2 = _runs_s1s2(x, c_lo + j, a, min(e, a + ROWS_IN_FLIGHT), center[j])
                s1[j] += step_s1
                s2[j] += step_s2
        w_other, w_cross = _merge_weights(n, n_block)
        for j in range(g):
            c = c_lo + j
            block_mean, block_m2, accurate = _block_m2(s1[j], s2[j], n_block)
            if not accurate:
                block_m2 = _runs_m2(x, c, s, e, center[j] + block_mean)
            mean_out[c], m2_out[c] = _chan_merge(mean_out[c], m2_out[c], (center[j] - shift[c]) + block_mean,
                                                 block_m2, w_other, w_cross)
            center[j] = shift[c] + mean_out[c]
        n += n_block


# The channels-last helpers below read a block as its four quarters at once (four memory
# streams), one row of each, and write the four slices out: through a helper that returned
# them, their loops ran 30 % slower (measured on (200704, 64) float32).


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _lanes_s1s2(xf, p, stride, rows, center, s1, s2):
    """s1[j] += sum of d, s2[j] += sum of d^2, d = x - center[j], over the block's rows, lane
    by lane.

    A block is ``rows`` rows of ``w = len(s1)`` lanes (channels); row i starts at
    ``p + i*stride`` in the flat x. Its four quarters are read at once, then the rows left over."""
    w = s1.shape[0]
    q = max(rows, 0) // 4
    for i in range(q):
        o = p + i * stride
        r0, r1 = xf[o: o + w], xf[o + q * stride: o + q * stride + w]
        r2, r3 = xf[o + 2 * q * stride: o + 2 * q * stride + w], xf[o + 3 * q * stride: o + 3 * q * stride + w]
        for j in range(w):
            cj = center[j]
            d0, d1, d2, d3 = r0[j] - cj, r1[j] - cj, r2[j] - cj, r3[j] - cj
            s1[j] += (d0 + d1) + (d2 + d3)
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for i in range(4 * q, rows):
        r0 = xf[p + i * stride: p + i * stride + w]
        for j in range(w):
            d = r0[j] - center[j]
            s1[j] += d
            s2[j] += d * d


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _lanes_m2(xf, p, stride, rows, center, acc):
    """acc[j] += sum over the block's rows of (x - center[j])^2, lane by lane (the second pass
    of a block that failed the cancellation test, about its own mean)."""
    w = acc.shape[0]
    q = max(rows, 0) // 4
    for i in range(q):
        o = p + i * stride
        r0, r1 = xf[o: o + w], xf[o + q * stride: o + q * stride + w]
        r2, r3 = xf[o + 2 * q * stride: o + 2 * q * stride + w], xf[o + 3 * q * stride: o + 3 * q * stride + w]
        for j in range(w):
            cj = center[j]
            d0, d1, d2, d3 = r0[j] - cj, r1[j] - cj, r2[j] - cj, r3[j] - cj
            acc[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for i in range(4 * q, rows):
        r0 = xf[p + i * stride: p + i * stride + w]
        for j in range(w):
            d = r0[j] - center[j]
            acc[j] += d * d


@njit(cache=True, nogil=True)
def _tile_moments(xf, C, c0, c1, a_start, a_stop, rows_per_block, shift, mean_out, m2_out):
    """Channels-last: merge the mean (of x - shift) and M2 of channels c0..c1 over rows
    a_start..a_stop of the flat ``xf`` into ``mean_out``/``m2_out`` (zeros on entry); returns
    the count per channel. Blocks of ``rows_per_block`` rows go down the rows, one pass each
    (see above), all lanes at once."""
    if a_stop <= a_start:
        return 0.0
    w = c1 - c0
    shift_t = shift[c0:c1]
    center, s1, s2, block_center = np.empty(w), np.empty(w), np.empty(w), np.empty(w)
    first = a_start * C + c0
    for j in range(w):
        center[j] = xf[first + j]  # a sample of each channel: the first block's center
    n = 0.0
    for s in range(a_start, a_stop, rows_per_block):
        rows = min(a_stop, s + rows_per_block) - s
        s1[:] = 0.0
        s2[:] = 0.0
        _lanes_s1s2(xf, s * C + c0, C, rows, center, s1, s2)
        accurate = True
        for j in range(w):
            block_mean, m2, ok = _block_m2(s1[j], s2[j], float(rows))
            s1[j], s2[j] = block_mean, m2
            accurate &= ok
        if not accurate:  # rare: a second pass for the whole tile, about each lane's block mean
            for j in range(w):
                block_center[j] = center[j] + s1[j]
                s2[j] = 0.0
            _lanes_m2(xf, s * C + c0, C, rows, block_center, s2)
        w_other, w_cross = _merge_weights(n, float(rows))
        for j in range(w):
            mean_out[j], m2_out[j] = _chan_merge(mean_out[j], m2_out[j], (center[j] - shift_t[j]) + s1[j], s2[j],
                                                 w_other, w_cross)
            center[j] = shift_t[j] + mean_out[j]
        n += rows
    return n


@_kernel(reassoc=True)
def channel_moments(x, shift, rows_per_chunk, nchunks, rows_per_block):
    """Per-channel mean and M2 of ``x`` (A, C, B) about ``shift`` (C,), both float64 (C,).

    Returns ``(mean - shift, M2)``; ``shift`` is a sample of each channel. Each block of
    rows gives its sums of d and d^2 about a center near the mean (the running mean; a sample
    of the channel for the first block), from which its M2 follows with bounded cancellation,
    or else a second pass while the block is in cache (:data:`CANCELLATION_LIMIT`); blocks are
    merged with Chan, Golub & LeVeque's pairwise update. A constant channel gives exactly 0, 0.
    """
    A, C, B = x.shape
    chunk_count = np.zeros(nchunks)
    chunk_mean = np.zeros((nchunks, C))
    chunk_m2 = np.zeros((nchunks, C))
    if B == 1:
        xf = x.reshape(A * C)
        tiles = -(-C // LANES)
        for kt in prange(nchunks * tiles):
            k = kt // tiles
            c0 = (kt - k * tiles) * LANES
            c1 = min(C, c0 + LANES)
            a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
            n = _tile_moments(xf, C, c0, c1, a_start, a_stop, rows_per_block, shift,
                              chunk_mean[k, c0:c1], chunk_m2[k, c0:c1])
            if c0 == 0:
                chunk_count[k] = n
    else:
        # groups of channels, but no fewer work items than chunks allow (a batch of one image
        # has one chunk: its channels must still spread over the threads)
        group = max(1, min(CHANNEL_GROUP, (nchunks * C) // MAX_CHUNKS))
        groups = -(-C // group)
        for kg in prange(nchunks * groups):
            k = kg // groups
            c_lo = (kg - k * groups) * group
            a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
            if a_stop > a_start:
                _group_moments(x, shift, c_lo, min(C, c_lo + group), a_start, a_stop, rows_per_block,
                               chunk_mean[k], chunk_m2[k])
                if c_lo == 0:
                    chunk_count[k] = (a_stop - a_start) * B
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


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _tile_sums(x, mean, dy, ddx, c0, c1, s, e, acc):
    """acc[r] += row r of :func:`channel_sums` over rows s..e-1 of channels-last ``x`` for the
    channels c0..c1 (``acc`` is (2 or 5, c1 - c0)): the rows' four quarters at a time, as in
    :func:`_lanes_s1s2`, then the rows left over."""
    A, C, _ = x.shape
    xf, dyf = x.reshape(A * C), dy.reshape(A * C)
    if ddx is not None:
        ddxf = ddx.reshape(A * C)
    w = c1 - c0
    mu = mean[c0:c1]
    s_dy, s_dy_xmu = acc[0], acc[1]
    if ddx is not None:
        s_ddx, s_ddx_xmu, s_ddx_dy = acc[2], acc[3], acc[4]
    q = max(e - s, 0) // 4
    gap = q * C
    for i in range(q):
        o = (s + i) * C + c0
        x0, x1, x2, x3 = xf[o: o + w], xf[o + gap: o + gap + w], xf[o + 2 * gap: o + 2 * gap + w], xf[o + 3 * gap: o + 3 * gap + w]
        g0, g1, g2, g3 = dyf[o: o + w], dyf[o + gap: o + gap + w], dyf[o + 2 * gap: o + 2 * gap + w], dyf[o + 3 * gap: o + 3 * gap + w]
        if ddx is not None:
            h0, h1 = ddxf[o: o + w], ddxf[o + gap: o + gap + w]
            h2, h3 = ddxf[o + 2 * gap: o + 2 * gap + w], ddxf[o + 3 * gap: o + 3 * gap + w]
        for j in range(w):
            m = mu[j]
            xm0, xm1, xm2, xm3 = x0[j] - m, x1[j] - m, x2[j] - m, x3[j] - m
            d0, d1, d2, d3 = np.float64(g0[j]), np.float64(g1[j]), np.float64(g2[j]), np.float64(g3[j])
            s_dy[j] += (d0 + d1) + (d2 + d3)
            s_dy_xmu[j] += (d0 * xm0 + d1 * xm1) + (d2 * xm2 + d3 * xm3)
            if ddx is not None:
                v0, v1, v2, v3 = np.float64(h0[j]), np.float64(h1[j]), np.float64(h2[j]), np.float64(h3[j])
                s_ddx[j] += (v0 + v1) + (v2 + v3)
                s_ddx_xmu[j] += (v0 * xm0 + v1 * xm1) + (v2 * xm2 + v3 * xm3)
                s_ddx_dy[j] += (v0 * d0 + v1 * d1) + (v2 * d2 + v3 * d3)
    for a in range(s + 4 * q, e):
        o0 = a * C + c0
        x0, g0 = xf[o0: o0 + w], dyf[o0: o0 + w]
        if ddx is not None:
            h0 = ddxf[o0: o0 + w]
        for j in range(w):
            xm0 = x0[j] - mu[j]
            d0 = np.float64(g0[j])
            s_dy[j] += d0
            s_dy_xmu[j] += d0 * xm0
            if ddx is not None:
                v0 = np.float64(h0[j])
                s_ddx[j] += v0
                s_ddx_xmu[j] += v0 * xm0
                s_ddx_dy[j] += v0 * d0


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _runs_sums(x, mean_c, dy, ddx, c, a_start, a_stop):
    """The five sums of :func:`channel_sums` for channel ``c`` of a channels-first ``x`` over
    rows a_start..a_stop (the last three are 0 when ``ddx`` is None)."""
    B = x.shape[2]
    s_dy = 0.0
    s_dy_xmu = 0.0
    s_ddx = 0.0
    s_ddx_xmu = 0.0
    s_ddx_dy = 0.0
    a = a_start
    while a + 2 <= a_stop:  # two rows at a time: four memory streams with dy
        x0, x1, g0, g1 = x[a, c], x[a + 1, c], dy[a, c], dy[a + 1, c]
        for b in range(B):
            xmu0, xmu1 = x0[b] - mean_c, x1[b] - mean_c
            d0, d1 = np.float64(g0[b]), np.float64(g1[b])
            s_dy += d0 + d1
            s_dy_xmu += d0 * xmu0 + d1 * xmu1
            if ddx is not None:
                v0, v1 = np.float64(ddx[a, c, b]), np.float64(ddx[a + 1, c, b])
                s_ddx += v0 + v1
                s_ddx_xmu += v0 * xmu0 + v1 * xmu1
                s_ddx_dy += v0 * d0 + v1 * d1
        a += 2
    for a in range(a, a_stop):
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
    return s_dy, s_dy_xmu, s_ddx, s_ddx_xmu, s_ddx_dy


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
        tiles = -(-C // LANES)
        for kt in prange(nchunks * tiles):
            k = kt // tiles
            c0 = (kt - k * tiles) * LANES
            c1 = min(C, c0 + LANES)
            a_start, a_stop = _chunk_rows(k, rows_per_chunk, A)
            acc = np.zeros((partial.shape[1], c1 - c0))
            _tile_sums(x, mean, dy, ddx, c0, c1, a_start, a_stop, acc)
            for r in range(acc.shape[0]):
                for c in range(c0, c1):
                    partial[k, r, c] = acc[r, c - c0]
    else:
        for kc in prange(nchunks * C):
            k, c, a_start, a_stop = _chunk_channel(kc, C, rows_per_chunk, A)
            s_dy, s_dy_xmu, s_ddx, s_ddx_xmu, s_ddx_dy = _runs_sums(x, mean[c], dy, ddx, c, a_start, a_stop)
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


@njit(cache=True, nogil=True, fastmath={"contract"})
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


@njit(cache=True, nogil=True, fastmath={"contract"})
def _combine_rows(x, mean, k_x, k_0, out, u, k_u, v, k_v, a_lo, a_hi, c0, c1):
    """:func:`combine` on rows a_lo..a_hi, channels c0..c1 of a channels-last ``x`` (B == 1).

    The inner loop indexes slices from 0: with an index from ``c0`` Numba cannot prove it
    non-negative, keeps the wraparound test, and the loop does not vectorize (6x slower)."""
    A, C, _ = x.shape
    w = c1 - c0
    mu, kx, k0 = mean[c0:c1], k_x[c0:c1], k_0[c0:c1]
    ku = kx if k_u is None else k_u[c0:c1]
    kv = kx if k_v is None else k_v[c0:c1]
    xf, of = x.reshape(A * C), out.reshape(A * C)
    uf = xf if u is None else u.reshape(A * C)
    vf = xf if v is None else v.reshape(A * C)
    for a in range(a_lo, a_hi):
        o = a * C + c0
        xr, orow, ur, vr = xf[o: o + w], of[o: o + w], uf[o: o + w], vf[o: o + w]
        for j in range(w):
            value = kx[j] * (xr[j] - mu[j])
            if u is not None:
                value += ku[j] * ur[j]
            if v is not None:
                value += kv[j] * vr[j]
            orow[j] = value + k0[j]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _combine_run(x, mean, k_x, k_0, out, u, k_u, v, k_v, a, c):
    """:func:`combine` on the run ``x[a, c, :]`` of a channels-first ``x``."""
    mean_c = mean[c]
    kx = k_x[c]
    ku = 0.0 if k_u is None else k_u[c]
    kv = 0.0 if k_v is None else k_v[c]
    k0 = k_0[c]
    for b in range(x.shape[2]):
        out[a, c, b] = _combine_value(x[a, c, b], mean_c, u, v, a, c, b, kx, ku, kv, k0)


@njit(cache=True, nogil=True)
def wrapped(coefficients, extra):
    """``coefficients`` (C,) followed by its first values again, ``extra`` of them in all
    (wrapping around as often as needed): with one line's worth, a line's coefficients are
    contiguous from whichever channel the line starts at."""
    channels = coefficients.shape[0]
    out = np.empty(channels + extra)
    for t in range(out.shape[0]):
        out[t] = coefficients[t % channels]
    return out


@njit(cache=True, nogil=True)
def _combine_rows_nt(x, mu, kx, k0, out, u, ku, start, stop):
    """:func:`combine` on the flat elements start..stop of a channels-last ``x`` (element e is
    row e // C, channel e % C), coefficients from :func:`wrapped`: whole aligned lines with
    :func:`bnref._nontemporal.line_nt`, the partial lines at either end with regular stores
    (:func:`_combine_value`, the same bits), then a fence, so that this thread's output is
    complete when the parallel region returns."""
    C = x.shape[1]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    uf = xf if u is None else u.reshape(u.size)
    lanes = LINE // of.itemsize
    misaligned = (of.ctypes.data + start * of.itemsize) % LINE
    head = min(stop - start, 0 if misaligned == 0 else (LINE - misaligned) // of.itemsize)
    if misaligned % of.itemsize:  # a buffer not aligned to its dtype never reaches a line: all regular
        head = stop - start
    e = start
    while e < stop:
        if e < start + head or e + lanes > stop:
            a, c = e // C, e % C
            out[a, c, 0] = _combine_value(x[a, c, 0], mu[c], u, None, a, c, 0, kx[c], ku[c], 0.0, k0[c])
            e += 1
        else:
            line_nt(xf, of, e, mu, kx, k0, u, uf, ku, e % C)
            e += lanes
    fence()


@_kernel()
def combine(x, mean, k_x, k_0, out, u=None, k_u=None, v=None, k_v=None, stream_bytes=STREAM_MIN_BYTES):
    """out = k_x*(x - mean) + k_u*u + k_v*v + k_0, with per-channel (C,) float64 coefficients.

    ``u``/``v`` (arrays like ``x``) are optional: the forward is ``combine(x, mean, scale, beta, out)``,
    the backward passes ``u=dy``. The subtraction ``x - mean`` is done in float64. Blocks of rows
    (channels-last) or of (row, channel) runs (channels-first) are split over threads.

    The blocks run last to first: the reduction before this pass streamed x (and dy) first to
    last, so the part it read most recently, the part still in cache when x does not fit, is
    read again first.

    Channels-last without ``v`` (the forward, the backward's dx), an output of at least
    ``stream_bytes`` (:data:`STREAM_MIN_BYTES`) is written with non-temporal stores
    (:mod:`bnref._nontemporal`), computing the same bits.
    """
    A, C, B = x.shape
    # blocks of about COMBINE_BLOCK_ELEMENTS, but at least COMBINE_MIN_BLOCKS of them (balance);
    # an empty x (C or B zero) has a block of one item and nothing to loop over
    items = A if B == 1 else A * C
    block = max(1, min(COMBINE_BLOCK_ELEMENTS // max(1, C if B == 1 else B), -(-items // COMBINE_MIN_BLOCKS)))
    if B == 1 and v is None and out.size * out.itemsize >= stream_bytes:
        mu, kx, k0 = wrapped(mean, LINE_ELEMENTS), wrapped(k_x, LINE_ELEMENTS), wrapped(k_0, LINE_ELEMENTS)
        ku = kx if k_u is None else wrapped(k_u, LINE_ELEMENTS)
        for i in prange(-(-items // block)):
            lo, hi = _block_from_end(i, block, items)
            _combine_rows_nt(x, mu, kx, k0, out, u, ku, lo * C, hi * C)
    elif B == 1:
        for i in prange(-(-items // block)):
            lo, hi = _block_from_end(i, block, items)
            _combine_rows(x, mean, k_x, k_0, out, u, k_u, v, k_v, lo, hi, 0, C)
    else:
        for i in prange(-(-items // block)):
            lo, hi = _block_from_end(i, block, items)
            for ac in range(lo, hi):
                a = ac // C
                _combine_run(x, mean, k_x, k_0, out, u, k_u, v, k_v, a, ac - a * C)


@njit(cache=True, nogil=True)
def invstd(var, eps):
    """1/sqrt(var + eps), per channel (jitted, so that jitted code can share it)."""
    return 1.0 / np.sqrt(var + eps)


@njit(cache=True, nogil=True)
def dx_coefficients(gamma, invstd, sum_dy, sum_dy_xhat, m):
    """The per-channel coefficients of the backward's
    dx = k_dy*dy + k_xmu*(x - mean) + k_const, from the sums over all ``m`` values:

    dx = gamma*invstd*dy - gamma*invstd^2*sum(dy xhat)/m * (x - mean) - gamma*invstd*sum(dy)/m
    """
    gamma_invstd = gamma * invstd
    k_dy = gamma_invstd                                  # term 1: m*dy
    k_xmu = -gamma_invstd * invstd * sum_dy_xhat / m     # term 3: xhat * sum(dy xhat)
    k_const = -gamma_invstd * sum_dy / m                 # term 2: sum(dy)
    return k_dy, k_xmu, k_const


def fused_width(A: int, C: int, B: int, itemsize: int, group: int = 1) -> int:
    """Channels per work item of :func:`forward_fused` or :func:`backward_fused`, or 0 where
    they do not apply; ``itemsize`` is the bytes per value the pass reads (x; x and dy).

    A fused kernel gives each work item whole channels (every row), so a channel's values
    must stay in cache together: at most :data:`FUSED_ITEM_BYTES` per item. Channels-first
    items are single channels, and those over :data:`FUSED_L2_BYTES` need
    :data:`FUSED_MIN_ITEMS` channels; with ``group`` > 1 (the forward: :data:`CHANNEL_GROUP`)
    an item takes up to that many adjacent channels, a power of two, while the item stays
    within :data:`FUSED_ITEM_BYTES` and there are still :data:`FUSED_MIN_ITEMS` items (the
    backward gained nothing from groups: measured 3 % faster to 7 % slower). Channels-last
    items are tiles of at least
    :data:`FUSED_MIN_LANES` channels (shorter rows do not stream), narrow enough to give
    :data:`FUSED_MIN_ITEMS` items, over at most :data:`FUSED_MAX_ROWS` rows.
    Depends on the shape only, so the result never depends on the thread count.
    """
    if A * B == 0 or C == 0:
        return 0
    if B > 1:
        item = A * B * itemsize
        if not (item <= FUSED_L2_BYTES or (item <= FUSED_ITEM_BYTES and C >= FUSED_MIN_ITEMS)):
            return 0
        width = 1
        while 2 * width <= group and 2 * width * item <= FUSED_ITEM_BYTES and C // (2 * width) >= FUSED_MIN_ITEMS:
            width *= 2
        return width
    if A > FUSED_MAX_ROWS:
        return 0
    width = min(C, LANES, max(FUSED_MIN_LANES, 16 * -(-C // (16 * FUSED_MIN_ITEMS))))
    return width if A * width * itemsize <= FUSED_ITEM_BYTES else 0


@njit(cache=True, nogil=True)
def all_finite(u, v):
    """Whether u + v is finite in every channel (jitted: on a small input the NumPy version,
    ``np.isfinite(u + v).all()``, costs 2 us)."""
    for c in range(u.shape[0]):
        if not np.isfinite(u[c] + v[c]):
            return False
    return True


@njit(cache=True, nogil=True)
def _combine_channels(x, mean, k_x, k_0, out, u, k_u, c0, c1):
    """:func:`combine` (without ``v``) on channels c0..c1 over all rows: the elementwise half of a
    fused kernel's work item, right after its reduction read the same values."""
    A, _, B = x.shape
    if B == 1:
        _combine_rows(x, mean, k_x, k_0, out, u, k_u, None, None, 0, A, c0, c1)
    else:
        for a in range(A - 1, -1, -1):  # last rows first: they are the ones still in L1
            for c in range(c0, c1):  # the item's runs of a row, adjacent in memory
                _combine_run(x, mean, k_x, k_0, out, u, k_u, None, None, a, c)


@_kernel()
def forward_fused(x, gamma, beta, eps, width, rows_per_block, out):
    """The whole training forward in one parallel region, for inputs whose channels fit in L2
    one work item at a time (:func:`fused_width`): returns float64 ``(mean, var)``, whether
    both are finite in every channel, and writes ``out = gamma*invstd*(x - mean) + beta``.

    Each item takes ``width`` channels over all rows: their statistics (as in
    :func:`channel_moments`, one chunk, about a sample of each channel), then the per-channel
    ``scale = gamma*invstd``, then the normalization, which reads x from the cache the
    statistics left it in. x crosses the memory bus once instead of twice, and a small input
    pays for one kernel call instead of four.
    """
    A, C, B = x.shape
    mean = np.zeros(C)  # of x - shift, then of x
    m2 = np.zeros(C)
    var = np.empty(C)
    scale = np.empty(C)
    shift = np.empty(C)
    for c in range(C):
        shift[c] = x[0, c, 0]
    items = -(-C // width)
    for t in prange(items):
        c0 = t * width
        c1 = min(C, c0 + width)
        if B == 1:
            n = _tile_moments(x.reshape(A * C), C, c0, c1, 0, A, rows_per_block, shift,
                              mean[c0:c1], m2[c0:c1])
        else:
            _group_moments(x, shift, c0, c1, 0, A, rows_per_block, mean, m2)
            n = float(A * B)
        for c in range(c0, c1):
            mean[c] += shift[c]
            var[c] = m2[c] / n
            scale[c] = gamma[c] * invstd(var[c], eps)
        _combine_channels(x, mean, scale, beta, out, None, None, c0, c1)
    return mean, var, all_finite(mean, var)


@_kernel()
def backward_fused(x, dy, gamma, mean, var, eps, width, out):
    """The whole backward in one parallel region, for inputs whose channels (x and dy) fit in
    L2 one work item at a time (:func:`fused_width`): returns float64 ``(sum dy, sum dy*xhat)``
    as (2, C), whether they are finite in every channel, and writes ``out = dx``
    (:func:`dx_coefficients`).

    Each item takes ``width`` channels over all rows: their sums (as :func:`channel_sums`, one
    chunk), then the coefficients of dx, then dx, which reads x and dy from the cache.
    """
    A, C, B = x.shape
    channel_invstd = invstd(var, eps)
    sums = np.zeros((2, C))
    k_dy = np.empty(C)
    k_xmu = np.empty(C)
    k_const = np.empty(C)
    m = float(A * B)
    items = -(-C // width)
    for t in prange(items):
        c0 = t * width
        c1 = min(C, c0 + width)
        if B == 1:
            acc = np.zeros((2, c1 - c0))
            _tile_sums(x, mean, dy, None, c0, c1, 0, A, acc)
            for c in range(c0, c1):
                sums[0, c] = acc[0, c - c0]
                sums[1, c] = acc[1, c - c0]
        else:
            for c in range(c0, c1):
                sums[0, c], sums[1, c], _, _, _ = _runs_sums(x, mean[c], dy, None, c, 0, A)
        for c in range(c0, c1):
            sums[1, c] *= channel_invstd[c]  # sum dy*(x - mean) -> sum dy*xhat
            k_dy[c], k_xmu[c], k_const[c] = dx_coefficients(gamma[c], channel_invstd[c], sums[0, c], sums[1, c], m)
        _combine_channels(x, mean, k_xmu, k_const, out, dy, k_dy, c0, c1)
    return sums, all_finite(sums[0], sums[1])


# The half formats (float16, bfloat16) reach the kernels as uint16 bit patterns (bnref._half).
# Their reductions run on a float32 copy (:func:`widen`, exact) through the kernels above, and
# their elementwise pass is :func:`combine_half`: the float64 value of :func:`combine`, rounded
# once to the format. The fused kernels and the non-temporal stores do not take them.


@_kernel()
def widen(bits, fraction_bits, out):
    """``out`` (float32, any shape) = the values of the half patterns ``bits`` (uint16, its shape),
    exactly; both C-contiguous."""
    n = bits.size
    flat, wide = bits.reshape(n), out.reshape(n)
    block = max(COMBINE_BLOCK_ELEMENTS, -(-n // COMBINE_MIN_BLOCKS))
    for i in prange(-(-n // block)):
        lo = i * block
        hi = min(n, lo + block)
        widen_bits(flat[lo:hi], fraction_bits, wide[lo:hi])  # slices from 0: the loop vectorizes


@njit(cache=True, nogil=True, fastmath={"contract"}, inline="always")
def _combine_half_row(xr, mu, kx, k0, orow, ur, ku, vr, kv, fraction_bits):
    """:func:`combine_half` on one row of a channels-last ``x``: ``xr``, ``orow``, ``ur``, ``vr``
    the row's patterns and ``mu``..``kv`` its channels' coefficients, all indexed from 0 (so that
    the loop vectorizes, as in :func:`_combine_rows`); a None ``ur``/``vr`` drops its term.
    Inlined into :func:`combine_half`, so that a constant ``fraction_bits`` folds."""
    for j in range(xr.shape[0]):
        value = kx[j] * (half_value(xr[j], fraction_bits) - mu[j])
        if ur is not None:
            value += ku[j] * half_value(ur[j], fraction_bits)
        if vr is not None:
            value += kv[j] * half_value(vr[j], fraction_bits)
        orow[j] = half_bits_branch_free(value + k0[j], fraction_bits)


@njit(cache=True, nogil=True, fastmath={"contract"}, inline="always")
def _combine_half_run(xr, mean_c, kx, k0, orow, ur, ku, vr, kv, fraction_bits):
    """:func:`combine_half` on one run ``x[a, c, :]`` of a channels-first ``x`` (``xr``, ``orow``,
    ``ur``, ``vr`` its patterns), with channel c's coefficients."""
    for b in range(xr.shape[0]):
        value = kx * (half_value(xr[b], fraction_bits) - mean_c)
        if ur is not None:
            value += ku * half_value(ur[b], fraction_bits)
        if vr is not None:
            value += kv * half_value(vr[b], fraction_bits)
        orow[b] = half_bits_branch_free(value + k0, fraction_bits)


@_kernel(contract=True)
def combine_half(x, mean, k_x, k_0, out, u, k_u, v, k_v, fraction_bits):
    """:func:`combine` for half patterns (uint16 ``x``, ``out``, ``u``, ``v`` of the format with
    ``fraction_bits``): each output is the float64 value rounded once (:func:`bnref._half.half_bits`,
    computed as :func:`bnref._half.half_bits_branch_free`, which vectorizes). Blocks of whole rows
    (channels-last: the inner loop runs over the channels) or of runs (channels-first) are split
    over threads, last block first as in :func:`combine`."""
    A, C, B = x.shape
    items = A if B == 1 else A * C
    block = max(1, min(COMBINE_BLOCK_ELEMENTS // max(1, C if B == 1 else B), -(-items // COMBINE_MIN_BLOCKS)))
    # the loops are inlined with bfloat16's fraction bits as a constant where they are bfloat16's:
    # its conversions then fold to a shift by 16 and no rescaling (measured: the pass 25-40 %
    # faster); float16 gained nothing from a constant and keeps the one loop
    if B == 1:
        xf, of = x.reshape(A * C), out.reshape(A * C)
        uf = None if u is None else u.reshape(A * C)
        vf = None if v is None else v.reshape(A * C)
        for i in prange(-(-items // block)):
            lo, hi = _block_from_end(i, block, items)
            for a in range(lo, hi):
                o = a * C
                xr, orow = xf[o: o + C], of[o: o + C]
                ur = None if u is None else uf[o: o + C]
                vr = None if v is None else vf[o: o + C]
                if fraction_bits == BFLOAT16_FRACTION_BITS:
                    _combine_half_row(xr, mean, k_x, k_0, orow, ur, k_u, vr, k_v, BFLOAT16_FRACTION_BITS)
                else:
                    _combine_half_row(xr, mean, k_x, k_0, orow, ur, k_u, vr, k_v, fraction_bits)
    else:
        for i in prange(-(-items // block)):
            lo, hi = _block_from_end(i, block, items)
            for ac in range(lo, hi):
                a = ac // C
                c = ac - a * C
                xr, orow = x[a, c], out[a, c]
                ur = None if u is None else u[a, c]
                vr = None if v is None else v[a, c]
                ku = 0.0 if k_u is None else k_u[c]
                kv = 0.0 if k_v is None else k_v[c]
                if fraction_bits == BFLOAT16_FRACTION_BITS:
                    _combine_half_run(xr, mean[c], k_x[c], k_0[c], orow, ur, ku, vr, kv, BFLOAT16_FRACTION_BITS)
                else:
                    _combine_half_run(xr, mean[c], k_x[c], k_0[c], orow, ur, ku, vr, kv, fraction_bits)
