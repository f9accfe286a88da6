"""PyTorch: the float16 double backward of batch norm overflows to inf/NaN on a channel with std < ~0.025.

Run: ``python docs/repro/torch_fp16_double_backward_overflow.py`` (NumPy and PyTorch only).

The second derivative of batch norm has terms in invstd^3 = (var + eps)^(-3/2). PyTorch's
double backward evaluates them in x's dtype, float16, whose largest finite value is 65504: a
channel whose std is below 65504^(-1/3) ~ 0.025 overflows the intermediate although the
result itself is small (|gx| ~ 1300 for std 0.02 in float64). A constant channel (a dead ReLU,
var = 0, invstd^3 = eps^(-3/2) ~ 3e7 for eps = 1e-5) gives inf * 0 = NaN. Float32 parameters
(the autocast convention) do not help; bfloat16 (range to 3e38) does not overflow.
"""
import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
#: float16's largest finite value
FLOAT16_MAX = float(np.finfo(np.float16).max)


def double_backward(x, gamma, beta, dy, ddx, ddgamma, ddbeta, eps=EPS):
    """(gx, ggamma, gdy): the gradient of <dx, ddx> + <dgamma, ddgamma> + <dbeta, ddbeta> w.r.t. x, gamma, dy."""
    x, gamma, beta, dy = (t.clone().requires_grad_() for t in (x, gamma, beta, dy))
    y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
    dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy, create_graph=True)
    pairing = (dx * ddx).sum() + (dgamma * ddgamma).sum() + (dbeta * ddbeta).sum()
    return torch.autograd.grad(pairing, (x, gamma, dy))


def case(std, m=16, seed=0):
    """x (one channel, m values, mean 0, the given std), dy, ddx as float64 NumPy arrays."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((m, 1)) * s for s in (std, 1.0, 1.0))


def run(std, dtype, param_dtype=None):
    """(max |gx| in float64, whether every output in ``dtype`` is finite) for one channel of ``std``.

    The float64 run takes the inputs already rounded to ``dtype``, so both see the same numbers.
    """
    x, dy, ddx = (torch.from_numpy(a).to(dtype) for a in case(std))
    param_dtype = param_dtype or dtype
    ones = torch.ones(1, dtype=param_dtype)
    low = double_backward(x, ones, 0 * ones, dy, ddx, ones, ones)
    exact = double_backward(*(t.double() for t in (x, ones, 0 * ones, dy, ddx, ones, ones)))
    return float(exact[0].abs().max()), all(bool(t.isfinite().all()) for t in low)


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; eps = {EPS}; float16 max = {FLOAT16_MAX}")
    for std in (0.1, 0.03, 0.02, 0.01, 0.0):
        invstd3 = (std ** 2 + EPS) ** -1.5
        for dtype, param_dtype in ((torch.float16, None), (torch.float16, torch.float32), (torch.bfloat16, None)):
            exact, finite = run(std, dtype, param_dtype)
            print(f"std {std:<5} invstd^3 {invstd3:9.3g}  x {str(dtype):15} params {str(param_dtype or dtype):15}"
                  f"  max|gx| (float64) {exact:8.4g}  finite: {finite}")


if __name__ == "__main__":
    main()
