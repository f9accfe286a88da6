"""The candidate protocol: what an implementation under test must look like.

A candidate is any Python object with NumPy arrays in and out. ``x`` is laid out
with its channels on ``candidate.channel_axis`` (1 = channels-first, -1 =
channels-last); ``gamma``, ``beta``, ``running_mean`` and ``running_var`` are
``(C,)``. Every array argument has the dtype of ``x``.

Required::

    name: str
    dtypes: tuple[str, ...]          # some of bnref.dtypes.NAMES, e.g. ("float32", "float64")
    channel_axis: int                # 1 or -1
    forward_train(x, gamma, beta, eps) -> y
    backward(x, gamma, beta, eps, dy) -> (dx, dgamma, dbeta)

Optional (the report says "not provided" where absent)::

    forward_eval(x, gamma, beta, running_mean, running_var, eps) -> y
    update_running(x, running_mean, running_var, momentum) -> (new_mean, new_var)
    double_backward(x, gamma, beta, eps, dy, ddx, ddgamma, ddbeta) -> (gx, ggamma, gdy)
    forward_train_sharded(xs, gamma, beta, eps) -> ys          # cross-replica (synchronized) BN
    backward_sharded(xs, gamma, beta, eps, dys) -> (dxs, dgamma, dbeta)
    max_shards: int                  # most shards the sharded methods take (default 4)
    version: str                     # printed in the report header
    ranks: tuple[int, ...]           # the ranks of x it accepts (default 2..5)

``update_running`` performs one training step and returns the new running
statistics in the candidate's own convention (momentum on the new or the old
value, running variance with m or m - 1): the oracle measures the convention
and checks the candidate against it.

The sharded methods take the batch cut along axis 0 into a list of shards (any
sizes, 1 and 0 included), one per replica, and must normalize every shard with the
statistics of the *whole* batch; ``dgamma``, ``dbeta`` are the whole batch's (summed
over the replicas). They return lists in the order of ``xs``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from bnref.dtypes import NAMES

__all__ = ["Candidate", "OPTIONAL_METHODS", "REQUIRED_METHODS", "provides", "validate", "version_of",
           "ranks_of"]

REQUIRED_METHODS = ("forward_train", "backward")
OPTIONAL_METHODS = ("forward_eval", "update_running", "double_backward", "forward_train_sharded",
                    "backward_sharded")
DEFAULT_RANKS = (2, 3, 4, 5)


@runtime_checkable
class Candidate(Protocol):
    """A batch-norm implementation under test (see the module docstring for the optional methods)."""

    name: str
    dtypes: tuple[str, ...]
    channel_axis: int

    def forward_train(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
        ...

    def backward(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                 dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ...


def provides(candidate, method: str) -> bool:
    """Whether the candidate implements ``method`` (a callable attribute that is not None)."""
    return callable(getattr(candidate, method, None))


def version_of(candidate) -> str:
    return str(getattr(candidate, "version", None) or "unknown")


def ranks_of(candidate) -> tuple[int, ...]:
    return tuple(getattr(candidate, "ranks", None) or DEFAULT_RANKS)


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
    if any(r < 2 for r in ranks_of(candidate)):
        raise ValueError(f"candidate.ranks must be >= 2; got {ranks_of(candidate)!r}")
