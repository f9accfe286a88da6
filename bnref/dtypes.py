"""The floating-point dtypes bnref knows, as data: one row each.

Validation, the Hypothesis strategies, the oracle's protocol and CLI, the pytest
plugin, ``bnref selfcheck`` and ``bnref bench`` all read :data:`DTYPES`; adding a
dtype is one row here (and kernels that take it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes  # registers bfloat16 with NumPy (the dtype JAX uses)
import numpy as np

__all__ = ["DType", "DTYPES", "NAMES", "KERNEL_NAMES", "KERNEL_DTYPES", "dtype_info", "unit_roundoff"]


@dataclass(frozen=True)
class DType:
    """One floating-point format.

    ``unit_roundoff`` is u = 2^-p for a p-bit significand (half an ulp of 1): a correctly
    rounded result is within a relative u of the exact one.
    """

    name: str
    numpy: np.dtype
    unit_roundoff: float
    max_finite: float
    #: the smallest positive (subnormal) value: below it, rounding errors are absolute, not relative
    smallest_subnormal: float
    #: whether bnref's kernels take arrays of this dtype (x, dy, out=, parameters)
    kernels: bool = True
    #: whether Numba has the type; the others (16-bit formats) reach the kernels as their bit
    #: patterns (a uint16 view), widened and rounded by bnref's own code
    native: bool = True
    #: the dtypes ``gamma``/``beta`` (and their cotangents) may have with ``x`` of this dtype:
    #: its own, and for the half formats float32 too (half activations, float32 parameters)
    parameters: tuple[str, ...] = ()
    #: the dtypes running (or batch) statistics may have with ``x`` of this dtype
    statistics: tuple[str, ...] = ("float32", "float64")
    #: whether results in this dtype are held to ONE rounding of the exact value where
    #: :data:`bnref.testing.TOLERANCES` gives a count for it (``once``): with a unit roundoff
    #: far above float64's, the float64 arithmetic before the rounding is exact in comparison,
    #: so a second rounding (float64 -> float32 -> half) or a truncation shows
    rounded_once: bool = False

    @property
    def fraction_bits(self) -> int:
        """The stored significand bits, p - 1 (10 for float16, 7 for bfloat16)."""
        return round(-math.log2(self.unit_roundoff)) - 1


def _row(name: str, *, kernels: bool = True, native: bool = True, parameters: tuple[str, ...] = ()) -> DType:
    info = ml_dtypes.finfo(np.dtype(name))  # numpy.finfo does not know bfloat16
    statistics = ("float32", "float64") if native else (name, "float32", "float64")
    return DType(name, np.dtype(name), float(info.eps) / 2, float(info.max), float(info.smallest_subnormal),
                 kernels, native, (name, *parameters), statistics, rounded_once=not native)


#: name -> format: float32 (bnref's main dtype), float64, then the half-precision formats
DTYPES: dict[str, DType] = {row.name: row for row in (
    _row("float32"), _row("float64"),
    _row("float16", native=False, parameters=("float32",)),
    _row("bfloat16", native=False, parameters=("float32",)),
)}
#: every dtype name bnref knows, in the order of :data:`DTYPES`
NAMES: tuple[str, ...] = tuple(DTYPES)
#: the names of the dtypes the kernels take, and their NumPy dtypes
KERNEL_NAMES: tuple[str, ...] = tuple(name for name, row in DTYPES.items() if row.kernels)
KERNEL_DTYPES: tuple[np.dtype, ...] = tuple(row.numpy for row in DTYPES.values() if row.kernels)

_BY_NUMPY: dict[np.dtype, DType] = {row.numpy: row for row in DTYPES.values()}


def dtype_info(dtype) -> DType:
    """The row of ``dtype`` (a name, NumPy dtype or type).

    Raises:
        TypeError: a dtype bnref does not know, naming the ones it does.
    """
    row = _BY_NUMPY.get(dtype) if isinstance(dtype, np.dtype) else None
    if row is not None:  # the common case, on every call of the kernels: dtype.name costs microseconds
        return row
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    try:
        return DTYPES[name]
    except KeyError:
        raise TypeError(f"unsupported dtype {dtype!r}; bnref supports {', '.join(NAMES)}") from None


def unit_roundoff(dtype) -> float:
    """u of ``dtype``: 2^-24 for float32, 2^-53 for float64, 2^-11 for float16, 2^-8 for bfloat16."""
    return dtype_info(dtype).unit_roundoff
