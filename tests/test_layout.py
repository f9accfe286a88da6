"""Memory layouts: any strides give the same numbers; outputs follow the input's layout; out= buffers."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bnref
from bnref._layout import layout_of
from bnref.strategies import bn_cases


def _variants(x):
    """The same logical array in other memory layouts."""
    yield "fortran", np.asfortranarray(x)
    yield "channels_last_memory", np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(
        (0, x.ndim - 1) + tuple(range(1, x.ndim - 1)))
    padded = np.zeros(tuple(2 * d for d in x.shape), x.dtype)
    view = padded[tuple(slice(None, None, 2) for _ in x.shape)]
    view[...] = x
    yield "strided", view
    yield "reversed", np.ascontiguousarray(x[::-1])[::-1]


@given(case=bn_cases(min_rank=3, channel_axes=(1,)))
def test_any_strides_give_identical_results(case):
    """Forward and backward do not depend on how x and dy are laid out in memory."""
    rng = np.random.default_rng(case.seed)
    dy = rng.standard_normal(case.x.shape).astype(case.x.dtype)
    args = (case.gamma, case.beta, case.eps, 1)
    y, mean, var = bnref.forward_train(case.x, *args)
    dx = bnref.backward(dy, case.x, case.gamma, mean, var, case.eps, 1)[0]
    for name, xv in _variants(case.x):
        np.testing.assert_array_equal(xv, case.x)
        yv, mv, vv = bnref.forward_train(xv, *args)
        dxv = bnref.backward(np.asfortranarray(dy), xv, case.gamma, mv, vv, case.eps, 1)[0]
        # permuted layouts sum in another order: equal to rounding, not bit for bit
        np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(y))), err_msg=name)
        np.testing.assert_allclose(dxv, dx, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(dx)) + 1), err_msg=name)


def test_channels_last_memory_format_is_streamed_without_copy_and_kept():
    """An NCHW-logical array stored NHWC maps to (N*H*W, C, 1) and y keeps that memory format."""
    x = np.ascontiguousarray(np.random.default_rng(0).standard_normal((2, 5, 6, 3))).transpose(0, 3, 1, 2)
    layout = layout_of(x, 1)
    assert layout.acb == (60, 3, 1)
    assert layout.is_view_of(x)
    y = bnref.forward_train(x, np.ones(3), np.zeros(3))[0]
    assert y.strides == x.strides


@pytest.mark.parametrize("shape, axis, acb", [((4, 3), 1, (4, 3, 1)), ((4, 3, 5, 6), 1, (4, 3, 30)),
                                              ((4, 5, 6, 3), -1, (120, 3, 1)), ((4, 3, 2, 2, 2), 1, (4, 3, 8)),
                                              ((3, 4), 0, (1, 3, 4))])
def test_canonical_views(shape, axis, acb):
    x = np.zeros(shape)
    layout = layout_of(x, axis % x.ndim)
    assert layout.acb == acb
    assert layout.view(x).base is not None  # a view, not a copy


@given(case=bn_cases(), data=st.data())
def test_out_buffers_receive_the_result(case, data):
    """out= gives the same values as a fresh output, returns out itself, in any out layout."""
    rng = np.random.default_rng(case.seed)
    dy = rng.standard_normal(case.x.shape).astype(case.x.dtype)
    args = (case.gamma, case.beta, case.eps, case.channel_axis)
    y, mean, var = bnref.forward_train(case.x, *args)
    dx = bnref.backward(dy, case.x, case.gamma, mean, var, case.eps, case.channel_axis)[0]
    y_eval = bnref.forward_eval(case.x, case.gamma, case.beta, mean, var, case.eps, case.channel_axis)
    fortran = data.draw(st.booleans(), label="fortran-ordered out")
    make = (lambda: np.asfortranarray(np.full_like(case.x, np.nan))) if fortran else \
        (lambda: np.full_like(case.x, np.nan))
    out = make()
    got = bnref.forward_train(case.x, *args, out=out)
    assert got[0] is out
    np.testing.assert_array_equal(out, y)
    out = make()
    assert bnref.backward(dy, case.x, case.gamma, mean, var, case.eps, case.channel_axis, out=out)[0] is out
    np.testing.assert_array_equal(out, dx)
    out = make()
    assert bnref.forward_eval(case.x, case.gamma, case.beta, mean, var, case.eps, case.channel_axis, out=out) is out
    np.testing.assert_array_equal(out, y_eval)


def test_forward_in_place():
    """In-place forward (out=x) is allowed: y depends on x only through finished statistics."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4))
    expected = bnref.forward_train(x, np.ones(4), np.zeros(4))[0]
    buffer = x.copy()
    bnref.forward_train(buffer, np.ones(4), np.zeros(4), out=buffer)
    np.testing.assert_array_equal(buffer, expected)
