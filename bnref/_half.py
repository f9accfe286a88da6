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
  calling it vectorizes: float64 -> float32 rounded to odd, then float32 -> half to nearest even.
  Rounding to odd first is exact for this: the float32 keeps at least 2 bits below the half's
  last place, and its odd last bit records whether anything was cut off below it, so no float32
  result lands on a half midpoint unless the float64 value was that midpoint (Boldo and
  Melquiond, "When double rounding is odd", 2005).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FLOAT16_FRACTION_BITS", "BFLOAT16_FRACTION_BITS", "half_value", "half_bits", "half_bits_branch_free",
           "float16_bits",
           "bfloat16_bits", "narrow_bits", "widen_bits"]

FLOAT16_FRACTION_BITS = 10
BFLOAT16_FRACTION_BITS = 7


@njit(cache=True, nogil=True)
def half_value(h, fraction_bits):
    """The value of the 16-bit pattern ``h`` (format with ``fraction_bits``) as float64, exactly.

    A normal or special pattern maps to float32 bits by moving the exponent field (a different
    bias: 127 - (2^(14-F) - 1)); a subnormal one is renormalized by adding and removing the
    smallest normal's float32 (Giesen's method), exact in float32."""
    h = np.int64(h)
    mag = h & 0x7FFF
    shift = 23 - fraction_bits
    rebias = 127 - ((1 << (14 - fraction_bits)) - 1)
    exponent = mag >> fraction_bits
    if exponent == 0:  # zero or subnormal: (1 + f/2^F) * 2^emin - 2^emin
        magic = np.uint32((rebias + 1) << 23).view(np.float32)
        value = np.float64(np.uint32((mag << shift) + ((rebias + 1) << 23)).view(np.float32) - magic)
    elif exponent == (1 << (15 - fraction_bits)) - 1:  # inf or NaN: float32's all-ones exponent
        value = np.float64(np.uint32((mag << shift) | 0x7F800000).view(np.float32))
    else:
        value = np.float64(np.uint32((mag << shift) + (rebias << 23)).view(np.float32))
    return -value if h & 0x8000 else value


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
def half_bits_branch_free(value, fraction_bits):
    """:func:`half_bits`, bit for bit, in selects and integer arithmetic (see the module docstring).

    Round to odd: the float32 rounded to nearest, stepped one ulp toward zero where it landed
    beyond the value (then it is the value truncated), and its last bit set where it is inexact.
    To the half: a normal result adds half the dropped quantum minus one plus the kept lsb to the
    rebiased bits (a carry moves into the exponent, and past the largest value onto infinity,
    which is clamped); a subnormal one adds the float32 whose ulp is the half's subnormal quantum,
    so that the float32 addition rounds to nearest even, and subtracts its bits (Giesen's
    method). A NaN gives the quiet NaN of its sign."""
    narrow = np.float32(value)
    wide = np.float64(narrow)
    bits = np.int64(narrow.view(np.uint32))
    bits = bits - np.int64(abs(wide) > abs(value)) | np.int64(wide != value)
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    shift = 23 - fraction_bits
    rebias = 127 - ((1 << (14 - fraction_bits)) - 1)
    infinity = ((1 << (15 - fraction_bits)) - 1) << fraction_bits
    rebiased = magnitude - (rebias << 23)
    normal = min((rebiased + ((1 << (shift - 1)) - 1) + ((rebiased >> shift) & 1)) >> shift, infinity)
    magic = np.int64((rebias + shift + 1) << 23)
    rounded = np.float32(np.uint32(magnitude).view(np.float32) + np.uint32(magic).view(np.float32))
    subnormal = np.int64(rounded.view(np.uint32)) - magic
    pattern = subnormal if magnitude < ((rebias + 1) << 23) else normal
    pattern = (infinity | (1 << (fraction_bits - 1))) if magnitude > 0x7F800000 else pattern
    return sign | pattern


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
