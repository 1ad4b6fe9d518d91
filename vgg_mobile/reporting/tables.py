"""The one table renderer: columns (as data) and rows -> Markdown, or -> HTML.

Used by the pipeline summary, the benchmark table and the report, so that a column reads the
same everywhere and every cell is escaped the same way (class names and paths are the user's).
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Callable, Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        title: The header.
        cell: Gives the cell's text for a row.
        numeric: Right-aligned (numbers); `False` for text, left-aligned.
        css_class: Gives the HTML class of a row's cell (e.g. `pass` / `fail`), or `None`.
    """

    title: str
    cell: Callable[[Any], str]
    numeric: bool = True
    css_class: Callable[[Any], str | None] | None = None


def number(value: float | None, template: str = "{:.3f}") -> str:
    """`value` through `template`, or `-` when it is unknown (`None`)."""
    return "-" if value is None else template.format(value)


def megabytes(size_bytes: int | None) -> str:
    """Bytes as MB with two decimals (`-` when unknown)."""
    return number(None if size_bytes is None else size_bytes / 1e6, "{:.2f} MB")


def _markdown_cell(text: str) -> str:
    # A pipe would end the cell and a newline the row.
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[Column], rows: Iterable) -> str:
    """The rows as a Markdown (GitHub) table, one line per row, without a trailing newline.

    Args:
        columns: The columns, in order.
        rows: Anything each column's `cell` takes (dicts, tuples).

    Returns:
        The table; pipes and newlines inside cells are escaped.
    """
    lines = ["| " + " | ".join(_markdown_cell(c.title) for c in columns) + " |",
             "|" + "".join("---:|" if c.numeric else "---|" for c in columns)]
    lines += ["| " + " | ".join(_markdown_cell(c.cell(row)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def html_table(columns: Sequence[Column], rows: Iterable) -> str:
    """The rows as an HTML `<table>`, every header and cell HTML-escaped.

    Args:
        columns: The columns, in order.
        rows: Anything each column's `cell` takes (dicts, tuples).

    Returns:
        The table. Text columns get the class `text` (left-aligned by the report's style
        sheet), on top of the column's own `css_class`.
    """
    def cell(column: Column, row) -> str:
        classes = [] if column.numeric else ["text"]
        extra = column.css_class(row) if column.css_class else None
        classes += [extra] if extra else []
        attribute = f' class="{html.escape(" ".join(classes))}"' if classes else ""
        return f"<td{attribute}>{html.escape(str(column.cell(row)))}</td>"

    header = "".join(("<th>" if c.numeric else '<th class="text">') + f"{html.escape(c.title)}</th>"
                     for c in columns)
    lines = ["<table>", f"<tr>{header}</tr>"]
    lines += ["<tr>" + "".join(cell(c, row) for c in columns) + "</tr>" for row in rows]
    lines.append("</table>")
    return "\n".join(lines)
