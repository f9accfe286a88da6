"""Broken batch norms that the checks must fail, and the correct base they are cut from.

``bnref check tests.mutants:NaiveVariance`` (from the repository root) checks one of them;
:data:`MUTANTS` lists them all, each naming in ``breaks`` the oracle properties it must fail.
:class:`AsBnref` and :class:`AsSync` give any of them bnref's and bnref.sync's signatures.
"""
from tests.mutants._base import CorrectBN
from tests.mutants.catalogue import *  # noqa: F401,F403  (the mutants, by class name)
from tests.mutants.catalogue import MUTANTS
from tests.mutants.signatures import AsBnref, AsSync

__all__ = ["CorrectBN", "MUTANTS", "AsBnref", "AsSync", "markdown_table"] + [m.__name__ for m in MUTANTS]


def markdown_table() -> str:
    """The catalogue as the Markdown table docs/oracle.md shows (a test keeps the two equal)."""
    from bnref._table import render

    def fails(mutant):
        found = [f"`{p}`" for p in mutant.breaks]
        found += [f"bnref.sync's `{q}`" for q in getattr(mutant, "sync_breaks", ())]
        return ", ".join(found)

    rows = [(f"`{m.__name__}`", m.__doc__.strip().splitlines()[0], fails(m)) for m in MUTANTS]
    return render(("mutant", "bug", "fails"), rows, style="markdown")
