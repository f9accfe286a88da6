"""The docs, the proofs and the kernels cannot drift apart: checks on docs/ itself.

* every proof quotes (``>`` lines of its docstring) equations that appear verbatim in
  the step of docs/derivation.md its docstring names (``Step N``);
* every proof is linked from docs/derivation.md and every link there names a proof;
* the Python examples of docs/index.md run.
"""
from __future__ import annotations

import re

import pytest

from proofs._catalog import DERIVATION, ROOT, proofs

LINK = re.compile(r"\(proofs/(test_\w+)\.md#(test_\w+)\)")
STEP = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _squash(text: str) -> str:
    return " ".join(text.split())


def derivation_steps() -> dict[int, str]:
    text = DERIVATION.read_text(encoding="utf-8")
    starts = list(STEP.finditer(text)) + [None]
    return {int(a.group(1)): text[a.start():b.start() if b else len(text)]
            for a, b in zip(starts, starts[1:])}


@pytest.mark.parametrize("proof", proofs(), ids=lambda p: f"{p.module}::{p.name}")
def test_proof_quotes_its_step(proof):
    step = re.match(r"Steps? (\d+(?:(?:, | and )\d+)*)", proof.docstring)
    assert step, f"{proof.module}.{proof.name}: the docstring must start with 'Step N'"
    assert proof.quotes, f"{proof.module}.{proof.name} quotes nothing from docs/derivation.md"
    numbers = [int(n) for n in re.findall(r"\d+", step.group(1))]
    sections = _squash(" ".join(derivation_steps()[n] for n in numbers))
    for quote in proof.quotes:
        assert _squash(quote) in sections, (
            f"{proof.module}.{proof.name} quotes an equation that is not in step(s) {numbers} "
            f"of docs/derivation.md:\n  {quote}")


def test_every_proof_is_linked_and_every_link_is_a_proof():
    linked = set(LINK.findall(DERIVATION.read_text(encoding="utf-8")))
    existing = {(p.module, p.name) for p in proofs()}
    assert existing - linked == set(), "proofs that docs/derivation.md does not link"
    assert linked - existing == set(), "links in docs/derivation.md to no proof"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("page", ["index.md"])
def test_docs_examples_run(page):
    blocks = python_blocks(ROOT / "docs" / page)
    assert blocks, f"docs/{page} has no Python example"
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), {})
