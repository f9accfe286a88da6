"""The oracle's meta-tests: broken batch norms that ``bnref check`` must fail.

``bnref check tests.mutants:NaiveVariance`` (from the repository root) checks one of them;
:data:`MUTANTS` lists them all, each naming the property it breaks in ``breaks``.
"""
from tests.mutants._base import CorrectBN
from tests.mutants.catalogue import *  # noqa: F401,F403  (the mutants, by class name)
from tests.mutants.catalogue import MUTANTS

__all__ = ["CorrectBN", "MUTANTS"] + [m.__name__ for m in MUTANTS]
