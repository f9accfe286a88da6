"""The checks check: the catalogue's broken batch norms must fail the assertions the real kernels pass.

bnref.testing.check_against_reference compares forward, backward and double backward; every
mutant of tests/mutants that declares one of those properties goes through it with bnref's
signatures (tests.mutants.AsBnref) and must be caught.
"""
import numpy as np
import pytest

import bnref
from bnref.strategies import CONDITIONS, make_case
from bnref.testing import check_against_reference
from tests.mutants import MUTANTS, AsBnref, CorrectBN

#: a small fixed battery: both layouts, rank 2-5, both dtypes, every condition
CASES = [make_case(shape, dtype, axis, condition, seed=seed, eps=eps)
         for seed, (shape, axis, eps) in enumerate([((6, 3), 1, 1e-5), ((4, 3, 5), 1, 1e-3),
                                                     ((3, 4, 4, 2), -1, 1e-5), ((2, 3, 2, 2, 3), 1, 0.1)])
         for dtype in ("float32", "float64") for condition in CONDITIONS]

#: the oracle properties that check_against_reference also compares -> the quantities it names for them
COMPARED = {"forward": ("y", "mean", "var"), "backward": ("dx", "dgamma", "dbeta"),
            "double_backward": ("gx", "ggamma", "gdy")}
CHECKED_MUTANTS = [m for m in MUTANTS if set(COMPARED) & set(m.breaks)]


def _caught(impl) -> list[str]:
    caught = []
    for case in CASES:
        try:
            with np.errstate(all="ignore"):  # a mutant's NaN is a finding, reported by the comparison
                check_against_reference(impl, case)
        except AssertionError as exc:
            caught.append(str(exc).splitlines()[0])
    return caught


def test_the_plain_numpy_formulas_pass():
    """The mutants' unbroken base passes: what fails below fails because of its one mutation."""
    assert _caught(AsBnref(CorrectBN)) == []


def test_the_real_kernels_pass():
    assert _caught(bnref) == []


def test_every_compared_quantity_has_mutants():
    for prop in COMPARED:
        assert any(prop in m.breaks for m in CHECKED_MUTANTS), prop


@pytest.mark.parametrize("mutant", CHECKED_MUTANTS, ids=lambda m: m.__name__)
def test_every_mutant_is_caught(mutant):
    caught = _caught(AsBnref(mutant))
    assert caught, f"{mutant.__name__} ({mutant.__doc__.splitlines()[0]}) passed every case"
    # caught by a quantity of a property it declares, not by an accident elsewhere
    declared = {q for prop in set(COMPARED) & set(mutant.breaks) for q in COMPARED[prop]}
    assert any(line.split(":", 1)[0] in declared for line in caught), caught
