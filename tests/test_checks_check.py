"""The checks check: deliberately broken kernels must fail the same assertions the real ones pass."""
import pytest

import bnref
from bnref.strategies import CONDITIONS, make_case
from bnref.testing import check_against_reference
from tests.broken_kernels import MUTANTS, Correct

#: a small fixed battery: every layout, rank 2-5, both dtypes, every condition
CASES = [make_case(shape, dtype, axis, condition, seed=seed, eps=eps)
         for seed, (shape, axis, eps) in enumerate([((6, 3), 1, 1e-5), ((4, 3, 5), 1, 1e-3),
                                                     ((3, 4, 4, 2), -1, 1e-5), ((2, 3, 2, 2, 3), 1, 0.1)])
         for dtype in ("float32", "float64") for condition in CONDITIONS]


def _caught(impl) -> list[str]:
    caught = []
    for case in CASES:
        try:
            check_against_reference(impl, case)
        except AssertionError as exc:
            caught.append(str(exc).splitlines()[0])
    return caught


def test_the_plain_numpy_formulas_pass():
    """The mutants' unbroken base passes: what fails below fails because of its one mutation."""
    assert _caught(Correct()) == []


def test_the_real_kernels_pass():
    assert _caught(bnref) == []


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.__name__)
def test_every_mutant_is_caught(mutant):
    caught = _caught(mutant())
    assert caught, f"{mutant.__name__} ({mutant.__doc__.strip()}) passed every case"
