"""Invariants of batch norm that hold whatever the reference says (docs/derivation.md)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import bnref
from bnref._threads import limit_threads
from bnref.axes import per_channel, reduce_axes
from bnref.dtypes import KERNEL_NAMES, dtype_info, unit_roundoff
from bnref.strategies import bn_cases
from bnref.testing import assert_close, condition_number, scales, tolerance


def _kappa(case):
    return condition_number(case.x, case.channel_axis, case.eps)


@given(case=bn_cases())
def test_normalized_output_has_mean_0_and_variance_var_over_var_plus_eps(case):
    """gamma=1, beta=0: per channel mean(y) = 0 and mean(y^2) = var/(var+eps)."""
    c = case.channels
    one, zero = np.ones(c, case.x.dtype), np.zeros(c, case.x.dtype)
    y, mean, var = bnref.forward_train(case.x, one, zero, case.eps, case.channel_axis)
    y64, axes = y.astype(np.float64), case.axes.reduce
    tol = tolerance("y", case.x.dtype, kappa=_kappa(case), m=case.count) * np.sqrt(case.count)
    assert np.all(np.abs(y64.mean(axis=axes)) <= tol), case.replay()
    np.testing.assert_allclose((y64 ** 2).mean(axis=axes), var / (var + case.eps), rtol=4 * tol, atol=4 * tol,
                               err_msg=case.replay())


@given(case=bn_cases(dtypes=("float64",), conditions=("well", "eps_scale", "minimal")), data=st.data())
def test_shift_invariance(case, data):
    """BN(x + c) = BN(x) for any per-channel shift c (large offsets: cancellation in E[x^2] - E[x]^2)."""
    rng = np.random.default_rng(case.seed)
    magnitude = data.draw(st.sampled_from([1.0, 1e2, 1e4]), label="shift magnitude")
    shift = case.axes.broadcast(rng.uniform(-1, 1, case.channels) * magnitude)
    args = (case.gamma, case.beta, case.eps, case.channel_axis)
    y = bnref.forward_train(case.x, *args)[0]
    shifted = case.x + shift
    y_shifted = bnref.forward_train(shifted, *args)[0]
    # the shift itself rounds x + c: an error of u64 |x + c| per element, amplified like kappa
    kappa = condition_number(shifted, case.channel_axis, case.eps)
    s = scales(case.x, case.gamma, case.beta, case.eps, case.channel_axis)["y"]
    assert_close("y", y_shifted, y, dtype=np.float64, kappa=kappa, m=case.count, scale=s, context=case.replay())


def _exact_power_of_two_scales(x, widest=8):
    """The exponents k in [-widest, widest] for which 2^k x is exact: every scaled value finite and normal
    in x's dtype (a float16 of 7960 times 16 overflows)."""
    info = dtype_info(x.dtype)
    magnitudes = np.abs(x.astype(np.float64))
    nonzero = magnitudes[magnitudes > 0]
    if nonzero.size == 0:
        return -widest, widest
    smallest_normal = info.smallest_subnormal / (2 * info.unit_roundoff)
    highest = min(widest, int(np.floor(np.log2(info.max_finite) - np.log2(nonzero.max()))))
    lowest = max(-widest, int(np.ceil(np.log2(smallest_normal) - np.log2(nonzero.min()))))
    return (lowest, highest) if lowest <= highest else (0, 0)


@given(case=bn_cases(), data=st.data())
def test_scale_invariance_with_eps_scaled(case, data):
    """BN_{eps a^2}(a x) = BN_eps(x) for a > 0 per channel; with a power of two it is exact."""
    lowest, highest = _exact_power_of_two_scales(case.x)
    exponents = data.draw(st.lists(st.integers(lowest, highest), min_size=case.channels, max_size=case.channels),
                          label="log2 scale")
    a = 2.0 ** np.array(exponents, dtype=np.float64)
    args = (case.gamma, case.beta)
    y = bnref.forward_train(case.x, *args, case.eps, case.channel_axis)[0]
    if len(set(exponents)) == 1:  # one scale for all channels: eps scales with it exactly
        x_scaled = (case.x * a[0]).astype(case.x.dtype)
        y_scaled = bnref.forward_train(x_scaled, *args, case.eps * a[0] ** 2, case.channel_axis)[0]
        np.testing.assert_array_equal(y_scaled, y, err_msg=case.replay())
    # per-channel scales with a common eps: compare each channel with its own eps
    x_scaled = (case.x * case.axes.broadcast(a)).astype(case.x.dtype)
    for c in range(case.channels):
        take = lambda arr: np.take(arr, [c], axis=case.channel_axis)  # noqa: E731
        y_c = bnref.forward_train(take(x_scaled), case.gamma[c:c + 1], case.beta[c:c + 1],
                                  case.eps * a[c] ** 2, case.channel_axis)[0]
        np.testing.assert_array_equal(y_c, take(y), err_msg=case.replay())


