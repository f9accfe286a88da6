r"""Proofs and a worked example for the numerics of the batch statistics (step 11).

The textbook one-pass formula E[x^2] - E[x]^2 is exact in exact arithmetic and useless
in float32 when |mean| >> std; bnref takes it per cache-sized block in float64 about a
center near the mean, with a second pass for any block where it would cancel, and merges
blocks with Chan et al.'s update (bnref/_kernels.py: channel_moments). The merge is
proved exact below.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy as sp

import bnref
import bnref.testing
from bnref import _kernels
from proofs._symbolic import (CONCRETE_SIZES, concrete, name_sums, normalize_sums,
                              rational_normal_form, symbolic)

BATCHES = [pytest.param(symbolic, id="general-m")] + [
    pytest.param(lambda size=size: concrete(size), id=f"m={size}") for size in CONCRETE_SIZES]

#: the worked example of docs/derivation.md, step 11 (float32 values near 1000)
WORKED_X = np.float32(1000) + np.array([0.01, 0.02, 0.03, 0.04], dtype=np.float32)


@pytest.mark.parametrize("batch", BATCHES)
def test_textbook_formula_is_exact_in_exact_arithmetic(batch):
    r"""Step 11: the one-pass formula is an identity -- its failure is purely one of rounding.

    > $$\sigma^2 = \frac1m\sum_i x_i^2 - \mu^2 = \mathbb E[x^2] - \mathbb E[x]^2$$
    """
    b = batch()
    b.assert_identity(b.var, b.total(lambda i: b.x(i) ** 2) / b.m - b.mean**2, "E[x^2] - E[x]^2")


@pytest.mark.parametrize("batch", BATCHES)
def test_shift_leaves_variance_unchanged(batch):
    r"""Step 11: any shift K may be subtracted first; bnref takes K = a sample of the channel.

    > $$\sigma^2(x - K\mathbf 1) = \sigma^2(x), \qquad \mu(x) = K + \mu(x - K\mathbf 1)$$
    """
    b = batch()
    K = sp.Symbol("K", real=True)
    b.assert_identity(b.map_x(b.var, lambda e: e - K), b.var, "var(x - K)")
    b.assert_identity(b.mean, K + b.map_x(b.mean, lambda e: e - K), "mean(x)")


def test_float32_worked_example():
    r"""Step 11: four float32 values near 1000 with variance 1.25e-4.

    E[x^2] = 1000050.0 and E[x]^2 = 1000050.0625 in float32 (neighbouring float32 values
    there are 0.0625 apart), so the one-pass formula returns -0.0625: negative, and
    rsqrt(var + eps) is NaN. The cancellation ratio rho = 1 + mu^2/sigma^2 = 8.0e9 exceeds
    1/2^-24 = 1.7e7, so not one digit can be trusted. bnref's variance equals the exact
    variance of the four float32 values (computed in rationals) to the last bit.

    > $$\text{float32: } \mathbb E[x^2] - \mathbb E[x]^2 = 1000050.0 - 1000050.0625 = -0.0625, \qquad \text{exact: } \sigma^2 = 1.2478675\times10^{-4}$$
    """
    x = WORKED_X
    exact = [Fraction(float(v)) for v in x]
    exact_mean = sum(exact) / len(exact)
    exact_var = sum((v - exact_mean) ** 2 for v in exact) / len(exact)
    assert f"{float(exact_var):.7e}" == "1.2478675e-04"
    four = np.float32(len(x))
    e_x2 = np.float32(0)
    e_x = np.float32(0)
    for v in x:                                     # float32 accumulation, as a naive kernel
        e_x2 += v * v
        e_x += v
    e_x2, e_x = e_x2 / four, e_x / four
    assert (float(e_x2), float(e_x * e_x)) == (1000050.0, 1000050.0625)
    assert float(e_x2 - e_x * e_x) == -0.0625
    assert np.spacing(np.float32(1e6)) == 0.0625
    rho = 1 + float(exact_mean) ** 2 / float(exact_var)
    assert 7.9e9 < rho < 8.1e9 and rho * 2.0**-24 > 100
    kappa = bnref.testing.condition_number(x.reshape(4, 1), 1, 1e-5)     # rho <= kappa^2 (var + eps)/var
    assert rho <= kappa**2 * (float(exact_var) + 1e-5) / float(exact_var)
    _, mean, var = bnref.forward_train(x.reshape(4, 1), np.ones(1, np.float32), np.zeros(1, np.float32))
    assert var.dtype == np.float64
    assert abs(var[0] - float(exact_var)) <= 2**-52 * float(exact_var)
    assert abs(mean[0] - float(exact_mean)) <= 2**-52 * float(exact_mean)


def test_float32_large_batch():
    r"""Step 11, at scale: 4096 float32 values, mean 1e4, std 0.01.

    > $$\text{4096 values, } \mu = 10^4,\ \sigma = 0.01: \text{ float32 one-pass gives } 0 \text{ (exact: } 9.967\times10^{-5}\text{); bnref agrees with the exact value to } 10^{-12}$$
    """
    rng = np.random.default_rng(0)
    x = np.float32(1e4) + np.float32(0.01) * rng.standard_normal(4096).astype(np.float32)
    exact = x.astype(np.float64)
    exact_var = ((exact - exact.mean()) ** 2).mean()   # float64 two-pass on exact float32 inputs
    naive = float(np.mean(x * x) - np.mean(x) ** 2)
    assert f"{exact_var:.3e}" == "9.967e-05" and naive == 0.0
    var = bnref.forward_train(x.reshape(-1, 1), np.ones(1, np.float32), np.zeros(1, np.float32))[2][0]
    assert abs(var - exact_var) <= 1e-12 * exact_var


# ---------------------------------------------------------------- Chan, Golub & LeVeque's merge
def _merge_residuals(size_a, size_b):
    """Residuals of Chan's merge of two blocks against the statistics of their union."""
    def moments(name, size):
        if isinstance(size, int):
            values = sp.symbols(f"{name}1:{size + 1}", real=True)
            total = lambda f: sp.Add(*(f(v) for v in values))  # noqa: E731
        else:
            v = sp.IndexedBase(name, real=True)
            i = sp.Symbol(f"i_{name}", integer=True, positive=True)
            total = lambda f: sp.Sum(f(v[i]), (i, 1, size))  # noqa: E731
        return total

    total_a, total_b = moments("u", size_a), moments("w", size_b)
    mean_a, mean_b = total_a(lambda v: v) / size_a, total_b(lambda v: v) / size_b
    m2_a = total_a(lambda v: (v - mean_a) ** 2)
    m2_b = total_b(lambda v: (v - mean_b) ** 2)
    n = size_a + size_b
    mean_ab = (total_a(lambda v: v) + total_b(lambda v: v)) / n
    m2_ab = total_a(lambda v: (v - mean_ab) ** 2) + total_b(lambda v: (v - mean_ab) ** 2)
    delta = mean_b - mean_a
    # the kernel's update: mean += delta * n_b / n;  M2 += M2_b + delta^2 * n_a n_b / n
    merged_mean = mean_a + delta * size_b / n
    merged_m2 = m2_a + m2_b + delta**2 * size_a * size_b / n
    return [rational_normal_form(name_sums(normalize_sums(e)))
            for e in (merged_mean - mean_ab, merged_m2 - m2_ab)]


