"""Bad input raises a clear TypeError/ValueError naming the argument; inputs are never mutated."""
import numpy as np
import pytest

import bnref

X = np.random.default_rng(0).standard_normal((4, 3, 2))
G, B = np.ones(3), np.zeros(3)
_, MEAN, VAR = bnref.forward_train(X, G, B)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: bnref.forward_train(np.ones(3), np.ones(3), np.zeros(3)), ValueError, r"x must have rank >= 2"),
    (lambda: bnref.forward_train(X.astype(int), G, B), TypeError, r"x has an integer dtype"),
    (lambda: bnref.forward_train(X.astype(complex), G, B), TypeError, r"x has a complex dtype"),
    (lambda: bnref.forward_train(X.astype(np.longdouble), G, B), TypeError, r"float32, float64, float16 and bfloat16"),
    (lambda: bnref.forward_train(X.astype(np.float16), G, B), TypeError, r"gamma has dtype float64 but x has dtype "
                                                                          r"float16; with float16 x, parameters must "
                                                                          r"be float16 or float32"),
    (lambda: bnref.forward_eval(X.astype(np.float32), G.astype(np.float32), B.astype(np.float32),
                                MEAN.astype(np.float16), VAR), TypeError,
     r"running_mean has dtype float16 but x has dtype float32; with float32 x, statistics must be float32 or float64"),
    (lambda: bnref.forward_train(X.astype(bool), G, B), TypeError, r"x has a boolean dtype"),
    (lambda: bnref.forward_train(X, G.astype(np.float32), B), TypeError, r"gamma has dtype float32 but x"),
    (lambda: bnref.forward_train(X, np.ones(4), B), ValueError, r"gamma must have shape \(C,\) = \(3,\)"),
    (lambda: bnref.forward_train(X, G, np.zeros((3, 1))), ValueError, r"beta must have shape"),
    (lambda: bnref.forward_train(X, G, B, eps=0.0), ValueError, r"eps must be finite and > 0"),
    (lambda: bnref.forward_train(X, G, B, eps=-1e-5), ValueError, r"eps must be finite and > 0"),
    (lambda: bnref.forward_train(X, G, B, eps=float("nan")), ValueError, r"eps must be finite"),
    (lambda: bnref.forward_train(X, G, B, eps=float("inf")), ValueError, r"eps must be finite"),
    (lambda: bnref.forward_train(X, G, B, eps="1e-5"), TypeError, r"eps must be a real number"),
    (lambda: bnref.forward_train(X, G, B, channel_axis=3), ValueError, r"channel_axis=3 is out of range"),
    (lambda: bnref.forward_train(X, G, B, channel_axis=-4), ValueError, r"channel_axis=-4 is out of range"),
    (lambda: bnref.forward_train(X, G, B, channel_axis=1.0), TypeError, r"channel_axis must be an int"),
    (lambda: bnref.forward_train(X[:1, :, :1], G, B), ValueError, r"more than 1 value per channel"),
    (lambda: bnref.forward_train(X[:0], G, B), ValueError, r"the batch is empty, and training statistics need at least 2"),
    (lambda: bnref.forward_train(np.where(X > 1, np.nan, X), G, B), ValueError, r"not finite in channel"),
    (lambda: bnref.forward_train(np.where(X > 1, np.inf, X), G, B), ValueError, r"not finite in channel"),
    (lambda: bnref.forward_train(X, G, B, out=np.empty((4, 3))), ValueError, r"out must have the shape"),
    (lambda: bnref.forward_train(X, G, B, out=np.empty_like(X, np.float32)), ValueError, r"out must have"),
    (lambda: bnref.forward_train(None, G, B), TypeError, r"x must be an array"),
    (lambda: bnref.forward_eval(X, G, B, MEAN, -VAR), ValueError, r"running_var must be >= 0"),
    (lambda: bnref.forward_eval(X, G, B, MEAN[:2], VAR), ValueError, r"running_mean must have shape"),
    (lambda: bnref.forward_eval(X, G, B, MEAN.astype(int), VAR), TypeError, r"running_mean has an integer"),
    (lambda: bnref.backward(X[:, :2], X, G, MEAN, VAR), ValueError, r"dy must have the shape of x"),
    (lambda: bnref.backward(X.astype(np.float32), X, G, MEAN, VAR), TypeError, r"dy has dtype float32"),
    (lambda: bnref.backward(X, X, G, MEAN[:1], VAR), ValueError, r"mean must have shape"),
    (lambda: bnref.backward(X, X, G, MEAN, -VAR), ValueError, r"var must be >= 0"),
    (lambda: bnref.backward(np.where(X > 1, np.nan, X), X, G, MEAN, VAR), ValueError, r"sum\(dy\)"),
    (lambda: bnref.double_backward(X[:1], None, None, X, X, G, MEAN, VAR), ValueError, r"ddx must have the shape"),
    (lambda: bnref.double_backward(None, np.ones(2), None, X, X, G, MEAN, VAR), ValueError, r"ddgamma must"),
    (lambda: bnref.update_running(MEAN, VAR, MEAN, VAR, 1), ValueError, r"count must be >= 2"),
    (lambda: bnref.update_running(MEAN, VAR, MEAN, VAR, 2.5), TypeError, r"count must be an int"),
    (lambda: bnref.update_running(MEAN, VAR, MEAN, VAR, 4, momentum=1.5), ValueError, r"momentum must lie"),
    (lambda: bnref.update_running(MEAN, VAR[:2], MEAN, VAR, 4), ValueError, r"running_var must have shape"),
    (lambda: bnref.update_running(MEAN[None], VAR, MEAN, VAR, 4), ValueError, r"running_mean must have shape"),
])
def test_bad_input_raises_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_read_only_out_is_refused():
    out = np.empty_like(X)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        bnref.forward_train(X, G, B, out=out)


@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inputs_are_not_mutated(channel_axis, dtype):
    rng = np.random.default_rng(1)
    arrays = {name: rng.standard_normal(shape).astype(dtype)
              for name, shape in [("x", (5, 3, 4)), ("dy", (5, 3, 4)), ("ddx", (5, 3, 4))]}
    c = arrays["x"].shape[channel_axis]
    arrays.update({n: rng.uniform(0.5, 1.5, c).astype(dtype) for n in ("gamma", "beta", "ddg", "ddb", "rm", "rv")})
    copies = {k: v.copy() for k, v in arrays.items()}
    a = arrays
    y, mean, var = bnref.forward_train(a["x"], a["gamma"], a["beta"], 1e-5, channel_axis)
    mean_copy, var_copy = mean.copy(), var.copy()
    bnref.forward_eval(a["x"], a["gamma"], a["beta"], a["rm"], a["rv"], 1e-5, channel_axis)
    bnref.backward(a["dy"], a["x"], a["gamma"], mean, var, 1e-5, channel_axis)
    bnref.backward_eval(a["dy"], a["x"], a["gamma"], a["rm"], a["rv"], 1e-5, channel_axis)
    bnref.double_backward(a["ddx"], a["ddg"], a["ddb"], a["dy"], a["x"], a["gamma"], mean, var, 1e-5, channel_axis)
    bnref.update_running(a["rm"], a["rv"], mean, var, 20)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k], err_msg=f"{k} was modified")
    np.testing.assert_array_equal(mean, mean_copy)
    np.testing.assert_array_equal(var, var_copy)
