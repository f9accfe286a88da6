"""docs/conformance.md is a real run, and every failure on it is explained and reproduced.

The page's matrix and conventions table are ``bnref conformance merge docs/data/conformance.json``;
every FAIL cell of that run is explained by a record of ``docs/repro/findings.py``, whose reproduction
script exists and is run by ``tests/test_repro.py``; every record explains a cell of the run (no stale
finding); the page's findings table is the catalogue's rendering of the run.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from bnref import conformance

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data" / "conformance.json"
PAGE = ROOT / "docs" / "conformance.md"


def _findings():
    spec = importlib.util.spec_from_file_location("bnref_docs_findings", ROOT / "docs" / "repro" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def findings():
    return _findings()


@pytest.fixture(scope="module")
def fails(findings):
    return findings.fail_cells(str(DATA))


def test_page_shows_the_stored_run(tmp_path):
    """Every line of the matrix and of the conventions table rendered from the stored run is on the page."""
    runs, rows, _ = conformance.write_outputs(conformance.load_runs(DATA), tmp_path)
    page = PAGE.read_text(encoding="utf-8")
    tables = [line for line in (tmp_path / "conformance.md").read_text(encoding="utf-8").splitlines()
              if line.startswith("|")]
    assert len(tables) > 30
    missing = [line[:120] for line in tables if line not in page]
    assert not missing, missing
    assert all(run.outcome == conformance.REPORT for run in runs)


def test_the_run_covers_twelve_implementations_across_eight_libraries():
    runs = conformance.load_runs(DATA)
    targets = {run.target for run in runs if run.outcome == conformance.REPORT}
    # the framework a target checks: its top-level module, bnref's own adapters and the seed post apart
    libraries = {(conformance.REQUIRES.get(t) or (t.split("-")[0],)) for t in targets}
    libraries = {lib if isinstance(lib, str) else lib[0] for lib in libraries}
    assert len(targets) >= 12 and len(libraries) >= 8, (sorted(targets), sorted(libraries))


def test_every_failure_is_explained(findings, fails):
    unexplained = sorted(cell for cell in fails if not any(f.explains(*cell) for f in findings.FINDINGS))
    assert not unexplained


def test_every_finding_explains_a_failure_of_the_run(findings, fails):
    stale = [f.title for f, cells in findings.explained_by(fails).items() if not cells]
    assert not stale


def test_every_finding_has_a_reproduction_that_a_test_runs(findings):
    tests = (ROOT / "tests" / "test_repro.py").read_text(encoding="utf-8")
    loaded = set(re.findall(r'load\("(\w+)"\)', tests)) | set(re.findall(r'REPRO / "(\w+)\.py"', tests))
    for f in findings.FINDINGS:
        assert (ROOT / "docs" / "repro" / f.repro).is_file(), f.repro
        assert f.repro.removesuffix(".py") in loaded, f"tests/test_repro.py does not run {f.repro}"
        assert "import bnref" not in (ROOT / "docs" / "repro" / f.repro).read_text(encoding="utf-8")


def test_every_finding_links_its_section(findings):
    page = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    for f in findings.FINDINGS:
        assert "{ #" + f.anchor + " }" in page, f.anchor


def test_page_findings_table_is_the_catalogue(findings, fails):
    table = findings.markdown_table(fails)
    assert table in PAGE.read_text(encoding="utf-8"), "python docs/repro/findings.py prints the table to paste"
