"""bnref._table.render: columns line up, Markdown is well formed, bad layouts are refused."""
import pytest

from bnref._table import render


def test_text_columns_line_up_with_the_requested_alignment():
    text = render(("name", "ms", "what"), [("a", 1.5, "first"), ("long name", 12.25, "second row")],
                  align="<><")
    lines = text.splitlines()
    assert lines == ["name          ms  what",
                     "---------  -----  ----",
                     "a            1.5  first",
                     "long name  12.25  second row"]


def test_text_without_header_indents_and_leaves_no_trailing_spaces():
    text = render(None, [("key", "value"), ("a longer key", "")], indent="  ")
    assert text.splitlines() == ["  key           value", "  a longer key"]


def test_markdown_marks_right_aligned_columns_and_escapes_pipes():
    text = render(("case", "ms"), [("a | b", "1.0")], align="<>", style="markdown")
    assert text.splitlines() == ["| case | ms |", "|---|---:|", r"| a \| b | 1.0 |"]


def test_an_empty_body_keeps_the_header():
    assert render(("a", "bb"), []).splitlines() == ["a  bb", "-  --"]
    assert render(("a",), [], style="markdown").splitlines() == ["| a |", "|---|"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(style="html"), "style"),
    (dict(align="<"), "align"),
    (dict(align="<^"), "align"),
])
def test_bad_layouts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(("a", "b"), [("1", "2")], **kwargs)


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        render(("a", "b"), [("1", "2"), ("3",)])
