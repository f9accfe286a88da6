r"""Central finite differences with Richardson extrapolation, in float64.

For a scalar function ``f`` of several arrays, the derivative along directions
``u`` is estimated from the central difference

.. math:: D(h) = \frac{f(x + h u) - f(x - h u)}{2h} = \langle \nabla f, u\rangle + c_2 h^2 + c_4 h^4 + \dots

and one Richardson step cancels the :math:`h^2` term:
:math:`R(h) = \big(4 D(h/2) - D(h)\big)/3 = \langle\nabla f, u\rangle + O(h^4)`.

Step-size rule: truncation error :math:`\sim h^4` against rounding error
:math:`\sim u\,|f|/h` balances at :math:`h \sim u^{1/5}` (about 7e-4 for float64),
scaled by the size of the arguments along ``u``. :func:`directional_derivative`
also returns an error estimate, :math:`|R(h) - D(h/2)|/15`-style, so that a caller can
set its tolerance from it rather than guess one.

The projected check (:func:`check_vjp`) follows ``autograd.test_util.check_grads``:
compare ``<u, vjp(v)>`` with the numeric derivative of ``<v, F(x + t u)>`` in
``t``: cheap, and it scales to any shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["step_size", "directional_derivative", "gradient", "check_vjp", "ProjectedCheck"]

_U64 = np.finfo(np.float64).eps / 2


def step_size(args: Sequence[np.ndarray], directions: Sequence[np.ndarray], scale: float | None = None) -> float:
    """h = u^(1/5) * scale / |directions|_inf, ``scale`` defaulting to max(1, |args|_inf) (see the
    module docstring). A function that bends on a shorter length than its arguments' size (batch
    norm: sqrt(var + eps) in x) needs that length as ``scale``, or the step overshoots the curve."""
    size = scale if scale is not None else max([1.0] + [float(np.max(np.abs(a))) for a in args if np.size(a)])
    norm = max([0.0] + [float(np.max(np.abs(d))) for d in directions if np.size(d)])
    if norm == 0.0:
        raise ValueError("directions are all zero")
    return _U64 ** 0.2 * size / norm


def directional_derivative(f: Callable[..., float], args: Sequence, directions: Sequence,
                           h: float | None = None, richardson: bool = True) -> tuple[float, float]:
    """``(estimate, error_estimate)`` of ``d/dt f(*(a + t*u))`` at ``t = 0``.

    ``args`` and ``directions`` are matching sequences of arrays; everything is promoted
    to float64. With ``richardson=False`` the plain central difference ``D(h)`` is returned.
    """
    args = [np.asarray(a, dtype=np.float64) for a in args]
    directions = [np.asarray(d, dtype=np.float64) for d in directions]
    if len(args) != len(directions):
        raise ValueError(f"got {len(args)} args but {len(directions)} directions")
    for i, (a, d) in enumerate(zip(args, directions)):
        if a.shape != d.shape:
            raise ValueError(f"direction {i} has shape {d.shape}, argument has {a.shape}")
    h = step_size(args, directions) if h is None else float(h)

    magnitude = 0.0  # largest |f| seen: the rounding error of a difference is ~ u |f| / h

    def central(step: float) -> float:
        nonlocal magnitude
        plus = float(f(*[a + step * d for a, d in zip(args, directions)]))
        minus = float(f(*[a - step * d for a, d in zip(args, directions)]))
        magnitude = max(magnitude, abs(plus), abs(minus))
        return (plus - minus) / (2.0 * step)

    d_h = central(h)
    if not richardson:
        return d_h, 4 * _U64 * magnitude / h
    d_half = central(h / 2)
    estimate = (4.0 * d_half - d_h) / 3.0
    # |estimate - d_half| estimates the O(h^2) error of d_half, which bounds that of the
    # extrapolated value generously; add the rounding error of the h/2 difference.
    error = abs(estimate - d_half) + 8 * _U64 * magnitude / h
    return estimate, error


def gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float | None = None) -> np.ndarray:
    """The full gradient of a scalar ``f(x)`` by one directional derivative per element (small x only)."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        unit = np.zeros_like(x)
        unit[index] = 1.0
        grad[index] = directional_derivative(f, [x], [unit], h=h)[0]
    return grad


@dataclass(frozen=True)
class ProjectedCheck:
    """``analytic = <u, vjp(v)>`` beside ``numeric = d/dt <v, F(x + t u)>``."""

    analytic: float
    numeric: float
    numeric_error: float

    @property
    def error(self) -> float:
        return abs(self.analytic - self.numeric)

    def __str__(self) -> str:
        return (f"analytic {self.analytic:.12g}  numeric {self.numeric:.12g}  "
                f"|diff| {self.error:.3g}  (finite-difference error estimate {self.numeric_error:.3g})")


def check_vjp(fun: Callable[..., Sequence[np.ndarray] | np.ndarray], args: Sequence[np.ndarray],
              cotangents: Sequence[np.ndarray] | np.ndarray, vjps: Sequence[np.ndarray],
              rng: np.random.Generator, scale: float | None = None) -> ProjectedCheck:
    """Projected check of a VJP: ``vjps`` claims to be ``d<cotangents, fun(*args)>/d args``.

    Draws a random direction ``u`` per argument and compares ``sum_i <u_i, vjps_i>`` with
    the Richardson-extrapolated derivative of ``<cotangents, fun(*(args + t u))>``, with the
    step of :func:`step_size` for ``scale``.
    """
    outputs_are_tuple = isinstance(cotangents, (tuple, list))
    cots = [np.asarray(c, dtype=np.float64) for c in (cotangents if outputs_are_tuple else [cotangents])]

    def pairing(*xs):
        out = fun(*xs)
        outs = out if outputs_are_tuple else [out]
        return sum(float(np.sum(np.asarray(o, dtype=np.float64) * c)) for o, c in zip(outs, cots))

    directions = [rng.standard_normal(np.shape(a)) for a in args]
    analytic = float(sum(np.sum(np.asarray(g, dtype=np.float64) * u) for g, u in zip(vjps, directions)))
    numeric, error = directional_derivative(pairing, args, directions, h=step_size(args, directions, scale))
    return ProjectedCheck(analytic, numeric, error)
