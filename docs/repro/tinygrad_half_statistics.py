"""tinygrad computes the batch statistics of half-precision x in the half type: x is centred with
its mean rounded to float16, and the variance is taken around that rounded mean.

Run: ``DEV=CPU python docs/repro/tinygrad_half_statistics.py`` (NumPy and tinygrad only; tinygrad's
CPU device needs clang).

``nn.BatchNorm`` computes ``mean = x.mean(axes)``, which tinygrad sums in float32 and casts back to
x's dtype, then ``var = ((x - mean)**2).mean(axes)`` and ``x.batchnorm(...)``, every elementwise
step in x's dtype. The weight's dtype does not matter: with tinygrad's own float32 ``weight`` and
``bias`` the mean is still a float16 tensor (y then comes out in float32). The error in x - mean
is up to u |mean| (u = 2^-11), u * kappa in units of the standard deviation: what an all-half
computation of x - mean loses. For the channel [120.8125, 120.75] (mean 120.78125, half-way
between two float16 numbers; it rounds to 120.75) the float16 result is

    y = (x - half(mean)) / sqrt(mean((x - half(mean))^2) + eps) = [1.41, 0]

where the exact one is [0.995, -0.995]; the backward uses the same statistics. Casting x to
float32 before the layer gives the exact result. It prints (dy = [0.5, -1.25]):

    float16 weight        y = [1.4102, 0.0]   dx = [8.5234, -19.75]
    float32 weight        y = [1.4102, 0.0]   dx = [8.5234, -19.75]
    x cast to float32     y = [0.9949, -0.9949]   dx = [0.2824, -0.2824]
    exact                 y = [0.9949, -0.9949]   dx = [0.2824, -0.2824]
    rounded-mean model    y = [1.4106, 0.0]   dx = [8.5211, -19.7485]

tinygrad's float16 results are the rounded-mean model's to float16's rounding. This is a choice of
precision, not a defect: PyTorch with half parameters does the same (its ``torch_half_rounded_mean``
reproduction); keeping the statistics in float32 is the remedy.
"""
import os

os.environ.setdefault("DEV", "CPU")

import numpy as np  # noqa: E402
from tinygrad import Tensor, dtypes, nn  # noqa: E402
from tinygrad.helpers import Context  # noqa: E402

EPS = 1e-5
#: one channel of two adjacent float16 values whose exact mean lies half-way between two float16 numbers
X = np.array([[120.8125], [120.75]])
DY = np.array([[0.5], [-1.25]])


def batch_norm(x, param_dtype):
    """(y, dx) of ``nn.BatchNorm(1)`` in training, gamma = 1 and beta = 0 in ``param_dtype``, as float64."""
    x_, dy_ = Tensor(x).realize(), Tensor(DY).realize()
    bn = nn.BatchNorm(1, eps=EPS)
    bn.weight, bn.bias = Tensor.ones(1, dtype=param_dtype).contiguous(), Tensor.zeros(1, dtype=param_dtype).contiguous()
    with Context(TRAINING=1):
        y = bn(x_)
        (dx,) = y.gradient(x_, gradient=dy_.cast(y.dtype))
        return y.numpy().astype(np.float64).ravel(), dx.numpy().astype(np.float64).ravel()


def models():
    """y and dx (float64) of the exact batch norm and of the rounded-mean model."""
    mean = X.mean(axis=0)
    rounded = mean.astype(np.float16).astype(np.float64)

    def y_dx(centre):
        xc = X - centre
        invstd = 1 / np.sqrt((xc ** 2).mean(axis=0) + EPS)
        xhat = xc * invstd
        dx = invstd * (DY - DY.mean(axis=0) - xhat * (DY * xhat).mean(axis=0))
        return xhat.ravel(), dx.ravel()

    return {"exact": y_dx(mean), "rounded-mean model": y_dx(rounded)}


def results():
    """{name: (y, dx)} for tinygrad in float16 with float16 and float32 parameters, x cast to float32,
    and the two models."""
    x16 = X.astype(np.float16)
    assert np.array_equal(x16.astype(np.float64), X), "the inputs are exact in float16"
    return {"float16 weight": batch_norm(x16, dtypes.float16),
            "float32 weight": batch_norm(x16, dtypes.float32),
            "x cast to float32": batch_norm(x16.astype(np.float32), dtypes.float32),
            **models()}


def main():
    from importlib.metadata import version

    print(f"tinygrad {version('tinygrad')}; x = {X.ravel().tolist()} (float16), eps = {EPS}, dy = {DY.ravel().tolist()}")
    for name, (y, dx) in results().items():
        print(f"  {name:20}  y = {np.round(y, 4).tolist()}   dx = {np.round(dx, 4).tolist()}")


if __name__ == "__main__":
    main()
