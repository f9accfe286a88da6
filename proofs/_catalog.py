"""The catalogue of proofs: every proof function, its docstring and the lines it quotes.

Used twice: by ``proofs/test_docs.py`` (the quotes must appear in docs/derivation.md,
every proof must be linked from it) and as an MkDocs hook (``hooks:`` in mkdocs.yml)
that renders one page per proof module, ``proofs/<module>.md``, with each proof's
docstring and source under an anchor named after the function -- the targets of the
links in docs/derivation.md. MkDocs is imported only inside the hook.
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path

PROOFS_DIR = Path(__file__).resolve().parent
ROOT = PROOFS_DIR.parent
DERIVATION = ROOT / "docs" / "derivation.md"
#: modules that test the proofs themselves rather than prove a step
META_MODULES = {"test_wrong_formulas", "test_docs"}


@dataclass(frozen=True)
class Proof:
    module: str
    name: str
    docstring: str
    source: str

    @property
    def quotes(self) -> list[str]:
        """The lines of the docstring that quote docs/derivation.md (they start with ``> ``)."""
        return [line.strip()[2:].strip() for line in self.docstring.splitlines()
                if line.strip().startswith("> ")]

    @property
    def page(self) -> str:
        return f"proofs/{self.module}.md"


def proof_modules() -> list[Path]:
    return sorted(PROOFS_DIR.glob("test_*.py"))


def module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def proofs(include_meta: bool = False) -> list[Proof]:
    found = []
    for path in proof_modules():
        if path.stem in META_MODULES and not include_meta:
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                source = "\n".join(lines[first - 1:node.end_lineno])     # with its decorators
                found.append(Proof(path.stem, node.name, inspect.cleandoc(ast.get_docstring(node) or ""),
                                   source))
    return found


# ---------------------------------------------------------------- the MkDocs hook
def _page(module: Path) -> str:
    lines = [f"# Proofs: `{module.name}`", "",
             f"Source: `proofs/{module.name}`. Run them with `tox -e proofs` or "
             f"`python -m pytest proofs/{module.name}`. Back to the [derivation](../derivation.md).", "",
             module_docstring(module), ""]
    for proof in (p for p in proofs(include_meta=True) if p.module == module.stem):
        summary, _, rest = proof.docstring.partition("\n")
        lines += [f"## `{proof.name}` {{#{proof.name}}}", "", summary, ""]
        for line in rest.splitlines():   # each quoted equation a blockquote of its own
            lines += [line.strip(), ""] if line.strip().startswith(">") else [line.strip()]
        lines += ["", "```python", proof.source, "```", ""]
    return "\n".join(lines)


def _index() -> str:
    lines = ["# Proofs", "",
             "Every step of the [derivation](../derivation.md) is checked by SymPy in `proofs/`, "
             "collected by pytest (`tox -e proofs`). One page per module:", ""]
    for module in proof_modules():
        first = module_docstring(module).splitlines()[0] if module_docstring(module) else ""
        lines.append(f"- [`{module.name}`]({module.stem}.md): {first}")
    lines += ["", "The shared machinery: `proofs/_symbolic.py` (the graph in SymPy, for a concrete "
              "and for a symbolic batch size) and `proofs/_numeric.py` (closed forms against the kernels).", ""]
    return "\n".join(lines)


def on_config(config):
    """MkDocs hook: the nav entry ``proofs/index.md`` becomes a section with one page per module."""
    pages = ["proofs/index.md"] + [{module.stem: f"proofs/{module.stem}.md"} for module in proof_modules()]
    for i, entry in enumerate(config["nav"] or []):
        if isinstance(entry, dict) and list(entry.values()) == ["proofs/index.md"]:
            config["nav"][i] = {next(iter(entry)): pages}
    return config


def on_files(files, config):
    """MkDocs hook: add the generated proof pages to the site."""
    from mkdocs.structure.files import File

    pages = {"proofs/index.md": _index()}
    pages.update({f"proofs/{module.stem}.md": _page(module) for module in proof_modules()})
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
