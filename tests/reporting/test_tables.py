"""The one table renderer: Markdown and HTML from the same columns, every cell escaped."""

from __future__ import annotations

from vgg_mobile.reporting.tables import Column, html_table, markdown_table, megabytes, number

COLUMNS = (Column("name", lambda row: row["name"], numeric=False),
           Column("size", lambda row: megabytes(row["size"])),
           Column("state", lambda row: row["state"], numeric=False,
                  css_class=lambda row: row["state"] if row["state"] == "fail" else None))
ROWS = [{"name": "a|b <script>", "size": 1_500_000, "state": "fail"},
        {"name": "line\nbreak & co", "size": None, "state": "ok"}]


def test_markdown_aligns_numbers_and_escapes_pipes_and_newlines():
    assert markdown_table(COLUMNS, ROWS).splitlines() == [
        "| name | size | state |",
        "|---|---:|---|",
        "| a\\|b <script> | 1.50 MB | fail |",
        "| line break & co | - | ok |"]


def test_html_escapes_every_cell_and_header_and_sets_classes():
    page = html_table(COLUMNS + (Column("<th>", lambda row: "x"),), ROWS)
    assert "<script>" not in page and "a|b &lt;script&gt;" in page
    assert "line\nbreak &amp; co" in page and "<th>&lt;th&gt;</th>" in page
    assert '<td class="text fail">fail</td>' in page and '<td class="text">ok</td>' in page
    assert "<td>1.50 MB</td>" in page and '<th class="text">name</th>' in page
    assert page.startswith("<table>") and page.endswith("</table>")
    assert page.count("<tr>") == 3


def test_number_formats():
    assert number(None) == "-" and number(0.12345) == "0.123" and number(2, "{:.1f}x") == "2.0x"
    assert megabytes(None) == "-" and megabytes(10_000_000) == "10.00 MB"
