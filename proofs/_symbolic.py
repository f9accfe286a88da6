r"""The batch-norm graph in SymPy, once for a concrete batch size and once for a symbolic one.

Every proof follows the same pattern: build the forward graph
``x -> (mean, var) -> xhat -> y`` from its definition, let SymPy differentiate it,
and show that the difference with a closed form (the one bnref's kernels use, in
:data:`CLOSED`) reduces to zero.

* :class:`ConcreteBatch` ``(m)`` -- ``m`` scalar symbols per quantity; ``total`` is an
  explicit ``Add``; everything is polynomial except ``(var + eps)^(-1/2)``.
* :class:`SymbolicBatch` -- a symbolic batch size ``m``, elements ``x[j]`` of an
  ``IndexedBase``, ``total`` a ``Sum(.., (n, 1, m))``. SymPy differentiates a ``Sum``
  with respect to ``x[j]`` into Kronecker deltas; :func:`normalize_sums` evaluates them
  (an index always lies in ``1..m``), pulls factors that do not depend on the summation
  index out of the sum and gives every sum the same dummy, so equal sums compare equal.

:meth:`Batch.reduce` then names every remaining sum by a symbol and eliminates
``eps`` in favour of ``s = invstd`` (``eps = s^{-2} - var``, a change of variables), so
a true identity becomes a rational-function identity that ``cancel`` proves.
"""
from __future__ import annotations

from functools import cached_property, lru_cache

import sympy as sp

# ---------------------------------------------------------------- symbols of the closed forms
m = sp.Symbol("m", integer=True, positive=True)          # values per channel
gamma, beta, ddgamma, ddbeta = sp.symbols("gamma beta ddgamma ddbeta", real=True)
eps, s = sp.symbols("epsilon s", positive=True)           # s = invstd = (var + eps)^(-1/2)
# one element j of the batch
dy_j, ddx_j, xhat_j = sp.symbols("dy_j ddx_j xhat_j", real=True)
#: the element a symbolic-m proof differentiates with respect to: x[j], 1 <= j <= m
j = sp.Symbol("j", integer=True, positive=True)
# reductions over the batch
sum_dy, sum_ddx, P, Q, R = sp.symbols("sum_dy sum_ddx P Q R", real=True)

#: what each reduction symbol stands for, as a function of one element's (dy, ddx, xhat)
REDUCTIONS = {
    sum_dy: lambda dy, ddx, xhat: dy,
    sum_ddx: lambda dy, ddx, xhat: ddx,
    P: lambda dy, ddx, xhat: dy * xhat,
    Q: lambda dy, ddx, xhat: ddx * xhat,
    R: lambda dy, ddx, xhat: ddx * dy,
}


def M(total):
    """The batch mean of a reduction symbol: ``M(sum_dy) = sum_dy / m``."""
    return total / m


# ---------------------------------------------------------------- the closed forms under test
#: The formulas of bnref/functional.py, element j, written exactly as in its docstrings.
CLOSED = {
    "dbeta": sum_dy,
    "dgamma": P,
    "dx": gamma * s / m * (m * dy_j - sum_dy - xhat_j * P),
    "ggamma": s * (R - m * M(sum_dy) * M(sum_ddx) - P * Q / m),
    "gdy": gamma * s * (ddx_j - M(sum_ddx) - xhat_j * Q / m) + ddgamma * xhat_j + ddbeta,
    "gx": (gamma * s**2 / m * (xhat_j * (3 * P * Q / m - R + m * M(sum_dy) * M(sum_ddx))
                               - Q * (dy_j - M(sum_dy)) - P * (ddx_j - M(sum_ddx)))
           + ddgamma * s * (dy_j - M(sum_dy) - xhat_j * P / m)),
}

#: Deliberately wrong variants (one term dropped): the proofs must reject each of them.
WRONG = {
    "dx": gamma * s / m * (m * dy_j - sum_dy),                       # no xhat * sum(dy xhat)
    "dx_no_mean": gamma * s / m * (m * dy_j - xhat_j * P),           # no sum(dy)
    "ggamma": s * (R - P * Q / m),                                   # no m M(dy) M(ddx)
    "gdy": gamma * s * (ddx_j - M(sum_ddx)) + ddgamma * xhat_j + ddbeta,  # no xhat Q/m
    "gx": (gamma * s**2 / m * (xhat_j * (3 * P * Q / m - R)          # no m M(dy) M(ddx)
                               - Q * (dy_j - M(sum_dy)) - P * (ddx_j - M(sum_ddx)))
           + ddgamma * s * (dy_j - M(sum_dy) - xhat_j * P / m)),
}

