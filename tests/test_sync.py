"""bnref.sync: a batch split into shards normalizes like the whole batch.

For every split of a batch into shards -- uneven, with shards of 1 and 0 samples, each in its own
memory layout -- the sharded forward, backward and running update equal bnref.forward_train,
bnref.backward and bnref.update_running on the concatenated batch within the kappa-aware
tolerances of bnref.testing; in float64 the relative error is below 1e-12 (times kappa, the
condition of the batch, which bounds any float64 computation of x - mean).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bnref
from bnref import sync
from bnref.strategies import bn_cases, make_case, shard_sizes
from bnref.sync._reduce import merge_moments, sum_parts
from bnref.sync.testing import compare_with_unsharded, cotangents, run_sharded, split
from bnref.testing import condition_number
from tests.mutants import MUTANTS, AsSync, CorrectBN

#: accepted float64 error relative to the quantity's scale, per unit of kappa
ACCEPTANCE_FLOAT64 = 1e-12


def _shards(case, sizes, layouts):
    """case.x and its dy cut into shards; shard i stored Fortran-order when layouts[i]."""
    reorder = lambda arrays: [np.asfortranarray(a) if f else a for a, f in zip(arrays, layouts)]  # noqa: E731
    return reorder(split(case.x, sizes)), reorder(split(cotangents(case).dy, sizes))


def _assert_ok(comparisons, case, sizes):
    failed = [str(c) for c in comparisons if not c.ok]
    assert not failed, "\n".join(failed) + f"\nsizes={sizes}\ncase: {case.describe()}\nreplay: {case.replay()}"


@given(case=bn_cases(), data=st.data())
def test_sharded_equals_unsharded(case, data):
    """Every split (uneven, shards of 1 and 0, mixed memory layouts): y, mean, var, dx, dgamma,
    dbeta and the running statistics (global m/(m-1): PyTorch #22192) equal the whole batch's."""
    sizes = data.draw(shard_sizes(case.x.shape[0]), label="shard sizes")
    layouts = data.draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)), label="fortran")
    xs, dys = _shards(case, sizes, layouts)
    result = run_sharded(sync, case, xs, dys)
    comparisons = compare_with_unsharded(case, sizes, result)
    _assert_ok(comparisons, case, sizes)
    for y, x in zip(result["ys"], xs):
        assert y.dtype == x.dtype and y.shape == x.shape and y.flags.f_contiguous == x.flags.f_contiguous
    if case.x.dtype == np.float64:
        kappa = condition_number(case.x, case.channel_axis, case.eps)
        worst = max(comparisons, key=lambda c: c.relative_error)
        assert worst.relative_error < ACCEPTANCE_FLOAT64 * kappa, f"{worst}\nkappa={kappa:.3g} sizes={sizes}\n" \
                                                                  f"replay: {case.replay()}"


@given(case=bn_cases(max_size=512), data=st.data())
def test_shard_order_and_empty_shards_change_no_bit(case, data):
    """The reduction is canonical: permuting the shards or inserting empty ones gives the same bits
    (so results do not depend on which process holds which shard)."""
    sizes = data.draw(shard_sizes(case.x.shape[0]), label="shard sizes")
    xs, dys = _shards(case, sizes, [False] * len(sizes))
    base = run_sharded(sync, case, xs, dys)
    perm = data.draw(st.permutations(range(len(sizes))), label="permutation")
    where = data.draw(st.integers(0, len(sizes)), label="empty shard position")
    xs2, dys2 = [xs[i] for i in perm], [dys[i] for i in perm]
    xs2.insert(where, case.x[:0])
    dys2.insert(where, dys[0][:0])
    other = run_sharded(sync, case, xs2, dys2)
    for key in ("mean", "var", "dgamma", "dbeta", "running_mean", "running_var"):
        np.testing.assert_array_equal(other[key], base[key], err_msg=f"{key}; sizes={sizes} perm={perm}")
    for i, j in enumerate(perm):
        k = i + (i >= where)
        np.testing.assert_array_equal(other["ys"][k], base["ys"][j], err_msg=f"ys[{j}]")
        np.testing.assert_array_equal(other["dxs"][k], base["dxs"][j], err_msg=f"dxs[{j}]")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_channels_last_with_65_channels(dtype):
    """apex #1768: channels-last sync BN with C = 65 and H = W = 100 gave wrong statistics
    (correct when small). Here the shards run the parallel kernels."""
    case = make_case((2, 100, 100, 65), dtype, -1, "offset", seed=17)
    for sizes in [(1, 1), (2, 0), (0, 1, 0, 1)]:
        xs, dys = _shards(case, sizes, [False] * len(sizes))
        _assert_ok(compare_with_unsharded(case, sizes, run_sharded(sync, case, xs, dys)), case, sizes)


def test_a_shard_of_one_sample_is_fine():
    """PyTorch #36865 / apex #262: a local count of 1 with a global count > 1 raised
    'Expected more than 1 value per channel'; here it is the same batch norm."""
    x = np.array([[1.0, 10.0], [2.0, 20.0], [6.0, 30.0]])
    gamma, beta = np.ones(2), np.zeros(2)
    ys, mean, var = sync.forward_train_sharded([x[:1], x[1:2], x[2:], x[:0]], gamma, beta)
    np.testing.assert_allclose(mean, [3.0, 20.0], rtol=1e-15)
    np.testing.assert_allclose(var, [14 / 3, 200 / 3], rtol=1e-15)
    np.testing.assert_allclose(np.concatenate(ys), bnref.forward_train(x, gamma, beta)[0], rtol=1e-14)


