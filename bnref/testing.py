r"""Tolerances from error analysis and assertion helpers (the Hypothesis profiles: :mod:`bnref.profiles`).

Error model
-----------
A compared quantity ``q`` (``y``, ``dx``, ...) is judged by its worst absolute error
against a *scale* -- the size of the terms it is computed from, not of its value,
since ``dx`` is a difference of similar terms and may cancel -- times a relative tolerance

.. math:: \mathrm{tol} = a_q\,u_{out} + b_q\,u_{64}\,\kappa\,\sqrt{m}

* ``u_out`` is the unit roundoff of the output dtype (2^-24 for float32, 2^-53 for
  float64, 2^-11 for float16, 2^-8 for bfloat16): a correct float32 result is the exact
  one rounded once or a few times.
* In the half formats (float16, bfloat16) u_out is so far above float64's that bnref's
  float64 arithmetic is exact in comparison, and every output is the float64 result rounded
  once: ``y`` is held to one rounding, ``a_y = 1`` (``Tolerance.once``; a double rounding
  float64 -> float32 -> half, or a truncation, errs by up to an ulp, ``2 u_out``, and
  fails), the gradients keep their few roundings (rows of :data:`bnref.dtypes.DTYPES`
  with ``rounded_once``).
* Below the smallest normal number a rounding errs by up to half the smallest subnormal,
  an absolute error: :func:`compare` adds ``a_q`` of those (float16's subnormals start
  at 2^-24, well within reach of a gradient).
* ``kappa`` is the condition of the batch, :func:`condition_number`: the size of
  the data relative to the normalizing scale, ``max |x| / sqrt(var + eps)``. Any
  float64 computation of ``x - mean`` loses about ``log10(kappa)`` digits, in the
  reference as much as in the kernel (data with mean 1e4 and std 1e-2: kappa = 1e6).
* ``sqrt(m)``: the typical growth of rounding error in a sum of ``m`` terms.

``a_q`` counts the roundings into the output dtype along the chain; ``b_q`` absorbs the
constant of the float64 error bound. Both are in :data:`TOLERANCES`, each with its reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnref.axes import per_channel, reduce_axes
from bnref.dtypes import dtype_info, unit_roundoff
from bnref.profiles import hypothesis_settings, load_hypothesis_profile

__all__ = ["reduce_axes", "per_channel", "TOLERANCES", "tolerance", "condition_number", "scales", "Comparison", "compare",
           "assert_close", "check_against_reference", "load_hypothesis_profile", "hypothesis_settings",
           "unit_roundoff"]


@dataclass(frozen=True)
class Tolerance:
    a: float  # roundings into the output dtype
    b: float  # constant on u64 * kappa * sqrt(m)
    reason: str
    once: float | None = None  # a for the dtypes held to one rounding (DType.rounded_once); None: a


#: quantity -> tolerance constants; the same for float32 and float64 (u_out carries the dtype)
TOLERANCES: dict[str, Tolerance] = {
    "y": Tolerance(2, 16, "y = gamma*xhat + beta rounded once to the output dtype; xhat carries u64*kappa", once=1),
    "mean": Tolerance(2, 16, "a sum of m values: u64*sqrt(m) relative to max|x|, rounded once"),
    "var": Tolerance(2, 16, "two-pass: rounding of (x - mean) is u64*max|x|*|x - mean| per term"),
    "dbeta": Tolerance(4, 16, "a sum of m values of dy, rounded to the output dtype"),
    "dgamma": Tolerance(4, 32, "a sum of dy*xhat; xhat carries u64*kappa"),
    "dx": Tolerance(8, 64, "three terms scaled by gamma*invstd; the two sums carry u64*kappa*sqrt(m)"),
    "gdy": Tolerance(8, 64, "like dx: three terms and a sum over ddx*xhat"),
    "ggamma": Tolerance(8, 64, "products of sums over dy, ddx and xhat"),
    "gx": Tolerance(16, 128, "products of three sums with xhat; about twice the terms of dx"),
}


def tolerance(quantity: str, dtype, *, kappa: float = 1.0, m: int = 2) -> float:
    """Relative tolerance ``a*u_out + b*u64*kappa*sqrt(m)`` for ``quantity`` (see the module docstring)."""
    tol = _tolerance_row(quantity)
    return _roundings(tol, dtype) * unit_roundoff(dtype) \
        + tol.b * unit_roundoff(np.float64) * max(1.0, kappa) * math.sqrt(max(m, 1))


def _tolerance_row(quantity: str) -> Tolerance:
    try:
        return TOLERANCES[quantity]
    except KeyError:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {sorted(TOLERANCES)}") from None


def _roundings(tol: Tolerance, dtype) -> float:
    """``a_q`` for ``dtype``: ``once`` where the dtype is held to one rounding and the quantity says so."""
    return tol.once if tol.once is not None and dtype_info(dtype).rounded_once else tol.a


def condition_number(x, channel_axis: int = 1, eps: float = 1e-5) -> float:
    """``kappa = max_c max_i |x_ci| / sqrt(var_c + eps)`` (at least 1), computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, channel_axis)
    var = np.var(x, axis=axes)
    biggest = np.max(np.abs(x), axis=axes)
    return float(max(1.0, np.max(biggest / np.sqrt(var + eps)))) if x.size else 1.0


