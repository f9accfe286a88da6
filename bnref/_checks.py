"""Argument validation for the public functions, with messages that name the argument.

Every check runs in O(C) or O(ndim): nothing here reads a full-size array.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from bnref.dtypes import KERNEL_DTYPES, dtype_info

#: the dtypes the kernels take (the rows of :data:`bnref.dtypes.DTYPES` marked ``kernels``)
SUPPORTED_DTYPES = KERNEL_DTYPES
#: their names for messages: "float32 and float64" ("a, b and c" for three)
_SUPPORTED_NAMES = " and ".join(", ".join(d.name for d in SUPPORTED_DTYPES).rsplit(", ", 1))


def _describe(arr) -> str:
    return f"shape {tuple(np.shape(arr))} and dtype {getattr(arr, 'dtype', type(arr).__name__)}"


def as_float_array(name: str, value, dtype=None) -> np.ndarray:
    """``value`` as an ndarray of a dtype in :data:`SUPPORTED_DTYPES`, or a TypeError naming ``name``.

    With ``dtype`` given, the array must already have that dtype (no silent casts:
    mixing dtypes is an error).
    """
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(value)
    if arr.dtype not in SUPPORTED_DTYPES:
        kind = {"i": "an integer", "u": "an unsigned integer", "b": "a boolean", "c": "a complex",
                "f": "an unsupported floating", "O": "an object"}.get(arr.dtype.kind, "a non-float")
        raise TypeError(f"{name} has {kind} dtype {arr.dtype}; bnref supports {_SUPPORTED_NAMES}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but x has dtype {np.dtype(dtype)}; "
                        f"cast one of them so that they match")
    return arr


def channel_axis(value, ndim: int) -> int:
    """``value`` normalized to ``0 <= axis < ndim``."""
    if type(value) is int and -ndim <= value < ndim:  # the common case, without ABC checks
        return value % ndim
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {value!r}")
    if not -ndim <= value < ndim:
        raise ValueError(f"channel_axis={value} is out of range for x with {ndim} dimensions "
                         f"(expected {-ndim} <= channel_axis < {ndim})")
    return int(value) % ndim


def x_array(x, name: str = "x") -> np.ndarray:
    arr = as_float_array(name, x)
    if arr.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2, e.g. (N, C) or (N, C, H, W); got {_describe(arr)}")
    return arr


def same_shape(name: str, value, x: np.ndarray) -> np.ndarray:
    arr = as_float_array(name, value, x.dtype)
    if arr.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x, {x.shape}; got {arr.shape}")
    return arr


def one_of(name: str, arr: np.ndarray, allowed: tuple[str, ...], x_dtype, what: str) -> np.ndarray:
    """``arr``, or a TypeError unless its dtype is one of ``allowed`` (the combinations that
    :data:`bnref.dtypes.DTYPES` allows with ``x_dtype``; ``what`` names the kind of argument)."""
    if dtype_info(arr.dtype).name in allowed:
        return arr
    x_dtype = np.dtype(x_dtype)
    if allowed == (x_dtype.name,):
        raise TypeError(f"{name} has dtype {arr.dtype} but x has dtype {x_dtype}; "
                        f"cast one of them so that they match")
    choices = " or ".join(", ".join(allowed).rsplit(", ", 1))
    raise TypeError(f"{name} has dtype {arr.dtype} but x has dtype {x_dtype}; with {x_dtype} x, {what} "
                    f"must be {choices}")


def per_channel(name: str, value, channels: int, dtype=None) -> np.ndarray:
    """A ``(C,)`` vector; ``dtype=None`` accepts any supported dtype."""
    arr = as_float_array(name, value, dtype)
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape (C,) = ({channels},), one value per channel; got {arr.shape}")
    return arr


def eps_value(eps) -> float:
    if type(eps) is float and 0 < eps < math.inf:  # the common case, without ABC checks
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be finite and > 0 (it keeps 1/sqrt(var + eps) finite); got {eps!r}")
    return eps


def momentum_value(momentum) -> float:
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number, got {momentum!r}")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1] (PyTorch convention: weight of the new batch "
                         f"statistic); got {momentum!r}")
    return momentum


def count_value(count) -> int:
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral):
        raise TypeError(f"count must be an int (values per channel in the batch), got {count!r}")
    if count < 2:
        raise ValueError(f"count must be >= 2: the unbiased running variance divides by count - 1; got {count}")
    return int(count)


def too_few_values(count, detail: str) -> ValueError:
    """The error for training statistics from fewer than 2 values per channel; ``detail`` says
    where the count comes from."""
    if count == 0:
        return ValueError(f"the batch is empty, and training statistics need at least 2 values per channel; "
                          f"{detail}")
    return ValueError(f"expected more than 1 value per channel when training; {detail}")


def training_values(count: int, shape: tuple, axis: int, name: str = "x") -> None:
    """Raise unless ``count``, the values per channel of ``name`` (of ``shape``), is at least 2."""
    if count < 2:
        raise too_few_values(count, f"{name} has shape {shape} with channel_axis={axis}, so each channel has "
                                    f"{count} value(s)")


def out_array(name: str, out, x: np.ndarray) -> np.ndarray | None:
    """Validate an ``out=`` buffer: same shape and dtype as x, writeable, not overlapping x."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"{name} must have the shape and dtype of x, {x.shape} {x.dtype}; "
                         f"got {out.shape} {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def finite_stats(what: str, values: np.ndarray, channel_axis: int) -> None:
    """Raise if a per-channel reduction came out non-finite (so the input was)."""
    if np.isfinite(values).all():
        return
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        shown = ", ".join(map(str, bad[:8])) + (", ..." if bad.size > 8 else "")
        raise ValueError(f"{what} is not finite in channel(s) {shown} (channel_axis={channel_axis}): "
                         f"the input holds NaN or inf, or values too large to square in float64")
