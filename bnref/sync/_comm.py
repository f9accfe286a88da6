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
    """The parts as one C-contiguous ``(S, *shape)`` array (a view when there is one contiguous part)."""
    parts = [np.asarray(p) for p in parts]
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0])[np.newaxis]
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
        self._buffers: dict = {}

    #: the header every process sends before a gather: part count, dtype, ndim, shape (padded)
    _MAX_NDIM = 6
    #: receive buffers kept for all-reduces, one per shape (a network's layers use a handful)
    _KEEP_BUFFERS = 16

    def allgather(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return self._gather(parts, reuse=False)

    def allreduce(self, parts: Sequence[np.ndarray], reduce: Callable[[np.ndarray], object]):
        """As :meth:`Communicator.allreduce`; the gathered parts land in a buffer kept for the next call
        (a fresh 50 MB buffer per gradient all-reduce costs as much as the transfer), so ``reduce``
        must return new arrays, not views of its argument."""
        return reduce(self._gather(parts, reuse=True))

    def _gather(self, parts: Sequence[np.ndarray], reuse: bool) -> np.ndarray:
        if not parts:
            raise ValueError("every process must contribute at least one part to an all-gather")
        local = _stack(parts)
        part_shape = local.shape[1:]
        if len(part_shape) > self._MAX_NDIM:
            raise ValueError(f"parts of rank {len(part_shape)} > {self._MAX_NDIM} are not supported")
        # one fixed-size exchange (no pickling): how many parts each process holds, and their kind
        header = np.full(3 + self._MAX_NDIM, -1, dtype=np.int64)
        header[:3] = len(local), local.dtype.num, len(part_shape)
        header[3:3 + len(part_shape)] = part_shape
        headers = np.empty((self.size, len(header)), dtype=np.int64)
        self.comm.Allgather(header, headers)
        if np.any(headers[:, 1:] != header[1:]):
            raise ValueError(f"processes disagree on the shape or dtype of their parts: "
                             f"{[tuple(h[3:3 + h[2]]) for h in headers]} (process by process)")
        counts = headers[:, 0].tolist()
        shape = (sum(counts), *part_shape)
        gathered = self._buffers.get((shape, local.dtype.str)) if reuse else None
        if gathered is None:
            gathered = np.empty(shape, dtype=local.dtype)
            if reuse:
                if len(self._buffers) >= self._KEEP_BUFFERS:
                    self._buffers.pop(next(iter(self._buffers)))  # the oldest
                self._buffers[(shape, local.dtype.str)] = gathered
        if len(set(counts)) == 1:  # MPICH's Allgather is about twice as fast as its Allgatherv
            self.comm.Allgather(local, gathered)
        else:
            sizes = [k * local[0].size for k in counts]
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
            self.comm.Allgatherv(local, [gathered, (sizes, offsets)])
        return gathered

    def agree(self, error: Exception | None) -> None:
        flags = np.empty(self.size, dtype=np.int8)
        self.comm.Allgather(np.array([error is not None], dtype=np.int8), flags)
        if not flags.any():
            return
        # the rare path: every process learns what went wrong where
        reports = self.comm.allgather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        rank, (kind, message) = next((r, report) for r, report in enumerate(reports) if report is not None)
        cls = TypeError if kind == "TypeError" else ValueError
        raise cls(f"process {rank} of {self.size} rejected its input: {kind}: {message}")

    def __repr__(self) -> str:
        return f"MPI(rank={self.rank}, size={self.size})"
