"""float16 and bfloat16: the rounding functions exhaustively, and the public functions on the
cases that must hold exactly (every full-size output the float64 result rounded once)."""
import dataclasses
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from numba import njit

import bnref
import bnref.sync
from bnref import _half, reference
from bnref.dtypes import dtype_info
from bnref.strategies import make_case
from bnref.testing import check_against_reference, compare, scales

HALF = {"float16": _half.FLOAT16_FRACTION_BITS, "bfloat16": _half.BFLOAT16_FRACTION_BITS}
PATTERNS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _values(name):
    """The float64 value of every 16-bit pattern of ``name`` (NumPy's and ml_dtypes' widening is exact)."""
    with np.errstate(invalid="ignore"):  # NaN patterns
        return PATTERNS.view(np.dtype(name)).astype(np.float64)


@njit
def _narrow_bits_with_branches(values, fraction_bits, out):
    for i in range(values.shape[0]):
        out[i] = _half.half_bits(values[i], fraction_bits)


#: both roundings: the kernels' branch-free one (through narrow_bits, a loop that vectorizes, so
#: its vector code and its scalar tail both run) and the direct one it must equal bit for bit
NARROWINGS = {"branch_free": _half.narrow_bits, "with_branches": _narrow_bits_with_branches}


def _narrow(values, name, narrowing="branch_free"):
    bits = np.empty(values.shape, np.uint16)
    NARROWINGS[narrowing](np.ascontiguousarray(values, np.float64), HALF[name], bits)
    return bits


@pytest.mark.parametrize("name", HALF)
def test_widening_every_pattern_is_exact(name):
    wide = np.empty(1 << 16)
    _half.widen_bits(PATTERNS, HALF[name], wide)
    expected = _values(name)
    assert np.array_equal(wide, expected, equal_nan=True)
    assert np.array_equal(np.signbit(wide), np.signbit(expected))


def _test_points(name):
    """Every finite non-negative value, the midpoints between neighbours (the one past the largest
    finite value, 2^(emax+1), included: its midpoint is the overflow threshold, 65520 for float16)
    and the float64 values just below and above each midpoint, the tie of zero and the smallest
    subnormal, float64 subnormals, values far beyond the range; then all of these negated."""
    values = _values(name)
    finite = np.sort(values[np.isfinite(values) & (values >= 0)])  # 0 and -0 both: one of them stays
    finite = np.unique(finite)
    ladder = np.append(finite, 2.0 * 2.0 ** np.floor(np.log2(finite[-1])))
    mids = (ladder[:-1] + ladder[1:]) / 2  # exact: neighbours share a quantum, far inside float64's range
    points = np.concatenate([finite, mids, np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf),
                             [ladder[-1], 2 * ladder[-1], 1e300, np.finfo(np.float64).max, 5e-324, 1e-310]])
    return ladder, np.concatenate([points, -points])


def _reference_bits(points, ladder):
    """Round to nearest, ties to even, from the value ladder (pattern i has value ladder[i], the
    last rung being +inf's pattern): between rungs a and b, compare with their midpoint, exact in
    float64 (see :func:`_test_points`)."""
    magnitude = np.abs(points)
    i = np.clip(np.searchsorted(ladder, magnitude, side="right") - 1, 0, len(ladder) - 2)
    low, high = ladder[i], ladder[i + 1]
    mid = (low + high) / 2
    up = (magnitude > mid) | ((magnitude == mid) & (i % 2 == 1))
    index = np.where(magnitude >= ladder[-1], len(ladder) - 1, i + up)
    return (index | np.where(np.signbit(points), 0x8000, 0)).astype(np.uint16)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("narrowing", NARROWINGS)
def test_narrowing_is_round_to_nearest_even_at_every_value_and_midpoint(name, narrowing):
    ladder, points = _test_points(name)
    got = _narrow(points, name, narrowing)
    expected = _reference_bits(points, ladder)
    bad = np.flatnonzero(got != expected)
    assert not bad.size, [(float(points[k]), hex(got[k]), hex(expected[k])) for k in bad[:5]]
    # the reference itself, against exact rational arithmetic on a sample and the edges
    rng = np.random.default_rng(1)
    sample = np.concatenate([points[rng.integers(len(points), size=1500)], points[-40:], points[:8]])
    for v in sample:
        assert _fraction_rounding(v, ladder) == _reference_bits(np.array([v]), ladder)[0], v


