"""Broken batch norms that the checks must fail, and the correct base they are cut from.

``bnref check tests.mutants:NaiveVariance`` (from the repository root) checks one of them;
:data:`MUTANTS` lists them all, each naming in ``breaks`` the oracle properties it must fail.
:class:`AsBnref` and :class:`AsSync` give any of them bnref's and bnref.sync's signatures.
"""
from tests.mutants._base import CorrectBN
from tests.mutants.catalogue import *  # noqa: F401,F403  (the mutants, by class name)
from tests.mutants.catalogue import MUTANTS
from tests.mutants.signatures import AsBnref, AsSync

__all__ = ["CorrectBN", "MUTANTS", "AsBnref", "AsSync"] + [m.__name__ for m in MUTANTS]
