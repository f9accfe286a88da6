"""bnref's programs default libgomp to a short spin, and never override what the user chose."""
import os

import pytest

from bnref import _threads


@pytest.mark.parametrize("env, expected", [
    ({}, str(_threads.SPIN_COUNT)),                     # nothing chosen: the short spin
    ({"GOMP_SPINCOUNT": "5"}, "5"),                    # the user's spin count stays
    ({"OMP_WAIT_POLICY": "PASSIVE"}, None),            # a wait policy: no spin count added
    ({"OMP_WAIT_POLICY": "ACTIVE"}, None),
])
def test_short_openmp_spin_respects_the_environment(monkeypatch, env, expected):
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    _threads.short_openmp_spin()
    assert os.environ.get("GOMP_SPINCOUNT") == expected
    assert os.environ.get("OMP_WAIT_POLICY") == env.get("OMP_WAIT_POLICY")
