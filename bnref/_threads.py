"""Process-wide thread defaults for bnref's own programs (``bnref mnist``, ``bnref bench``).

Numba's threading layer ``omp`` brings an OpenMP runtime (libgomp), whose idle threads spin
after every parallel region, by default for up to 300 000 spins; OpenBLAS's threads spin after
every product, by default for 2^28 cycles (about 0.1 s). On a machine with as many cores as
threads, the spinning threads of one library take the cores from the next one's. Measured on
a 2-vCPU AMD EPYC VM, the seed MNIST network at 2 threads (OpenBLAS products between bnref's
kernels): 177-182 ms a step with both defaults, 43 ms with the short OpenMP spin below, 33 ms
with OpenBLAS's threads sleeping at once as well (54 ms at 1 thread); a 784x784 product and a
(100, 784) forward and backward: 10.0, 2.2 and 1.9 ms.

Not spinning at all costs a sleeping thread's wake-up (about 80 us on a 2-core VM) at the start
of every parallel region, which a short spin mostly avoids. These are choices for a whole
process, so the library never makes them: bnref's programs apply :func:`defaults` before the
runtimes start (:func:`short_openmp_spin`, :func:`reexec_with_defaults`), and a program that
imports bnref as a library can set the same variables itself. A variable the user set is
never changed.
"""
from __future__ import annotations

import os
import sys

#: GOMP_SPINCOUNT: an idle libgomp thread spins for about 0.1-0.3 ms, then sleeps
SPIN_COUNT = 10_000
#: OPENBLAS_THREAD_TIMEOUT: 2^4 cycles, the least OpenBLAS takes: its threads sleep when a
#: product ends (a 784x784 product plus a batch norm: 1.97 ms at 4, 2.2 ms at 12-20, 3.1 at 28)
BLAS_THREAD_TIMEOUT = 4
#: set in a process that :func:`reexec_with_defaults` started, so that it never loops
_MARK = "BNREF_THREAD_DEFAULTS"


def defaults(environ=os.environ) -> dict[str, str]:
    """The thread variables to add to ``environ``: those the user has not chosen."""
    add = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        add["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    if "OPENBLAS_THREAD_TIMEOUT" not in environ:
        add["OPENBLAS_THREAD_TIMEOUT"] = str(BLAS_THREAD_TIMEOUT)
    return add


def short_openmp_spin() -> None:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the environment already chose
    (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``). Takes effect only for runtimes that start
    afterwards: call it before importing torch and before the first parallel kernel runs."""
    spin = defaults().get("GOMP_SPINCOUNT")
    if spin is not None:
        os.environ["GOMP_SPINCOUNT"] = spin


def reexec_with_defaults(args: list[str]) -> None:
    """Replace this process by ``python -m bnref ARGS`` with :func:`defaults` added, if any is
    missing (POSIX only; otherwise return). OpenBLAS reads its variables when NumPy loads it,
    which ``import bnref`` has done before any of bnref's code could set them."""
    add = defaults()
    if not add or os.environ.get(_MARK) == "1" or os.name != "posix":
        return
    env = dict(os.environ, **add, **{_MARK: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bnref", *args], env)
