"""The analytics report (UI-CONTRACT §8.7) as a PDF, laid out by ReportLab.

ReportLab is the library the old backend used, maintained by its company since 2000 and the
usual choice for generated reports in Python. It is imported with the first report, never at
start-up (about 0.1 s then), and costs the frozen bundle 7.9 MiB with the part of Pillow it
loads (docs/building.md, "PDF report"). The report holds what the old one did: the
connection's name, the time, the current metrics, the query distribution, up to 10 current
queries, up to 20 slow queries of the last 24 h and up to 20 tables with their size and rows.
The standard PDF fonts carry Windows-1252 text only; any other character is written as ``?``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_CELL_CHARS = 90  # a query cut to what fits across the page in the table's font
CURRENT_QUERIES = 10
SLOW_QUERIES = 20
TABLES = 20


@dataclass
class Report:
    """What the report says, already read from the database and the samples."""

    connection: str
    db_type: str
    generated: str
    metrics: list[tuple[str, str]]
    query_stats: dict[str, int]
    current_queries: list[dict[str, Any]] = field(default_factory=list)
    slow_queries: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)


def _text(value: Any, limit: int = MAX_CELL_CHARS) -> str:
    """A cell's text: cut, on one line, in the characters the standard fonts have."""
    text = "" if value is None else " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.encode("cp1252", "replace").decode("cp1252")


def _seconds(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.1f} s"


def analytics_report(report: Report) -> bytes:
    """The report as a PDF document (A4). Blocking: run it in a worker thread."""
    import io
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    grid = TableStyle(
        [
            ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef7")),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    story: list[Any] = []

    def heading(text: str) -> None:
        story.extend([Spacer(1, 4 * mm), Paragraph(escape(text), styles["Heading2"])])

    def table(header: list[str], rows: list[list[str]], empty: str) -> None:
        if not rows:
            story.append(Paragraph(escape(empty), styles["Normal"]))
            return
        story.append(Table([header, *rows], style=grid, repeatRows=1, hAlign="LEFT"))

    title = f"DB Toolkit analytics: {_text(report.connection, 200)}"
    story.append(Paragraph(escape(title), styles["Title"]))
    story.append(
        Paragraph(escape(f"{report.db_type}, generated {report.generated}"), styles["Normal"])
    )
    heading("Current metrics")
    table(["Metric", "Value"], [[_text(k), _text(v)] for k, v in report.metrics], "n/a")
    heading("Query distribution")
    table(
        ["Kind", "Running"],
        [[kind, str(count)] for kind, count in report.query_stats.items()],
        "No statements running.",
    )
    heading(f"Current queries (up to {CURRENT_QUERIES})")
    table(
        ["PID", "User", "State", "Duration", "Query"],
        [
            [
                _text(q.get("pid")),
                _text(q.get("usename"), 20),
                _text(q.get("query_type"), 10),
                _seconds(q.get("duration")),
                _text(q.get("query"), 60),
            ]
            for q in report.current_queries[:CURRENT_QUERIES]
        ],
        "No statements running.",
    )
    heading(f"Slow queries, last 24 h (up to {SLOW_QUERIES})")
    table(
        ["Seen", "Duration", "User", "Query"],
        [
            [
                _text(q.get("timestamp"), 25),
                _seconds(q.get("duration")),
                _text(q.get("user"), 20),
                _text(q.get("query"), 60),
            ]
            for q in report.slow_queries[:SLOW_QUERIES]
        ],
        "None seen while the analytics page was open.",
    )
    heading(f"Tables (up to {TABLES})")
    table(
        ["Table", "Size (bytes)", "Rows", "Indexes"],
        [
            [
                _text(t.get("table_name"), 60),
                _text(t.get("size_bytes")),
                _text(t.get("row_count")),
                _text(t.get("index_count")),
            ]
            for t in report.tables[:TABLES]
        ],
        "No tables.",
    )
    out = io.BytesIO()
    document = SimpleDocTemplate(
        out,
        pagesize=A4,
        title=_text(title, 200),
        author="DB Toolkit",
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
    )
    document.build(story)
    return out.getvalue()
