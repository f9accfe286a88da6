"""Inputs with no values: empty in, empty out wherever the math allows, a clear error where not.

Inference (forward_eval, backward_eval) is elementwise with fixed statistics, so any empty x
gives an empty output and zero sums. Training takes statistics per channel: with no channel
there is nothing to normalize (empty statistics); a channel with no value has no mean, which
is a ValueError that says the batch is empty.
"""
import numpy as np
import pytest

import bnref

# (shape, channel_axis): x with channels but no values per channel
NO_VALUES = [((2, 3, 0, 5), 1), ((0, 3), 1), ((0, 3), -1), ((2, 0, 3), -1), ((0, 4, 2, 2), -1)]
# x with no channels (the other sides may hold values)
NO_CHANNELS = [((4, 0), 1), ((4, 0), -1), ((2, 0, 5), 1), ((3, 4, 0), -1), ((0, 0), 1)]
DTYPES = ["float32", "float64"]


def _arrays(shape, channel_axis, dtype):
    """x, dy, ddx of ``shape`` and per-channel gamma, beta, running stats (all the caller's)."""
    c = shape[channel_axis]
    rng = np.random.default_rng(0)
    return {"x": np.empty(shape, dtype), "dy": np.empty(shape, dtype), "ddx": np.empty(shape, dtype),
            "gamma": rng.uniform(0.5, 1.5, c).astype(dtype), "beta": rng.standard_normal(c).astype(dtype),
            "rm": rng.standard_normal(c), "rv": rng.uniform(0.5, 2.0, c)}


def _assert_untouched(arrays, copies):
    for name, value in arrays.items():
        np.testing.assert_array_equal(value, copies[name], err_msg=f"{name} was modified")


def _assert_empty_like(result, x):
    assert isinstance(result, np.ndarray)
    assert result.shape == x.shape and result.dtype == x.dtype and result.size == 0


def _assert_zero_sums(sums, channels, dtype):
    for s in sums:
        assert s.shape == (channels,) and s.dtype == dtype
        np.testing.assert_array_equal(s, np.zeros(channels, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, channel_axis", NO_VALUES + NO_CHANNELS)
def test_eval_of_an_empty_x_is_empty_with_zero_sums(shape, channel_axis, dtype):
    a = _arrays(shape, channel_axis, dtype)
    copies = {k: v.copy() for k, v in a.items()}
    c = shape[channel_axis]
    y = bnref.forward_eval(a["x"], a["gamma"], a["beta"], a["rm"], a["rv"], 1e-5, channel_axis)
    _assert_empty_like(y, a["x"])
    dx, dgamma, dbeta = bnref.backward_eval(a["dy"], a["x"], a["gamma"], a["rm"], a["rv"], 1e-5, channel_axis)
    _assert_empty_like(dx, a["x"])
    _assert_zero_sums((dgamma, dbeta), c, a["x"].dtype)
    _assert_untouched(a, copies)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, channel_axis", NO_VALUES + NO_CHANNELS)
def test_eval_of_an_empty_x_fills_out(shape, channel_axis, dtype):
    a = _arrays(shape, channel_axis, dtype)
    out = np.empty_like(a["x"])
    assert bnref.forward_eval(a["x"], a["gamma"], a["beta"], a["rm"], a["rv"], 1e-5, channel_axis, out=out) is out
    dx, _, _ = bnref.backward_eval(a["dy"], a["x"], a["gamma"], a["rm"], a["rv"], 1e-5, channel_axis, out=out)
    assert dx is out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, channel_axis", NO_CHANNELS)
def test_training_without_channels_gives_empty_statistics(shape, channel_axis, dtype):
    a = _arrays(shape, channel_axis, dtype)
    copies = {k: v.copy() for k, v in a.items()}
    out = np.empty_like(a["x"])
    y, mean, var = bnref.forward_train(a["x"], a["gamma"], a["beta"], 1e-5, channel_axis, out=out)
    assert y is out
    for stat in (mean, var):
        assert stat.shape == (0,) and stat.dtype == np.float64
    dx, dgamma, dbeta = bnref.backward(a["dy"], a["x"], a["gamma"], mean, var, 1e-5, channel_axis)
    _assert_empty_like(dx, a["x"])
    _assert_zero_sums((dgamma, dbeta), 0, a["x"].dtype)
    gx, ggamma, gdy = bnref.double_backward(a["ddx"], a["gamma"], a["beta"], a["dy"], a["x"], a["gamma"],
                                            mean, var, 1e-5, channel_axis)
    _assert_empty_like(gx, a["x"])
    _assert_empty_like(gdy, a["x"])
    _assert_zero_sums((ggamma,), 0, a["x"].dtype)
    _assert_untouched(a, copies)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, channel_axis", NO_VALUES)
def test_training_on_an_empty_batch_says_so(shape, channel_axis, dtype):
    a = _arrays(shape, channel_axis, dtype)
    copies = {k: v.copy() for k, v in a.items()}
    c = shape[channel_axis]
    mean, var = np.zeros(c), np.ones(c)
    message = r"the batch is empty, and training statistics need at least 2 values per channel.*0 value"
    with pytest.raises(ValueError, match=message):
        bnref.forward_train(a["x"], a["gamma"], a["beta"], 1e-5, channel_axis)
    with pytest.raises(ValueError, match=message):
        bnref.backward(a["dy"], a["x"], a["gamma"], mean, var, 1e-5, channel_axis)
    with pytest.raises(ValueError, match=message):
        bnref.double_backward(a["ddx"], None, None, a["dy"], a["x"], a["gamma"], mean, var, 1e-5, channel_axis)
    _assert_untouched(a, copies)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_a_single_value_per_channel_keeps_its_own_message(channel_axis):
    x = np.ones((1, 3)) if channel_axis == 1 else np.ones((1, 1, 3))
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training.*1 value"):
        bnref.forward_train(x, np.ones(3), np.zeros(3), 1e-5, channel_axis)


def test_an_empty_shard_set_says_the_batch_is_empty():
    from bnref import sync

    with pytest.raises(ValueError, match=r"the batch is empty.*0 value"):
        sync.forward_train_sharded([np.ones((0, 3)), np.ones((0, 3))], np.ones(3), np.zeros(3))


def test_shards_without_channels_give_empty_statistics():
    from bnref import sync

    ys, mean, var = sync.forward_train_sharded([np.ones((3, 0)), np.ones((0, 0))], np.ones(0), np.zeros(0))
    assert [y.shape for y in ys] == [(3, 0), (0, 0)]
    assert mean.shape == var.shape == (0,)
    assert sync.moments_sharded([np.ones((3, 0)), np.ones((2, 0))]).count == 5
