"""MLX: a float16 or bfloat16 ``nn.BatchNorm`` computes every step in the half type.

Run: ``python docs/repro/mlx_half_statistics.py`` (NumPy and MLX only).

A layer cast with ``layer.set_dtype(mx.float16)`` (or ``mx.bfloat16``), MLX's way to run a model
in half precision, keeps weight, bias and running statistics in that type, and its ``__call__`` is
plain ``mx`` arithmetic on them: ``mx.mean``, ``mx.var``, ``x - mean``, ``mx.rsqrt``, each result
rounded to the half type. The batch mean is ``half(half(sum(x)) * half(1/m))``, which is not even
the mean rounded once, so

* a constant channel is not centred to 0: three float16 values 0.8218 have the mean 0.8213, and
  ``y = (x - mean) * rsqrt(0 + eps)`` comes out 0.15 instead of beta = 0 (bfloat16: -0.78); three
  bfloat16 values 346 have the mean 348 and the variance 4;
* two adjacent values, [120.8125, 120.75] in float16, give y = [1.41, 0] instead of
  [0.995, -0.995], and the gradient follows the same rounded mean (dx over 100 times the exact one);
* the running variance (unbiased, taken around the rounded mean) is off (bfloat16: 0.625 for 0.5625),
  and the eval-mode output, five roundings of (x - running_mean) * rsqrt(running_var + eps) * weight
  + bias, is off by up to 1.9 u max|y| (u the half type's unit roundoff) where one rounding of the
  exact value stays below u max|y|.

The same inputs through a float32 layer give the exact results rounded to float32. Statistics and
normalization in float32 with the result rounded once to the half type (PyTorch's CPU kernel with
float32 parameters, Flax's and Keras' mixed precision) would be right.
"""
import mlx.core as mx
import mlx.nn as nn
import numpy as np

EPS = 1e-5
DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16}
#: unit roundoff of each half type
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
#: per dtype, one channel of two adjacent values whose exact mean lies half-way between two numbers of the type
ADJACENT = {"float16": [120.8125, 120.75], "bfloat16": [121.0, 120.5]}


def to_mlx(a, dtype):
    """The float64 NumPy array ``a`` rounded to the MLX dtype named ``dtype``."""
    return mx.array(np.asarray(a, dtype=np.float32)).astype(DTYPES.get(dtype, mx.float32))


