"""The 16-bit formats (float16, bfloat16) as bit patterns: exact widening, correctly rounded narrowing.

Numba has no half-precision types on the CPU, so the kernels see a half array as its uint16
view and convert each value themselves. One format differs from the other only in where the
exponent ends: ``fraction_bits`` (F) stored significand bits, 15 - F exponent bits, the sign
bit 15. float16 is F = 10 (max 65504, subnormals down to 2^-24), bfloat16 F = 7 (float32's
exponent range). The format is a runtime argument, so each kernel compiles once for both.

* :func:`half_value` widens a pattern to float64: exact (every half value is a float32).
* :func:`half_bits` rounds a float64 to the nearest pattern, ties to even, as IEEE 754 says:
  overflow to +-inf (a value at or above max + half an ulp), gradual underflow through the
  subnormals to +-0, NaN to a quiet NaN of the same sign. Rounding a float64 *directly* is the
  point: float64 -> float32 -> half rounds twice and is off by an ulp where the first rounding
  lands on a midpoint of the second.
* :func:`half_bits_branch_free` is the same rounding written without branches, so that a loop
  calling it vectorizes: one float64 addition rounds the magnitude to a multiple of the target's
  quantum (the add-and-subtract-a-shifter trick, whose sum has exactly that quantum as its ulp),
  and the rounded value, now exact in float32, is turned into its pattern.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FLOAT16_FRACTION_BITS", "BFLOAT16_FRACTION_BITS", "half_value", "half_bits", "half_bits_branch_free",
           "float16_bits", "bfloat16_bits", "narrow_bits", "widen_bits"]

FLOAT16_FRACTION_BITS = 10
BFLOAT16_FRACTION_BITS = 7


@njit(cache=True, nogil=True)
def half_value(h, fraction_bits):
    """The value of the 16-bit pattern ``h`` (format with ``fraction_bits``) as float64, exactly.

    The pattern's fields moved to float32's places (sign, exponent, fraction) make a float32 whose
    value is the pattern's times 2^-rebias (the difference of the exponent biases), subnormal or
    not: a half subnormal lands on a float32 subnormal, exact (no flush to zero here). Widened to
    float64 and scaled back by 2^rebias, both exact. Inf and NaN keep float32's all-ones exponent.
    Selects only, so that a loop calling it vectorizes."""
    h = np.int64(h)
    mag = h & 0x7FFF
    shift = 23 - fraction_bits
    rebias = 127 - ((1 << (14 - fraction_bits)) - 1)
    special = mag >= (((1 << (15 - fraction_bits)) - 1) << fraction_bits)
    bits = ((h & 0x8000) << 16) | (mag << shift) | (0x7F800000 if special else 0)
    scale = 1.0 if special else np.uint64((rebias + 1023) << 52).view(np.float64)
    return np.float64(np.uint32(bits).view(np.float32)) * scale


@njit(cache=True, nogil=True)
def half_bits(value, fraction_bits):
    """``value`` (float64) rounded to the nearest pattern of the format, ties to even (see the module
    docstring), as an int in [0, 2^16).

    The float64 significand s (53 bits) is shifted right to the target's quantum, 2^(max(e, emin) - F)
    for a value of exponent e, and the bits shifted out decide the rounding. The pattern is then
    ``(E - emin) << F`` plus the rounded significand, which carries into the exponent when the
    significand rounds up to 2^(F+1), and from the subnormals into the normals likewise."""
    bits = np.float64(value).view(np.int64)
    sign = (bits >> 48) & 0x8000
    biased = (bits >> 52) & 0x7FF
    fraction = bits & ((1 << 52) - 1)
    infinity = ((1 << (15 - fraction_bits)) - 1) << fraction_bits
    if biased == 0x7FF:
        return sign | infinity | ((1 << (fraction_bits - 1)) if fraction != 0 else 0)
    if biased == 0:  # zero or a float64 subnormal: far below half the smallest half subnormal
        return sign
    e = biased - 1023
    emin = 2 - (1 << (14 - fraction_bits))
    target = max(e, emin)
    shift = 52 - fraction_bits + (target - e)
    if shift > 62:  # below half the smallest subnormal: rounds to zero
        return sign
    significand = fraction | (1 << 52)
    q = significand >> shift
    rest = significand & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and (q & 1) == 1):
        q += 1
    pattern = ((target - emin) << fraction_bits) + q
    return sign | min(pattern, infinity)


@njit(cache=True, nogil=True)
def _power_of_two(k):
    """2.0^k as float64, exactly, for a normal exponent ``k``."""
    return np.uint64((k + 1023) << 52).view(np.float64)


@njit(cache=True, nogil=True)
def half_bits_branch_free(value, fraction_bits):
    """:func:`half_bits`, bit for bit, in float64 arithmetic and selects (see the module docstring).

    The magnitude, clamped to 2^(emax+1) (whose pattern is infinity's), has the quantum
    q = 2^(max(e, emin) - F). Adding and subtracting 1.5 * 2^52 * q rounds it to a multiple of q,
    ties to even, in one float64 addition: the sum lies in [2^52 q, 2^53 q), where float64's ulp is
    q. The rounded value is a half value (or 2^(emax+1)); scaled by 2^-rebias it is a float32
    holding the pattern's fields, as in :func:`half_value`. A NaN gives the quiet NaN of its sign."""
    sign = (np.float64(value).view(np.int64) >> 48) & 0x8000
    emin = 2 - (1 << (14 - fraction_bits))
    beyond = _power_of_two(1 << (14 - fraction_bits))
    magnitude = abs(value)
    clamped = magnitude if magnitude < beyond else beyond  # NaN too: replaced below
    # 2^e, or 0 below float64's normals
    power = np.int64(np.float64(clamped).view(np.int64) & 0x7FF0000000000000).view(np.float64)
    quantum = max(power * _power_of_two(-fraction_bits), _power_of_two(emin - fraction_bits))
    shifter = quantum * (1.5 * _power_of_two(52))
    rounded = (clamped + shifter) - shifter
    # times 2^-rebias: a float32 whose bits are the pattern's fields at float32's places, a half
    # subnormal on a float32 subnormal (the inverse of half_value), exact
    scaled = np.float32(rounded * _power_of_two(-(126 + emin)))
    pattern = np.int64(scaled.view(np.uint32)) >> (23 - fraction_bits)
    nan = (((1 << (15 - fraction_bits)) - 1) << fraction_bits) | (1 << (fraction_bits - 1))
    return sign | (nan if value != value else pattern)


@njit(cache=True, nogil=True)
def float16_bits(value):
    """``value`` (float64) rounded to the nearest float16, as its bit pattern."""
    return half_bits(value, FLOAT16_FRACTION_BITS)


@njit(cache=True, nogil=True)
def bfloat16_bits(value):
    """``value`` (float64) rounded to the nearest bfloat16, as its bit pattern."""
    return half_bits(value, BFLOAT16_FRACTION_BITS)


@njit(cache=True, nogil=True)
def narrow_bits(values, fraction_bits, out):
    """``out[i] = half_bits(values[i])`` for float64 ``values`` into a uint16 ``out`` (both 1-D)."""
    for i in range(values.shape[0]):
        out[i] = half_bits_branch_free(values[i], fraction_bits)


@njit(cache=True, nogil=True)
def widen_bits(bits, fraction_bits, out):
    """``out[i] = half_value(bits[i])`` for a uint16 ``bits`` into a float ``out`` (both 1-D)."""
    for i in range(bits.shape[0]):
        out[i] = half_value(bits[i], fraction_bits)
