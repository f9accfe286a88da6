"""Process-wide OpenMP defaults for bnref's own programs (``bnref bench``, ``bnref mnist``).

Numba's threading layer ``omp`` brings an OpenMP runtime (libgomp), whose idle threads spin
after every parallel region, by default for up to 300 000 spins, and OpenBLAS and PyTorch
bring threads of their own. On a machine with as many cores as threads, the spinning threads
of one library take the cores from the next one's: the seed MNIST network at 2 threads (NumPy's
OpenBLAS matrix products between bnref's kernels) took 177-182 ms a step with libgomp's default
spin and 54 ms at 1 thread (AMD EPYC, 2 vCPUs); a 784x784 product plus a (100, 784) forward and
backward took 10.0 ms with the default spin and 2.2 ms with :data:`SPIN_COUNT`.

Not spinning at all (``OMP_WAIT_POLICY=PASSIVE``) costs a sleeping thread's wake-up, about
80 us on a 2-core VM, at the start of every parallel region. A short spin, then sleep, keeps
most of both. This is a choice for a whole process, so the library never makes it: the
programs call :func:`short_openmp_spin` before any OpenMP runtime starts, and a program that
imports bnref as a library can set the same variable itself.
"""
from __future__ import annotations

import os

#: GOMP_SPINCOUNT for every libgomp in the process: an idle thread spins for about 0.1-0.3 ms,
#: then sleeps
SPIN_COUNT = 10_000


def short_openmp_spin() -> None:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the environment already chose
    (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``). Takes effect only for runtimes that start
    afterwards: call it before importing torch and before the first parallel kernel runs."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