def test_running_variance_uses_the_global_count():
    """PyTorch #22192: shards (1, 3): the running var takes m/(m-1) = 4/3, not the local 3/2 or 1/0."""
    x = np.array([[0.0], [1.0], [2.0], [5.0]])
    xs = [x[:1], x[1:]]
    _, mean, var = sync.forward_train_sharded(xs, np.ones(1), np.zeros(1))
    new_mean, new_var = sync.update_running_sharded(np.zeros(1), np.ones(1), mean, var, xs, momentum=1.0)
    np.testing.assert_allclose(new_mean, [2.0], rtol=1e-15)
    np.testing.assert_allclose(new_var, [np.var(x) * 4 / 3], rtol=1e-15)
    assert sync.global_count(xs) == 4 and sync.moments_sharded(xs).count == 4


@pytest.mark.parametrize("xs, message", [
    ([np.ones((1, 3))], "more than 1 value per channel"),
    ([np.ones((1, 3)), np.ones((0, 3))], "more than 1 value per channel"),
    ([np.ones((0, 3, 2))] * 3, "0 value(s)"),
    ([np.ones((2, 3)), np.ones((2, 4))], "xs[1] has shape (2, 4)"),
    ([], "at least one shard"),
])
def test_too_few_values_or_mismatched_shards_raise_value_error(xs, message):
    with pytest.raises(ValueError) as info:
        sync.forward_train_sharded(xs, np.ones(3), np.zeros(3))
    assert message in str(info.value)


def test_bad_types_raise_type_error_naming_the_argument():
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="xs must be a list of arrays"):
        sync.forward_train_sharded(x, np.ones(3), np.zeros(3))
    with pytest.raises(TypeError, match=r"xs\[1\] has dtype float32"):
        sync.forward_train_sharded([x, x.astype(np.float32)], np.ones(3), np.zeros(3))
    _, mean, var = sync.forward_train_sharded([x, x], np.ones(3), np.zeros(3))
    with pytest.raises(TypeError, match="dys must be a list of 2 arrays"):
        sync.backward_sharded([x], [x, x], np.ones(3), mean, var)
    with pytest.raises(ValueError, match=r"dys\[1\] must have the shape of x"):
        sync.backward_sharded([x, x[:2]], [x, x], np.ones(3), mean, var)


def test_inputs_are_not_modified():
    case = make_case((5, 3, 2), "float64", 1, "well", seed=3)
    xs, dys = _shards(case, (2, 0, 3), [False, False, True])
    copies = [a.copy() for a in xs + dys]
    run_sharded(sync, case, xs, dys)
    for before, after in zip(copies, xs + dys):
        np.testing.assert_array_equal(before, after)


# --------------------------------------------------------------------------- the reductions


@given(parts=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8), data=st.data())
def test_sum_parts_is_permutation_invariant_and_accurate(parts, data):
    values = np.array(parts).reshape(-1, 1)
    perm = data.draw(st.permutations(range(len(parts))), label="permutation")
    total = sum_parts(values)
    assert total.tobytes() == sum_parts(values[list(perm)]).tobytes()
    # zeros add exactly, up to the sign of a zero total (IEEE: -0.0 + 0.0 is +0.0); adding +0.0
    # maps -0.0 to +0.0 and leaves every other value's bits alone
    padded = sum_parts(np.concatenate([values, np.zeros((2, 1))]))
    assert (total + 0.0).tobytes() == (padded + 0.0).tobytes()
    # a sum of n terms in increasing magnitude: error <= (n-1) u sum|v|
    exact = float(np.sum(np.array(parts, dtype=np.longdouble)))
    assert abs(total[0] - exact) <= len(parts) * 2**-53 * np.sum(np.abs(values))


def test_merge_moments_of_three_shards_is_the_two_pass_result():
    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((n, 2)) * 3 + 1e3 for n in (1, 5, 7)]
    count = np.array([[len(s)] * 2 for s in shards], dtype=float)
    mean = np.array([s.mean(axis=0) for s in shards])
    m2 = np.array([((s - s.mean(axis=0)) ** 2).sum(axis=0) for s in shards])
    n, mu, m2_total = merge_moments(count, mean, m2)
    whole = np.concatenate(shards)
    np.testing.assert_array_equal(n, [13, 13])
    np.testing.assert_allclose(mu, whole.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(m2_total, ((whole - whole.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12)


# --------------------------------------------------------------------------- meta-tests: broken sync BN must fail


#: the catalogue's sharded mutants (tests/mutants), with bnref.sync's signatures
SYNC_MUTANTS = [m for m in MUTANTS if m.sync_breaks]


def test_the_catalogue_base_passes_the_comparison():
    case = make_case((6, 3, 4), "float64", 1, "well", seed=5)
    for sizes in [(2, 4), (1, 0, 5)]:
        xs, dys = _shards(case, sizes, [False] * len(sizes))
        _assert_ok(compare_with_unsharded(case, sizes, run_sharded(AsSync(CorrectBN), case, xs, dys)), case, sizes)


@pytest.mark.parametrize("broken", SYNC_MUTANTS, ids=lambda m: m.__name__)
def test_broken_sync_batch_norm_fails_the_comparison(broken):
    case = make_case((6, 3, 4), "float64", 1, "well", seed=5)
    sizes = (2, 4)
    xs, dys = _shards(case, sizes, [False, False])
    failed = {c.quantity for c in compare_with_unsharded(case, sizes, run_sharded(AsSync(broken), case, xs, dys))
              if not c.ok}
    assert set(broken.sync_breaks) <= failed, f"{broken.__name__} ({broken.__doc__.splitlines()[0]}) " \
                                              f"got only {sorted(failed)} wrong"

