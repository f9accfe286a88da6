r"""The properties the oracle checks, each a function of one drawn :class:`~bnref.strategies.BNCase`.

A property body calls the candidate and returns a list of :class:`Outcome` (one per
compared quantity); the runner in :mod:`bnref.oracle.check` draws the cases with
Hypothesis and shrinks a failing one. Expected values come from
:mod:`bnref.reference` (plain autograd in float64), never from bnref's kernels, so
``bnref check bnref`` is a real check.

Tolerances: the error model of :mod:`bnref.testing` with the candidate's own
working precision. bnref accumulates in float64, so its float32 output is the exact
value rounded (``a u32 + b u64 kappa sqrt(m)``); a candidate that computes in its
input dtype loses ``u_work kappa`` in ``x - mean`` (``kappa = max|x| / sqrt(var + eps)``),
so the oracle allows

.. math:: \mathrm{tol} = \min\big(a_q\,u_{out} + b_q\,u_{work}\,\kappa\,\sqrt m,\ 0.1\big)

``u_out`` is the unit roundoff of the output's dtype (x's; the parameters' for dgamma,
dbeta, ggamma and the running statistics), ``u_work`` that of the precision the
candidate may compute in (:func:`working_dtype`): x's dtype for float32 and float64,
which makes this the core table's tolerance for float64, and float32 for the half
types, which every framework computes in (statistics accumulated, ``x - mean``
formed and normalized in float32, the result rounded once to the half type). A half
candidate that accumulates or normalizes in the half type fails.

On float32 data with a large offset (``condition="offset"``, kappa up to 1e6) a
float32 computation cannot do better than ``u32 kappa`` ~ 0.06, so there only gross
errors fail (non-finite, or more than :data:`GROSS` of the scale); the fingerprint
reports the actual error. Half data needs no such rule: a half value with a spread
of at least one ulp has ``kappa`` below about ``2 / u_half`` (4096 in float16), and
a spread below one ulp is a constant channel, so a float32 computation keeps
``u32 kappa`` under ``u_half``. :data:`GROSS` (0.1) stays above every ``a_q u_out``
of the table in bfloat16 (at most ``16 * 2^-8``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import ml_dtypes  # finfo of bfloat16 too
import numpy as np

from bnref import reference
from bnref.oracle._guard import CandidateError, Guard
from bnref.oracle.protocol import HALF_DTYPES, param_dtype_of, provides
from bnref.dtypes import dtype_info, unit_roundoff
from bnref.strategies import CONDITIONS, BNCase
from bnref.testing import TOLERANCES, compare, condition_number, scales

__all__ = ["Outcome", "Property", "PROPERTIES", "CandidateError", "candidate_tolerance", "working_dtype", "GROSS",
           "property_named"]

#: the relative error beyond which a result is wrong at any precision
GROSS = 0.1


@dataclass(frozen=True)
class Outcome:
    """One compared quantity of one example: ``ratio`` = error / tolerance (<= 1 passes)."""

    quantity: str
    ok: bool
    ratio: float
    text: str

    @classmethod
    def of(cls, comparison) -> "Outcome":
        tol = comparison.tolerance * comparison.scale
        ratio = math.inf if comparison.nonfinite else (comparison.max_abs_error / tol if tol > 0 else math.inf)
        return cls(comparison.quantity, comparison.ok, ratio, str(comparison))


#: the precision a correct candidate computes in, for x of a half type (every framework's opmath)
HALF_WORKING_DTYPE = "float32"


def working_dtype(dtype) -> np.dtype:
    """The narrowest precision a correct candidate computes in for x of ``dtype``.

    ``dtype`` itself for float32 and float64; :data:`HALF_WORKING_DTYPE` (float32) for the half types.
    """
    dtype = np.dtype(dtype)
    return np.dtype(HALF_WORKING_DTYPE) if dtype.name in HALF_DTYPES else dtype


def candidate_tolerance(quantity: str, dtype, *, kappa: float, m: int, gross_only: bool = False,
                        out_dtype=None, work_dtype=None) -> float:
    """Relative tolerance ``min(a u_out + b u_work kappa sqrt(m), GROSS)`` (see the module docstring).

    ``dtype`` is x's; ``out_dtype`` the output's when it differs (float32 parameters of a half candidate);
    ``work_dtype`` the precision the candidate computes in when it is known to be narrower than
    :func:`working_dtype` (float64 computed in float32, measured by the fingerprint).
    """
    if gross_only:
        return GROSS
    t = TOLERANCES[quantity]
    work = working_dtype(dtype) if work_dtype is None else np.dtype(work_dtype)
    u_out, u_work = unit_roundoff(out_dtype if out_dtype is not None else dtype), unit_roundoff(work)
    return min(GROSS, t.a * u_out + t.b * u_work * max(1.0, kappa) * math.sqrt(max(m, 1)))


class Context:
    """What a property body needs besides the case: the candidate, its fingerprint, and the
    :class:`~bnref.oracle._guard.Guard` that calls it (time limit, stdout, result checks)."""

    def __init__(self, candidate, fingerprint=None, guard: Guard | None = None):
        self.candidate = candidate
        self.fingerprint = fingerprint
        self.guard = guard if guard is not None else Guard()

    def as_used(self, case: BNCase) -> BNCase:
        """``case`` with the eps the candidate actually uses: rounded to float32 where the fingerprint
        found eps held in float32 (a convention, reported there), so that the rounding of a float32
        attribute is not reported as an accuracy failure."""
        if self.fingerprint is not None and self.fingerprint.eps_float32:
            return replace(case, eps=float(np.float32(case.eps)))
        return case

    def work_dtype(self, case: BNCase):
        """float32 for float64 x where the fingerprint found float64 computed in float32 (a convention,
        reported there); None (the default working precision) otherwise."""
        if case.x.dtype == np.float64 and self.fingerprint is not None and self.fingerprint.float64_in_float32:
            return np.dtype(np.float32)
        return None

    def param_dtype(self, case: BNCase) -> np.dtype:
        """The dtype the candidate takes its parameters and running statistics in, for ``case``."""
        return param_dtype_of(self.candidate, case.x.dtype)

    def params(self, case: BNCase):
        """gamma, beta in the candidate's parameter dtype (exact: they are drawn in x's dtype)."""
        dtype = self.param_dtype(case)
        return case.gamma.astype(dtype), case.beta.astype(dtype)

    def call(self, method: str, *args):
        """``candidate.method(*args)`` as NumPy arrays of the promised shapes and dtypes.

        Raises:
            CandidateError: the candidate raised (SystemExit included), returned something else,
                or exceeded the time limit; the message names the call and what came back.
        """
        return self.guard.call(self.candidate, method, *args)


# --------------------------------------------------------------------------- comparison helpers

def _rng(case: BNCase, salt: int) -> np.random.Generator:
    """Cotangents and running statistics derived from the case's seed, so a replay is exact."""
    return np.random.default_rng([case.seed, salt])


