"""Numba kernels over the canonical ``(A, C, B)`` view (see ``_layout``).

Three kernels do all the full-size work; every per-channel formula lives in
``functional.py`` on ``(C,)`` float64 vectors, next to the math it implements.

* :func:`channel_moments` -- per-channel mean and M2 = sum (x - mean)^2, one pass over memory.
* :func:`channel_sums` -- the per-channel reductions of the backward and double backward.
* :func:`normalize_affine` / :func:`combine` -- the elementwise passes.

All accumulation is in float64, also for float32 data; results do not depend on
the thread count (the reduction is split into a fixed number of chunks).
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

_PARALLEL = dict(cache=True, nogil=True, parallel=True)

#: below this many elements a kernel runs single-threaded: waking threads costs more than the
#: work, and on a loaded machine (pytest -n auto) parallel regions on tiny arrays stall badly
PARALLEL_MIN_ELEMENTS = 1 << 16


def _with_serial_twin(kernel):
    """Attach ``kernel.serial``: the same Python function compiled without ``parallel``.

    The twin gets its own qualified name so that Numba's on-disk cache keeps both.
    """
    py = kernel.py_func
    twin = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__,
                              py.__closure__)
    twin.__qualname__ = py.__qualname__ + "_serial"
    twin.__doc__ = py.__doc__
    kernel.serial = njit(cache=True, nogil=True)(twin)
    return kernel


def pick(kernel, size: int):
    """The parallel kernel for large inputs, its serial twin for small ones."""
    return kernel if size >= PARALLEL_MIN_ELEMENTS else kernel.serial

#: a statistics block holds about this many elements, so its second pass reads cache, not memory
BLOCK_ELEMENTS = 1 << 15
#: the reduction over A is split into at most this many chunks, whatever the thread count
MAX_CHUNKS = 16


def chunking(a: int) -> tuple[int, int]:
    """(number of chunks, rows per chunk) for a reduction over ``a`` rows."""
    nchunks = max(1, min(a, MAX_CHUNKS))
    return nchunks, -(-a // nchunks) if a else 0


@_with_serial_twin
@njit(**_PARALLEL)
def channel_moments(x, shift, rows_per_chunk, nchunks, rows_per_block):
    """Per-channel mean and M2 of ``x`` (A, C, B) about ``shift`` (C,), both float64 (C,).

    Returns ``(mean - shift, M2)``. Each block of rows is summed, then its M2 about its
    own mean is taken while the block is still in cache, and blocks are merged with
    Chan, Golub & LeVeque's pairwise update -- a one-pass, two-pass-accurate scheme.
    Shifting by a sample of the channel makes a constant channel give exactly 0, 0.
    """
    A, C, B = x.shape
    chunk_count = np.zeros(nchunks)
    chunk_mean = np.zeros((nchunks, C))
    chunk_m2 = np.zeros((nchunks, C))
    for k in prange(nchunks):
        a_start = k * rows_per_chunk
        a_stop = min(A, a_start + rows_per_chunk)
        n = 0.0
        for s in range(a_start, a_stop, rows_per_block):
            e = min(a_stop, s + rows_per_block)
            n_block = float((e - s) * B)
            n_total = n + n_block
            for c in range(C):
                shift_c = shift[c]
                block_sum = 0.0
                for a in range(s, e):
                    for b in range(B):
                        block_sum += x[a, c, b] - shift_c
                block_mean = block_sum / n_block
                block_m2 = 0.0
                for a in range(s, e):
                    for b in range(B):
                        d = (x[a, c, b] - shift_c) - block_mean
                        block_m2 += d * d
                # Chan et al.: merge (n, mean, M2) with (n_block, block_mean, block_m2)
                delta = block_mean - chunk_mean[k, c]
                chunk_mean[k, c] += delta * (n_block / n_total)
                chunk_m2[k, c] += block_m2 + delta * delta * (n * n_block / n_total)
            n = n_total
        chunk_count[k] = n
    mean = np.zeros(C)
    m2 = np.zeros(C)
    n = 0.0
    for k in range(nchunks):
        n_k = chunk_count[k]
        if n_k == 0.0:
            continue
        n_total = n + n_k
        for c in range(C):
            delta = chunk_mean[k, c] - mean[c]
            mean[c] += delta * (n_k / n_total)
            m2[c] += chunk_m2[k, c] + delta * delta * (n * n_k / n_total)
        n = n_total
    return mean, m2


@_with_serial_twin
@njit(**_PARALLEL)
def channel_sums(x, mean, invstd, dy, ddx, rows_per_chunk, nchunks):
    """Per-channel sums over (A, B), float64 (C, 5), with xhat = (x - mean) * invstd:

    column 0: sum dy        1: sum dy*xhat        2: sum ddx
    column 3: sum ddx*xhat  4: sum ddx*dy

    The backward passes ``ddx=dy`` and reads columns 0-1 (same memory, no extra traffic).
    """
    A, C, B = x.shape
    partial = np.zeros((nchunks, C, 5))
    for k in prange(nchunks):
        a_start = k * rows_per_chunk
        a_stop = min(A, a_start + rows_per_chunk)
        for a in range(a_start, a_stop):
            for c in range(C):
                mean_c = mean[c]
                invstd_c = invstd[c]
                s_dy = 0.0
                s_dy_xhat = 0.0
                s_ddx = 0.0
                s_ddx_xhat = 0.0
                s_ddx_dy = 0.0
                for b in range(B):
                    xhat = (x[a, c, b] - mean_c) * invstd_c
                    dy_v = np.float64(dy[a, c, b])
                    ddx_v = np.float64(ddx[a, c, b])
                    s_dy += dy_v
                    s_dy_xhat += dy_v * xhat
                    s_ddx += ddx_v
                    s_ddx_xhat += ddx_v * xhat
                    s_ddx_dy += ddx_v * dy_v
                partial[k, c, 0] += s_dy
                partial[k, c, 1] += s_dy_xhat
                partial[k, c, 2] += s_ddx
                partial[k, c, 3] += s_ddx_xhat
                partial[k, c, 4] += s_ddx_dy
    sums = np.zeros((C, 5))
    for k in range(nchunks):
        sums += partial[k]
    return sums


@_with_serial_twin
@njit(**_PARALLEL)
def normalize_affine(x, mean, scale, shift, out):
    """out = (x - mean) * scale + shift, per channel; the subtraction is done in float64."""
    A, C, B = x.shape
    for a in prange(A):
        for c in range(C):
            mean_c = mean[c]
            scale_c = scale[c]
            shift_c = shift[c]
            for b in range(B):
                out[a, c, b] = (x[a, c, b] - mean_c) * scale_c + shift_c


@_with_serial_twin
@njit(**_PARALLEL)
def combine(x, mean, u, v, k_x, k_u, k_v, k_0, out):
    """out = k_x*(x - mean) + k_u*u + k_v*v + k_0, with per-channel (C,) float64 coefficients."""
    A, C, B = x.shape
    for a in prange(A):
        for c in range(C):
            mean_c = mean[c]
            kx = k_x[c]
            ku = k_u[c]
            kv = k_v[c]
            k0 = k_0[c]
            for b in range(B):
                out[a, c, b] = kx * (x[a, c, b] - mean_c) + ku * u[a, c, b] + kv * v[a, c, b] + k0
