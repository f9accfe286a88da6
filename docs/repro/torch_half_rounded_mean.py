"""PyTorch with half parameters normalizes with its batch statistics rounded to the half dtype.

Run: ``python docs/repro/torch_half_rounded_mean.py`` (NumPy and PyTorch only).

``F.batch_norm`` on the CPU accumulates half inputs in float32, but with parameters in x's
dtype (``module.half()`` / ``module.bfloat16()``) its batch statistics are half tensors, and x is
centred with the mean rounded to half: y = (x - half(mean)) / sqrt(var + eps) for gamma = 1,
beta = 0. In bfloat16, for 2D inputs and the channels-last layout, the variance is moreover taken
around that rounded mean, var' = mean((x - half(mean))^2) (float16, and bfloat16 in the
contiguous 3D+ layout, keep the exact variance). The error in x - mean is up to u |mean|
(u = 2^-11 for float16, 2^-8 for bfloat16), i.e. u * kappa in units of the std: what an all-half
computation of x - mean loses as well. With float32 parameters (PyTorch's mixed precision, as
under autocast) the statistics stay float32 and y is the exact result rounded once. The
backward uses the same rounded mean: for two values per channel, where the exact dx is near 0, it
returns dx of size gamma * invstd * |dy|.
"""
import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
#: per dtype, one channel of two adjacent values whose exact mean lies half-way between two
#: numbers of the dtype (120.78125 in float16, 120.75 in bfloat16)
CASES = {torch.float16: np.array([[120.8125], [120.75]]), torch.bfloat16: np.array([[121.0], [120.5]])}


def batch_norm(x, param_dtype):
    """F.batch_norm in training mode, gamma = 1, beta = 0 in ``param_dtype``."""
    ones = torch.ones(x.shape[1], dtype=param_dtype)
    return F.batch_norm(x, None, None, ones, 0 * ones, training=True, eps=EPS)


def results(dtype, layout="2d"):
    """y (float64, flattened) for parameters in x's dtype and in float32, and three models.

    ``layout``: "2d" (N, C), "3d" (N, C, L) contiguous or "channels_last" (N, C, 1, 1).
    """
    x64 = CASES[dtype]
    mean, var = x64.mean(axis=0), x64.var(axis=0)
    x = torch.from_numpy(x64).to(dtype)
    assert np.array_equal(x.double().numpy(), x64), "the inputs are exact in the half dtype"
    if layout == "3d":
        x = x.reshape(-1, 1, 1).expand(-1, 1, 3).contiguous()
    elif layout == "channels_last":
        x = x.reshape(-1, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    rounded = torch.from_numpy(mean).to(dtype).double().numpy()
    var_around_rounded = ((x64 - rounded) ** 2).mean(axis=0)
    first = lambda y: y.double().numpy().reshape(len(x64), -1)[:, 0]  # noqa: E731
    return {
        "same dtype": first(batch_norm(x, dtype)),
        "float32 parameters": first(batch_norm(x, torch.float32)),
        "exact": ((x64 - mean) / np.sqrt(var + EPS)).ravel(),
        "rounded mean": ((x64 - rounded) / np.sqrt(var + EPS)).ravel(),
        "rounded mean, var around it": ((x64 - rounded) / np.sqrt(var_around_rounded + EPS)).ravel(),
    }


def dx_results(dtype=torch.float16, seed=1):
    """dx (float64) for parameters in x's dtype and in float32, the exact dx and the rounded-mean model,
    for the 2D case of ``dtype`` and a random dy exact in ``dtype``.

    dx = gamma invstd (dy - mean(dy) - xhat mean(dy xhat)): the backward uses the same xhat as the forward.
    """
    x64 = CASES[dtype]
    dy = torch.from_numpy(np.random.default_rng(seed).standard_normal(x64.shape)).to(dtype)
    d = dy.double().numpy()
    mean, var = x64.mean(axis=0), x64.var(axis=0)
    invstd = 1 / np.sqrt(var + EPS)

    def dx_of(xhat):
        return invstd * (d - d.mean(axis=0) - xhat * (d * xhat).mean(axis=0))

    def torch_dx(param_dtype):
        x = torch.from_numpy(x64).to(dtype).requires_grad_()
        (dx,) = torch.autograd.grad(batch_norm(x, param_dtype), x, dy)
        return dx.double().numpy()

    rounded = torch.from_numpy(mean).to(dtype).double().numpy()
    return {"same dtype": torch_dx(dtype), "float32 parameters": torch_dx(torch.float32),
            "exact": dx_of((x64 - mean) * invstd), "rounded mean": dx_of((x64 - rounded) * invstd)}


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; eps = {EPS}")
    for dtype, x in CASES.items():
        for layout in ("2d", "3d", "channels_last"):
            print(f"x = {x.ravel().tolist()} ({dtype}, {layout})")
            for name, y in results(dtype, layout).items():
                print(f"  {name:28} y = {np.round(y, 4).tolist()}")
    print("dx for the float16 case, dy random")
    for name, dx in dx_results().items():
        print(f"  {name:28} dx = {np.round(dx.ravel(), 4).tolist()}")


if __name__ == "__main__":
    main()