def scales(x, gamma, beta, eps, channel_axis, dy=None, ddx=None, ddgamma=None, ddbeta=None) -> dict[str, float]:
    """The size of the terms each quantity is computed from (see the module docstring).

    With ``s = max invstd``, ``h = max |xhat|``, ``g = max |gamma|``, ``m`` values per channel:
    ``y ~ g h + |beta|``, ``dx ~ g s |dy| (2 + h^2)``, ``dgamma ~ m |dy| h``, ``dbeta ~ m |dy|``,
    and the double-backward quantities likewise from their formulas.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, channel_axis)
    m = x.size // x.shape[channel_axis] if x.size else 1
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    s = float(np.max(invstd)) if invstd.size else 1.0
    h = max(1.0, float(np.max(np.abs((x - mean) * invstd)))) if x.size else 1.0
    amax = lambda a: 0.0 if a is None or np.size(a) == 0 else float(np.max(np.abs(np.asarray(a, np.float64))))  # noqa: E731
    g, b = amax(gamma), amax(beta)
    out = {"y": g * h + b, "mean": amax(x), "var": amax(x) * (amax(x) + 1.0 / s)}
    if dy is not None:
        d = amax(dy)
        out.update(dx=g * s * d * (2 + h * h), dgamma=m * d * h, dbeta=m * d)
        if ddx is not None:
            dd, ddg, ddb = amax(ddx), amax(ddgamma), amax(ddbeta)
            out.update(
                gdy=g * s * dd * (2 + h * h) + ddg * h + ddb,
                ggamma=s * m * dd * d * (2 + h * h),
                gx=s * (g * s * d * dd * (3 + h * h) * (1 + h) + ddg * d * (2 + h * h)),
            )
    return {k: max(v, np.finfo(np.float64).tiny) for k, v in out.items()}


@dataclass(frozen=True)
class Comparison:
    """The worst error of ``actual`` against ``expected`` for one quantity."""

    quantity: str
    max_abs_error: float
    scale: float
    tolerance: float          # relative to scale
    index: tuple | None       # where the worst error is
    actual_value: float | None
    expected_value: float | None
    nonfinite: bool = False

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.scale

    @property
    def ok(self) -> bool:
        return not self.nonfinite and self.max_abs_error <= self.tolerance * self.scale

    def __str__(self) -> str:
        where = "" if self.index is None else f" at index {self.index} (got {self.actual_value!r}, " \
                                                f"expected {self.expected_value!r})"
        verdict = "ok" if self.ok else "FAIL"
        bad = " non-finite values;" if self.nonfinite else ""
        return (f"{self.quantity}: {verdict};{bad} max |error| {self.max_abs_error:.3g} = "
                f"{self.relative_error:.3g} x scale {self.scale:.3g}, tolerance {self.tolerance:.3g} x scale{where}")


def compare(quantity: str, actual, expected, *, dtype, kappa: float = 1.0, m: int = 2,
            scale: float | None = None) -> Comparison:
    """Compare one output; ``scale`` defaults to ``max |expected|`` (or 1 when that is 0)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return _shape_mismatch(quantity, actual, expected)
    tol = tolerance(quantity, dtype, kappa=kappa, m=m)
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 1.0
        scale = scale if scale > 0 else 1.0
    # roundings into the subnormal range err by up to half the smallest subnormal each, absolutely
    tol += _roundings(_tolerance_row(quantity), dtype) * dtype_info(dtype).smallest_subnormal / 2 / scale
    if actual.size == 0:
        return Comparison(quantity, 0.0, scale, tol, None, None, None)
    a64 = _overflow_as_rounded(actual.astype(np.float64), expected, dtype)
    nonfinite = bool(not np.all(np.isfinite(a64)))
    err = np.abs(a64 - expected)
    err = np.where(np.isnan(err), np.inf, err)
    flat = int(np.argmax(err))
    index = tuple(int(i) for i in np.unravel_index(flat, err.shape))
    return Comparison(quantity, float(err.flat[flat]), float(scale), tol, index,
                      float(a64.flat[flat]), float(expected.flat[flat]), nonfinite)


