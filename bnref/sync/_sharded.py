r"""Batch norm over a batch split into shards: the statistics of the whole batch, computed locally.

Each shard's local work is done by bnref's kernels (the same ones as :mod:`bnref.functional`);
the communicator gathers per-channel vectors only:

* forward: per shard ``(n_s, mean_s, M2_s)`` -> merged exactly as a parallel reduction
  (:func:`bnref.sync._reduce.merge_moments`) -> every shard normalized with the global
  ``mean`` and ``var = M2 / m``, ``m = sum_s n_s``;
* backward: per shard ``(sum dy, sum dy*xhat, n_s)`` -> summed -> every shard's ``dx`` from
  the global sums and the global ``m`` (the formula of :func:`bnref.backward`);
* running statistics: :func:`bnref.update_running` with the *global* count ``m``, so the
  unbiased variance is ``M2 / (m - 1)`` (PyTorch #22192 used the local count).

A shard may hold any number of samples, 1 and 0 included (apex #262 raised on a local
count of 1); only the whole batch needs two values per channel.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple, Sequence

import numpy as np

from bnref import _checks
from bnref._core import Prepared, dx_from_sums, invstd, local_moments, narrow
from bnref.functional import update_running
from bnref.sync._comm import Communicator, InProcess
from bnref.sync._reduce import merge_moments

__all__ = ["Moments", "moments_sharded", "forward_train_sharded", "backward_sharded", "global_count",
           "update_running_sharded"]


class Moments(NamedTuple):
    """Statistics of the whole batch: ``count`` values per channel, ``mean`` and biased ``var`` (C,) float64."""

    count: int
    mean: np.ndarray
    var: np.ndarray


class _Shards:
    """This process's shards, validated: one :class:`~bnref._core.Prepared` each, one channel count and dtype."""

    def __init__(self, xs, channel_axis, name: str = "xs"):
        if isinstance(xs, np.ndarray) or not isinstance(xs, Sequence):
            raise TypeError(f"{name} must be a list of arrays, one per shard; got {type(xs).__name__} "
                            f"(to shard an array along the batch axis: np.array_split(x, k))")
        if not xs:
            raise ValueError(f"{name} must hold at least one shard; a process without data passes an "
                             f"empty one, shape (0, C, ...)")
        self.preps = [Prepared(x, channel_axis, training=False, name=f"{name}[{i}]") for i, x in enumerate(xs)]
        first = self.preps[0]
        for i, prep in enumerate(self.preps[1:], 1):
            if prep.x.ndim != first.x.ndim or prep.channels != first.channels:
                raise ValueError(f"{name}[{i}] has shape {prep.x.shape} but {name}[0] has {first.x.shape}: shards "
                                 f"must have one rank and one channel count (axis {first.axis})")
            if prep.x.dtype != first.x.dtype:
                raise TypeError(f"{name}[{i}] has dtype {prep.x.dtype} but {name}[0] has {first.x.dtype}")
        self.axis = first.axis
        self.channels = first.channels
        self.vector = first.vector
        self.parameter = first.parameter
        self.statistics = first.statistics

    def like_x(self, name: str, values) -> list[np.ndarray]:
        """Per-shard arrays (``dys``) matching each shard, as ``(A, C, B)`` views."""
        if isinstance(values, np.ndarray) or not isinstance(values, Sequence) or len(values) != len(self.preps):
            raise TypeError(f"{name} must be a list of {len(self.preps)} arrays, one per shard")
        return [prep.like_x(f"{name}[{i}]", v) for i, (prep, v) in enumerate(zip(self.preps, values))]


@contextmanager
def _collectively(comm: Communicator):
    """Local validation before a collective: an error on any process is raised on every process."""
    try:
        yield
    except (TypeError, ValueError) as error:
        comm.agree(error)
        raise
    comm.agree(None)


def _summed_count(shards: _Shards, comm: Communicator) -> int:
    """``m``, the values per channel over every shard on every process (a collective of one number)."""
    return int(comm.allreduce_sum([np.array([float(prep.count)]) for prep in shards.preps])[0])


def _global_count(count: np.ndarray, shards: _Shards, comm: Communicator) -> int:
    """``m`` from the summed per-channel counts; at least 2 where there are channels to normalize."""
    if not shards.channels:  # no channel to carry a count: nothing to normalize, m counted apart
        return _summed_count(shards, comm)
    if count[0] < 2:
        raise _checks.too_few_values(count[0], f"the shards hold {count[0]:g} value(s) per channel in all "
                                               f"(channel_axis={shards.axis}); a single shard may hold 1 or 0")
    return int(count[0])


def _moments(shards: _Shards, comm: Communicator) -> Moments:
    parts = []
    for prep in shards.preps:
        mean, m2 = local_moments(prep)
        parts.append(np.stack([np.full_like(mean, prep.count), mean, m2]))
    count, mean, m2 = comm.allreduce(parts, lambda p: merge_moments(p[:, 0], p[:, 1], p[:, 2]))
    m = _global_count(count, shards, comm)
    var = m2 / m
    _checks.finite_stats("the batch mean or variance of the shards", mean + var, shards.axis)
    return Moments(m, mean, var)