def _fraction_rounding(v, ladder):
    """One value rounded with Python's Fraction: the nearest rung, ties to the even pattern."""
    exact = Fraction(abs(float(v)))
    i = int(np.clip(np.searchsorted(ladder, abs(v), side="right") - 1, 0, len(ladder) - 2))
    low, high = Fraction(float(ladder[i])), Fraction(float(ladder[i + 1]))
    if exact >= Fraction(float(ladder[-1])):
        index = len(ladder) - 1
    elif exact - low < high - exact or (exact - low == high - exact and i % 2 == 0):
        index = i
    else:
        index = i + 1
    return index | (0x8000 if np.signbit(v) else 0)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("narrowing", NARROWINGS)
def test_narrowing_specials(name, narrowing):
    row = dtype_info(name)
    infinity = _narrow(np.array([np.inf]), name, narrowing)[0]
    signed = _narrow(np.array([np.inf, -np.inf, 0.0, -0.0]), name, narrowing)
    assert signed.tolist() == [infinity, infinity | 0x8000, 0, 0x8000]
    nan = _narrow(np.array([np.nan, -np.nan]), name, narrowing).view(row.numpy).astype(np.float64)
    assert np.isnan(nan).all()
    assert _narrow(np.array([row.max_finite]), name, narrowing).view(row.numpy)[0] == row.max_finite
    # the scalar functions the kernels call are the same rounding
    scalar = _half.float16_bits if name == "float16" else _half.bfloat16_bits
    for v in (1.0 + 2.0 ** -12, 65519.99, 65520.0, 2.0 ** -25, 3 * 2.0 ** -26, -1e-30, 1e38, 3.4e38):
        assert scalar(v) == _narrow(np.array([v]), name, narrowing)[0]


@pytest.mark.parametrize("narrowing", NARROWINGS)
def test_float16_overflow_threshold_and_subnormal_ties(narrowing):
    bits = _narrow(np.array([65504.0, 65519.99, 65520.0, 2.0 ** -25, np.nextafter(2.0 ** -25, 1), 3 * 2.0 ** -25]),
                   "float16", narrowing)
    assert bits.tolist() == [0x7BFF, 0x7BFF, 0x7C00, 0, 1, 2]


@pytest.mark.parametrize("narrowing", NARROWINGS)
def test_bfloat16_rounds_once_where_float32_first_would_round_twice(narrowing):
    # 1 + 2^-8 + 2^-30 is just above a bfloat16 midpoint; float32 rounds it onto the midpoint first
    v = 1.0 + 2.0 ** -8 + 2.0 ** -30
    expected = np.array([1.0 + 2.0 ** -7], ml_dtypes.bfloat16).view(np.uint16)[0]
    assert _narrow(np.array([v]), "bfloat16", narrowing)[0] == expected
    assert np.float32(v) == np.float32(1.0 + 2.0 ** -8)


@pytest.mark.parametrize("name", HALF)
def test_branch_free_rounding_equals_the_direct_one_on_random_bit_patterns(name):
    # every float64 exponent, NaN payloads of both signs included; one mismatch is a wrong pattern
    rng = np.random.default_rng(7)
    values = rng.integers(0, 1 << 64, size=1 << 20, dtype=np.uint64).view(np.float64)
    got, expected = (_narrow(values, name, narrowing) for narrowing in ("branch_free", "with_branches"))
    bad = np.flatnonzero(got != expected)
    assert not bad.size, [(float(values[k]), hex(got[k]), hex(expected[k])) for k in bad[:5]]
    assert (np.isnan(values) == ((got & 0x7FFF) > _narrow(np.array([np.inf]), name)[0])).all()


# ---------------------------------------------------------------- the public functions