def _like(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _gross_only(case: BNCase) -> bool:
    return case.x.dtype == np.float32 and case.condition == "offset"


def _check(quantity: str, actual, expected, case: BNCase, scale: float, *, label: str | None = None,
           kappa: float | None = None, dtype=None, slack: float = 0.0, work=None) -> Outcome:
    """Compare one output of the candidate with its expected value, dtype and shape included.

    ``dtype``: the output's expected dtype (default x's); ``slack``: a relative error the
    comparison itself brings, added to the tolerance; ``work``: the candidate's working precision
    (:meth:`Context.work_dtype`).
    """
    actual = np.asarray(actual)
    label = label or quantity
    dtype = case.x.dtype if dtype is None else np.dtype(dtype)
    if actual.dtype != dtype:
        whose = "x" if dtype == case.x.dtype else "the parameters"
        return Outcome(label, False, math.inf,
                       f"{label}: returned dtype {actual.dtype}, expected {dtype} (the dtype of {whose})")
    kappa = condition_number(case.x, case.channel_axis, case.eps) if kappa is None else kappa
    result = compare(quantity, actual, expected, dtype=dtype, kappa=kappa, m=case.count, scale=scale)
    tol = candidate_tolerance(quantity, case.x.dtype, kappa=kappa, m=case.count, gross_only=_gross_only(case),
                              out_dtype=dtype, work_dtype=work)
    # below the smallest normal value a rounding costs up to half the smallest subnormal, whatever the value
    underflow = TOLERANCES[quantity].a * float(ml_dtypes.finfo(dtype).smallest_subnormal) / 2 / scale
    return Outcome.of(replace(result, tolerance=tol + slack + underflow, quantity=label))


#: the compared quantities that come back in the parameters' dtype
PARAM_QUANTITIES = frozenset({"dgamma", "dbeta", "ggamma", "mean", "var"})


def _check_all(ctx: Context, names, actuals, expecteds, case, scale: dict, prefix: str = "",
               suffix: str = "") -> list[Outcome]:
    if not isinstance(actuals, (tuple, list)) or len(actuals) != len(names):
        raise CandidateError(f"expected a tuple ({', '.join(names)}); got {type(actuals).__name__}")
    return [_check(n, a, e, case, scale[n], label=prefix + n + suffix,
                   dtype=ctx.param_dtype(case) if n in PARAM_QUANTITIES else None, work=ctx.work_dtype(case))
            for n, a, e in zip(names, actuals, expecteds)]


def _cotangents(ctx: Context, case: BNCase):
    """dy, ddx (x's dtype) and ddgamma, ddbeta (the parameters' dtype), from the case's seed."""
    rng = _rng(case, 1)
    x, gamma, param = case.x, case.gamma, ctx.param_dtype(case)
    return (_like(rng, x.shape, x.dtype), _like(rng, x.shape, x.dtype), _like(rng, gamma.shape, param),
            _like(rng, gamma.shape, param))


def _args(ctx: Context, case: BNCase):
    return (case.x, *ctx.params(case), case.eps)


def _scales(case: BNCase, dy=None, ddx=None, ddgamma=None, ddbeta=None) -> dict:
    return scales(case.x, case.gamma, case.beta, case.eps, case.channel_axis, dy, ddx, ddgamma, ddbeta)


# --------------------------------------------------------------------------- agreement with the reference

def forward(ctx: Context, case: BNCase) -> list[Outcome]:
    """y = forward_train(x) agrees with the reference."""
    y = ctx.call("forward_train", *_args(ctx, case))
    y_ref = reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
    return [_check("y", y, y_ref, case, _scales(case)["y"], work=ctx.work_dtype(case))]


def backward(ctx: Context, case: BNCase) -> list[Outcome]:
    """dx, dgamma, dbeta agree with the reference's VJP.

    The cotangent dy is drawn from the case's seed; statistics are differentiated through.
    """
    dy = _cotangents(ctx, case)[0]
    grads = ctx.call("backward", *_args(ctx, case), dy)
    expected = reference.backward(dy, case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    return _check_all(ctx, ("dx", "dgamma", "dbeta"), grads, expected, case, _scales(case, dy))


def _running_stats(ctx: Context, case: BNCase):
    """Running statistics near (but not at) the batch's: the eval forward must use them, not the batch's.

    In the candidate's parameter dtype.
    """
    rng = _rng(case, 2)
    x64 = case.x.astype(np.float64)
    mean = x64.mean(axis=case.axes.reduce)
    var = x64.var(axis=case.axes.reduce)
    std = np.sqrt(var + case.eps)
    running_mean = mean + std * rng.uniform(-1, 1, mean.shape)
    running_var = (var + case.eps) * rng.uniform(0.25, 4, var.shape)
    dtype = ctx.param_dtype(case)
    return running_mean.astype(dtype), running_var.astype(dtype)


def forward_eval(ctx: Context, case: BNCase) -> list[Outcome]:
    """Eval y with given running statistics agrees with the reference.

    The running statistics differ from the batch's, so an eval that uses the batch's fails.
    """
    return [_eval_check(ctx, case, case.x, *_running_stats(ctx, case), "y")]


#: the running variance :func:`forward_eval_large_var` uses: above float16's largest value, 65504
LARGE_RUNNING_VAR = 1e5


def forward_eval_large_var(ctx: Context, case: BNCase) -> list[Outcome]:
    """Eval y with a running variance of 1e5 agrees with the reference (float32 parameters cast to float16: inf).

    x is the case's data spread to a standard deviation near sqrt(1e5). The running variance
    is 1e5 (times 0.7 to 1.3) where the parameter dtype holds it -- float32 parameters of
    half data among them, which a float16 copy turns into inf and y into beta
    (https://github.com/apple/coreai-torch/pull/54) -- and a quarter of the largest value
    of the parameter dtype (float16 parameters) otherwise.
    """
    param = ctx.param_dtype(case)
    var = min(LARGE_RUNNING_VAR, dtype_info(param).max_finite / 4)
    rng = _rng(case, 8)
    x64 = case.x.astype(np.float64)
    mean, std = x64.mean(axis=case.axes.reduce), x64.std(axis=case.axes.reduce)
    z = (x64 - case.axes.broadcast(mean)) / case.axes.broadcast(np.where(std > 0, std, 1.0))
    spread = math.sqrt(var) * rng.uniform(0.5, 2, case.channels)
    running_mean = (math.sqrt(var) * rng.uniform(-1, 1, case.channels)).astype(param)
    running_var = (var * rng.uniform(0.7, 1.3, case.channels)).astype(param)
    x = (case.axes.broadcast(running_mean.astype(np.float64)) + case.axes.broadcast(spread) * z).astype(case.x.dtype)
    return [_eval_check(ctx, case, x, running_mean, running_var, f"y with running_var ~ {var:.3g}")]


def _eval_check(ctx: Context, case: BNCase, x, running_mean, running_var, label: str) -> Outcome:
    """forward_eval on ``x`` (the case's shape and layout) with the given running statistics, checked."""
    y = ctx.call("forward_eval", x, *ctx.params(case), running_mean, running_var, case.eps)
    y_ref = reference.forward_eval(x, case.gamma, case.beta, running_mean, running_var, case.eps, case.channel_axis)
    invstd = 1 / np.sqrt(running_var.astype(np.float64) + case.eps)
    x64 = x.astype(np.float64)
    xhat = (x64 - case.axes.broadcast(running_mean.astype(np.float64))) * case.axes.broadcast(invstd)
    kappa = float(np.max(np.abs(x64) * case.axes.broadcast(invstd), initial=1.0))
    scale = float(np.max(np.abs(case.gamma))) * max(1.0, float(np.max(np.abs(xhat), initial=0))) \
        + float(np.max(np.abs(case.beta)))
    return _check("y", y, y_ref, case, scale, kappa=kappa, label=label, work=ctx.work_dtype(case))


def _eval_args(ctx: Context, case: BNCase, running_mean, running_var):
    return (case.x, *ctx.params(case), running_mean, running_var, case.eps)


def double_backward(ctx: Context, case: BNCase) -> list[Outcome]:
    """gx, ggamma, gdy (VJP of the backward) agree with autograd-of-autograd."""
    dy, ddx, ddgamma, ddbeta = _cotangents(ctx, case)
    grads = ctx.call("double_backward", *_args(ctx, case), dy, ddx, ddgamma, ddbeta)
    expected = reference.double_backward(ddx, ddgamma, ddbeta, dy, case.x, case.gamma, case.beta, case.eps,
                                         case.channel_axis)
    return _check_all(ctx, ("gx", "ggamma", "gdy"), grads, expected, case, _scales(case, dy, ddx, ddgamma, ddbeta))


MOMENTA = (0.1, 0.01, 0.3, 0.9)


def running_stats(ctx: Context, case: BNCase) -> list[Outcome]:
    """One running-statistics step follows the measured convention.

    Conventions differ between frameworks (momentum on the new or the old value; the
    running variance with m or m - 1) and are reported, not failed; but whichever the
    candidate uses must hold for every batch, both statistics, and every momentum.
    """
    conv = ctx.fingerprint.running if ctx.fingerprint is not None else None
    if conv is None or not conv.consistent:
        why = (conv.describe() if conv is not None
               else ctx.fingerprint.running_note if ctx.fingerprint is not None else "not measured")
        raise CandidateError(f"the running statistics follow no consistent convention: {why}")
    rng = _rng(case, 3)
    momentum = float(rng.choice(MOMENTA))
    old_mean, old_var = _running_stats(ctx, case)
    new_mean, new_var = ctx.call("update_running", case.x, old_mean, old_var, momentum)
    x64 = case.x.astype(np.float64)
    mean, var = x64.mean(axis=case.axes.reduce), x64.var(axis=case.axes.reduce)
    expected_mean, expected_var = conv.convention().update_running(old_mean, old_var, mean, var, case.count,
                                                                  momentum)
    kappa = condition_number(case.x, case.channel_axis, case.eps)
    size = lambda *a: max(float(np.max(np.abs(v), initial=0)) for v in a) or 1.0  # noqa: E731
    dtype = ctx.param_dtype(case)
    # a momentum held in float32 moves the weight by up to u32, the update by u32 |old - stat| (reported in the
    # fingerprint as a convention)
    slack = 2 * unit_roundoff(np.float32) if ctx.fingerprint.momentum_float32 else 0.0
    return [_check("mean", new_mean, expected_mean, case, size(old_mean, mean), label="running_mean", kappa=kappa,
                   dtype=dtype, slack=slack, work=ctx.work_dtype(case)),
            _check("var", new_var, expected_var, case, size(old_var, var * case.count / max(case.count - 1, 1)),
                   label="running_var", kappa=kappa, dtype=dtype, slack=slack, work=ctx.work_dtype(case))]


def running_stats_steps(ctx: Context, case: BNCase) -> list[Outcome]:
    """Several running-statistics steps from a fresh state follow the convention measured over steps.

    The batches are x and 1 to 3 per-channel affine images of it; a debiased moving average
    (Haiku's) is checked as one.
    """
    conv = ctx.fingerprint.steps_convention if ctx.fingerprint is not None else None
    if conv is None:
        why = ctx.fingerprint.steps if ctx.fingerprint is not None else "not measured"
        raise CandidateError(f"the running statistics over steps follow no recognized convention: {why}")
    rng = _rng(case, 9)
    momentum = float(rng.choice(MOMENTA))
    x64 = case.x.astype(np.float64)
    std = np.sqrt(x64.var(axis=case.axes.reduce) + case.eps)
    xs = [case.x] + [(case.axes.broadcast(rng.uniform(0.5, 2, case.channels)) * x64
                      + case.axes.broadcast(std * rng.uniform(-1, 1, case.channels))).astype(case.x.dtype)
                     for _ in range(int(rng.integers(1, 4)))]
    old_mean, old_var = _running_stats(ctx, case)
    new_mean, new_var = ctx.call("update_running_steps", xs, old_mean, old_var, momentum)
    stats = [(b.astype(np.float64).mean(axis=case.axes.reduce), b.astype(np.float64).var(axis=case.axes.reduce))
             for b in xs]
    expected_mean, expected_var = conv.update_running_steps(old_mean, old_var, [s[0] for s in stats],
                                                            [s[1] for s in stats], [case.count] * len(xs), momentum)
    kappa = max(condition_number(b, case.channel_axis, case.eps) for b in xs)
    size = lambda *a: max(float(np.max(np.abs(v), initial=0)) for v in a) or 1.0  # noqa: E731
    unbiased = case.count / max(case.count - 1, 1)
    # a debiased average divides by 1 - (1 - w)^t, as small as w: its rounding grows by 1 / w
    slack = 4 * unit_roundoff(working_dtype(case.x.dtype)) / conv.weight(momentum) if conv.debiased else 0.0
    dtype, work, after = ctx.param_dtype(case), ctx.work_dtype(case), f" after {len(xs)} steps"
    return [_check("mean", new_mean, expected_mean, case, size(old_mean, *[s[0] for s in stats]),
                   label="running_mean" + after, kappa=kappa, dtype=dtype, slack=slack, work=work),
            _check("var", new_var, expected_var, case, size(old_var, *[s[1] * unbiased for s in stats]),
                   label="running_var" + after, kappa=kappa, dtype=dtype, slack=slack, work=work)]


# --------------------------------------------------------------------------- invariants

def _self_check(ctx: Context, quantity, actual, expected, reference_value, case: BNCase, scale: float, label: str,
                kappa: float, slack: float = 0.0) -> Outcome:
    """Compare two outputs of the candidate itself (a metamorphic relation).

    ``expected`` is the candidate's own result on the untransformed input, ``reference_value``
    the reference's for it. When ``expected`` itself disagrees with the reference, that is the
    finding of the property that compares it (forward, backward), and this one does not compare;
    otherwise the two results may differ by the tolerance plus ``expected``'s own error, since
    each may lie within the tolerance of the reference on opposite sides.
    """
    work = ctx.work_dtype(case)
    own = _check(quantity, expected, reference_value, case, scale, kappa=kappa, work=work)
    if not own.ok:
        return Outcome(label, True, 0.0, f"{label}: not compared: {quantity} of the untransformed input "
                                         f"already disagrees with the reference (its own property's finding)")
    expected = np.asarray(expected, dtype=np.float64)
    own_error = float(np.max(np.abs(expected - np.asarray(reference_value, np.float64)), initial=0.0)) / scale
    return _check(quantity, actual, expected, case, scale, label=label, kappa=kappa, slack=slack + own_error,
                  work=work)


def shift_invariance(ctx: Context, case: BNCase) -> list[Outcome]:
    """BN(x + c) = BN(x) for a per-channel constant c (catastrophic cancellation in E[x^2] - E[x]^2).

    Offsets are powers of two up to 1024: large enough to expose E[x^2] - E[x]^2.
    """
    rng = _rng(case, 4)
    c = rng.choice([-1.0, 1.0], case.channels) * 2.0 ** rng.integers(0, 11, case.channels)
    shifted = (case.x.astype(np.float64) + case.axes.broadcast(c)).astype(case.x.dtype)
    y = ctx.call("forward_train", *_args(ctx, case))
    y_shifted = ctx.call("forward_train", shifted, *_args(ctx, case)[1:])
    # rounding x + c moves each value by u|x + c|: the data's kappa after the shift bounds the change
    kappa = condition_number(shifted, case.channel_axis, case.eps) + condition_number(case.x, case.channel_axis,
                                                                                    case.eps)
    # ... and in a half type that change is far above the float32 working precision: allow it as it is
    scale = _scales(case)["y"]
    moved = np.max(np.abs(reference.forward_train(shifted, case.gamma, case.beta, case.eps, case.channel_axis)[0]
                          - reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]),
                   initial=0.0)
    y_ref = reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
    return [_self_check(ctx, "y", y_shifted, y, y_ref, case, scale, "y(x + c) vs y(x)", kappa,
                        slack=float(moved) / scale)]


def scale_invariance(ctx: Context, case: BNCase) -> list[Outcome]:
    """BN(a x; eps a^2) = BN(x; eps) for a = 2^k: scaling x, and eps with it, leaves y unchanged
    (a hard-coded eps, overflow in the squares).

    Scaling by a power of two is exact, so a correct kernel agrees to rounding; a
    hard-coded or ignored eps does not.
    """
    rng = _rng(case, 5)
    k = int(rng.integers(-4, 5))
    # a x must stay finite: float16 holds 65504 at most
    biggest = float(np.max(np.abs(case.x.astype(np.float64)), initial=0.0))
    if biggest > 0:
        k = min(k, math.floor(math.log2(dtype_info(case.x.dtype).max_finite) - math.log2(biggest)))
    a = 2.0 ** k
    y = ctx.call("forward_train", *_args(ctx, case))
    y_scaled = ctx.call("forward_train", (case.x * a).astype(case.x.dtype), *ctx.params(case), case.eps * a * a)
    kappa = condition_number(case.x, case.channel_axis, case.eps)
    y_ref = reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
    return [_self_check(ctx, "y", y_scaled, y, y_ref, case, _scales(case)["y"], f"y_(eps a^2)(a x) vs y(x), a={a:g}",
                        kappa)]


def _metamorphic(ctx: Context, case: BNCase, into, outof, what: str) -> list[Outcome]:
    """Run forward (and backward, where provided) on (x, dy) and on (into(x), into(dy)); compare with
    outof of the first."""
    dy = _cotangents(ctx, case)[0]
    y = ctx.call("forward_train", *_args(ctx, case))
    y2 = ctx.call("forward_train", into(case.x), *_args(ctx, case)[1:])
    s = _scales(case, dy)
    kappa = condition_number(case.x, case.channel_axis, case.eps)
    y_ref = reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
    out = [_self_check(ctx, "y", y2, outof(y), outof(y_ref), case, s["y"], f"y({what}) vs y(x)", kappa)]
    if provides(ctx.candidate, "backward"):
        dx = _result(ctx.call("backward", *_args(ctx, case), dy), 3)[0]
        dx2 = _result(ctx.call("backward", into(case.x), *_args(ctx, case)[1:], into(dy)), 3)[0]
        dx_ref = reference.backward(dy, case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
        out.append(_self_check(ctx, "dx", dx2, outof(dx), outof(dx_ref), case, s["dx"], f"dx({what}) vs dx(x)", kappa))
    return out


def batch_permutation(ctx: Context, case: BNCase) -> list[Outcome]:
    """Permuting the batch axis permutes y and dx (where backward is provided) the same way.

    The statistics pool the whole batch, whatever its order.
    """
    batch_axis = 0 if case.channel_axis % case.x.ndim != 0 else 1
    perm = _rng(case, 6).permutation(case.x.shape[batch_axis])
    take = lambda a: np.take(np.asarray(a), perm, axis=batch_axis)  # noqa: E731
    return _metamorphic(ctx, case, take, take, "x[perm]")


def _result(value, n: int):
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise CandidateError(f"expected a tuple of {n} arrays; got {type(value).__name__}")
    return value


def sum_dx_zero(ctx: Context, case: BNCase) -> list[Outcome]:
    """sum_i dx_i = 0 in every channel.

    y ignores a shift of x because the mean is subtracted, so dx has no component along it.
    """
    dy = _cotangents(ctx, case)[0]
    dx = np.asarray(_result(ctx.call("backward", *_args(ctx, case), dy), 3)[0])
    if dx.shape != case.x.shape:
        raise CandidateError(f"backward returned dx of shape {dx.shape}, expected {case.x.shape}")
    total = dx.astype(np.float64).sum(axis=case.axes.reduce).astype(dx.dtype)  # keeps dx's dtype for _check
    scale = _scales(case, dy)["dx"] * case.count
    return [_check("dx", total, np.zeros(case.channels), case, scale, label="sum(dx) per channel",
                   work=ctx.work_dtype(case))]


def constant_channel(ctx: Context, case: BNCase) -> list[Outcome]:
    """A constant channel gives y = beta (a variance that cancels below 0, a division by a zero variance).

    var = 0 there: y = beta exactly when x - mean rounds to 0, never NaN.
    """
    y = np.asarray(ctx.call("forward_train", *_args(ctx, case)))
    x64 = case.x.astype(np.float64)
    constant = np.ptp(x64, axis=case.axes.reduce) == 0
    expected = np.broadcast_to(case.axes.broadcast(case.beta.astype(np.float64)), case.x.shape)
    mask = np.broadcast_to(case.axes.broadcast(constant), case.x.shape)
    if y.shape != case.x.shape:
        raise CandidateError(f"forward_train returned shape {y.shape}, expected {case.x.shape}")
    masked = np.where(mask, y, expected.astype(case.x.dtype)) if y.dtype == case.x.dtype else y
    return [_check("y", masked, expected, case, _scales(case)["y"], label="y on constant channels",
                   work=ctx.work_dtype(case))]


#: non-standard eps values: a wrong or hard-coded eps cannot agree with these (Theano's test trick)
EPS_PROBES = (0.5, 3.0)


def eps_honoured(ctx: Context, case: BNCase) -> list[Outcome]:
    """Uses the eps it is given: forward at eps = 0.5 and 3 agrees with the reference.

    Non-standard values (Theano's trick): a hard-coded eps cannot agree with them.
    """
    out = []
    for eps in EPS_PROBES:
        probe = replace(case, eps=eps)
        y = ctx.call("forward_train", case.x, *ctx.params(case), eps)
        y_ref = reference.forward_train(case.x, case.gamma, case.beta, eps, case.channel_axis)[0]
        out.append(_check("y", y, y_ref, probe, _scales(probe)["y"], label=f"y at eps={eps:g}",
                          work=ctx.work_dtype(case)))
    return out


def inputs_unchanged(ctx: Context, case: BNCase) -> list[Outcome]:
    """No method writes into its input arrays.

    Checked for x, gamma, beta, dy, the running statistics and the cotangents.
    """
    dy, ddx, ddgamma, ddbeta = _cotangents(ctx, case)
    running_mean, running_var = _running_stats(ctx, case)
    calls = {"forward_train": _args(ctx, case), "backward": (*_args(ctx, case), dy),
             "forward_eval": _eval_args(ctx, case, running_mean, running_var),
             "update_running": (case.x, running_mean, running_var, 0.1),
             "double_backward": (*_args(ctx, case), dy, ddx, ddgamma, ddbeta)}
    out = []
    for method, args in calls.items():
        if not provides(ctx.candidate, method):
            continue
        before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        ctx.call(method, *args)
        for i, (a, b) in enumerate(zip(args, before)):
            if isinstance(a, np.ndarray) and not np.array_equal(a, b, equal_nan=True):
                changed = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0))
                out.append(Outcome(f"{method} argument {i}", False, math.inf,
                                   f"{method} modified its argument {i} (shape {a.shape}): "
                                   f"max change {changed:.3g}"))
    return out or [Outcome("inputs", True, 0.0, "no argument modified")]


