r"""Synchronized (cross-replica) batch norm: one batch split into shards, statistics of the whole.

When a batch is split across devices or processes, batch norm must normalize with the
statistics of the *whole* batch (PyTorch ``SyncBatchNorm``, Flax ``BatchNorm(axis_name=...)``,
Keras ``synchronized=True``). This module is the reference for that: each shard's local work
runs on bnref's kernels; a :class:`Communicator` gathers per-channel vectors; the merge is
Chan et al.'s parallel update of ``(count, mean, M2)``, in a canonical order::

    ys, mean, var     = forward_train_sharded(xs, gamma, beta, eps=1e-5, channel_axis=1, comm=None)
    dxs, dgamma, dbeta = backward_sharded(dys, xs, gamma, mean, var, eps=1e-5, channel_axis=1, comm=None)
    new_mean, new_var = update_running_sharded(running_mean, running_var, mean, var, xs, momentum=0.1)
    count, mean, var  = moments_sharded(xs, channel_axis=1, comm=None)

``xs`` is the list of shards this process holds (any sizes, 1 and 0 included). With the
default :class:`InProcess` communicator it is the whole batch; under ``mpiexec`` with
:class:`MPI`, each process passes its own shards and gets the same global statistics.
Results equal :func:`bnref.forward_train` / :func:`bnref.backward` /
:func:`bnref.update_running` on the concatenated batch, to rounding, and are bit-identical
on every process and for any assignment of shards to processes.

``python -m bnref.sync.mpi_check`` (under ``mpiexec -n P``) checks an MPI installation
against the in-process backend.
"""
from bnref.sync._comm import MPI as MPI
from bnref.sync._comm import Communicator as Communicator
from bnref.sync._comm import InProcess as InProcess
from bnref.sync._sharded import Moments as Moments
from bnref.sync._sharded import backward_sharded as backward_sharded
from bnref.sync._sharded import forward_train_sharded as forward_train_sharded
from bnref.sync._sharded import global_count as global_count
from bnref.sync._sharded import moments_sharded as moments_sharded
from bnref.sync._sharded import update_running_sharded as update_running_sharded

__all__ = ["Communicator", "InProcess", "MPI", "Moments", "moments_sharded", "forward_train_sharded",
           "backward_sharded", "global_count", "update_running_sharded"]
