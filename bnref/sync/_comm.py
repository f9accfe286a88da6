"""Communicators: how per-shard parts travel between the processes that hold the shards.

A communicator has a single collective, :meth:`Communicator.allgather`: every process
contributes the parts of the shards it holds and gets back the parts of *all* shards, in
global shard order (process 0's shards first). The all-reduce is built on it
(:meth:`Communicator.allreduce`): each process applies the same canonical reduction
(:mod:`bnref.sync._reduce`) to the same gathered bytes, so every process ends with the same
bits, whatever the number of processes or the MPI implementation's reduction order. The
parts are per-channel vectors -- a few numbers per shard and channel -- so gathering them
costs no more than reducing them.

Backends:

* :class:`InProcess` -- one process holds every shard (a list): tests, the oracle, and the
  reference a distributed run is checked against.
* :class:`MPI` -- one or more shards per MPI process, through ``mpi4py`` (the optional
  ``mpi`` extra), imported only when an :class:`MPI` communicator is made.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bnref.sync._reduce import sum_parts


class Communicator:
    """Base class: subclasses implement :meth:`allgather` and :meth:`agree`."""

    #: this process's index and the number of processes
    rank: int = 0
    size: int = 1

    def allgather(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The parts of every shard on every process, stacked in global shard order: ``(S, *shape)``.

        ``parts`` holds one array per local shard; all parts have one shape and dtype.
        """
        raise NotImplementedError

    def agree(self, error: Exception | None) -> None:
        """Collective: raise on *every* process if any process hit an error before a collective.

        Without it, a process that rejects its input would leave the others waiting forever in
        the next collective.
        """
        raise NotImplementedError

    def allreduce(self, parts: Sequence[np.ndarray], reduce: Callable[[np.ndarray], object]):
        """``reduce`` applied to the gathered parts; identical on every process."""
        return reduce(self.allgather(parts))

    def allreduce_sum(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The sum over all shards of their parts, in a canonical order (see :func:`sum_parts`)."""
        return self.allreduce(parts, sum_parts)


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(p) for p in parts]
    kinds = {(p.shape, p.dtype.str) for p in parts}
    if len(kinds) > 1:
        raise ValueError(f"all parts must have one shape and dtype; got {sorted(kinds)}")
    return np.stack(parts)


class InProcess(Communicator):
    """Every shard lives in this process: the gather is a stack, errors are raised as they are."""

    def allgather(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        if not parts:
            raise ValueError("an in-process all-gather needs at least one part")
        return _stack(parts)

    def agree(self, error: Exception | None) -> None:
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return "InProcess()"


class MPI(Communicator):
    """Shards spread over MPI processes (``mpi4py``); ``comm`` defaults to ``COMM_WORLD``.

    Run under ``mpiexec -n P python ...``; every process must make the same sequence of
    sharded calls (they are collectives).
    """

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI as _mpi
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("bnref.sync.MPI needs mpi4py and an MPI library: "
                              "pip install 'bnref[mpi]' (mpi4py, mpich)") from exc
        self.comm = _mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allgather(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        if not parts:
            raise ValueError("every process must contribute at least one part to an all-gather")
        local = _stack(parts)
        # one small pickled exchange: how many parts each process holds, and their kind
        meta = self.comm.allgather((len(local), local.shape[1:], local.dtype.str))
        if len({entry[1:] for entry in meta}) != 1:
            raise ValueError(f"processes disagree on the shape or dtype of their parts: "
                             f"{[entry[1:] for entry in meta]} (process by process)")
        counts = [entry[0] for entry in meta]
        gathered = np.empty((sum(counts), *local.shape[1:]), dtype=local.dtype)
        sizes = [k * local[0].size for k in counts]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self.comm.Allgatherv(local, [gathered, (sizes, offsets)])
        return gathered

    def agree(self, error: Exception | None) -> None:
        report = None if error is None else (type(error).__name__, str(error))
        reports = self.comm.allgather(report)
        failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
        if not failed:
            return
        if error is not None:
            raise error
        rank, (kind, message) = failed[0]
        cls = TypeError if kind == "TypeError" else ValueError
        raise cls(f"process {rank} of {self.size} rejected its input: {kind}: {message}")

    def __repr__(self) -> str:
        return f"MPI(rank={self.rank}, size={self.size})"
