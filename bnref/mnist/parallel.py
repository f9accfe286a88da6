"""Data-parallel training: the batch split over processes, synchronized batch norm, gradients all-reduced.

Under ``mpiexec -n P python -m bnref mnist --data-parallel`` each of the P processes builds the same
network (the same seed gives the same initial weights) and at every step takes its own contiguous
share of the global batch (the rows ``np.array_split`` would give it). Then

* :class:`SyncBatchNorm` normalizes with the statistics of the *global* batch and returns the global
  ``dgamma``, ``dbeta`` (:mod:`bnref.sync`), with running statistics on the global count;
* :class:`ShardedDropout` draws the masks of the whole global batch from the shared stream and keeps
  its rows: the masks of the single-process run;
* :class:`ShardedNLL` is the mean over the global batch (its gradient divides by the global size);
* :meth:`DataParallel.allreduce_gradients` sums the Linear layers' per-process gradients (partial sums
  over the local rows); batch norm's are already global.

The all-reduce is bnref.sync's canonical one, so every process ends a step with the same bits and the
replicas never drift apart; the run follows the single-process run of the same seed and global
batch to rounding (the only difference: sums over the batch are split into per-process partial sums).
"""
from __future__ import annotations

import numpy as np

import bnref
from bnref import sync
from bnref.mnist.layers import BatchNorm, Dropout, Linear, LogSoftmaxNLL, Network

__all__ = ["DataParallel", "SyncBatchNorm", "ShardedDropout", "ShardedNLL"]


class DataParallel:
    """One process's share of every global batch of ``batch_size`` rows, and the all-reduces."""

    def __init__(self, comm: sync.Communicator, batch_size: int):
        if batch_size < comm.size:
            raise ValueError(f"a global batch of {batch_size} cannot be shared by {comm.size} processes")
        self.comm, self.batch_size = comm, batch_size
        base, extra = divmod(batch_size, comm.size)
        start = comm.rank * base + min(comm.rank, extra)
        self.rows = slice(start, start + base + (comm.rank < extra))

    def allreduce_gradients(self, net: Network) -> None:
        """Sum the Linear layers' gradients over the processes, in place (one all-reduce per step)."""
        grads = [g for layer in net.layers if isinstance(layer, Linear) for g in layer.grads]
        flat = np.concatenate([g.ravel() for g in grads])
        total = self.comm.allreduce_sum([flat])
        offset = 0
        for g in grads:
            g.ravel()[...] = total[offset:offset + g.size]
            offset += g.size

    def mean_loss(self, local_mean: float, local_count: int) -> float:
        """The global batch's mean loss from each process's mean over its rows."""
        return float(self.comm.allreduce_sum([np.array([local_mean * local_count])])[0]) / self.batch_size


class SyncBatchNorm(BatchNorm):
    """:class:`BatchNorm` whose training statistics and gradients span every process's rows.

    Evaluation is local: every process evaluates the whole test set, as a single process would.
    """

    def __init__(self, features: int, dp: DataParallel, **kwargs):
        super().__init__(features, **kwargs)
        self.comm, self.batch_size = dp.comm, dp.batch_size

    def forward(self, x, training):
        if not training:
            return super().forward(x, training)
        ys, mean, var = sync.forward_train_sharded([x], self.gamma, self.beta, self.eps, comm=self.comm)
        self._saved = (x, mean, var)
        # the global count m of the unbiased running variance is the global batch size
        self.running_mean, self.running_var = bnref.update_running(
            self.running_mean, self.running_var, mean, var, self.batch_size, self.momentum)
        return ys[0]

    def backward(self, dy):
        if self._saved is None:
            raise RuntimeError("SyncBatchNorm.backward needs a forward with training=True first")
        x, mean, var = self._saved
        dxs, dgamma, dbeta = sync.backward_sharded([dy], [x], self.gamma, mean, var, self.eps, comm=self.comm)
        self.grads[0][...] = dgamma
        self.grads[1][...] = dbeta
        return dxs[0]


class ShardedDropout(Dropout):
    """:class:`Dropout` drawing the whole global batch's uniforms and keeping this process's rows."""

    def __init__(self, p: float, rng: np.random.Generator, dp: DataParallel):
        super().__init__(p, rng)
        self.dp = dp

    def _uniform(self, x):
        full = self._buffer("global uniforms", (self.dp.batch_size, *x.shape[1:]), x.dtype)
        self.rng.random(out=full, dtype=full.dtype)
        mask = self._like("mask", x)
        mask[...] = full[self.dp.rows]
        return mask


class ShardedNLL(LogSoftmaxNLL):
    """:class:`LogSoftmaxNLL` over this process's rows, as a part of the global batch's mean."""

    def __init__(self, dp: DataParallel):
        self.dp = dp

    def forward(self, logits, labels):
        loss = super().forward(logits, labels)
        self.batch_size = self.dp.batch_size
        return loss


# --------------------------------------------------------------------------- self-check under mpiexec

def check(comm: sync.Communicator, steps: int = 30, seed: int = 3) -> list[str]:
    """Train a small seed-like network data-parallel and in one process; return what disagrees.

    Run by every process of ``mpiexec -n P python -m bnref.mnist.parallel``. Random images and
    labels suffice: the two runs see the same data, which is all the comparison needs. Expected:
    the same curve to float32 rounding (losses within 1e-4 relative), and bit-identical replicas.
    """
    from dataclasses import replace

    from bnref.mnist.data import Mnist
    from bnref.mnist.train import PRESETS, train

    rng = np.random.default_rng(0)
    data = Mnist(rng.random((600, 784), dtype=np.float32), rng.integers(0, 10, 600),
                 rng.random((200, 784), dtype=np.float32), rng.integers(0, 10, 200))
    preset = replace(PRESETS["seed"], hidden=(64,) * 3, dropout=(0.1, 0.5, 0.5), epochs=None, steps=steps,
                     eval_every=10, lr=0.05, batch_size=60)
    parallel = train(preset, data, bn=True, seed=seed, progress=False, comm=comm)
    single = train(preset, data, bn=True, seed=seed, progress=False)
    problems = []
    # replicas with different weights would evaluate differently: compare every process's curve
    curves = comm.allgather([np.array([r["test_loss"] for r in parallel])])
    if not np.all(curves == curves[0]):
        problems.append(f"the processes' test losses differ: the replicas drifted apart: {curves.tolist()}")
    for a, b in zip(parallel, single):
        for key in ("train_loss", "test_loss"):
            if a[key] is not None and abs(a[key] - b[key]) > 1e-4 * abs(b[key]):
                problems.append(f"step {a['step']}: {key} {a[key]!r} (data-parallel) vs {b[key]!r} (one process)")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``mpiexec -n P python -m bnref.mnist.parallel``: exit 0 when :func:`check` finds nothing on any process."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bnref.mnist.parallel", description=check.__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    from bnref.sync.testing import verdict

    comm = sync.MPI()
    claim = f"{args.steps} data-parallel steps follow the one-process run, replicas identical,"
    return verdict(comm, "bnref.mnist.parallel", check(comm, args.steps), claim)


if __name__ == "__main__":
    import sys

    sys.exit(main())