def _correctly_rounded(actual, expected, scale, what):
    """Each value of ``actual`` is the nearest half value to a number within float64 noise
    (1e-10 x ``scale``) of the float64 ``expected``."""
    expected = np.asarray(expected, np.float64)
    name = actual.dtype.name
    below, above = (_narrow(expected.reshape(-1) + d * 1e-10 * scale, name).reshape(expected.shape) for d in (-1, 1))
    got = actual.view(np.uint16)
    order = lambda b: np.where(b & 0x8000, -(b & 0x7FFF).astype(np.int32), b & 0x7FFF)  # noqa: E731
    ok = (order(got) >= np.minimum(order(below), order(above))) & (order(got) <= np.maximum(order(below), order(above)))
    bad = np.flatnonzero(~ok)
    assert not bad.size, f"{what}: {bad.size} values not correctly rounded, e.g. {actual.reshape(-1)[bad[0]]!r} " \
                         f"for {expected.reshape(-1)[bad[0]]!r}"


def _check_all(x, gamma, beta, axis, *, param_dtype, eps=1e-5, out=True):
    """Every public function on ``x`` against :mod:`bnref.reference`, full-size outputs correctly
    rounded; inputs never mutated; ``out=`` buffers used."""
    rng = np.random.default_rng(7)
    dtype = x.dtype
    dy = rng.standard_normal(x.shape).astype(dtype)
    ddx = rng.standard_normal(x.shape).astype(dtype)
    ddgamma = rng.standard_normal(gamma.shape).astype(param_dtype)
    copies = [a.copy() for a in (x, gamma, beta, dy, ddx)]
    scale = scales(x, gamma, beta, eps, axis, dy, ddx, ddgamma, None)

    y_out = np.empty_like(x) if out else None
    y, mean, var = bnref.forward_train(x, gamma, beta, eps, axis, out=y_out)
    y_ref, mean_ref, var_ref = reference.forward_train(x, gamma, beta, eps, axis)
    assert y.dtype == dtype and mean.dtype == np.float64 and (not out or y is y_out)
    _correctly_rounded(y, y_ref, scale["y"], "y")
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12 * scale["mean"])
    np.testing.assert_allclose(var, var_ref, rtol=1e-9, atol=1e-12 * scale["var"])

    dx_out = np.empty_like(x) if out else None
    dx, dgamma, dbeta = bnref.backward(dy, x, gamma, mean, var, eps, axis, out=dx_out)
    dx_ref, dgamma_ref, dbeta_ref = reference.backward(dy, x, gamma, beta, eps, axis)
    assert dgamma.dtype == dbeta.dtype == np.dtype(param_dtype)
    _correctly_rounded(dx, dx_ref, scale["dx"], "dx")
    for got, ref, q in ((dgamma, dgamma_ref, "dgamma"), (dbeta, dbeta_ref, "dbeta")):
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=2 * dtype_info(param_dtype).unit_roundoff,
                                   atol=1e-10 * scale[q])

    gx, ggamma, gdy = bnref.double_backward(ddx, ddgamma, None, dy, x, gamma, mean, var, eps, axis)
    gx_ref, _, gdy_ref = reference.double_backward(ddx, ddgamma, np.zeros(gamma.shape), dy, x, gamma, beta, eps, axis)
    assert ggamma.dtype == np.dtype(param_dtype)
    _correctly_rounded(gx, gx_ref, scale["gx"], "gx")
    _correctly_rounded(gdy, gdy_ref, scale["gdy"], "gdy")

    running_mean, running_var = mean.astype(param_dtype), (var + 0.5).astype(param_dtype)
    ye = bnref.forward_eval(x, gamma, beta, running_mean, running_var, eps, axis, out=np.empty_like(x) if out else None)
    ye_ref = reference.forward_eval(x, gamma, beta, running_mean, running_var, eps, axis)
    _correctly_rounded(ye, ye_ref, scale["y"] * 2, "forward_eval y")
    dxe, _, _ = bnref.backward_eval(dy, x, gamma, running_mean, running_var, eps, axis)
    dxe_ref, _, _ = reference.backward_eval(dy, x, gamma, beta, running_mean, running_var, eps, axis)
    _correctly_rounded(dxe, dxe_ref, float(np.abs(dxe_ref).max()) + 1e-300, "backward_eval dx")
    new_mean, new_var = bnref.update_running(running_mean, running_var, mean, var, x.size // x.shape[axis])
    assert new_mean.dtype == new_var.dtype == np.dtype(param_dtype)

    for before, after in zip(copies, (x, gamma, beta, dy, ddx)):
        assert np.array_equal(before.view(np.uint8), after.view(np.uint8))
    return y, mean, var


SHAPES = {2: (40, 3), 3: (6, 3, 5), 4: (4, 3, 3, 2), 5: (2, 3, 2, 3, 2)}


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("params", ["same", "float32"])
def test_every_public_function_rounds_once(name, rank, axis, params):
    shape = SHAPES[rank] if axis == 1 else SHAPES[rank][:1] + SHAPES[rank][2:] + SHAPES[rank][1:2]
    case = make_case(shape, name, axis, "well", seed=rank)
    param_dtype = name if params == "same" else "float32"
    _check_all(case.x, case.gamma.astype(param_dtype), case.beta.astype(param_dtype), axis, param_dtype=param_dtype,
               out=rank % 2 == 0)


def test_float16_near_the_largest_value_does_not_overflow():
    rng = np.random.default_rng(3)
    x = np.array([[65504.0, -65504.0, 65000.0, -60000.0], [-65504.0, 65504.0, -65000.0, 60000.0]] * 4, np.float16)
    x[:, 1] = rng.uniform(6e4, 65504, 8)  # a channel with sums of squares far above 65504, and a spread
    y, mean, var = _check_all(x, np.ones(4, np.float32), np.zeros(4, np.float32), 1, param_dtype="float32")
    assert np.isfinite(y.astype(np.float64)).all() and var[0] > 65504.0 ** 2 / 2


def test_float16_double_backward_overflowing_to_inf_is_correctly_rounded():
    """A float16 channel of std 2.4e-4 at eps 1e-6: the exact gx (2.1e5) lies beyond float16's range and the
    kernel's inf is its correct rounding, which the comparison accepts; an inf of the wrong sign, or where
    the exact value is in range, still fails."""
    case = dataclasses.replace(make_case((2, 1), "float16", 1, "eps_scale", seed=0, eps=1e-06),
                               x=np.array([[0.2744], [0.274]], np.float16), gamma=np.array([1.72], np.float16),
                               beta=np.array([0.2133], np.float16))
    results = check_against_reference(bnref, case, raise_on_failure=False)
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]
    assert compare("gx", np.array([np.inf, 1.0], np.float16), [2.1e5, 1.0], dtype="float16").ok
    assert not compare("gx", np.array([-np.inf, 1.0], np.float16), [2.1e5, 1.0], dtype="float16").ok
    assert not compare("gx", np.array([np.inf, 1.0], np.float16), [6e4, 1.0], dtype="float16").ok