@given(case=bn_cases(), data=st.data())
def test_permutation_equivariance(case, data):
    """Permuting the batch permutes y and dx; permuting channels (with gamma, beta) permutes everything."""
    rng = np.random.default_rng(case.seed)
    axis, x = case.channel_axis % case.x.ndim, case.x
    batch_axis = 0 if axis != 0 else 1
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    y, mean, var = bnref.forward_train(x, case.gamma, case.beta, case.eps, axis)
    dx, dgamma, dbeta = bnref.backward(dy, x, case.gamma, mean, var, case.eps, axis)
    kw = dict(dtype=x.dtype, kappa=_kappa(case), m=case.count, context=case.replay())
    s = scales(x, case.gamma, case.beta, case.eps, axis, dy)

    perm = rng.permutation(x.shape[batch_axis])
    xp, dyp = np.take(x, perm, axis=batch_axis), np.take(dy, perm, axis=batch_axis)
    yp, mp, vp = bnref.forward_train(xp, case.gamma, case.beta, case.eps, axis)
    dxp = bnref.backward(dyp, xp, case.gamma, mp, vp, case.eps, axis)[0]
    assert_close("y", yp, np.take(y, perm, axis=batch_axis), scale=s["y"], **kw)
    assert_close("dx", dxp, np.take(dx, perm, axis=batch_axis), scale=s["dx"], **kw)

    cperm = rng.permutation(case.channels)
    xc, dyc = np.take(x, cperm, axis=axis), np.take(dy, cperm, axis=axis)
    yc, mc, vc = bnref.forward_train(xc, case.gamma[cperm], case.beta[cperm], case.eps, axis)
    dxc, dgc, dbc = bnref.backward(dyc, xc, case.gamma[cperm], mc, vc, case.eps, axis)
    assert_close("y", yc, np.take(y, cperm, axis=axis), scale=s["y"], **kw)
    assert_close("dx", dxc, np.take(dx, cperm, axis=axis), scale=s["dx"], **kw)
    assert_close("dgamma", dgc, dgamma[cperm], scale=s["dgamma"], **kw)
    assert_close("dbeta", dbc, dbeta[cperm], scale=s["dbeta"], **kw)


@given(case=bn_cases())
def test_backward_identities(case):
    """sum dx = 0 and sum dx*xhat = gamma*invstd*sum(dy*xhat)*eps/(var+eps), per channel."""
    rng = np.random.default_rng(case.seed)
    x, axis = case.x, case.channel_axis
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    _, mean, var = bnref.forward_train(x, case.gamma, case.beta, case.eps, axis)
    dx, dgamma, _ = bnref.backward(dy, x, case.gamma, mean, var, case.eps, axis)
    axes = reduce_axes(x.ndim, axis)
    invstd = 1 / np.sqrt(var + case.eps)
    xhat = (x.astype(np.float64) - per_channel(mean, x.ndim, axis)) * per_channel(invstd, x.ndim, axis)
    s = scales(x, case.gamma, case.beta, case.eps, axis, dy)
    tol = tolerance("dx", x.dtype, kappa=_kappa(case), m=case.count) * s["dx"] * case.count
    dx64 = dx.astype(np.float64)
    sum_dx = dx64.sum(axis=axes)
    assert np.all(np.abs(sum_dx) <= tol), f"sum dx = {sum_dx}, tol {tol:.3g}\n{case.replay()}"
    want = case.gamma.astype(np.float64) * invstd * (dy * xhat).sum(axis=axes) * case.eps / (var + case.eps)
    got = (dx64 * xhat).sum(axis=axes)
    hmax = max(1.0, float(np.max(np.abs(xhat))))
    assert np.all(np.abs(got - want) <= tol * hmax), f"{got} vs {want}\n{case.replay()}"


@given(case=bn_cases())
def test_channels_last_equals_transposed_channels_first(case):
    """The same data laid out channels-last gives the transposed result, forward and backward."""
    rng = np.random.default_rng(case.seed)
    x, axis = case.x, case.channel_axis % case.x.ndim
    last = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    dy_last = np.ascontiguousarray(np.moveaxis(dy, axis, -1))
    y, mean, var = bnref.forward_train(x, case.gamma, case.beta, case.eps, axis)
    y_l, mean_l, var_l = bnref.forward_train(last, case.gamma, case.beta, case.eps, -1)
    dx, dg, db = bnref.backward(dy, x, case.gamma, mean, var, case.eps, axis)
    dx_l, dg_l, db_l = bnref.backward(dy_last, last, case.gamma, mean_l, var_l, case.eps, -1)
    kw = dict(dtype=x.dtype, kappa=_kappa(case), m=case.count, context=case.replay())
    s = scales(x, case.gamma, case.beta, case.eps, axis, dy)
    assert_close("y", np.moveaxis(y_l, -1, axis), y, scale=s["y"], **kw)
    assert_close("dx", np.moveaxis(dx_l, -1, axis), dx, scale=s["dx"], **kw)
    assert_close("dgamma", dg_l, dg, scale=s["dgamma"], **kw)
    assert_close("dbeta", db_l, db, scale=s["dbeta"], **kw)