ELEMENT_SYMBOLS = (dy_j, ddx_j, xhat_j)
REDUCTION_SYMBOLS = tuple(REDUCTIONS)
SCALAR_SYMBOLS = (gamma, s, m, ddgamma, ddbeta)


# ---------------------------------------------------------------- sums over a symbolic batch
_n = sp.Symbol("n", integer=True, positive=True)   # the one dummy every normalized Sum uses


def _delta_partner(factor, v):
    """``t`` if ``factor`` is ``KroneckerDelta(v, t)`` (or a power of it), else None."""
    base = factor.base if factor.is_Pow else factor
    if isinstance(base, sp.KroneckerDelta) and v in base.args:
        a, b = base.args
        return b if a == v else a
    return None


def _normalized_sum(body, v, lo, hi):
    out = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(body)):
        outside, inside, partner = [], [], None
        for factor in sp.Mul.make_args(term):
            t = _delta_partner(factor, v) if partner is None else None
            if t is not None:
                partner = t
            elif factor.has(v):
                inside.append(factor)
            else:
                outside.append(factor)
        c, f = sp.Mul(*outside), sp.Mul(*inside)
        if partner is not None:      # sum_v delta(v, t) f(v) = f(t): t is an index of the batch
            out += c * f.xreplace({v: partner})
        elif f == 1:                 # sum of a constant
            out += c * (hi - lo + 1)
        elif f.has(sp.Sum):          # a sum coupled to v stays as it is: renaming could capture
            out += c * sp.Sum(f, (v, lo, hi))
        else:
            out += c * sp.Sum(f.xreplace({v: _n}), (_n, lo, hi))
    return out


def _normalized(e: sp.Sum):
    body = e.function
    for limit in e.limits:           # Sum(f, inner, outer): innermost first
        body = _normalized_sum(body, *limit)
    return body


def normalize_sums(expr):
    """Linearity of Sum, Kronecker deltas summed, one dummy: a canonical form for sums."""
    for _ in range(20):
        new = expr.replace(lambda e: isinstance(e, sp.Sum), _normalized)
        if new == expr:
            return expr
        expr = new
    raise RuntimeError("normalize_sums did not reach a fixed point")


def name_sums(expr):
    """Replace each (normalized) Sum by a symbol: the proofs treat sums as opaque values."""
    sums = sorted(expr.atoms(sp.Sum), key=sp.default_sort_key)
    return expr.xreplace({e: sp.Symbol(f"Sum[{e.function}]", real=True) for e in sums})


def rational_normal_form(expr):
    """``expr`` as a reduced fraction of polynomials over QQ (zero iff it is identically zero).

    The sparse polynomials of ``sympy.polys`` do this an order of magnitude faster than
    ``cancel(expand(expr))`` on the large expressions of the double backward.
    """
    gens = sorted(expr.free_symbols, key=sp.default_sort_key)
    if not gens:
        return sp.nsimplify(expr) if expr.is_Float else sp.simplify(expr)
    for algebra in (sp.ring, sp.field):      # a polynomial if it is one (fastest), else a fraction
        try:
            return algebra(gens, sp.QQ)[0](expr).as_expr()
        except (sp.PolynomialError, sp.CoercionFailed, ValueError, TypeError):
            continue
    return sp.cancel(sp.expand(expr))       # not rational in its symbols (a root is left)


