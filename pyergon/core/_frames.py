"""How a view shows a pandas DataFrame or Series that a flow or step returned: small, escaped.

A one-line summary for reprs, a table of the first and last rows for terminals, and pandas' own
escaped HTML table of the first and last rows (with the shape) for notebooks. pandas is never
imported here: a value that is a DataFrame was built (or unpickled) with pandas imported already.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["COLUMNS", "HTML_ROWS", "frame_html", "frame_summary", "frame_text"]

HTML_ROWS = 10
"""Rows of a DataFrame an HTML view shows (the first and last ones, as pandas elides)."""
COLUMNS = 20
"""Columns of a DataFrame a view shows unless every row is asked for (pandas elides the rest)."""


def _kind(value: object) -> str | None:
    """``"DataFrame"`` or ``"Series"`` for a pandas one, else ``None``."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return None
    if isinstance(value, pandas.DataFrame):
        return "DataFrame"
    if isinstance(value, pandas.Series):
        return "Series"
    return None


def frame_summary(value: object) -> str | None:
    """``<DataFrame: 30 rows x 2 columns>`` or ``<Series: 30 rows>``; ``None`` for others."""
    kind = _kind(value)
    if kind is None:
        return None
    frame: Any = value  # a pandas object: _kind checked it
    columns = f" x {frame.shape[1]} columns" if kind == "DataFrame" else ""
    return f"<{kind}: {frame.shape[0]} rows{columns}>"


def frame_text(value: object, *, rows: int | None) -> str | None:
    """A DataFrame or Series as text, at most ``rows`` rows (all if ``None``), with its shape.

    Returns:
        The text, or ``None`` if ``value`` is neither.
    """
    kind = _kind(value)
    if kind is None:
        return None
    frame: Any = value
    if kind == "Series":
        return str(frame.to_string(max_rows=rows, length=True, dtype=True))
    table = frame.to_string(max_rows=rows, max_cols=None if rows is None else COLUMNS)
    return f"{table}\n[{frame.shape[0]} rows x {frame.shape[1]} columns]"


def frame_html(value: object, *, rows: int = HTML_ROWS) -> str | None:
    """A DataFrame or Series as pandas' escaped HTML table of ``rows`` rows, with its shape.

    Returns:
        The HTML, or ``None`` if ``value`` is neither.
    """
    kind = _kind(value)
    if kind is None:
        return None
    frame: Any = value
    if kind == "Series":
        frame = frame.to_frame()
    table = frame.to_html(max_rows=rows, max_cols=COLUMNS, show_dimensions=True, escape=True)
    return f'<div class="pyergon-frame">{table}</div>'
