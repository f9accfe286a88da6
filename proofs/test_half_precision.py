r"""Half precision (step 12): one rounding of the float64 result, and why nothing overflows.

float16 and bfloat16 data are widened exactly to float64, the statistics accumulate in
float64, and each output is the float64 result rounded once to the half format. The
roundings below are computed exactly, in rationals (:func:`round_to`), so the claims about
casts do not rest on any library's cast; the rounder itself is checked on every midpoint
of both half formats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import bnref
import bnref.testing
from bnref.dtypes import DTYPES

INF = math.inf


@dataclass(frozen=True)
class Format:
    """A binary IEEE 754 format: ``precision`` significand bits (the hidden one included), normal
    exponents ``emin..emax``; its values are ``k 2^(e - precision + 1)`` with ``|k| < 2^precision``."""
    name: str
    precision: int
    emin: int
    emax: int

    @property
    def unit_roundoff(self) -> Fraction:
        return Fraction(1, 2**self.precision)

    @property
    def max_finite(self) -> Fraction:
        return (2 - Fraction(2) ** (1 - self.precision)) * Fraction(2) ** self.emax

    @property
    def smallest_normal(self) -> Fraction:
        return Fraction(2) ** self.emin

    @property
    def smallest_subnormal(self) -> Fraction:
        return Fraction(2) ** (self.emin - self.precision + 1)

    def values(self) -> list[Fraction]:
        """Every finite non-negative value, ascending."""
        out = [k * self.smallest_subnormal for k in range(2 ** (self.precision - 1))]
        for e in range(self.emin, self.emax + 1):
            ulp = Fraction(2) ** (e - self.precision + 1)
            out += [k * ulp for k in range(2 ** (self.precision - 1), 2**self.precision)]
        return out


FORMATS = {f.name: f for f in (Format("float16", 11, -14, 15), Format("bfloat16", 8, -126, 127),
                               Format("float32", 24, -126, 127), Format("float64", 53, -1022, 1023))}
F16, BF16, F32, F64 = (FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))


def _exponent(a: Fraction) -> int:
    """e with 2^e <= a < 2^(e+1), for a > 0."""
    n, d = a.numerator, a.denominator
    e = n.bit_length() - d.bit_length()
    return e if (n << max(-e, 0)) >= (d << max(e, 0)) else e - 1


def round_to(value, fmt: Format):
    """``value`` (a Fraction, int or float) rounded to nearest, ties to even, in ``fmt``: a Fraction,
    or +-inf where the rounded magnitude exceeds the largest finite value (IEEE 754 overflow)."""
    if value in (INF, -INF):
        return value
    a = abs(Fraction(value))
    if a == 0:
        return Fraction(0)
    # in units of the ulp, 2^(e - precision + 1), integers only; below 2^emin the ulp is the subnormal one
    shift = fmt.precision - 1 - max(_exponent(a), fmt.emin)
    num, den = a.numerator << max(shift, 0), a.denominator << max(-shift, 0)
    k, rest = divmod(num, den)
    if 2 * rest > den or (2 * rest == den and k % 2 == 1):
        k += 1
    rounded = Fraction(k << max(-shift, 0), 1 << max(shift, 0))
    magnitude = INF if rounded > fmt.max_finite else rounded
    return magnitude if value > 0 else -magnitude


def sequential_sum(values, fmt: Format):
    """A running sum with every partial sum rounded to ``fmt``, as a naive half-precision kernel."""
    total = Fraction(0)
    for v in values:
        total = round_to(total + Fraction(v), fmt)
    return total


# ---------------------------------------------------------------- the formats and the rounder
@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_half_formats(fmt):
    r"""Step 12: the two half formats, from their definition, against ml_dtypes and bnref.dtypes.

    > | float16 | 11 | $2^{-11} \approx 4.9\times10^{-4}$ | 65504 | $2^{-14} \approx 6.1\times10^{-5}$ | $2^{-24} \approx 6.0\times10^{-8}$ |

    > | bfloat16 | 8 | $2^{-8} \approx 3.9\times10^{-3}$ | $\approx 3.39\times10^{38}$ | $2^{-126} \approx 1.2\times10^{-38}$ | $2^{-133} \approx 9.2\times10^{-41}$ |
    """
    info, row = ml_dtypes.finfo(np.dtype(fmt.name)), DTYPES[fmt.name]
    assert fmt.unit_roundoff == Fraction(row.unit_roundoff) == Fraction(float(info.eps)) / 2
    assert fmt.max_finite == Fraction(row.max_finite) == Fraction(float(info.max))
    assert fmt.smallest_normal == Fraction(float(info.smallest_normal))
    assert fmt.smallest_subnormal == Fraction(float(info.smallest_subnormal))
    if fmt is F16:
        assert (fmt.unit_roundoff, fmt.max_finite, fmt.smallest_subnormal) == (
            Fraction(1, 2**11), 65504, Fraction(1, 2**24))
    else:
        assert fmt.emax == F32.emax and fmt.emin == F32.emin and f"{float(fmt.max_finite):.3g}" == "3.39e+38"
    # every bit pattern of the format decodes to one of the values the definition lists
    with np.errstate(invalid="ignore"):      # the NaN patterns
        bits = np.arange(2**16, dtype=np.uint16).view(np.dtype(fmt.name)).astype(np.float64)
    finite = sorted({Fraction(float(v)) for v in bits if np.isfinite(v) and v >= 0})
    assert finite == fmt.values()


@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_exact_rounding_is_round_to_nearest_even(fmt):
    r"""Step 12: the rational rounder the other proofs use, on every pair of neighbours of the
    format: a value rounds to itself, a midpoint to the neighbour with the even significand,
    anything off the midpoint to the nearer one; past the largest finite value by half an ulp
    or more, to infinity.

    > round to $\pm\infty$ (at $|v| \ge 65520$ for float16, half an ulp above 65504) -- as IEEE 754
    """
    values = fmt.values()
    ulp_exponent = lambda v: _exponent(v) - fmt.precision + 1 if v >= fmt.smallest_normal else \
        _exponent(fmt.smallest_subnormal)  # noqa: E731
    tiny = fmt.smallest_subnormal / 2**60
    for lo, hi in zip(values, values[1:]):
        mid = (lo + hi) / 2
        even = lo if (lo / Fraction(2) ** ulp_exponent(lo)) % 2 == 0 else hi
        assert round_to(lo, fmt) == lo and round_to(-lo, fmt) == -lo
        assert round_to(mid, fmt) == even and round_to(-mid, fmt) == -even
        assert round_to(mid - tiny, fmt) == lo and round_to(mid + tiny, fmt) == hi
    top, ulp_top = fmt.max_finite, Fraction(2) ** (fmt.emax - fmt.precision + 1)
    assert round_to(top + ulp_top / 2 - tiny, fmt) == top
    assert round_to(top + ulp_top / 2, fmt) == INF and round_to(-(top + ulp_top / 2), fmt) == -INF
    if fmt is F16:
        assert top + ulp_top / 2 == 65520 and round_to(Fraction(6551999, 100), F16) == 65504


def test_exact_rounding_agrees_with_correctly_rounding_casts():
    """Step 12: on random float64 values of every size, the rational rounder equals NumPy's
    float64 -> float16 and float32 casts and ml_dtypes' float64 -> bfloat16 cast, which round
    directly (a second, independent check of the rounder).

    > the float64 value rounded once, to nearest with ties to even; values too large for the
    """
    rng = np.random.default_rng(12)
    for fmt, dtype, scales in ((F16, np.float16, (-30, 20)), (BF16, ml_dtypes.bfloat16, (-140, 130)),
                               (F32, np.float32, (-155, 130))):
        values = rng.uniform(-2, 2, 3000) * 2.0 ** rng.integers(*scales, 3000)
        for v in values:
            with np.errstate(over="ignore"):
                expected = float(np.float64(v).astype(dtype))
            got = round_to(v, fmt)
            assert (got if got in (INF, -INF) else float(got)) == expected, (fmt.name, v)


# ---------------------------------------------------------------- one rounding, not two
#: the float64 values whose rounding through float32 differs from the direct one: just above a
#: midpoint of the half format, by less than half an ulp of float32
DOUBLE_ROUNDING = {"float16": Fraction(1) + Fraction(1, 2**11) + Fraction(1, 2**40),
                   "bfloat16": Fraction(1) + Fraction(1, 2**8) + Fraction(1, 2**40)}


@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_rounding_through_float32_is_not_correct_rounding(fmt):
    r"""Step 12: $v$ is a float64 number just above the midpoint of two neighbours of the half
    format; float32 rounds it onto the midpoint, which then ties to the even neighbour, below.

    > $$v = 1 + 2^{-11} + 2^{-40}: \qquad \mathrm{fl}_{16}(v) = 1 + 2^{-10} = 1.0009765625, \qquad \mathrm{fl}_{16}\big(\mathrm{fl}_{32}(v)\big) = \mathrm{fl}_{16}\big(1 + 2^{-11}\big) = 1$$

    > $$v = 1 + 2^{-8} + 2^{-40}: \qquad \mathrm{fl}_{bf16}(v) = 1 + 2^{-7} = 1.0078125, \qquad \mathrm{fl}_{bf16}\big(\mathrm{fl}_{32}(v)\big) = \mathrm{fl}_{bf16}\big(1 + 2^{-8}\big) = 1$$
    """
    v = DOUBLE_ROUNDING[fmt.name]
    half_ulp = Fraction(1, 2**fmt.precision)
    assert round_to(v, F64) == v                                     # a float64 number
    assert round_to(v, fmt) == 1 + 2 * half_ulp
    assert round_to(v, F32) == 1 + half_ulp                          # the midpoint of 1 and 1 + 2 half_ulp
    assert round_to(round_to(v, F32), fmt) == 1
    assert float(1 + 2 * half_ulp) == {"float16": 1.0009765625, "bfloat16": 1.0078125}[fmt.name]


def test_torch_casts_from_float64_round_twice():
    r"""Step 12: PyTorch (the pinned 2.13.0, CPU) casts float64 to float16 and bfloat16 through
    float32, so it returns the doubly rounded value of the examples where bnref's design asks
    for the direct one.

    > `torch.tensor(1 + 2**-11 + 2**-40, dtype=torch.float64).to(torch.float16)` is 1.0
    """
    torch = pytest.importorskip("torch")
    for fmt, dtype in ((F16, torch.float16), (BF16, torch.bfloat16)):
        v = DOUBLE_ROUNDING[fmt.name]
        assert torch.tensor(float(v), dtype=torch.float64).to(dtype).item() == round_to(round_to(v, F32), fmt) == 1


@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_double_rounding_is_harmless_for_one_operation_on_half_operands(fmt):
    r"""Step 12: for one $+$, $-$, $\times$ or $\div$ of two half numbers, rounding the exact result
    to float32 and then to the half format equals rounding it directly (float32's 24 bits are at
    least $2p + 2$), sampled over operands of every exponent. (Products are exact in float32 anyway,
    $2p \le 24$ bits; sums far apart in exponent and quotients are where float32 rounds.)

    > operands (float32 has at least $2p + 2$ bits, Figueroa's condition for that), but
    """
    assert F32.precision >= 2 * fmt.precision + 2
    rng = np.random.default_rng(11)
    values = [v for v in fmt.values() if v != 0]
    values = [values[k] for k in rng.integers(0, len(values), 4000)]
    operands = [(a * rng.choice([-1, 1]), b) for a, b in zip(values[::2], values[1::2])]
    for a, b in operands:
        for exact in (a + b, a - b, a * b, a / b):
            assert round_to(round_to(exact, F32), fmt) == round_to(exact, fmt), (a, b, exact)


def _exact_forward(x: list[Fraction], gamma: Fraction, beta: Fraction, eps: Fraction, digits: int = 60):
    """y = gamma (x - mean) / sqrt(var + eps) + beta to ``digits`` digits: the statistics in rationals,
    the square root in Decimal."""
    m = len(x)
    mean = sum(x) / m
    var = sum((v - mean) ** 2 for v in x) / m
    with localcontext() as ctx:
        ctx.prec = digits
        d = lambda q: Decimal(q.numerator) / Decimal(q.denominator)  # noqa: E731
        s = 1 / (d(var + eps)).sqrt()
        return [d(gamma) * d(v - mean) * s + d(beta) for v in x]


@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_one_rounding_of_the_float64_result(fmt):
    r"""Step 12: half data widened to float64 (exactly), normalized by bnref in float64, then
    rounded once: the float64 result is within a few $\kappa\,u_{64}$ (times $|\gamma|$) of the exact
    value, the half output within half an ulp of the float64 result, and so it is the exact value
    correctly rounded except where that lies within the float64 error of a midpoint.

    > $$|y_i - y^{64}_i| \le u_h\,|y^{64}_i|, \qquad |y^{64}_i - y^{exact}_i| \le c\,|\gamma|\,\kappa\,u_{64}$$
    """
    rng = np.random.default_rng(3)
    dtype = np.dtype(fmt.name)
    for m, offset in ((7, 0.0), (300, 3.0), (2000, 40.0)):
        x_half = (offset + rng.standard_normal((m, 1))).astype(dtype)
        x64 = x_half.astype(np.float64)                               # widening is exact
        assert all(Fraction(float(a)) == round_to(float(a), fmt) for a in x64[:, 0])
        gamma, beta, eps = 1.5, 0.25, 1e-5
        y64, _, _ = bnref.forward_train(x64, np.full(1, gamma), np.full(1, beta), eps)
        exact = _exact_forward([Fraction(float(a)) for a in x64[:, 0]], Fraction(gamma), Fraction(beta),
                               Fraction(eps))
        kappa = bnref.testing.condition_number(x64, 1, eps)
        u64 = Fraction(1, 2**53)
        for got, want in zip(y64[:, 0], exact):
            error = abs(Decimal(float(got)) - want)
            assert error <= Decimal(4 * gamma * kappa) * Decimal(u64.numerator) / Decimal(u64.denominator)
            y = round_to(float(got), fmt)
            assert abs(y - Fraction(float(got))) <= fmt.unit_roundoff * abs(Fraction(float(got)))
            assert y == round_to(Fraction(want), fmt)                 # no exact value this close to a midpoint


# ---------------------------------------------------------------- overflow
def test_float64_accumulation_of_half_data_cannot_overflow():
    r"""Step 12: squares of half values, and sums of $m$ of them, against float64's largest value.
    Centered values are at most twice the largest value, so their squares at most 4 times its square.

    > $$\text{float16: } 65504^2 \approx 4.29\times10^{9}, \ m < 1.0\times10^{298}; \qquad \text{bfloat16: } (3.39\times10^{38})^2 \approx 1.15\times10^{77}, \ m < 3.9\times10^{230}$$
    """
    for fmt, square, limit in ((F16, "4.29e+09", "1.0e+298"), (BF16, "1.15e+77", "3.9e+230")):
        assert f"{float(fmt.max_finite**2):.3g}" == square
        largest_m = F64.max_finite / (2 * fmt.max_finite) ** 2      # centered: |x - K| <= 2 max
        assert f"{float(largest_m):.1e}" == limit
    # a float32 accumulator is not enough for bfloat16: a value of 2^64 squares to 2^128
    assert round_to(Fraction(2) ** 64, BF16) == 2**64 and round_to(Fraction(2) ** 128, F32) == INF


def test_difference_of_two_float16_values_is_exact_in_float64():
    r"""Step 12: every float16 value is an integer multiple of $2^{-24}$ below $2^{16}$, so the
    difference of two is an integer multiple of $2^{-24}$ below $2^{17}$: 41 bits, exact in float64.

    > ($x_i - K$ of two float16 values is exact in float64: both are integer multiples of
    """
    values = F16.values()
    assert all((v / F16.smallest_subnormal).denominator == 1 for v in values)
    assert max(values) / F16.smallest_subnormal < 2**40
    rng = np.random.default_rng(7)
    a, b = (rng.choice(np.array(values + [-v for v in values], dtype=object), 20000) for _ in range(2))
    for u, w in zip(a, b):
        assert Fraction(float(u) - float(w)) == u - w


def test_centered_sum_of_squares_is_at_most_the_raw_one():
    r"""Step 12: the centered sum bnref accumulates is the raw one less $m\mu^2$, so never larger,
    and the raw one is at most $m \max_i x_i^2$ (the identity for every $m$: test_textbook_formula_is_exact_in_exact_arithmetic).

    > $$\sum_i (x_i - \mu)^2 = \sum_i x_i^2 - m\,\mu^2$$

    > is at most $\sum_i x_i^2 \le m \max_i x_i^2$. float32 accumulation would not be enough for
    """
    rng = np.random.default_rng(8)
    for m in (1, 2, 5, 100):
        for _ in range(20):
            x = [Fraction(float(v)) for v in rng.normal(rng.uniform(-5, 5), 2.0, m).astype(np.float16)]
            mean = sum(x) / m
            centered, raw = sum((v - mean) ** 2 for v in x), sum(v * v for v in x)
            assert centered == raw - m * mean**2
            assert centered <= raw <= m * max(v * v for v in x)


def test_half_precision_squares_overflow():
    r"""Step 12: in float16 a single square of 256 overflows, and a sum of squares of moderate values.

    > $$\text{float16: } 255^2 = 65025 \to 65024, \qquad 256^2 = 65536 \to \infty, \qquad \textstyle\sum_{i=1}^{100} 26^2 \to \infty$$
    """
    assert round_to(255**2, F16) == 65024 and round_to(256**2, F16) == INF
    assert sequential_sum([26**2] * 100, F16) == INF
    assert 26**2 * 100 == 67600 and round_to(26**2, F16) == 676


def test_output_overflow_is_ieee_infinity():
    r"""Step 12: a batch of 4097 values, one of them 1 and the rest 0, has $\hat x_1 \approx 64$;
    with $\gamma = 2048$ the float64 output is about $1.3\times10^5$, beyond float16, and its
    rounding is $+\infty$. In bfloat16 the same output is finite.

    > $$m = 4097,\ x = (1, 0, \dots, 0),\ \gamma = 2048,\ \epsilon = 10^{-5}: \qquad y^{64}_1 \approx 1.28\times10^{5}, \qquad \mathrm{fl}_{16}(y^{64}_1) = +\infty, \qquad \mathrm{fl}_{bf16}(y^{64}_1) = 128512$$
    """
    m = 4097
    x = np.zeros((m, 1))
    x[0] = 1.0
    assert abs(x.max() - x.mean()) / x.std() == pytest.approx(math.sqrt(m - 1))   # Samuelson's bound, reached
    y64 = bnref.forward_train(x, np.full(1, 2048.0), np.zeros(1), 1e-5)[0][0, 0]
    assert f"{y64:.2e}" == "1.28e+05"
    assert round_to(y64, F16) == INF
    assert round_to(y64, BF16) == 128512
    assert all(round_to(v, F16) != INF for v in bnref.forward_train(x, np.full(1, 1000.0), np.zeros(1), 1e-5)[0][:, 0])


# ---------------------------------------------------------------- statistics in the half type
def test_half_precision_running_sum_stalls():
    r"""Step 12: a running sum of 4096 ones, each partial sum rounded to the half format, stops at
    2048 in float16 (2048 + 1 is a tie, to the even 2048) and at 256 in bfloat16; the mean it gives
    is 0.5 or 0.0625 instead of 1.

    > $$\text{float16: } 2048 + 1 \to 2048, \qquad \textstyle\sum_{i=1}^{4096} 1 \to 2048; \qquad \text{bfloat16: } 256 + 1 \to 256, \qquad \textstyle\sum_{i=1}^{4096} 1 \to 256$$
    """
    assert round_to(2049, F16) == 2048 and round_to(2047, F16) == 2047
    assert round_to(257, BF16) == 256 and round_to(255, BF16) == 255
    assert sequential_sum([1] * 4096, F16) == 2048
    assert sequential_sum([1] * 4096, BF16) == 256
    x64 = np.ones((4096, 1))
    assert bnref.forward_train(x64, np.ones(1), np.zeros(1))[1][0] == 1.0     # float64 statistics


def test_float32_statistics_downcast_to_float16():
    r"""Step 12: a running variance of $10^5$ is a float32 number but beyond float16; downcast, it is
    $\infty$, $s_{run} = 0$, and the eval-mode output is $\beta$ for every input.

    > $$\sigma^2_{run} = 10^5: \qquad \mathrm{fl}_{32}(10^5) = 10^5, \qquad \mathrm{fl}_{16}(10^5) = \infty, \qquad s_{run} = (\infty + \epsilon)^{-1/2} = 0$$
    """
    assert round_to(10**5, F32) == 10**5 and round_to(10**5, F16) == INF
    rng = np.random.default_rng(9)
    x = (300 * rng.standard_normal((64, 3))).astype(np.float16).astype(np.float64)
    gamma, beta = np.ones(3), np.array([0.0, 0.5, -1.0])
    mean, var32 = np.zeros(3), np.full(3, np.float32(1e5)).astype(np.float64)
    y = bnref.forward_eval(x, gamma, beta, mean, var32, 1e-5)
    np.testing.assert_allclose(y, x / math.sqrt(1e5 + 1e-5) + beta)  # float32 statistics: a normalized output
    with np.errstate(over="ignore"):
        var16 = np.full(3, 1e5).astype(np.float16)
    assert np.all(np.isinf(var16))
    s_run = 1 / np.sqrt(var16.astype(np.float64) + 1e-5)
    assert np.all(s_run == 0)
    np.testing.assert_array_equal(gamma * s_run * (x - mean) + beta, np.broadcast_to(beta, x.shape))
