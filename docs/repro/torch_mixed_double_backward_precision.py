"""PyTorch mixed precision: the double backward of batch norm runs in x's half dtype, float32 parameters or not.

Run: ``python docs/repro/torch_mixed_double_backward_precision.py`` (NumPy and PyTorch only).

With float16 or bfloat16 x and float32 weight and bias (``torch.autocast``'s convention for batch
norm), the forward and the first backward are computed in float32 and rounded once to x's dtype. The
double backward -- the gradient of <dx, ddx> + <dgamma, ddgamma> + <dbeta, ddbeta> that gradient
penalties and Hessian-vector products take -- is a composite of autograd operations on x's dtype, so
its float32 output ggamma (the weight's gradient) carries the half type's rounding: off by about 1e-3 of
the scale of the double backward in bfloat16 and 1e-4 in float16, where float32 x gives 1e-7. A
precision convention of PyTorch, not a wrong formula: the same script with float32 x is exact to float32.
"""
import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
#: two values of one channel (mean 1.16, std 0.24), as the oracle's minimal example
X = np.array([[0.918], [1.398]])
GAMMA, BETA = np.array([1.72]), np.array([0.3])
DY, DDX = np.array([[0.7], [-1.3]]), np.array([[0.4], [0.9]])
DDGAMMA, DDBETA = np.array([0.6]), np.array([-0.2])


def double_backward(arrays, x_dtype, param_dtype):
    """(gx, ggamma, gdy) as float64 arrays, for ``arrays`` = (x, dy, ddx) in ``x_dtype`` and gamma, beta,
    ddgamma, ddbeta in ``param_dtype``."""
    x, dy, ddx = (torch.tensor(a, dtype=x_dtype) for a in arrays)
    gamma, beta, ddgamma, ddbeta = (torch.tensor(a, dtype=param_dtype) for a in (GAMMA, BETA, DDGAMMA, DDBETA))
    for t in (x, dy, gamma, beta):
        t.requires_grad_(True)
    y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)
    dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy, create_graph=True)
    pairing = (dx * ddx).sum() + (dgamma * ddgamma).sum() + (dbeta * ddbeta).sum()
    gx, ggamma, gdy = torch.autograd.grad(pairing, (x, gamma, dy))
    return tuple(t.detach().double().numpy() for t in (gx, ggamma, gdy))


def ggamma_errors():
    """label -> |ggamma - exact| / the double backward's scale, with float32 weight and bias; the exact
    result from float64 on the same numbers (x, dy, ddx rounded to x's dtype once)."""
    out = {}
    for label, x_dtype in (("float32 x", torch.float32), ("float16 x", torch.float16), ("bfloat16 x", torch.bfloat16)):
        arrays = tuple(torch.tensor(a).to(x_dtype).double().numpy() for a in (X, DY, DDX))
        exact = double_backward(arrays, torch.float64, torch.float64)
        scale = max(float(np.max(np.abs(a))) for a in exact)
        got = double_backward(arrays, x_dtype, torch.float32)
        out[label] = float(np.max(np.abs(got[1] - exact[1]))) / scale
    return out


if __name__ == "__main__":
    print(f"torch {torch.__version__}; x = {X.ravel()}, float32 weight and bias, eps = {EPS}")
    for label, error in ggamma_errors().items():
        print(f"  {label:11s} ggamma (float32) off by {error:.2e} of the double backward's scale")
    print(f"  unit roundoff: float32 {2.0 ** -24:.1e}, float16 {2.0 ** -11:.1e}, bfloat16 {2.0 ** -8:.1e}")