def test_float16_subnormals():
    x = (np.random.default_rng(4).standard_normal((64, 3)) * 3e-6).astype(np.float16)  # mostly subnormal
    assert (np.abs(x.astype(np.float64)) < 2.0 ** -14).mean() > 0.9
    _check_all(x, np.full(3, 1e-3, np.float16), np.zeros(3, np.float16), 1, param_dtype="float16")
    tiny = np.full(3, 2e-7, np.float16)  # y itself subnormal
    y, _, _ = bnref.forward_train(x, tiny, np.zeros(3, np.float16))
    _correctly_rounded(y, reference.forward_train(x, tiny, np.zeros(3), 1e-5, 1)[0], 1e-6, "subnormal y")


def test_float16_eval_with_a_large_float32_running_var():
    x = np.random.default_rng(5).standard_normal((16, 2, 3)).astype(np.float16)
    y = bnref.forward_eval(x, np.ones(2, np.float16), np.zeros(2, np.float16), np.zeros(2, np.float32),
                           np.full(2, 1e5, np.float32))
    assert y.dtype == np.float16 and np.isfinite(y.astype(np.float64)).all() and np.abs(y).max() > 0


@pytest.mark.parametrize("axis", [1, -1])
def test_bfloat16_large_mean_unit_std(axis):
    shape = (64, 4, 8) if axis == 1 else (64, 8, 4)
    x = (1e4 + np.random.default_rng(6).standard_normal(shape) * 64).astype(ml_dtypes.bfloat16)
    c = x.shape[axis]
    y, mean, var = _check_all(x, np.ones(c, np.float32), np.zeros(c, np.float32), axis, param_dtype="float32")
    assert (var > 100).all()  # the spread is there, not cancelled away
    x1 = (1e4 + np.random.default_rng(6).standard_normal(shape)).astype(ml_dtypes.bfloat16)  # std 1 < an ulp (64)
    _check_all(x1, np.ones(c, ml_dtypes.bfloat16), np.zeros(c, ml_dtypes.bfloat16), axis, param_dtype="bfloat16")