def to_numpy(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def layer(channels, dtype, *, gamma=None, beta=None, running=None, momentum=0.1):
    """nn.BatchNorm in ``dtype`` (``set_dtype``, as a half-precision model casts it), with the given
    weight, bias and running statistics (float64 NumPy arrays, rounded to ``dtype``)."""
    bn = nn.BatchNorm(channels, eps=EPS, momentum=momentum)
    bn.set_dtype(DTYPES.get(dtype, mx.float32))
    if gamma is not None:
        bn.update({"weight": to_mlx(gamma, dtype), "bias": to_mlx(beta, dtype)})
    if running is not None:
        bn.running_mean, bn.running_var = (to_mlx(r, dtype) for r in running)
    return bn


def constant_channel(dtype, value=0.8218, m=3):
    """(the value in ``dtype``, MLX's mean of m copies, y of a training step; exact y = 0)."""
    x = to_mlx(np.full((m, 1), value), dtype)
    y = layer(1, dtype)(x)
    return float(to_numpy(x)[0, 0]), float(to_numpy(mx.mean(x))), to_numpy(y).ravel()


def constant_statistics(dtype, value=346.0, m=3):
    """(mx.mean, mx.var) of m copies of ``value`` in ``dtype``: the statistics nn.BatchNorm normalizes with."""
    x = to_mlx(np.full((m, 1), value), dtype)
    return float(to_numpy(mx.mean(x, axis=0))[0]), float(to_numpy(mx.var(x, axis=0))[0])


def adjacent_values(dtype, seed=1):
    """y and dx (float64) of the layer in ``dtype`` and of a float32 layer on the same (exact) inputs,
    and the exact y, for the two-value channel of ``dtype`` and a random dy exact in ``dtype``."""
    x64 = np.array(ADJACENT[dtype])[:, None]
    dy64 = to_numpy(to_mlx(np.random.default_rng(seed).standard_normal(x64.shape), dtype))

    def run(layer_dtype):
        x, dy = to_mlx(x64, layer_dtype), to_mlx(dy64, layer_dtype)
        assert np.array_equal(to_numpy(x), x64), "the inputs are exact in the half type"
        bn = layer(1, layer_dtype)
        y, vjp = mx.vjp(lambda a: bn(a), [x], [dy])
        return to_numpy(y[0]).ravel(), to_numpy(vjp[0]).ravel()

    (y, dx), (y32, dx32) = run(dtype), run("float32")
    exact = (x64 - x64.mean()) / np.sqrt(x64.var() + EPS)
    return {"y": y, "y float32 layer": y32, "y exact": exact.ravel(), "dx": dx, "dx float32 layer": dx32}


def running_var(dtype, momentum=0.5):
    """(MLX's running variance after one step from 1, the exact one) for the two-value channel."""
    x64 = np.array(ADJACENT[dtype])[:, None]
    bn = layer(1, dtype, running=(np.zeros(1), np.ones(1)), momentum=momentum)
    mx.eval(bn(to_mlx(x64, dtype)))
    exact = (1 - momentum) * 1.0 + momentum * x64.var(ddof=1)
    return float(to_numpy(bn.running_var)[0]), exact


def eval_ulps(dtype, seed=0, n=4096):
    """Worst error of eval-mode y with a running variance of 10^4 (x spread to match), in units of
    u * max|y| (u the half type's unit roundoff), for the layer in ``dtype`` and for a float32 layer
    whose result is rounded to ``dtype`` (at most 1: one rounding)."""
    rng = np.random.default_rng(seed)
    gamma, beta = (to_numpy(to_mlx(rng.uniform(0.5, 2, 1), dtype)) for _ in range(2))
    running = to_numpy(to_mlx(rng.normal(0, 10, 1), dtype)), to_numpy(to_mlx([1e4], dtype))
    x64 = to_numpy(to_mlx(rng.normal(running[0], 100, (n, 1)), dtype))
    exact = (x64 - running[0]) / np.sqrt(running[1] + EPS) * gamma + beta
    unit = UNIT_ROUNDOFF[dtype] * np.max(np.abs(exact))
    errors = {}
    for name, layer_dtype in (("layer in " + dtype, dtype), ("float32 layer", "float32")):
        bn = layer(1, layer_dtype, gamma=gamma, beta=beta, running=running)
        bn.eval()
        y = to_numpy(bn(to_mlx(x64, layer_dtype)).astype(DTYPES[dtype]))
        errors[name] = float(np.max(np.abs(y - exact)) / unit)
    return errors


def main():
    print(f"mlx {mx.__version__} on {mx.default_device()}; eps = {EPS}")
    for dtype in DTYPES:
        value, mean, y = constant_channel(dtype)
        print(f"{dtype}: constant channel of three {value}: mean {mean}, y {y.tolist()} (exact 0)")
        print(f"{' ' * len(dtype)}  three 346.0: (mean, var) {constant_statistics(dtype)} (exact (346.0, 0.0))")
        r = adjacent_values(dtype)
        print(f"{dtype}: x = {ADJACENT[dtype]}: y {np.round(r['y'], 4).tolist()}, float32 layer "
              f"{np.round(r['y float32 layer'], 4).tolist()}, exact {np.round(r['y exact'], 4).tolist()}")
        print(f"{' ' * len(dtype)}  dx {np.round(r['dx'], 4).tolist()}, float32 layer "
              f"{np.round(r['dx float32 layer'], 4).tolist()}")
        got, exact = running_var(dtype)
        print(f"{' ' * len(dtype)}  running_var after one step (momentum 0.5, from 1): {got}, exact {exact:.6g}")
        print(f"{' ' * len(dtype)}  eval y, worst error / (u max|y|): {eval_ulps(dtype)}")


if __name__ == "__main__":
    main()