def moments_sharded(xs, channel_axis=1, *, comm: Communicator | None = None) -> Moments:
    """Count, mean and biased variance of the batch formed by every shard on every process.

    Args:
        xs: this process's shards, a list of arrays of one rank, dtype and channel count
            (any number of samples each, 0 included; usually pieces of the batch axis).
        channel_axis: as in :func:`bnref.forward_train`.
        comm: a :class:`~bnref.sync.Communicator`; default :class:`~bnref.sync.InProcess`.

    Returns:
        :class:`Moments` ``(count, mean, var)``, identical on every process.

    Raises:
        ValueError: fewer than 2 values per channel in the whole batch; mismatched shards.
    """
    comm = InProcess() if comm is None else comm
    with _collectively(comm):
        shards = _Shards(xs, channel_axis)
    return _moments(shards, comm)


def global_count(xs, channel_axis=1, *, comm: Communicator | None = None) -> int:
    """``m``: values per channel over every shard on every process (a collective of one number)."""
    comm = InProcess() if comm is None else comm
    with _collectively(comm):
        shards = _Shards(xs, channel_axis)
    return _summed_count(shards, comm)


def forward_train_sharded(xs, gamma, beta, eps=1e-5, channel_axis=1, *, comm: Communicator | None = None):
    r"""Training-mode batch norm of each shard with the statistics of the whole (sharded) batch.

    .. math:: y_s = \gamma\,\frac{x_s - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,\qquad
        \mu, \sigma^2 \text{ over } \textstyle\bigcup_s x_s

    Equals :func:`bnref.forward_train` on the concatenation of all shards, to rounding.

    Args:
        xs: this process's shards (see :func:`moments_sharded`).
        gamma, beta, eps, channel_axis: as in :func:`bnref.forward_train`.
        comm: the communicator (default: all shards are in ``xs``).

    Returns:
        ``(ys, mean, var)``: ``ys`` a list like ``xs``; global ``mean`` and biased ``var`` ``(C,)`` float64.
    """
    comm = InProcess() if comm is None else comm
    with _collectively(comm):
        shards = _Shards(xs, channel_axis)
        gamma = shards.vector("gamma", gamma)
        beta = shards.vector("beta", beta)
        eps = _checks.eps_value(eps)
    _, mean, var = _moments(shards, comm)
    scale = gamma * invstd(var, eps)
    ys = []
    for prep in shards.preps:
        y, y3, finish = prep.output(None)
        prep.combine(mean, scale, beta, y3)
        ys.append(finish())
    return ys, mean, var


def backward_sharded(dys, xs, gamma, mean, var, eps=1e-5, channel_axis=1, *, comm: Communicator | None = None):
    r"""Gradients of :func:`forward_train_sharded`: per-shard ``dx``, global ``dgamma`` and ``dbeta``.

    .. math:: dx_{s,i} = \frac{\gamma\,\mathrm{invstd}}{m}\Big(m\,dy_{s,i} - \textstyle\sum dy
        - \hat x_{s,i} \sum dy\,\hat x\Big),\quad \text{sums over every shard}

    Args:
        dys: cotangents, a list like ``xs`` (each the shape and dtype of its shard).
        xs, gamma, eps, channel_axis, comm: as given to :func:`forward_train_sharded`.
        mean, var: the global statistics it returned.

    Returns:
        ``(dxs, dgamma, dbeta)``: ``dxs`` a list like ``xs``; ``dgamma``, ``dbeta`` ``(C,)`` in gamma's
        dtype, identical on every process.
    """
    comm = InProcess() if comm is None else comm
    with _collectively(comm):
        shards = _Shards(xs, channel_axis)
        dy3s = shards.like_x("dys", dys)
        gamma = shards.parameter("gamma", gamma)
        mean, var = shards.statistics("mean", mean, "var", var)
        channel_invstd = invstd(var, _checks.eps_value(eps))
    parts = []
    for prep, dy3 in zip(shards.preps, dy3s):
        sums = prep.sums(mean, channel_invstd, dy3)
        parts.append(np.stack([sums[0], sums[1], np.full_like(mean, prep.count)]))
    sum_dy, sum_dy_xhat, count = comm.allreduce_sum(parts)
    m = _global_count(count, shards, comm)
    _checks.finite_stats("sum(dy) or sum(dy * xhat) over the shards", sum_dy + sum_dy_xhat, shards.axis)
    gamma64 = gamma.astype(np.float64)
    dxs = [dx_from_sums(prep, dy3, gamma64, mean, channel_invstd, sum_dy, sum_dy_xhat, m)
           for prep, dy3 in zip(shards.preps, dy3s)]
    return dxs, narrow(sum_dy_xhat, gamma.dtype), narrow(sum_dy, gamma.dtype)


def update_running_sharded(running_mean, running_var, mean, var, xs, momentum=0.1, channel_axis=1, *,
                           unbiased=True, comm: Communicator | None = None):
    """:func:`bnref.update_running` with the *global* count of the shards (``m/(m-1)`` over the whole batch).

    ``mean``, ``var`` are the global statistics from :func:`forward_train_sharded`; the result is
    identical on every process.
    """
    count = global_count(xs, channel_axis, comm=comm)
    return update_running(running_mean, running_var, mean, var, count, momentum, unbiased=unbiased)
