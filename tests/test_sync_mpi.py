"""CI's MPI tests, each a 2-process ``mpiexec`` run checked against a one-process run:

* ``python -m bnref.sync.mpi_check``: the MPI backend bit-identical to the in-process one;
* ``python -m bnref.mnist.parallel``: data-parallel training following the one-process curve.

Skipped only when mpi4py or mpiexec is missing (the ``test`` extra installs both). Each run is a
subprocess group with a time limit, killed whole if it hangs.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnref._threads import environment

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 300  # a fresh Numba cache compiles the kernels in both processes first
PROCESSES = 2


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpirun(module: str) -> str:
    """Output of ``mpiexec -n 2 python -m module``, asserting exit code 0 within the time limit."""
    pytest.importorskip("mpi4py")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    # one thread per process: two processes share the machine with the other test workers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **environment(threads=1))
    command = [mpiexec, "-n", str(PROCESSES), sys.executable, "-m", module]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {TIME_LIMIT_S} s (a hang?):\n{output}")
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{output}"
    return output


def test_mpi_backend_matches_in_process():
    from bnref.sync.mpi_check import CASES

    output = _mpirun("bnref.sync.mpi_check")
    assert f"bnref.sync.mpi_check: OK: {len(CASES)} cases and 2 error checks" in output, output


def test_data_parallel_mnist_follows_the_single_process_run():
    output = _mpirun("bnref.mnist.parallel")
    assert "bnref.mnist.parallel: OK: 30 data-parallel steps follow the one-process run" in output, output
