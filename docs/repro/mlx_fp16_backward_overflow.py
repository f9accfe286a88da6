"""MLX: the float16 gradient of ``nn.BatchNorm`` is NaN on a channel with std below ~0.025.

Run: ``python docs/repro/mlx_fp16_backward_overflow.py`` (NumPy and MLX only).

``nn.BatchNorm`` normalizes with ``mx.rsqrt(var + eps)`` and its gradient is MLX's autodiff of that
expression. The VJP of ``rsqrt`` (``Sqrt::vjp`` with ``recip_``) multiplies the cotangent by
``-0.5 * rsqrt(v) / v`` = ``-0.5 * v^(-3/2)``, formed in the input's dtype: in float16, whose largest
finite value is 65504, it is inf once var + eps < 65504^(-2/3) ~ 6.1e-4, i.e. for a channel whose
std is below ~0.025 at eps = 1e-5, although dx itself is small (|dx| < 200 for std 0.01 in float32).
The cotangent is finite, so dx becomes +-inf - inf = NaN; a constant channel (a dead ReLU, var = 0,
v^(-3/2) = eps^(-3/2) ~ 3e7) gives 0 * inf = NaN. This is the first backward, not only the double
backward; bfloat16 (range to 3e38) and float32 stay finite.
"""
import mlx.core as mx
import mlx.nn as nn
import numpy as np

EPS = 1e-5
#: float16's largest finite value
FLOAT16_MAX = float(np.finfo(np.float16).max)
DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


def dx_of(x, dy):
    """dx of a training-mode nn.BatchNorm in x's dtype (weight 1, bias 0), by mx.vjp."""
    bn = nn.BatchNorm(x.shape[-1], eps=EPS)
    bn.set_dtype(x.dtype)
    return mx.vjp(lambda a: bn(a), [x], [dy])[1][0]


def case(std, m=16, seed=0):
    """x (one channel, m values, mean 0, the given std) and dy, float64 NumPy arrays."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, 1)) * std, rng.standard_normal((m, 1))


def run(std, dtype):
    """(max |dx| of a float32 layer on the inputs rounded to ``dtype``, whether dx in ``dtype`` is finite)."""
    x, dy = (mx.array(a.astype(np.float32)).astype(DTYPES[dtype]) for a in case(std))
    low = dx_of(x, dy)
    reference = dx_of(x.astype(mx.float32), dy.astype(mx.float32))
    return float(mx.max(mx.abs(reference)).item()), bool(mx.all(mx.isfinite(low)).item())


def main():
    print(f"mlx {mx.__version__} on {mx.default_device()}; eps = {EPS}; float16 max = {FLOAT16_MAX}")
    for std in (0.1, 0.03, 0.025, 0.02, 0.01, 0.0):
        invstd3 = (std ** 2 + EPS) ** -1.5
        for dtype in ("float16", "bfloat16"):
            reference, finite = run(std, dtype)
            print(f"std {std:<5} (var + eps)^-1.5 {invstd3:9.3g}  x {dtype:8}  max|dx| (float32) {reference:8.4g}"
                  f"  finite: {finite}")


if __name__ == "__main__":
    main()
