"""Reductions over per-shard parts, in a canonical order (pure NumPy, no communication).

Every process applies these to the same gathered parts, so every process gets the same
bits. The order of the shards is made canonical -- sorted per element -- so the result
does not depend on which process holds which shard, and shards with no values drop out
exactly (adding an empty shard anywhere changes no bit).
"""
from __future__ import annotations

import numpy as np


def _magnitude_order(parts: np.ndarray) -> np.ndarray:
    """``parts`` (S, ...) sorted along axis 0 per element by |v|, ties by v: a compare-exchange network.

    Odd-even transposition sort: S rounds of vectorized compare-exchanges of neighbours. For the
    few parts of an all-reduce this is far cheaper than a general sort of each element's column.
    """
    parts = parts.copy()
    for round_ in range(len(parts)):
        for i in range(round_ % 2, len(parts) - 1, 2):
            a, b = parts[i], parts[i + 1]
            swap = (np.abs(a) > np.abs(b)) | ((np.abs(a) == np.abs(b)) & (a > b))
            parts[i], parts[i + 1] = np.where(swap, b, a), np.where(swap, a, b)
    return parts


def sum_parts(parts: np.ndarray) -> np.ndarray:
    """``sum_s parts[s]`` for ``parts`` of shape ``(S, ...)``, in a canonical order.

    Per element, the terms are added left to right in increasing magnitude (ties: by value),
    the order that keeps the rounding error of a short sum smallest. Zeros come first and add
    exactly, and a permutation of the parts gives the same bits. Two parts need no sorting:
    ``a + b`` is commutative in floating point.
    """
    parts = np.asarray(parts)
    if len(parts) == 0:
        return np.zeros(parts.shape[1:], dtype=parts.dtype)
    if len(parts) == 1:
        return parts[0].copy()
    if len(parts) == 2:
        return parts[0] + parts[1]
    ordered = _magnitude_order(parts)
    total = ordered[0].copy()
    for term in ordered[1:]:
        total += term
    return total


def merge_moments(count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Merge per-shard ``(count, mean, M2)``, each ``(S, C)``, into the whole batch's ``(C,)`` triple.

    Chan, Golub & LeVeque's update, applied to the shards one at a time in a canonical order
    (per channel, sorted by count, then mean, then M2):

    .. math::
        n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
        \bar x = \bar x_a + \delta\,\tfrac{n_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2\,\tfrac{n_a n_b}{n}

    A shard with ``n_b = 0`` (mean and M2 zero) leaves the running triple unchanged, bit for
    bit; merging into an empty triple copies the shard exactly. Counts are exact integers
    in float64 (up to 2^53).
    """
    count, mean, m2 = (np.asarray(v, dtype=np.float64) for v in (count, mean, m2))
    order = np.lexsort((m2, mean, count), axis=0)
    count, mean, m2 = (np.take_along_axis(v, order, axis=0) for v in (count, mean, m2))
    n_total = np.zeros(count.shape[1:])
    mean_total = np.zeros(count.shape[1:])
    m2_total = np.zeros(count.shape[1:])
    for n_b, mean_b, m2_b in zip(count, mean, m2):
        n = n_total + n_b
        safe_n = np.where(n > 0, n, 1.0)  # both empty: stay at zero
        delta = mean_b - mean_total
        mean_total = mean_total + delta * (n_b / safe_n)
        m2_total = m2_total + m2_b + delta * delta * (n_total * n_b / safe_n)
        n_total = n
    return n_total, mean_total, m2_total
