"""Plain-text tables for the command line (rows of dicts, aligned columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned text under a header; columns no row has are left out.

    Floats get 4 decimals and missing values a dash.
    """
    columns = [c for c in columns if any(c in row for row in rows)]
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def format_value(value) -> str:
    """A table cell: ``-`` for None, 4 decimals for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
