"""Checking a sharded batch norm against the unsharded one (for the tests and ``mpi_check``).

:func:`run_sharded` runs forward, backward and the running-statistics update of a sharded
implementation; :func:`compare_with_unsharded` judges the results against
:func:`bnref.forward_train`, :func:`bnref.backward` and :func:`bnref.update_running` on the
whole batch, with the tolerances of :mod:`bnref.testing` (the kappa-aware error model).
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

import bnref
from bnref.testing import Comparison, compare, condition_number, scales

__all__ = ["split", "cotangents", "run_sharded", "compare_with_unsharded", "MOMENTUM", "verdict"]

MOMENTUM = 0.1


def split(x: np.ndarray, sizes, axis: int = 0) -> list[np.ndarray]:
    """``x`` cut along ``axis`` into pieces of ``sizes`` (which must add up to ``x.shape[axis]``)."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) != x.shape[axis] or min(sizes, default=0) < 0:
        raise ValueError(f"sizes {sizes} do not split an axis of length {x.shape[axis]}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def cotangents(case) -> SimpleNamespace:
    """dy and the initial running statistics for ``case``, drawn from its seed."""
    rng = np.random.default_rng(case.seed + 11)
    return SimpleNamespace(dy=rng.standard_normal(case.x.shape).astype(case.x.dtype),
                           running_mean=rng.standard_normal(case.channels),
                           running_var=rng.uniform(0.5, 2, case.channels))


def run_sharded(impl, case, xs, dys, comm=None) -> dict:
    """Forward, backward and running update of ``impl`` (the API of :mod:`bnref.sync`) on shards ``xs``."""
    args = (case.gamma, case.beta, case.eps, case.channel_axis)
    start = cotangents(case)
    ys, mean, var = impl.forward_train_sharded(xs, *args, comm=comm)
    dxs, dgamma, dbeta = impl.backward_sharded(dys, xs, case.gamma, mean, var, case.eps, case.channel_axis,
                                               comm=comm)
    running_mean, running_var = impl.update_running_sharded(start.running_mean, start.running_var, mean, var, xs,
                                                            MOMENTUM, case.channel_axis, comm=comm)
    return dict(ys=ys, mean=mean, var=var, dxs=dxs, dgamma=dgamma, dbeta=dbeta, running_mean=running_mean,
                running_var=running_var)


def compare_with_unsharded(case, sizes, result: dict, mine=None) -> list[Comparison]:
    """Every output of a sharded run against the unsharded functions on ``case.x``.

    ``mine`` lists the indices (into ``sizes``) of the shards in ``result`` (default: all), so
    that a process holding some of the shards can check its own outputs.
    """
    x, axis, eps, dtype = case.x, case.channel_axis, case.eps, case.x.dtype
    start = cotangents(case)
    y, mean, var = bnref.forward_train(x, case.gamma, case.beta, eps, axis)
    dx, dgamma, dbeta = bnref.backward(start.dy, x, case.gamma, mean, var, eps, axis)
    running = bnref.update_running(start.running_mean, start.running_var, mean, var, case.count, MOMENTUM)
    mine = range(len(sizes)) if mine is None else mine
    y_mine = np.concatenate([split(y, sizes)[i] for i in mine])
    dx_mine = np.concatenate([split(dx, sizes)[i] for i in mine])
    kappa = condition_number(x, axis, eps)
    scale = scales(x, case.gamma, case.beta, eps, axis, start.dy)
    m = case.count

    def check(quantity, actual, expected, out_dtype, scale, name=None):
        result = compare(quantity, actual, expected, dtype=out_dtype, kappa=kappa, m=m, scale=scale)
        return result if name is None else replace(result, quantity=name)

    return [
        check("y", np.concatenate(result["ys"]), y_mine, dtype, scale["y"]),
        check("mean", result["mean"], mean, np.float64, scale["mean"]),
        check("var", result["var"], var, np.float64, scale["var"]),
        check("dx", np.concatenate(result["dxs"]), dx_mine, dtype, scale["dx"]),
        check("dgamma", result["dgamma"], dgamma, dtype, scale["dgamma"]),
        check("dbeta", result["dbeta"], dbeta, dtype, scale["dbeta"]),
        # the running statistics move by momentum * (batch statistic): judged on the batch's scale
        check("mean", result["running_mean"], running[0], np.float64, scale["mean"] + 1, "running_mean"),
        check("var", result["running_var"], running[1], np.float64, scale["var"] + 1, "running_var"),
    ]


def verdict(comm, name: str, problems: list[str], claim: str) -> int:
    """End an ``mpiexec`` self-check: process 0 prints every process's problems and one line, OK or FAILED.

    Collective. Returns the exit code, 0 when no process found a problem.
    """
    everyone = comm.comm.gather(problems, root=0)
    ok = not comm.comm.allreduce(len(problems))
    if comm.rank == 0:
        for rank, found in enumerate(everyone):
            for line in found:
                print(f"FAIL process {rank}: {line}")
        status = "OK" if ok else f"FAILED ({sum(map(len, everyone))} problem(s) above); expected"
        print(f"{name}: {status}: {claim} on {comm.size} process(es)")
    return 0 if ok else 1
