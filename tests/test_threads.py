"""bnref's thread control: short spins by default without overriding what the user chose, one
re-exec that never loops, and a thread limit that is restored afterwards."""
import sys

import numba
import pytest

from bnref import _threads

SPIN = {"GOMP_SPINCOUNT": str(_threads.SPIN_COUNT)}
BLAS = {"OPENBLAS_THREAD_TIMEOUT": str(_threads.BLAS_THREAD_TIMEOUT)}
ALL = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", _threads.REEXEC_MARK,
       *_threads.THREAD_COUNT_VARS)


@pytest.mark.parametrize("env, added", [
    ({}, {**SPIN, **BLAS}),                                    # nothing chosen: both short
    ({"GOMP_SPINCOUNT": "5"}, BLAS),                           # the user's spin count stays
    ({"OMP_WAIT_POLICY": "PASSIVE"}, BLAS),                    # a wait policy: no spin count
    ({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "28"}, {}),
])
def test_defaults_add_only_what_the_user_did_not_choose(env, added):
    assert _threads.defaults(env) == added


def test_environment_with_a_count_sets_every_count_variable():
    env = {"OMP_NUM_THREADS": "8", "GOMP_SPINCOUNT": "5"}
    assert _threads.environment(3, env) == {**BLAS, **{var: "3" for var in _threads.THREAD_COUNT_VARS}}
    assert _threads.environment(None, env) == BLAS


@pytest.mark.parametrize("threads, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_thread_count_is_rejected(threads, error):
    with pytest.raises(error, match="threads"):
        _threads.environment(threads)
    with pytest.raises(error, match="threads"):
        with _threads.limit_threads(threads):
            pass


def test_short_openmp_spin_sets_only_an_unset_spin(monkeypatch):
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    _threads.short_openmp_spin()
    assert _threads.os.environ["GOMP_SPINCOUNT"] == SPIN["GOMP_SPINCOUNT"]
    assert "OPENBLAS_THREAD_TIMEOUT" not in _threads.os.environ  # BLAS has loaded: needs a re-exec
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    _threads.short_openmp_spin()
    assert _threads.os.environ["GOMP_SPINCOUNT"] == "7"


class Replaced(Exception):
    """Stands for the end of the process that ``os.execve`` replaces."""


@pytest.fixture
def execs(monkeypatch):
    """Records the re-execs instead of doing them; a clean thread environment."""
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise Replaced

    for var in ALL:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_threads.os, "execve", execve)
    monkeypatch.setattr(_threads.subprocess, "call", lambda args, env: calls.append((args[0], args, env)) or 0)
    return calls


def reexec(*args, **kwargs):
    """:func:`_threads.reexec`'s result, or "replaced" when it replaced the process."""
    try:
        return _threads.reexec(*args, **kwargs)
    except Replaced:
        return "replaced"


def test_reexec_does_nothing_when_all_is_set_or_already_done(execs, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "1")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")
    assert _threads.reexec(["mnist"]) is None
    for var in _threads.THREAD_COUNT_VARS:
        monkeypatch.setenv(var, "2")
    assert _threads.reexec(["mnist", "bench"], threads=2) is None
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT")
    monkeypatch.setenv(_threads.REEXEC_MARK, "defaults")  # started by this very request: never again
    assert _threads.reexec(["mnist"]) is None
    assert not execs


def test_reexec_runs_python_m_bnref_with_the_defaults(execs):
    assert reexec(["mnist", "--steps", "3"]) == ("replaced" if _threads.os.name == "posix" else None)
    if _threads.os.name != "posix":
        assert not execs  # the spin defaults alone are not worth a second process there
        return
    (path, args, env), = execs
    assert args[1:] == ["-m", "bnref", "mnist", "--steps", "3"] and path == args[0] == sys.executable
    assert env["GOMP_SPINCOUNT"] == SPIN["GOMP_SPINCOUNT"] and env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert env[_threads.REEXEC_MARK] == "defaults"
    assert not any(var in env for var in _threads.THREAD_COUNT_VARS)


def test_reexec_with_a_count_after_the_defaults_runs_again(execs, monkeypatch):
    """``bnref mnist bench --threads 3``: the command line's re-exec set the spins; the bench's own
    request (thread counts) still re-executes once, and not a second time."""
    monkeypatch.setenv(_threads.REEXEC_MARK, "defaults")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")
    status = reexec(["mnist", "bench", "--threads", "3"], threads=3)
    (_, args, env), = execs
    assert args[1:] == ["-m", "bnref", "mnist", "bench", "--threads", "3"]
    assert all(env[var] == "3" for var in _threads.THREAD_COUNT_VARS)
    assert env[_threads.REEXEC_MARK] == "threads=3"
    assert status == ("replaced" if _threads.os.name == "posix" else 0)
    for var, value in env.items():  # what the new process sees: nothing left to do
        monkeypatch.setenv(var, value)
    assert _threads.reexec(["mnist", "bench", "--threads", "3"], threads=3) is None
    assert len(execs) == 1


def _counts(torch):
    from threadpoolctl import threadpool_info

    return (numba.get_num_threads(), torch.get_num_threads(),
            sorted((pool["filepath"], pool["num_threads"]) for pool in threadpool_info()))


def test_limit_threads_sets_and_restores_every_count():
    """Numba, torch (imported) and the BLAS/OpenMP pools go to 1 inside and back to 2 afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    torch = pytest.importorskip("torch")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with one thread: no count to change")
    numba_before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    try:
        numba.set_num_threads(2)
        torch.set_num_threads(2)
        with threadpoolctl.threadpool_limits(2):
            before = _counts(torch)
            assert before[0] == before[1] == 2
            with _threads.limit_threads(1):
                numba_inside, torch_inside, pools_inside = _counts(torch)
                assert numba_inside == torch_inside == 1
                assert pools_inside and all(n == 1 for _, n in pools_inside)
            assert _counts(torch) == before
    finally:
        numba.set_num_threads(numba_before)
        torch.set_num_threads(torch_before)


def test_limit_threads_restores_after_an_error():
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with _threads.limit_threads(1, blas=False):
            assert numba.get_num_threads() == 1
            raise RuntimeError("inside")
    assert numba.get_num_threads() == before


def test_limit_threads_caps_numba_at_its_pool():
    with _threads.limit_threads(numba.config.NUMBA_NUM_THREADS + 5, blas=False):
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
