"""Numerical half of each proof: a closed form, lambdified, against bnref's kernels.

A proof shows a formula is right; this shows it is the formula the kernels compute.
:func:`random_case` draws a batch; :func:`evaluate` evaluates a closed form of
:mod:`proofs._symbolic` on it with NumPy (statistics by the textbook two-pass formula,
independent of the kernels); :func:`assert_matches` compares with a kernel's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from proofs import _symbolic as sym

#: layouts the numerical checks run on: (shape, channel_axis)
LAYOUTS = [((4, 3, 2, 5), 1), ((6, 5, 3), -1), ((9, 4), 1)]
EPS = 1e-3   # large enough that eps-terms (e.g. in sum(dx * xhat)) are far above rounding


@dataclass(frozen=True)
class Case:
    """One batch: NumPy arrays in bnref's layout plus their (m, C) per-element views."""

    x: np.ndarray
    dy: np.ndarray
    ddx: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    ddgamma: np.ndarray
    ddbeta: np.ndarray
    channel_axis: int
    eps: float = EPS

    def per_element(self, a: np.ndarray) -> np.ndarray:
        """``a`` (shape of x) as (m, C): every axis but the channel axis flattened."""
        a = np.moveaxis(np.asarray(a), self.channel_axis, -1)
        return a.reshape(-1, a.shape[-1])

    @property
    def m(self) -> int:
        return self.x.size // self.x.shape[self.channel_axis]

    @property
    def mean(self) -> np.ndarray:
        return self.per_element(self.x).mean(axis=0)

    @property
    def var(self) -> np.ndarray:
        return ((self.per_element(self.x) - self.mean) ** 2).mean(axis=0)

    @property
    def invstd(self) -> np.ndarray:
        return 1.0 / np.sqrt(self.var + self.eps)

    @property
    def xhat(self) -> np.ndarray:
        return (self.per_element(self.x) - self.mean) * self.invstd


def random_case(seed: int, shape=(4, 3, 2, 5), channel_axis: int = 1, *, offset: float = 0.0) -> Case:
    rng = np.random.default_rng(seed)
    channels = shape[channel_axis]
    return Case(
        x=offset + rng.normal(size=shape) * rng.uniform(0.5, 2.0, size=channels).reshape(
            [-1 if a == channel_axis % len(shape) else 1 for a in range(len(shape))]),
        dy=rng.normal(size=shape), ddx=rng.normal(size=shape),
        gamma=rng.uniform(0.5, 1.5, size=channels), beta=rng.normal(size=channels),
        ddgamma=rng.normal(size=channels), ddbeta=rng.normal(size=channels),
        channel_axis=channel_axis)


def cases():
    """The batches every numerical check runs on, one per layout."""
    return [random_case(seed, shape, axis) for seed, (shape, axis) in enumerate(LAYOUTS)]


_ARGS = sym.ELEMENT_SYMBOLS + sym.REDUCTION_SYMBOLS + sym.SCALAR_SYMBOLS + (sym.eps,)


@lru_cache(maxsize=None)
def _lambdified(closed: sp.Expr):
    return sp.lambdify(_ARGS, closed, "numpy")


def evaluate(closed: sp.Expr, case: Case) -> np.ndarray:
    """A closed form of :mod:`proofs._symbolic` on ``case``: (m, C) per element, or (C,)."""
    dy, ddx, xhat = case.per_element(case.dy), case.per_element(case.ddx), case.xhat
    elements = (dy, ddx, xhat)
    reductions = tuple(f(*elements).sum(axis=0) for f in sym.REDUCTIONS.values())
    scalars = (case.gamma, case.invstd, case.m, case.ddgamma, case.ddbeta, case.eps)
    value = _lambdified(closed)(*elements, *reductions, *scalars)
    depends_on_element = bool(closed.free_symbols & set(sym.ELEMENT_SYMBOLS))
    shape = xhat.shape if depends_on_element else xhat.shape[1:]
    return np.broadcast_to(value, shape)


def assert_matches(actual, expected, case: Case, what: str, rtol: float = 1e-10) -> None:
    """``actual`` (a kernel's output, x's layout or (C,)) equals ``expected`` ((m, C) or (C,))."""
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape == case.x.shape:
        actual = case.per_element(actual)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale,
        err_msg=f"{what}: bnref and the proved closed form differ "
                f"(shape {case.x.shape}, channel_axis={case.channel_axis}, eps={case.eps})")