def strides(ctx: Context, case: BNCase) -> list[Outcome]:
    """Strided, column-major x and dy give the results of C-contiguous ones (memory read as if C-contiguous).

    y always; dx where backward is provided.
    """
    def strided(a):
        # every other element of a column-major buffer: neither C- nor F-contiguous
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype, order="F")
        big[..., ::2] = a
        return big[..., ::2]

    return _metamorphic(ctx, case, strided, lambda a: a, "strided x")


# --------------------------------------------------------------------------- sharded (cross-replica) batch norm

#: shards a candidate is given at most when it does not say (``candidate.max_shards``)
DEFAULT_MAX_SHARDS = 4


def shard_sizes(case: BNCase, kind: str, max_shards: int | None) -> tuple[int, ...]:
    """Sizes along the batch axis (axis 0) of the split a sharded property uses, from the case's seed.

    ``uneven``: 2..max_shards non-empty shards of random sizes (fewer when the batch is smaller);
    ``degenerate``: a shard of 1 or 0 samples beside the rest -- ``(1, n-1)``, ``(0, n)``,
    ``(n-1, 0, 1)``, ``(1, 1, n-2)``: the splits of https://github.com/pytorch/pytorch/issues/22192,
    https://github.com/pytorch/pytorch/issues/36865 and https://github.com/NVIDIA/apex/issues/262.
    """
    n = case.x.shape[0]
    k_max = max(2, min(max_shards or DEFAULT_MAX_SHARDS, DEFAULT_MAX_SHARDS))
    rng = _rng(case, 7)
    if kind == "uneven":
        k = min(int(rng.integers(2, k_max + 1)), n)  # every shard non-empty
        cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else []
        edges = [0, *list(cuts), n]
        return tuple(int(b - a) for a, b in zip(edges, edges[1:]))
    if kind != "degenerate":
        raise ValueError(f"unknown split kind {kind!r}")
    patterns = [(1, n - 1), (0, n)]
    if k_max >= 3:
        patterns.append((n - 1, 0, 1))
        if n >= 2:
            patterns.append((1, 1, n - 2))
    return patterns[int(rng.integers(len(patterns)))]


