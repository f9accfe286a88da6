"""Meta-tests: the strategies generate what their docstrings promise."""
import numpy as np
import pytest
from hypothesis import find, given
from hypothesis import strategies as st

from bnref import strategies as bst
from bnref.axes import reduce_axes
from bnref.dtypes import KERNEL_DTYPES, KERNEL_NAMES
from bnref.testing import condition_number


@given(axis=bst.channel_axes(), data=st.data())
def test_shapes_have_rank_and_count(axis, data):
    shape = data.draw(bst.shapes(min_rank=2, max_rank=5, channel_axis=axis), label="shape")
    assert 2 <= len(shape) <= 5
    assert np.prod(shape) // shape[axis] >= 2
    assert np.prod(shape) <= 2048 * 2


@given(case=bst.bn_cases())
def test_cases_are_consistent_and_replayable(case):
    assert case.x.dtype in KERNEL_DTYPES
    assert case.gamma.shape == case.beta.shape == (case.channels,)
    assert case.gamma.dtype == case.beta.dtype == case.x.dtype
    assert np.all(np.isfinite(case.x)) and case.eps > 0
    again = bst.make_case(case.shape, case.x.dtype, case.channel_axis, case.condition, case.seed, case.eps)
    np.testing.assert_array_equal(again.x, case.x)
    assert "bnref.strategies.make_case(" in case.replay() and str(case.x.shape) in case.describe()


@given(case=bst.bn_cases(conditions=("minimal",)))
def test_minimal_batches_have_two_values_per_channel(case):
    assert case.count == 2


@given(case=bst.bn_cases(conditions=("constant",)))
def test_constant_condition_has_a_constant_channel(case):
    axes = case.axes.reduce
    assert np.any(case.x.max(axis=axes) == case.x.min(axis=axes))


@given(case=bst.bn_cases(conditions=("offset",), dtypes=("float64",)))
def test_offset_condition_is_ill_conditioned(case):
    assert condition_number(case.x, case.channel_axis, case.eps) >= 50


@given(case=bst.bn_cases(conditions=("tiny_spread",), dtypes=("float64",)))
def test_tiny_spread_has_variance_far_below_eps_scale(case):
    axes = case.axes.reduce
    if case.count > 1:
        assert np.all(case.x.std(axis=axes) <= 1e-3)


@given(case=bst.bn_cases())
def test_case_axes_are_every_axis_but_the_channel_axis(case):
    assert case.axes.reduce == reduce_axes(case.x.ndim, case.channel_axis)
    assert case.channel_axis % case.x.ndim not in case.axes.reduce
    assert case.count * case.channels == case.x.size
    assert case.axes.broadcast(case.gamma).shape[case.channel_axis] == case.channels


def test_default_dtypes_are_the_table_shrinking_to_the_widest():
    for name in KERNEL_NAMES:
        assert find(bst.dtypes(), lambda d, name=name: d == np.dtype(name)) == np.dtype(name)
    assert find(bst.dtypes(), lambda d: True).itemsize == max(np.dtype(n).itemsize for n in KERNEL_NAMES)


def test_bad_arguments_are_refused_eagerly():
    with pytest.raises(TypeError, match="int32.*float32, float64"):
        bst.dtypes(["int32"])
    with pytest.raises(ValueError, match="unknown conditions"):
        bst.conditions(["nope"])
    with pytest.raises(ValueError, match="unknown condition"):
        bst.make_case((2, 3), "float64", 1, "nope", 0)


@given(data=st.data(), channels=st.integers(1, 6), dtype=st.sampled_from(KERNEL_NAMES))
def test_gammas_and_betas_are_per_channel_vectors_in_range(data, channels, dtype):
    gamma = data.draw(bst.gammas(channels, dtype, min_magnitude=0.5, max_magnitude=2.0), label="gamma")
    beta = data.draw(bst.betas(channels, dtype, max_magnitude=3.0), label="beta")
    assert gamma.shape == beta.shape == (channels,) and gamma.dtype == beta.dtype == np.dtype(dtype)
    assert np.all((np.abs(gamma) >= 0.5) & (np.abs(gamma) <= 2.0)) and np.all(np.abs(beta) <= 3.0)


@given(eps=bst.epsilons())
def test_epsilons_are_positive_and_finite(eps):
    assert 0 < eps <= 0.5
