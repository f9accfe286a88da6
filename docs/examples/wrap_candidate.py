"""Wrapping your own batch norm as an oracle candidate (docs/oracle.md includes this file)."""
import numpy as np
from autograd import make_vjp  # any autodiff works; autograd is a bnref dependency

import bnref.oracle


def my_batch_norm(x, weight, bias, eps):
    """Somebody's own NCHW batch norm, written in NumPy: the function under test."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)


class MyCandidate:
    name = "my-batch-norm"
    dtypes = ("float32", "float64")
    channel_axis = 1                      # my_batch_norm takes NCHW

    def forward_train(self, x, gamma, beta, eps):
        return my_batch_norm(x, gamma, beta, eps).astype(x.dtype)

    def backward(self, x, gamma, beta, eps, dy):
        f = lambda x, g, b: my_batch_norm(x, g, b, eps)  # noqa: E731
        vjp, _ = make_vjp(f, argnum=(0, 1, 2))(x, gamma, beta)
        return tuple(np.asarray(g, dtype=x.dtype) for g in vjp(dy))


if __name__ == "__main__":
    report = bnref.oracle.check(MyCandidate(), profile="quick")
    print(report.render())
    assert report.ok