def _joined(name: str, parts, xs) -> np.ndarray:
    """The per-shard outputs concatenated back into one batch (shapes checked shard by shard)."""
    if not isinstance(parts, (list, tuple)) or len(parts) != len(xs):
        raise CandidateError(f"expected {name} as a list of {len(xs)} arrays, one per shard; "
                             f"got {type(parts).__name__}")
    parts = [np.asarray(p) for p in parts]
    for i, (p, x) in enumerate(zip(parts, xs)):
        if p.shape != x.shape:
            raise CandidateError(f"{name}[{i}] has shape {p.shape}, expected {x.shape} (the shard's)")
    return np.concatenate(parts)


def _sharded(kind: str):
    """The property body for splits of ``kind`` (see :func:`shard_sizes`)."""

    def body(ctx: Context, case: BNCase) -> list[Outcome]:
        sizes = shard_sizes(case, kind, getattr(ctx.candidate, "max_shards", None))
        cuts = np.cumsum(sizes)[:-1]
        dy = _cotangents(ctx, case)[0]
        xs, dys = np.split(case.x, cuts), np.split(dy, cuts)
        ys = ctx.call("forward_train_sharded", xs, *_args(ctx, case)[1:])
        dxs, dgamma, dbeta = _result(ctx.call("backward_sharded", xs, *_args(ctx, case)[1:], dys), 3)
        y_ref = reference.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)[0]
        grads_ref = reference.backward(dy, case.x, case.gamma, case.beta, case.eps, case.channel_axis)
        actual = (_joined("ys", ys, xs), _joined("dxs", dxs, xs), dgamma, dbeta)
        return _check_all(ctx, ("y", "dx", "dgamma", "dbeta"), actual, (y_ref, *grads_ref), case, _scales(case, dy),
                          suffix=f" over shards {sizes}")

    body.__doc__ = {
        "uneven": "Shards of unequal sizes: ys, dxs, dgamma, dbeta are the whole batch's "
                  "(shard statistics weighted by shard size, not averaged).",
        "degenerate": "Shards of 1 and 0 samples beside the rest "
                      "(https://github.com/pytorch/pytorch/issues/36865, https://github.com/NVIDIA/apex/issues/262).",
    }[kind]
    return body