# ---------------------------------------------------------------- the batch
class Batch:
    """The forward graph of one channel: ``x -> mean, var -> invstd -> xhat -> y``."""

    m: sp.Expr

    def element(self, name: str, j):
        raise NotImplementedError

    def total(self, f):
        """``sum_i f(i)`` over the batch."""
        raise NotImplementedError

    def normalize(self, expr):
        return expr

    # the definitions (Ioffe & Szegedy, Algorithm 1)
    def x(self, j):
        return self.element("x", j)

    @cached_property
    def mean(self):
        return self.total(self.x) / self.m

    @cached_property
    def var(self):
        mean = self.mean
        return self.total(lambda i: (self.x(i) - mean) ** 2) / self.m

    @cached_property
    def invstd(self):
        return (self.var + eps) ** sp.Rational(-1, 2)

    def xhat(self, j):
        """With the invstd of the graph (a function of x), for differentiation."""
        return (self.x(j) - self.mean) * self.invstd

    def xhat_s(self, j):
        """With the symbol ``s`` for invstd: the form closed formulas are written in."""
        return (self.x(j) - self.mean) * s

    def map_x(self, expr, f):
        """``expr`` with every element ``x_i`` replaced by ``f(x_i)`` (shift, scale, ...)."""
        raise NotImplementedError

    def y(self, j):
        return gamma * self.xhat(j) + beta

    def loss(self):
        """``L = <dy, y>``: its gradient is the VJP of the forward pass."""
        return self.total(lambda i: self.element("dy", i) * self.y(i))

    # closed forms
    def instantiate(self, closed, j):
        """A closed form at element ``j``: element symbols and reductions spelled out."""
        def elements(i):
            return self.element("dy", i), self.element("ddx", i), self.xhat_s(i)

        subs = dict(zip(ELEMENT_SYMBOLS, elements(j)))
        subs.update({sym: self.total(lambda i, f=f: f(*elements(i))) for sym, f in REDUCTIONS.items()})
        subs[m] = self.m
        return closed.xreplace(subs)

    @cached_property
    def reduced_var(self):
        return sp.expand(name_sums(self.normalize(self.var)))

    def reduce(self, expr):
        """``expr`` with invstd as the symbol ``s``, sums named and ``eps`` eliminated.

        Zero iff ``expr`` vanishes identically. Derivatives keep the base ``var + eps`` of
        invstd's powers intact, so they are matched before anything is expanded; an ``eps``
        still left (in a closed form that spells it out) goes by ``eps = s^-2 - var``.
        """
        base = self.var + eps
        expr = expr.replace(lambda e: e.is_Pow and e.base == base, lambda e: s ** (-2 * e.exp))
        expr = name_sums(self.normalize(expr))
        if expr.has(eps):
            # a base var' + eps that is not the graph's own (say, var of x + c) may still
            # expand to it; eliminating eps then leaves s^-2, whose root SymPy takes itself
            expr = expr.replace(lambda e: e.is_Pow and e.base.has(eps),
                                lambda e: sp.Pow(sp.expand(e.base), e.exp))
            expr = expr.xreplace({eps: s**-2 - self.reduced_var})
        return rational_normal_form(expr)

    def assert_identity(self, lhs, rhs, what: str):
        residual = self.reduce(lhs - rhs)
        assert residual == 0, f"{what} is not an identity for m={self.m}: residual {residual}"


class ConcreteBatch(Batch):
    """A batch of ``m`` explicit values per quantity: ``x_1 .. x_m``, ``dy_1 .. dy_m``, ..."""

    #: an element to state per-element identities at (any element would do)
    some_index = 1

    def __init__(self, size: int, tag: str = ""):
        self.m = sp.Integer(size)
        self.size = size
        self.tag = tag          # tells the symbols of several batches (channels) apart
        self._symbols = {}

    def element(self, name, j):
        key = (name, j)
        if key not in self._symbols:
            self._symbols[key] = sp.Symbol(f"{name}{self.tag}_{j}", real=True)
        return self._symbols[key]

    @property
    def indices(self):
        return range(1, self.size + 1)

    def total(self, f):
        return sp.Add(*(f(i) for i in self.indices))

    def map_x(self, expr, f):
        return expr.xreplace({self.x(i): f(self.x(i)) for i in self.indices})


class SymbolicBatch(Batch):
    """A batch of symbolic size ``m``: elements ``x[j]`` with ``1 <= j <= m``, sums as ``Sum``."""

    some_index = j

    def __init__(self):
        self.m = m
        self._bases = {}
        self._dummies = iter(sp.numbered_symbols("i", integer=True, positive=True))

    def element(self, name, j):
        if name not in self._bases:
            self._bases[name] = sp.IndexedBase(name, real=True)
        return self._bases[name][j]

    def total(self, f):
        i = next(self._dummies)       # a fresh dummy per sum: nested sums never share one
        return sp.Sum(f(i), (i, 1, self.m))

    def normalize(self, expr):
        return normalize_sums(expr)

    def map_x(self, expr, f):
        x = self.element("x", j).base
        return expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == x, f)


CONCRETE_SIZES = range(2, 7)


@lru_cache(maxsize=None)
def concrete(size: int) -> ConcreteBatch:
    return ConcreteBatch(size)


@lru_cache(maxsize=None)
def symbolic() -> SymbolicBatch:
    return SymbolicBatch()