def test_sharded_functions_take_half():
    case = make_case((12, 3, 4), "float16", 1, "well", seed=2)
    xs = np.array_split(case.x, 3)
    gamma, beta = case.gamma.astype(np.float32), case.beta.astype(np.float32)
    ys, mean, var = bnref.sync.forward_train_sharded(xs, gamma, beta)
    y, mean1, var1 = bnref.forward_train(case.x, gamma, beta)
    assert np.array_equal(np.concatenate(ys).view(np.uint16), y.view(np.uint16))
    dys = [np.ones_like(s) for s in xs]
    dxs, dgamma, dbeta = bnref.sync.backward_sharded(dys, xs, gamma, mean, var)
    dx, dgamma1, dbeta1 = bnref.backward(np.ones_like(case.x), case.x, gamma, mean1, var1)
    assert dgamma.dtype == np.float32 and np.concatenate(dxs).dtype == np.float16
    np.testing.assert_allclose(np.concatenate(dxs).astype(float), dx.astype(float), atol=2e-3)
    new_mean, new_var = bnref.sync.update_running_sharded(np.zeros(3, np.float16), np.ones(3, np.float16), mean, var, xs)
    assert new_mean.dtype == np.float16


@pytest.mark.parametrize("x_dtype, gamma_dtype", [("float16", "float64"), ("bfloat16", "float16"),
                                                  ("float32", "float16")])
def test_bad_parameter_combinations_name_the_allowed_ones(x_dtype, gamma_dtype):
    x = np.ones((4, 2), x_dtype)
    allowed = " or ".join(dtype_info(x_dtype).parameters)
    with pytest.raises(TypeError, match=f"gamma has dtype {gamma_dtype} but x has dtype {x_dtype}"):
        bnref.forward_train(x, np.ones(2, gamma_dtype), np.zeros(2, x_dtype))
    if len(dtype_info(x_dtype).parameters) > 1:
        with pytest.raises(TypeError, match=f"parameters must be {allowed}"):
            bnref.backward(x, x, np.ones(2, gamma_dtype), np.zeros(2), np.ones(2))


# ---------------------------------------------------------------- the suite catches a wrong rounding

_BROKEN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import bnref, bnref._kernels
    from bnref.strategies import make_case
    from bnref.testing import check_against_reference

    def truncated(value, fraction_bits):  # toward zero instead of to nearest, ties to even
        nearest = correct(abs(value), fraction_bits)
        above = np.array([nearest], np.uint16).view(np.float16)[0] > abs(value)
        return (0x8000 if value < 0 else 0) | (nearest - 1 if above else nearest)

    correct = bnref._kernels.half_bits_branch_free
    if sys.argv[1] == "truncate":
        bnref._kernels.half_bits_branch_free = truncated
    verdicts = []
    for seed in range(4):
        case = make_case((16, 3, 4), "float16", 1, "well", seed=seed)
        (y,) = [c for c in check_against_reference(bnref, case, quantities=("forward",), raise_on_failure=False)
                if c.quantity == "y"]
        verdicts.append(y.ok)
    print(json.dumps(verdicts))
""")


def _run_without_jit(mode):
    """The y comparison of the suite on four float16 cases, the kernels run as Python (so that
    their narrowing can be replaced): one verdict per case."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", _BROKEN, mode], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return eval(result.stdout.strip().splitlines()[-1].replace("true", "True").replace("false", "False"))


def test_truncating_narrowing_fails_the_y_comparison():
    assert _run_without_jit("correct") == [True] * 4
    assert not any(_run_without_jit("truncate"))