def test_chan_merge_general_sizes():
    r"""Step 11, for symbolic block sizes a and b: merging (count, mean, M2) of two blocks is exact.

    > $$\Delta = \mu_B - \mu_A, \qquad \mu_{AB} = \mu_A + \Delta\,\frac{m_B}{m_A+m_B}, \qquad V_{AB} = V_A + V_B + \Delta^2\,\frac{m_A m_B}{m_A+m_B}$$
    """
    a, b = sp.symbols("a b", integer=True, positive=True)
    assert _merge_residuals(a, b) == [0, 0]


@pytest.mark.parametrize("size_a,size_b", [(1, 1), (1, 3), (2, 2), (3, 2), (3, 3)])
def test_chan_merge_small_sizes(size_a, size_b):
    r"""Step 11, block sizes 1..3 with explicit symbols.

    > $$\Delta = \mu_B - \mu_A, \qquad \mu_{AB} = \mu_A + \Delta\,\frac{m_B}{m_A+m_B}, \qquad V_{AB} = V_A + V_B + \Delta^2\,\frac{m_A m_B}{m_A+m_B}$$
    """
    assert _merge_residuals(size_a, size_b) == [0, 0]


# (A, C, B): channels-first runs; channels-last with C < LANES (one tile); channels-last with
# two tiles of channels (C > LANES), one of them partial
MOMENTS_SHAPES = [(37, 3, 4), (37, 5, 1), (41, _kernels.LANES + 88, 1)]