# --------------------------------------------------------------------------- the catalogue

@dataclass(frozen=True)
class Property:
    """A named correctness property: ``body(ctx, case) -> [Outcome]`` over cases of ``conditions``.

    ``requires``: the methods without which it is "not provided"; a body calls any other
    method only where the candidate provides it (:func:`~bnref.oracle.protocol.provides`).
    """

    name: str
    body: Callable[[Context, BNCase], list]
    requires: tuple[str, ...] = ("forward_train",)
    conditions: tuple[str, ...] = CONDITIONS

    @property
    def summary(self) -> str:
        return (self.body.__doc__ or "").strip().splitlines()[0]


#: what the sharded properties call
SHARDED = ("forward_train_sharded", "backward_sharded")

PROPERTIES: tuple[Property, ...] = (
    Property("forward", forward),
    Property("backward", backward, ("backward",)),
    Property("forward_eval", forward_eval, ("forward_eval",)),
    Property("forward_eval_large_var", forward_eval_large_var, ("forward_eval",)),
    Property("double_backward", double_backward, ("double_backward",)),
    Property("running_stats", running_stats, ("update_running",)),
    Property("running_stats_steps", running_stats_steps, ("update_running_steps",)),
    Property("shift_invariance", shift_invariance, conditions=("well", "constant", "minimal")),
    Property("scale_invariance", scale_invariance),
    Property("batch_permutation", batch_permutation),
    Property("sum_dx_zero", sum_dx_zero, ("backward",)),
    Property("constant_channel", constant_channel, conditions=("constant",)),
    Property("eps_honoured", eps_honoured, conditions=("well", "tiny_spread", "minimal")),
    Property("inputs_unchanged", inputs_unchanged),
    Property("strides", strides),
    Property("sharded_uneven", _sharded("uneven"), SHARDED),
    Property("sharded_degenerate", _sharded("degenerate"), SHARDED),
)


def property_named(name: str) -> Property:
    for prop in PROPERTIES:
        if prop.name == name:
            return prop
    raise KeyError(f"unknown property {name!r}; known: {', '.join(p.name for p in PROPERTIES)}")
