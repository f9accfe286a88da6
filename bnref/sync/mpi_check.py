"""Check the MPI backend against the in-process one: ``mpiexec -n P python -m bnref.sync.mpi_check``.

Every process builds the same cases from fixed seeds, cuts each batch into uneven shards
(of 0, 1 and more samples) and deals them out round-robin (a process left without a shard
gets an empty one). The sharded forward, backward and running update through
:class:`bnref.sync.MPI` must then be

* bit-identical to :class:`bnref.sync.InProcess` on the same shards in their original order
  (same kernels on the same shards, same canonical reduction: neither the order of the
  shards nor the extra empty ones may change a bit), and
* within the tolerances of :mod:`bnref.testing` of the unsharded functions on the whole batch.

Invalid input on one process, or fewer than two values per channel in all, must raise on every
process instead of leaving the others waiting. Process 0 prints a line per case; the exit code
is 0 when every process passed.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bnref import sync
from bnref.strategies import make_case
from bnref.sync.testing import compare_with_unsharded, cotangents, run_sharded, split, verdict

#: (shape, dtype, channel_axis, condition, seed, shard sizes along axis 0)
CASES = [
    ((9, 3, 4, 4), "float64", 1, "well", 1, (0, 1, 4, 1, 3)),      # 3 + 2 shards: Allgatherv
    ((7, 5, 5, 3), "float32", -1, "offset", 2, (1, 6)),
    ((2, 4), "float64", 1, "minimal", 3, (1, 1)),           # PyTorch #36865: one sample per process
    ((6, 2, 3, 2, 2), "float64", 1, "constant", 4, (3, 0, 2, 1)),
    ((5, 7), "float32", -1, "eps_scale", 5, (5,)),          # one process holds everything
]


def _deal(count: int, processes: int, rank: int) -> list[int]:
    return [i for i in range(count) if i % processes == rank]


def _check_case(comm, spec) -> list[str]:
    shape, dtype, axis, condition, seed, sizes = spec
    case = make_case(shape, dtype, axis, condition, seed)
    dys = split(cotangents(case).dy, sizes)
    xs = split(case.x, sizes)
    mine = _deal(len(sizes), comm.size, comm.rank)
    empty = [] if mine else [case.x[:0]]  # a process without a shard contributes an empty one
    local = run_sharded(sync, case, [xs[i] for i in mine] + empty, [dys[i] for i in mine] + [d[:0] for d in empty],
                        comm)
    whole = run_sharded(sync, case, xs, dys, sync.InProcess())
    failures = []
    for key, value in local.items():
        expected = [whole[key][i] for i in mine] + [np.empty_like(e) for e in empty] if key in ("ys", "dxs") \
            else whole[key]
        got = value if key in ("ys", "dxs") else [value]
        want = expected if key in ("ys", "dxs") else [expected]
        if any(g.dtype != w.dtype or not np.array_equal(g, w) for g, w in zip(got, want)):
            failures.append(f"{key} is not bit-identical to the in-process backend")
    if mine:
        results = compare_with_unsharded(case, sizes, local, mine)
        failures += [str(r) for r in results if not r.ok]
    return [f"{case.replay()} sizes={sizes}: {f}" for f in failures]


def _expect_error(comm, label, xs, gamma, beta, pattern) -> list[str]:
    try:
        sync.forward_train_sharded(xs, gamma, beta, comm=comm)
    except ValueError as exc:
        if pattern in str(exc):
            return []
        return [f"{label}: wrong message {exc}"]
    return [f"{label}: no ValueError"]


def _check_errors(comm) -> list[str]:
    x = np.arange(12.0).reshape(4, 3)
    gamma, beta = np.ones(3), np.zeros(3)
    one_value = [x[:1]] if comm.rank == 0 else [x[:0]]
    failures = _expect_error(comm, "one value per channel in all", one_value, gamma, beta, "more than 1 value")
    if comm.size > 1:
        channels = [x] if comm.rank != 1 else [np.ones((4, 2))]
        failures += _expect_error(comm, "process 1 has the wrong channel count", channels, gamma, beta,
                                  "shape (C,)" if comm.rank == 1 else "process 1 of")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnref.sync.mpi_check", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    comm = sync.MPI()
    failures = []
    for spec in CASES:
        failures += _check_case(comm, spec)
    failures += _check_errors(comm)
    return verdict(comm, "bnref.sync.mpi_check", failures,
                   f"{len(CASES)} cases and 2 error checks, MPI results bit-identical to InProcess and within "
                   f"tolerance of the unsharded functions,")


if __name__ == "__main__":
    sys.exit(main())
