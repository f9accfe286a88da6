"""A plain, correct NumPy batch norm that the mutants break one piece at a time.

Each hook is one step of the computation (statistics, normalization, the three
gradient terms, the statistics the shards share, the count behind the running
variance) so that a mutant overrides exactly the step its bug lives in.
Everything runs in float64 and is rounded once at the end, to x's dtype (the
parameters' dtype for dgamma, dbeta and the running statistics: float32 for a half
candidate with ``param_dtype = "float32"``), so the output is the exact result
correctly rounded -- in bfloat16 too: ml_dtypes rounds float64 to bfloat16 directly,
not through float32 (tests/test_oracle.py checks it on a value where the two differ). The
running-statistics update is PyTorch's :class:`bnref.conventions.Convention`
record and the reshaping is :mod:`bnref.axes`, so neither has a second copy here.

The methods follow the oracle's candidate protocol (:mod:`bnref.oracle.protocol`);
:mod:`tests.mutants.signatures` adapts them to bnref's own signatures.
"""
from __future__ import annotations

import numpy as np

from bnref import axes, reference
from bnref.conventions import PYTORCH


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _split_like(whole: np.ndarray, xs) -> list[np.ndarray]:
    """``whole`` (the shards concatenated along axis 0) cut back into pieces the size of ``xs``."""
    return np.split(whole, np.cumsum([len(x) for x in xs])[:-1])


class CorrectBN:
    """PyTorch-convention batch norm in NumPy: passes every property of the oracle."""

    name = "numpy-bn"
    dtypes: tuple[str, ...] = ("float32", "float64")
    #: None: parameters in x's dtype; "float32": float32 parameters for half x (bnref.oracle.protocol)
    param_dtype: str | None = None
    version = "tests.mutants"
    #: the oracle properties (names in bnref.oracle.properties.PROPERTIES) this implementation must fail
    breaks: tuple[str, ...] = ()
    #: the quantities of bnref.sync.testing.compare_with_unsharded its sharded methods must get wrong
    sync_breaks: tuple[str, ...] = ()

    def __init__(self, channel_axis: int = 1, *, dtypes: tuple[str, ...] | None = None,
                 param_dtype: str | None = None):
        """``dtypes``, ``param_dtype``: override the class's declaration (the correct base in the half types)."""
        self.channel_axis = channel_axis
        if dtypes is not None:
            self.dtypes = tuple(dtypes)
        if param_dtype is not None:
            self.param_dtype = param_dtype

    # ----------------------------------------------------------------- layout
    def axes(self, x):
        return axes.reduce_axes(x.ndim, self.channel_axis)

    def per_channel(self, v, x):
        return axes.per_channel(v, x.ndim, self.channel_axis)

    def count(self, x) -> int:
        return axes.count(x.shape, self.channel_axis)

    # ----------------------------------------------------------------- hooks
    def stats(self, x):
        """Per-channel mean and biased variance, two-pass in float64, keepdims.

        A shard without values gets 0/0 = NaN, as a replica's local moments would.
        """
        x, m = _f64(x), self.count(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(axis=self.axes(x), keepdims=True) / m
            return mean, ((x - mean) ** 2).sum(axis=self.axes(x), keepdims=True) / m

    def invstd(self, var, eps):
        return PYTORCH.invstd(var, eps)

    def xhat(self, x, mean, var, eps):
        return (_f64(x) - mean) * self.invstd(var, eps)

    def dx_terms(self, m, dy, sum_dy, xhat, sum_dy_xhat):
        """m dy - sum(dy) - xhat sum(dy xhat) (times gamma invstd / m)."""
        return m * dy - sum_dy - xhat * sum_dy_xhat

    def dgamma(self, x, dy, xhat):
        return (dy * xhat).sum(axis=self.axes(x))

    def dbeta(self, dy, x):
        return dy.sum(axis=self.axes(x))

    def sharded_stats(self, xs):
        """The statistics every shard normalizes with: the whole batch's."""
        return self.stats(np.concatenate(xs))

    def running_count(self, xs) -> int:
        """m behind the running variance's m/(m-1): the values per channel of the whole batch."""
        return sum(self.count(x) for x in xs)

    # ----------------------------------------------------------------- shared by the methods
    def normalize(self, x, gamma, beta, eps, mean, var):
        y = self.per_channel(gamma, x) * self.xhat(x, mean, var, eps) + self.per_channel(beta, x)
        return y.astype(x.dtype)

    def gradients(self, x, dy, gamma, eps, mean, var):
        """(dx, dgamma, dbeta) of the batch ``x`` normalized with ``mean``, ``var`` (keepdims)."""
        xhat, dy64, m = self.xhat(x, mean, var, eps), _f64(dy), self.count(x)
        sum_dy = dy64.sum(axis=self.axes(x), keepdims=True)
        sum_dy_xhat = (dy64 * xhat).sum(axis=self.axes(x), keepdims=True)
        k = self.per_channel(gamma, x) * self.invstd(var, eps) / m
        dx = k * self.dx_terms(m, dy64, sum_dy, xhat, sum_dy_xhat)
        return (dx.astype(x.dtype), self.dgamma(x, dy64, xhat).astype(gamma.dtype),
                self.dbeta(dy64, x).astype(gamma.dtype))

    # ----------------------------------------------------------------- the protocol
    def forward_train(self, x, gamma, beta, eps):
        return self.normalize(x, gamma, beta, eps, *self.stats(x))

    def backward(self, x, gamma, beta, eps, dy):
        return self.gradients(x, dy, gamma, eps, *self.stats(x))

    def forward_eval(self, x, gamma, beta, running_mean, running_var, eps):
        return self.normalize(x, gamma, beta, eps, self.per_channel(_f64(running_mean), x),
                              self.per_channel(_f64(running_var), x))

    def update_running(self, x, running_mean, running_var, momentum):
        return self.update_running_sharded([x], running_mean, running_var, momentum)

    def update_running_steps(self, xs, running_mean, running_var, momentum, step=None):
        stats = [tuple(s.reshape(-1) for s in self.stats(x)) for x in xs]
        new = PYTORCH.update_running_steps(running_mean, running_var, [s[0] for s in stats], [s[1] for s in stats],
                                           [self.count(x) for x in xs], momentum)
        return new[0].astype(np.asarray(running_mean).dtype), new[1].astype(np.asarray(running_var).dtype)

    def double_backward(self, x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta):
        # autograd of autograd: the base needs a correct double backward, not a second derivation
        grads = reference.double_backward(ddx, ddgamma, ddbeta, dy, x, gamma, beta, eps, self.channel_axis)
        return tuple(np.asarray(g).astype(like.dtype) for g, like in zip(grads, (x, gamma, dy)))

    def forward_train_sharded(self, xs, gamma, beta, eps):
        return _split_like(self.normalize(np.concatenate(xs), gamma, beta, eps, *self.sharded_stats(xs)), xs)

    def backward_sharded(self, xs, gamma, beta, eps, dys):
        dx, dgamma, dbeta = self.gradients(np.concatenate(xs), np.concatenate(dys), gamma, eps,
                                           *self.sharded_stats(xs))
        return _split_like(dx, xs), dgamma, dbeta

    def update_running_sharded(self, xs, running_mean, running_var, momentum):
        """One running-statistics step on the batch cut into ``xs`` (not in the oracle's protocol)."""
        mean, var = (s.reshape(-1) for s in self.sharded_stats(xs))
        new = PYTORCH.update_running(running_mean, running_var, mean, var, self.running_count(xs), momentum)
        return new[0].astype(np.asarray(running_mean).dtype), new[1].astype(np.asarray(running_var).dtype)
