"""A half-precision candidate that computes as the frameworks do: float32 math, rounded to the half type once.

Statistics, normalization and gradients in float32 (PyTorch's and Flax's opmath for float16
and bfloat16 input), the result rounded to x's dtype at the end; parameters in float32.
The oracle must pass it (its tolerance assumes float32 working precision for the half
types), while its fingerprint shows that its output is not the exact result rounded once.
"""
from __future__ import annotations

import numpy as np

from tests.mutants import CorrectBN


class Float32Math(CorrectBN):
    """CorrectBN with every step in float32 instead of float64."""

    name = "float32-math"
    dtypes = ("float16", "bfloat16")
    param_dtype = "float32"

    def stats(self, x):
        x32, axes, m = np.asarray(x, np.float32), self.axes(x), self.count(x)
        mean = x32.sum(axis=axes, keepdims=True) / np.float32(m)
        return mean, ((x32 - mean) ** 2).sum(axis=axes, keepdims=True) / np.float32(m)

    def invstd(self, var, eps):
        return np.float32(1) / np.sqrt(np.asarray(var, np.float32) + np.float32(eps))

    def normalize(self, x, gamma, beta, eps, mean, var):
        xhat = (np.asarray(x, np.float32) - np.asarray(mean, np.float32)) * self.invstd(var, eps)
        y = self.per_channel(np.asarray(gamma, np.float32), x) * xhat + self.per_channel(np.asarray(beta, np.float32), x)
        return y.astype(x.dtype)
