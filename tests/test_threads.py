"""bnref's programs default the OpenMP and OpenBLAS spins to short ones, and never override what
the user chose."""
import pytest

from bnref import _threads

SPIN = {"GOMP_SPINCOUNT": str(_threads.SPIN_COUNT)}
BLAS = {"OPENBLAS_THREAD_TIMEOUT": str(_threads.BLAS_THREAD_TIMEOUT)}


@pytest.mark.parametrize("env, added", [
    ({}, {**SPIN, **BLAS}),                                    # nothing chosen: both short
    ({"GOMP_SPINCOUNT": "5"}, BLAS),                           # the user's spin count stays
    ({"OMP_WAIT_POLICY": "PASSIVE"}, BLAS),                    # a wait policy: no spin count
    ({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "28"}, {}),
])
def test_defaults_add_only_what_the_user_did_not_choose(env, added):
    assert _threads.defaults(env) == added


def test_short_openmp_spin_sets_only_an_unset_spin(monkeypatch):
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    _threads.short_openmp_spin()
    assert _threads.os.environ["GOMP_SPINCOUNT"] == SPIN["GOMP_SPINCOUNT"]
    assert "OPENBLAS_THREAD_TIMEOUT" not in _threads.os.environ  # BLAS has loaded: needs a re-exec
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    _threads.short_openmp_spin()
    assert _threads.os.environ["GOMP_SPINCOUNT"] == "7"


def test_reexec_does_nothing_when_all_is_set_or_already_done(monkeypatch):
    monkeypatch.setattr(_threads.os, "execve", lambda *a: pytest.fail("must not re-exec"))
    monkeypatch.setenv("GOMP_SPINCOUNT", "1")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")
    _threads.reexec_with_defaults(["mnist"])
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT")
    monkeypatch.setenv(_threads._MARK, "1")
    _threads.reexec_with_defaults(["mnist"])


def test_reexec_runs_python_m_bnref_with_the_defaults(monkeypatch):
    calls = []
    monkeypatch.setattr(_threads.os, "execve", lambda path, args, env: calls.append((path, args, env)))
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", _threads._MARK):
        monkeypatch.delenv(var, raising=False)
    _threads.reexec_with_defaults(["mnist", "--steps", "3"])
    if _threads.os.name != "posix":
        assert not calls
        return
    (path, args, env), = calls
    assert args[1:] == ["-m", "bnref", "mnist", "--steps", "3"] and path == args[0]
    assert env["GOMP_SPINCOUNT"] == SPIN["GOMP_SPINCOUNT"] and env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert env[_threads._MARK] == "1"
