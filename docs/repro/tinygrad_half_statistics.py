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

bfloat16 (with a clang that compiles it, e.g. ``CC=clang-19``) does the same: x = [121, 120.5]
gives y = [0, -1.4141], the model's [0, -1.4142], where the exact one is [1.0, -1.0].
tinygrad's half results are the rounded-mean model's to the half type's rounding. This is a choice of
precision, not a defect: PyTorch with half parameters does the same (its ``torch_half_rounded_mean``
reproduction); keeping the statistics in float32 is the remedy.

The running statistics, kept in x's dtype, are updated in it too: after the three steps of
:data:`STEPS` (momentum 0.1, from 0.5 and 2) each of the running mean and variance is off the exact
moving average by more than the half type's rounding of it (float16: the mean by 1.4 ulp; bfloat16,
with a clang that compiles it: the variance by 2 ulp): the rounding of every step adds up.
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


def to_bfloat16(a):
    """``a`` rounded to the nearest bfloat16 (ties to even), as float64."""
    bits = np.asarray(a, np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return bits.view(np.float32).astype(np.float64)


def models(x=X, rounding=lambda a: np.asarray(a).astype(np.float16).astype(np.float64)):
    """y and dx (float64) of the exact batch norm and of the rounded-mean model (``rounding`` the half type's)."""
    mean = x.mean(axis=0)
    rounded = rounding(mean)

    def y_dx(centre):
        xc = x - centre
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


#: the bfloat16 case: 121 and 120.5, whose mean 120.75 lies half-way between two bfloat16 numbers
X_BF16 = np.array([[121.0], [120.5]])


def bfloat16_results():
    """{name: y} for bfloat16 x and weight (a clang with __bf16 needed), and the two models."""
    x_ = Tensor(X_BF16.astype(np.float32)).cast(dtypes.bfloat16).realize()
    bn = nn.BatchNorm(1, eps=EPS)
    bn.weight, bn.bias = (Tensor([v]).cast(dtypes.bfloat16).contiguous().realize() for v in (1.0, 0.0))
    with Context(TRAINING=1):
        y = bn(x_).numpy().astype(np.float64).ravel()
    return {"bfloat16 weight": y, **{name: yd[0] for name, yd in models(X_BF16, to_bfloat16).items()}}


MOMENTUM = 0.1
#: three training batches of one channel, exact in float16 and bfloat16, from running statistics 0.5 and 2
STEPS = [np.array([[1.0], [1.5]]), np.array([[-2.0], [-1.0]]), np.array([[0.25], [3.0]])]
START = (0.5, 2.0)


def running_results(dtype):
    """{"tinygrad": (mean, var), "exact": (mean, var)} after :data:`STEPS`, float64; ``dtype`` a tinygrad dtype."""
    def half(a):
        return Tensor(np.asarray(a, np.float32)).cast(dtype).contiguous().realize()

    bn = nn.BatchNorm(1, momentum=MOMENTUM)
    bn.weight, bn.bias, bn.running_mean, bn.running_var = half([1.0]), half([0.0]), half([START[0]]), half([START[1]])
    mean, var = np.array([START[0]]), np.array([START[1]])
    for x in STEPS:
        with Context(TRAINING=1):
            bn(half(x)).realize()
        Tensor.realize(bn.running_mean, bn.running_var)
        mean = (1 - MOMENTUM) * mean + MOMENTUM * x.mean(axis=0)
        var = (1 - MOMENTUM) * var + MOMENTUM * x.var(axis=0, ddof=1)  # unbiased, as tinygrad's
    got = tuple(t.numpy().astype(np.float64) for t in (bn.running_mean, bn.running_var))
    return {"tinygrad": got, "exact": (mean, var)}


#: the spacing of each half type's numbers in [1, 2)
ULP_AT_1 = {dtypes.float16: 2.0 ** -10, dtypes.bfloat16: 2.0 ** -7}


def ulps_off(dtype):
    """{"mean": ..., "var": ...}: how far tinygrad's running statistics are from the exact ones, in ulps of ``dtype``."""
    r = running_results(dtype)
    off = {}
    for i, name in enumerate(("mean", "var")):
        got, exact = r["tinygrad"][i][0], r["exact"][i][0]
        off[name] = abs(got - exact) / (ULP_AT_1[dtype] * 2.0 ** np.floor(np.log2(abs(exact))))
    return off


def main():
    from importlib.metadata import version

    print(f"tinygrad {version('tinygrad')}; x = {X.ravel().tolist()} (float16), eps = {EPS}, dy = {DY.ravel().tolist()}")
    for name, (y, dx) in results().items():
        print(f"  {name:20}  y = {np.round(y, 4).tolist()}   dx = {np.round(dx, 4).tolist()}")
    try:
        for name, y in bfloat16_results().items():
            print(f"  bfloat16 x = {X_BF16.ravel().tolist()}: {name:20} y = {np.round(y, 4).tolist()}")
    except Exception as exc:  # bfloat16 needs a clang that knows __bf16 (clang 17 or later)
        print(f"  bfloat16: not run ({type(exc).__name__})")
    print(f"running statistics after {len(STEPS)} steps, momentum {MOMENTUM}, from {START}")
    for dtype in (dtypes.float16, dtypes.bfloat16):
        try:
            off = ulps_off(dtype)
        except Exception as exc:  # bfloat16 needs a clang that knows __bf16 (clang 17 or later)
            print(f"  {dtype}: not run ({type(exc).__name__})")
            continue
        print(f"  {dtype}: running mean off by {off['mean']:.2f} ulp, running var by {off['var']:.2f} ulp")

if __name__ == "__main__":
    main()