def _overflow_as_rounded(a64, expected, dtype):
    """``a64`` with an inf read as the exact value where that value lies beyond ``dtype``'s range (a
    float16 gx of 2e5): inf of the same sign is its correct rounding, not an error."""
    with np.errstate(over="ignore"):
        overflows = np.isinf(expected.astype(dtype_info(dtype).numpy)) & np.isfinite(expected)
    if not overflows.any():
        return a64
    return np.where(overflows & (a64 == np.copysign(np.inf, expected)), expected, a64)


def _shape_mismatch(quantity, actual, expected) -> Comparison:
    return Comparison(f"{quantity} (shape {actual.shape}, expected {expected.shape})", math.inf, 1.0, 0.0,
                      None, None, None, nonfinite=True)


def assert_close(quantity: str, actual, expected, *, dtype, kappa: float = 1.0, m: int = 2,
                 scale: float | None = None, context: str = "") -> Comparison:
    """:func:`compare`, raising ``AssertionError`` with the full comparison and ``context`` on failure."""
    result = compare(quantity, actual, expected, dtype=dtype, kappa=kappa, m=m, scale=scale)
    if not result.ok:
        raise AssertionError(f"{result}\n{context}".rstrip())
    return result


def check_against_reference(impl, case, rng: np.random.Generator | None = None,
                            quantities=("forward", "backward", "double_backward"),
                            raise_on_failure: bool = True) -> list[Comparison]:
    """Check an implementation with bnref's signatures against :mod:`bnref.reference` on one case.

    ``impl`` has ``forward_train``, ``backward`` and ``double_backward`` with the signatures of
    :mod:`bnref` (the real kernels, or a deliberately broken copy in the meta-tests); ``case`` is a
    :class:`bnref.strategies.BNCase`. Cotangents are drawn from ``rng`` (seeded from the case).
    Raises ``AssertionError`` naming the quantity, the worst error, its tolerance and the replay
    (or, with ``raise_on_failure=False``, returns every comparison for the caller to judge).
    """
    from bnref import reference

    x, gamma, beta, eps, axis = case.x, case.gamma, case.beta, case.eps, case.channel_axis
    rng = np.random.default_rng(case.seed + 1) if rng is None else rng
    dtype = x.dtype
    m = case.count
    kappa = condition_number(x, axis, eps)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ddx = rng.standard_normal(x.shape).astype(dtype)
    ddgamma = rng.standard_normal(gamma.shape).astype(gamma.dtype)
    ddbeta = rng.standard_normal(gamma.shape).astype(gamma.dtype)
    scale = scales(x, gamma, beta, eps, axis, dy, ddx, ddgamma, ddbeta)
    context = f"case: {case.describe()}\nreplay: {case.replay()}"
    results = []

    def check(name, actual, expected):
        # dgamma, dbeta and ggamma come back in gamma's dtype (float32 with half data, or the data's)
        out_dtype = gamma.dtype if name in ("dgamma", "dbeta", "ggamma") else dtype
        result = compare(name, actual, expected, dtype=out_dtype, kappa=kappa, m=m, scale=scale[name])
        results.append(result)
        if raise_on_failure and not result.ok:
            raise AssertionError(f"{result}\n{context}")

    y, mean, var = impl.forward_train(x, gamma, beta, eps, axis)
    y_ref, mean_ref, var_ref = reference.forward_train(x, gamma, beta, eps, axis)
    if "forward" in quantities:
        check("y", y, y_ref)
        check("mean", mean, mean_ref)
        check("var", var, var_ref)
    if "backward" in quantities:
        dx, dgamma, dbeta = impl.backward(dy, x, gamma, mean, var, eps, axis)
        dx_ref, dgamma_ref, dbeta_ref = reference.backward(dy, x, gamma, beta, eps, axis)
        check("dx", dx, dx_ref)
        check("dgamma", dgamma, dgamma_ref)
        check("dbeta", dbeta, dbeta_ref)
    if "double_backward" in quantities:
        gx, ggamma, gdy = impl.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, mean, var, eps, axis)
        gx_ref, ggamma_ref, gdy_ref = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, eps, axis)
        check("gx", gx, gx_ref)
        check("ggamma", ggamma, ggamma_ref)
        check("gdy", gdy, gdy_ref)
    return results
