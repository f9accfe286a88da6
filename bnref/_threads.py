"""Thread control for bnref's programs and tests: the one place that sets thread counts.

Two kinds of setting, applied at two moments:

* Variables read once, when a runtime loads: the thread counts (:data:`THREAD_COUNT_VARS`) and how
  long idle threads spin (:func:`defaults`). OpenBLAS reads its variables when NumPy loads it, which
  ``import bnref`` has done before any of bnref's code runs, so a program that wants them re-executes
  itself with them set: :func:`reexec` (``bnref mnist``, ``bnref mnist bench``), or starts its child
  processes with :func:`environment` (the MPI tests).
* Counts that can change at run time: :func:`limit_threads` sets Numba's, PyTorch's (when imported)
  and, through threadpoolctl (when installed), the BLAS and OpenMP pools', and restores them.

Why short spins: Numba's threading layer ``omp`` brings an OpenMP runtime (libgomp), whose idle
threads spin after every parallel region, by default for up to 300 000 spins; OpenBLAS's threads
spin after every product, by default for 2^28 cycles (about 0.1 s). On a machine with as many
cores as threads, the spinning threads of one library take the cores from the next one's, and a
network that alternates BLAS products with bnref's kernels runs several times slower. Not spinning
at all costs a sleeping thread's wake-up at the start of every parallel region, which a short spin
mostly avoids. These are choices for a whole process, so the library never makes them on import:
bnref's programs apply them, and a program that imports bnref as a library can set the same
variables itself. A variable the user set is never changed.
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys

#: GOMP_SPINCOUNT: an idle libgomp thread spins for about 0.1-0.3 ms, then sleeps
SPIN_COUNT = 10_000
#: OPENBLAS_THREAD_TIMEOUT: 2^4 cycles, the least OpenBLAS takes: its threads sleep when a product ends
BLAS_THREAD_TIMEOUT = 4
#: the variables that fix a runtime's thread count when it loads: OpenMP, OpenBLAS, MKL, Numba
THREAD_COUNT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: set by :func:`reexec` in the process it starts, to what it was asked for, so that it never loops
REEXEC_MARK = "BNREF_REEXEC"


def defaults(environ=os.environ) -> dict[str, str]:
    """The spin variables to add to ``environ``: those the user has not chosen.

    ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT` unless ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is set;
    ``OPENBLAS_THREAD_TIMEOUT`` = :data:`BLAS_THREAD_TIMEOUT` unless it is set.
    """
    add = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        add["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    if "OPENBLAS_THREAD_TIMEOUT" not in environ:
        add["OPENBLAS_THREAD_TIMEOUT"] = str(BLAS_THREAD_TIMEOUT)
    return add


def _check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int; got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    return threads


def environment(threads: int | None = None, environ=os.environ) -> dict[str, str]:
    """The variables to add for a process started with bnref's thread settings.

    :func:`defaults` of ``environ``, and, when ``threads`` is given, every variable of
    :data:`THREAD_COUNT_VARS` set to it (an explicit count overrides the environment's).

    Raises:
        TypeError, ValueError: ``threads`` is not an int >= 1.
    """
    add = defaults(environ)
    if threads is not None:
        add.update({var: str(_check_threads(threads)) for var in THREAD_COUNT_VARS})
    return add


def short_openmp_spin() -> None:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the environment already chose
    (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``). Takes effect only for runtimes that start
    afterwards: call it before importing torch and before the first parallel kernel runs."""
    spin = defaults().get("GOMP_SPINCOUNT")
    if spin is not None:
        os.environ["GOMP_SPINCOUNT"] = spin


def reexec(args: list[str], *, threads: int | None = None) -> int | None:
    """Run ``python -m bnref ARGS`` again with :func:`environment` (``threads``) set, if anything is missing.

    Returns None when this process can go on: nothing is missing, or this process was started by
    the same request already (:data:`REEXEC_MARK`), or only the spin defaults are missing and the
    platform is not POSIX (a speed choice, not worth a second process there). On POSIX the process
    is replaced and the call never returns. Elsewhere, with ``threads`` given, the command runs as a
    child process and its exit status is returned: ``os.exec*`` there starts a new process and ends
    this one without waiting for it.

    Raises:
        TypeError, ValueError: ``threads`` is not an int >= 1.
    """
    add = {var: value for var, value in environment(threads).items() if os.environ.get(var) != value}
    request = "defaults" if threads is None else f"threads={threads}"
    if not add or os.environ.get(REEXEC_MARK) == request:
        return None
    if os.name != "posix" and threads is None:
        return None
    env = dict(os.environ, **add, **{REEXEC_MARK: request})
    command = [sys.executable, "-m", "bnref", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, command, env)
    return subprocess.call(command, env=env)


@contextlib.contextmanager
def limit_threads(threads: int, *, blas: bool = True):
    """Run the ``with`` block on ``threads`` threads, then restore the previous counts.

    Sets Numba's count (at most ``NUMBA_NUM_THREADS``, the size of its pool), PyTorch's intra-op count
    when torch has been imported, and, when ``blas`` is true and threadpoolctl is installed, the
    BLAS and OpenMP pools it finds. threadpoolctl scans the loaded libraries on every call (about
    1 ms), so code that only runs bnref's kernels many times over passes ``blas=False``.

    Raises:
        TypeError, ValueError: ``threads`` is not an int >= 1.
    """
    import numba

    _check_threads(threads)
    torch = sys.modules.get("torch")
    previous_numba = numba.get_num_threads()
    previous_torch = torch.get_num_threads() if torch is not None else None
    controller = None
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if torch is not None:
            torch.set_num_threads(threads)
        if blas:
            try:
                from threadpoolctl import threadpool_limits
            except ModuleNotFoundError:
                pass
            else:
                controller = threadpool_limits(limits=threads)
        yield
    finally:
        if controller is not None:
            controller.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(previous_torch)
        numba.set_num_threads(previous_numba)


def single_threaded(method):
    """``method`` run under ``limit_threads(1, blas=False)``: for the oracle's candidates, whose arrays are
    tiny, so that waking a pool of threads for each call costs far more than the work, and on a machine
    whose cores are busy many times more (a forward + backward about 100x slower). BN kernels call no
    BLAS, so its pools are left alone."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with limit_threads(1, blas=False):
            return method(*args, **kwargs)

    return wrapper
