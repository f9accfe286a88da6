"""Tables as text: aligned columns for a terminal, or GitHub Markdown for a page.

Every table bnref prints (``bnref check``'s report and conventions, ``bnref selfcheck``,
``bnref bench``, the MNIST harness, the command list of ``bnref``) goes through
:func:`render`, so columns line up the same way everywhere.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["render"]

STYLES = ("text", "markdown")


def render(header: Sequence[str] | None, rows: Iterable[Sequence[object]], *, align: str | None = None,
           style: str = "text", indent: str = "", gap: int = 2) -> str:
    """Lay out ``rows`` (cells: anything ``str()`` takes) under ``header`` as one string, without a final newline.

    ``align`` has one character per column, ``<`` (left, the default) or ``>`` (right). In
    ``text`` style columns are ``gap`` spaces apart, a rule of dashes follows the header, the
    last column is not padded (so a long free-text column does not widen the rule: its
    dashes are as long as its header), and each line starts with ``indent``; ``header=None``
    gives the rows alone. In ``markdown`` style the cells are ``|``-separated and the
    separator row right-aligns the ``>`` columns (``---:``); a ``|`` inside a cell is escaped.

    Raises:
        ValueError: an unknown ``style``, an ``align`` character other than ``<``/``>``, or a row
            whose length differs from the header's (or the first row's).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    body = [[str(cell) for cell in row] for row in rows]
    head = None if header is None else [str(cell) for cell in header]
    ncols = len(head) if head is not None else (len(body[0]) if body else 0)
    for i, row in enumerate(body):
        if len(row) != ncols:
            raise ValueError(f"row {i} has {len(row)} cells, expected {ncols}: {row!r}")
    align = "<" * ncols if align is None else align
    if len(align) != ncols or set(align) - {"<", ">"}:
        raise ValueError(f"align must be {ncols} characters of '<' or '>'; got {align!r}")
    if style == "markdown":
        return _markdown(head if head is not None else [""] * ncols, body, align)
    lines = ([head] if head is not None else []) + body
    widths = [max((len(line[i]) for line in lines), default=0) for i in range(ncols)]
    sep = " " * gap
    out = []
    for line in lines:
        cells = [cell.rjust(w) if a == ">" else cell.ljust(w) for cell, w, a in zip(line, widths, align)]
        if ncols and align[-1] == "<":
            cells[-1] = line[-1]
        out.append((indent + sep.join(cells)).rstrip())
    if head is not None:
        rule = ["-" * w for w in widths]
        if ncols and align[-1] == "<":
            rule[-1] = "-" * len(head[-1])
        out.insert(1, indent + sep.join(rule))
    return "\n".join(out)


def _markdown(head: list[str], body: list[list[str]], align: str) -> str:
    def line(cells):
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if a == ">" else "---" for a in align) + "|"
    return "\n".join([line(head), rule, *map(line, body)])
