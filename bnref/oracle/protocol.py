"""The candidate protocol: what an implementation under test must look like.

A candidate is any Python object with NumPy arrays in and out. ``x`` is laid out
with its channels on ``candidate.channel_axis`` (1 = channels-first, -1 =
channels-last); ``gamma``, ``beta``, ``running_mean`` and ``running_var`` are
``(C,)``. Every array argument has the dtype of ``x``, except the parameters of a
half-precision candidate that declares ``param_dtype = "float32"`` (below).

Required::

    name: str
    dtypes: tuple[str, ...]          # some of bnref.dtypes.NAMES, e.g. ("float32", "float64")
    channel_axis: int                # 1 or -1
    forward_train(x, gamma, beta, eps) -> y

Optional (the report says "not provided" where absent)::

    backward(x, gamma, beta, eps, dy) -> (dx, dgamma, dbeta)   # absent in an inference runtime
    forward_eval(x, gamma, beta, running_mean, running_var, eps) -> y
    update_running(x, running_mean, running_var, momentum) -> (new_mean, new_var)
    update_running_steps(xs, running_mean, running_var, momentum, step=None) -> (new_mean, new_var)
    double_backward(x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta) -> (gx, ggamma, gdy)
    forward_train_sharded(xs, gamma, beta, eps) -> ys          # cross-replica (synchronized) BN
    backward_sharded(xs, gamma, beta, eps, dys) -> (dxs, dgamma, dbeta)
    max_shards: int                  # most shards the sharded methods take (default 4)
    version: str                     # printed in the report header
    ranks: tuple[int, ...]           # the ranks of x it accepts (default 2..5)
    param_dtype: str | None          # None (default): parameters in x's dtype; "float32": see below
    environment: dict[str, str]      # environment variables it needs (KERAS_BACKEND=jax): replay lines set them

``param_dtype`` says in which dtype a half-precision candidate (x in float16 or
bfloat16) takes and returns its parameters: ``None`` (or absent) -- in x's dtype;
``"float32"`` -- gamma, beta, running_mean and running_var are float32 and so are
dgamma, dbeta (of ``backward`` and ``backward_sharded``), ggamma and the new running
statistics, PyTorch's mixed-precision convention (``module.half()`` on the input only).
x, y, dx, dy, gx and gdy keep x's dtype; for float32 and float64 x every array has
x's dtype whatever ``param_dtype`` says.

``update_running`` performs one training step and returns the new running
statistics in the candidate's own convention (momentum on the new or the old
value, running variance with m or m - 1): the oracle measures the convention
and checks the candidate against it.

``update_running_steps`` performs one training step per batch of the list ``xs`` (all of x's
shape), from a fresh state whose running statistics are ``running_mean``, ``running_var``
(``step``: None for a fresh state), and returns the running statistics the layer reports
after the last one: a debiased moving average (Haiku's ``ExponentialMovingAverage``) is
measured as such and checked in that convention.

The sharded methods take the batch cut along axis 0 into a list of shards (any
sizes, 1 and 0 included), one per replica, and must normalize every shard with the
statistics of the *whole* batch; ``dgamma``, ``dbeta`` are the whole batch's (summed
over the replicas). They return lists in the order of ``xs``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from bnref.dtypes import NAMES, unit_roundoff

__all__ = ["Candidate", "environment_of", "OPTIONAL_METHODS", "REQUIRED_METHODS", "PARAM_DTYPES", "HALF_DTYPES",
           "provides", "validate", "version_of", "ranks_of", "param_dtype_of", "half_dtypes_of"]

REQUIRED_METHODS = ("forward_train",)
OPTIONAL_METHODS = ("backward", "forward_eval", "update_running", "update_running_steps", "double_backward",
                    "forward_train_sharded", "backward_sharded")
DEFAULT_RANKS = (2, 3, 4, 5)
#: the values ``candidate.param_dtype`` may take (None: the parameters have x's dtype)
PARAM_DTYPES = (None, "float32")
#: the dtypes bnref knows whose precision is below float32's: there ``param_dtype`` applies
HALF_DTYPES = tuple(name for name in NAMES if unit_roundoff(name) > unit_roundoff("float32"))


@runtime_checkable
class Candidate(Protocol):
    """A batch-norm implementation under test (see the module docstring for the optional methods)."""

    name: str
    dtypes: tuple[str, ...]
    channel_axis: int

    def forward_train(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
        ...


def provides(candidate, method: str) -> bool:
    """Whether the candidate implements ``method`` (a callable attribute that is not None)."""
    return callable(getattr(candidate, method, None))


def version_of(candidate) -> str:
    return str(getattr(candidate, "version", None) or "unknown")


def ranks_of(candidate) -> tuple[int, ...]:
    return tuple(getattr(candidate, "ranks", None) or DEFAULT_RANKS)


def environment_of(candidate) -> dict[str, str]:
    """The environment variables the candidate declares it needs (``candidate.environment``; default none)."""
    return {str(k): str(v) for k, v in (getattr(candidate, "environment", None) or {}).items()}


def param_dtype_of(candidate, dtype) -> np.dtype:
    """The dtype of the parameters and running statistics ``candidate`` takes for x of ``dtype``.

    float32 for a half ``dtype`` when the candidate declares ``param_dtype = "float32"``,
    else ``dtype`` itself.
    """
    dtype = np.dtype(dtype)
    declared = getattr(candidate, "param_dtype", None)
    return np.dtype(declared) if declared is not None and dtype.name in HALF_DTYPES else dtype


def half_dtypes_of(candidate) -> tuple[str, ...]:
    """The half-precision dtypes (float16, bfloat16) among those the candidate declares."""
    return tuple(d for d in candidate.dtypes if d in HALF_DTYPES)


def validate(candidate) -> None:
    """Raise TypeError/ValueError naming what is missing or malformed in ``candidate``."""
    missing = [attr for attr in ("name", "dtypes", "channel_axis") if not hasattr(candidate, attr)]
    missing += [m for m in REQUIRED_METHODS if not provides(candidate, m)]
    if missing:
        raise TypeError(f"{candidate!r} is not a bnref candidate: missing {', '.join(missing)} "
                        f"(see bnref.oracle.protocol)")
    if candidate.channel_axis not in (1, -1):
        raise ValueError(f"candidate.channel_axis must be 1 or -1; got {candidate.channel_axis!r}")
    bad = [d for d in candidate.dtypes if d not in NAMES]
    if bad or not candidate.dtypes:
        raise ValueError(f"candidate.dtypes must be a non-empty subset of {NAMES!r}; "
                         f"got {tuple(candidate.dtypes)!r}")
    if getattr(candidate, "param_dtype", None) not in PARAM_DTYPES:
        raise ValueError(f"candidate.param_dtype must be one of {PARAM_DTYPES!r} (None: the dtype of x); "
                         f"got {candidate.param_dtype!r}")
    if any(r < 2 for r in ranks_of(candidate)):
        raise ValueError(f"candidate.ranks must be >= 2; got {ranks_of(candidate)!r}")