@pytest.mark.parametrize("shape", MOMENTS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rows_per_block", [1, 2, 3, 4, 5, 8, 41])
@pytest.mark.parametrize("nchunks", [1, 3, None])
def test_channel_moments_kernel_merges_exactly(shape, rows_per_block, nchunks):
    r"""Step 11, numerically: the kernel with tiny blocks (many merges) equals a float64 two-pass.

    Every path of the kernel is taken: one or several chunks, blocks of 1..8 rows (leftover
    rows after the four quarters, blocks whose second pass runs fused with the next block's
    first, a short last block), one or two tiles of channels.

    > $$\Delta = \mu_B - \mu_A, \qquad \mu_{AB} = \mu_A + \Delta\,\frac{m_B}{m_A+m_B}, \qquad V_{AB} = V_A + V_B + \Delta^2\,\frac{m_A m_B}{m_A+m_B}$$
    """
    rng = np.random.default_rng(2)
    x3 = rng.normal(5.0, 2.0, size=shape)
    shift = x3[0, :, 0].copy()
    count, rows = _kernels.chunking(x3.shape[0]) if nchunks is None else (nchunks, -(-shape[0] // nchunks))
    for moments in (_kernels.channel_moments, _kernels.channel_moments.serial):
        mean_shifted, m2 = moments(x3, shift, rows, count, rows_per_block)
        flat = x3.transpose(1, 0, 2).reshape(shape[1], -1)
        np.testing.assert_allclose(shift + mean_shifted, flat.mean(axis=1), rtol=1e-14)
        np.testing.assert_allclose(m2, ((flat - flat.mean(axis=1, keepdims=True)) ** 2).sum(axis=1),
                                   rtol=1e-12)


def test_block_m2_accepts_only_bounded_cancellation():
    r"""Step 11: a block's one-pass $M_2 = S_2 - S_1^2/n$ is used only while $S_2 \le 16\,M_2$
    (at most 4 bits lost to cancellation); NaN always goes to the second pass.

    > $$S_2 \le 16\,V$$
    """
    limit = _kernels.CANCELLATION_LIMIT
    assert _kernels._block_m2(0.0, 0.0, 4.0) == (0.0, 0.0, True)             # a constant block
    assert _kernels._block_m2(0.0, 8.0, 4.0) == (0.0, 8.0, True)             # centered: S2 = M2
    # S1 = 2 over n = 4 values: S1^2/n = 1, so M2 = S2 - 1 and S2/M2 = r for S2 = r/(r - 1)
    assert _kernels._block_m2(2.0, (limit - 1) / (limit - 2), 4.0)[2]       # S2/M2 = 15: one pass
    assert not _kernels._block_m2(2.0, (limit + 1) / limit, 4.0)[2]         # S2/M2 = 17: two
    assert not _kernels._block_m2(400.0, 40001.0, 4.0)[2]                    # S2/M2 = 40001
    assert not _kernels._block_m2(float("nan"), 1.0, 4.0)[2]
    assert not _kernels._block_m2(1.0, float("nan"), 4.0)[2]


@pytest.mark.parametrize("shape", [(8192, 3, 1), (2, 3, 4096), (8192, 600, 1)], ids=lambda s: "x".join(map(str, s)))
def test_one_pass_falls_back_to_two_passes_where_it_would_cancel(shape):
    r"""Step 11: the worst case of the one-pass block is its first block, centered on a sample
    that lies far from the rest ($S_2/M_2$ up to $n$). There the block takes its second pass,
    and the variance keeps float64 accuracy; without it, it is off by 4e-11 here.

    > $$\mu_{block} = K_{block} + \frac{S_1}{m_{block}}, \qquad V = S_2 - \frac{S_1^2}{m_{block}}, \qquad S_1 = \sum \tilde x, \qquad S_2 = \sum \tilde x^2$$
    """
    rng = np.random.default_rng(0)
    x3 = rng.normal(0.0, 1e-3, size=shape)
    x3[0] = 1.0  # the first sample of every channel: the first block's center
    exact = x3.transpose(1, 0, 2).reshape(shape[1], -1).astype(np.longdouble)
    exact_mean = exact.mean(axis=1)
    exact_m2 = ((exact - exact_mean[:, None]) ** 2).sum(axis=1)
    shift = x3[0, :, 0].copy()
    rows_per_block = _kernels.block_rows(shape[1], shape[2])
    for nchunks in (1, 4):
        rows = -(-shape[0] // nchunks)
        for moments in (_kernels.channel_moments, _kernels.channel_moments.serial):
            mean_shifted, m2 = moments(x3, shift, rows, nchunks, rows_per_block)
            np.testing.assert_allclose(m2, exact_m2.astype(np.float64), rtol=1e-13)
            # the mean, like any sum, to u64 * sqrt(m) relative to max|x| = 1
            np.testing.assert_allclose(shift + mean_shifted, exact_mean.astype(np.float64), rtol=0, atol=1e-14)
    _, mean, var = bnref.forward_train(x3, np.ones(shape[1]), np.zeros(shape[1]), 1e-5, 1)  # the fused forward
    np.testing.assert_allclose(var, (exact_m2 / exact.shape[1]).astype(np.float64), rtol=1e-13)


# ---------------------------------------------------------------- float32 differences in float64
def _ulp_exponent(a: np.float32) -> int:
    """q with ulp(a) = 2^q for a float32 a (2^-149 for subnormals)."""
    return int(np.log2(np.spacing(np.abs(a))))


def _difference_is_exact(a: np.float32, b: np.float32) -> bool:
    return Fraction(float(np.float64(a) - np.float64(b))) == Fraction(float(a)) - Fraction(float(b))


def test_float32_difference_exact_in_float64_when_exponents_are_close():
    r"""Step 11: the difference of two float32 numbers is exact in float64 when their ulp exponents
    differ by at most 29, $(2^{24}-1)(2^{29}+1) < 2^{53}$, and need not be beyond: $2^{26} - 0.0015$
    is not (59 bits).

    > $(a - b)/2^{q_b} = A\,2^{g} - B$ with $|A|, |B| \le 2^{24} - 1$, so
    """
    a, b = np.float32(2.0**26), np.float32(0.0015)
    assert _ulp_exponent(a) - _ulp_exponent(b) == 36
    assert not _difference_is_exact(a, b)
    rng = np.random.default_rng(5)
    full = np.float32(2 - 2.0**-23)                    # all 24 significand bits set
    for gap in range(0, 40):
        for _ in range(200):
            a = np.float32(rng.uniform(1, 2)) * np.float32(2.0**rng.integers(-60, 60))
            b = np.float32(rng.uniform(1, 2)) * np.float32(2.0 ** (_ulp_exponent(a) - gap + 23)) * rng.choice([-1, 1])
            if abs(_ulp_exponent(a) - _ulp_exponent(b)) <= 29:
                assert _difference_is_exact(a, b), (a, b)
        # the bound is tight: a full significand minus a negative odd one `gap` binades lower
        # is an odd integer of 24 + gap bits in units of the smaller ulp
        big, small = full * np.float32(2.0**30), -np.float32(1 + 2.0**-23) * np.float32(2.0 ** (30 - gap))
        assert _ulp_exponent(big) - _ulp_exponent(small) == gap
        assert _difference_is_exact(big, small) == (gap <= 29), gap


def test_first_block_cancellation_is_bounded_by_its_size():
    r"""Step 11: centered on one of its own values, a block of $m$ values has $S_2/V \le m$
    (Samuelson's inequality), with equality when the others are equal.

    > $S_2/V$ only by $m_{block}$ (Samuelson's inequality; reached when the center lies far
    """
    rng = np.random.default_rng(4)
    for size in (2, 3, 10, 1000):
        for _ in range(50):
            x = [Fraction(v) for v in rng.standard_normal(size)]
            mean = sum(x) / size
            v = sum((u - mean) ** 2 for u in x)
            assert sum((u - x[0]) ** 2 for u in x) <= size * v
        x = [Fraction(1)] + [Fraction(0)] * (size - 1)
        mean = sum(x) / size
        assert sum((u - x[0]) ** 2 for u in x) == size * sum((u - mean) ** 2 for u in x)
