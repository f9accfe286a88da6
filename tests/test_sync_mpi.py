"""CI's MPI test (issue 7): ``mpiexec -n 2 python -m bnref.sync.mpi_check`` against the in-process backend.

Skipped only when mpi4py or mpiexec is missing (the ``test`` extra installs both). The run is
a subprocess group with a time limit, killed whole if it hangs.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnref.sync.mpi_check import CASES

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 300  # a fresh Numba cache compiles the kernels in both processes first


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@pytest.mark.parametrize("processes", [2])
def test_mpi_backend_matches_in_process(processes):
    pytest.importorskip("mpi4py")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    command = [mpiexec, "-n", str(processes), sys.executable, "-m", "bnref.sync.mpi_check"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {TIME_LIMIT_S} s (a hang?):\n{output}")
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{output}"
    assert f"OK: {len(CASES)} cases and 2 error checks on {processes} process(es)" in output, output