@given(case=bn_cases())
def test_eval_with_batch_statistics_equals_train(case):
    """forward_eval with the batch's own (mean, var) is bit-identical to forward_train."""
    y, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    y_eval = bnref.forward_eval(case.x, case.gamma, case.beta, mean, var, case.eps, case.channel_axis)
    np.testing.assert_array_equal(y_eval, y)


@given(case=bn_cases(conditions=("constant",)))
def test_constant_channel_gives_beta_exactly(case):
    """A constant channel has var = 0 and y = beta exactly, for any offset (no cancellation, no 0/0)."""
    axes = case.axes.reduce
    x64 = case.x.astype(np.float64)
    constant = np.flatnonzero(x64.max(axis=axes) == x64.min(axis=axes))
    y, mean, var = bnref.forward_train(case.x, case.gamma, case.beta, case.eps, case.channel_axis)
    assert constant.size > 0
    for c in constant:
        assert var[c] == 0.0
        np.testing.assert_array_equal(np.take(y, [c], axis=case.channel_axis), case.beta[c])


@given(value=st.floats(-1e7, 1e7), dtype=st.sampled_from(KERNEL_NAMES),
       m=st.integers(2, 300))
def test_constant_channel_at_large_offsets(value, dtype, m):
    """A constant channel of 1e7 must not saturate to +-1 (https://github.com/pytorch/pytorch/issues/5410)."""
    top = dtype_info(dtype).max_finite  # float16 ends at 65504
    x = np.full((m, 1), min(max(value, -top), top), dtype=dtype)
    y, _, var = bnref.forward_train(x, np.ones(1, dtype), np.full(1, 0.25, dtype))
    assert var[0] == 0.0
    np.testing.assert_array_equal(y, 0.25)


@given(a=st.floats(-100, 100), b=st.floats(-100, 100), eps=st.sampled_from([1e-5, 1e-3]),
       dtype=st.sampled_from(KERNEL_NAMES))
def test_two_values_closed_form(a, b, eps, dtype):
    """m = 2: y = +-sqrt(v/(v+eps)), v = ((a-b)/2)^2, so |y1| = |y2| (the smallest batch: an m - 1 divisor shows)."""
    x = np.array([[a], [b]], dtype=dtype)
    y = bnref.forward_train(x, np.ones(1, dtype), np.zeros(1, dtype), eps)[0].astype(np.float64)
    v = ((float(x[0, 0]) - float(x[1, 0])) / 2) ** 2
    want = np.sqrt(v / (v + eps))
    # |y| <= 1, so the y tolerance of bnref.testing applies as an absolute one
    tol = tolerance("y", dtype, kappa=condition_number(x, 1, eps), m=2)
    np.testing.assert_allclose(np.abs(y[:, 0]), [want, want], rtol=0, atol=tol)
    assert np.sign(y[0, 0]) == -np.sign(y[1, 0]) or a == b


@given(exponent=st.integers(20, 37), dtype=st.sampled_from(KERNEL_NAMES))
def test_huge_values_stay_finite_and_normalized(exponent, dtype):
    """float32 inputs near 1e30 must not overflow the statistics (https://github.com/pytorch/pytorch/issues/162489)."""
    rng = np.random.default_rng(exponent)
    scale = min(10.0 ** exponent, dtype_info(dtype).max_finite / 8)  # float16: values up to about 65504/2
    x = (rng.standard_normal((64, 3)) * scale).astype(dtype)
    y, _, var = bnref.forward_train(x, np.ones(3, dtype), np.zeros(3, dtype))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(var))
    np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1.0, rtol=max(1e-5, 2 * unit_roundoff(dtype)))


def test_results_do_not_depend_on_thread_count():
    """The reduction is split into a fixed number of chunks: 1 and 2 threads agree bit for bit."""
    import numba

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 16, 16)).astype(np.float32) + 5
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    results = []
    for threads in {1, numba.config.NUMBA_NUM_THREADS}:
        with limit_threads(threads, blas=False):
            y, mean, var = bnref.forward_train(x, gamma, beta)
            results.append((y, mean, var, bnref.backward(x, x, gamma, mean, var)[0]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
