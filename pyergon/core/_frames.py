"""How a view shows a pandas DataFrame or Series that a flow or step returned: small, escaped.

A one-line summary for reprs, a table of the first and last rows for terminals, pandas' own
escaped HTML table of the first and last rows (with the shape) for notebooks, and pandas'
``split`` JSON of the first rows for JSON documents. pandas is never imported here: a value
that is a DataFrame was built (or unpickled) with pandas imported already.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["COLUMNS", "HTML_ROWS", "frame_html", "frame_json", "frame_summary", "frame_text"]

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


def frame_json(value: object, *, rows: int | None, limit: int) -> dict[str, Any] | None:
    """A DataFrame or Series as pandas' ``split`` JSON of its first rows, for a JSON document.

    pandas writes it (``to_json(orient="split", date_format="iso")``), so dates are ISO text
    and NaN is ``null``.

    Args:
        value: The value.
        rows: At most this many rows and :data:`COLUMNS` columns, then fewer rows until the
            JSON holds at most ``limit`` characters; ``None``: all of it.
        limit: Characters of JSON the shown rows may take, unless ``rows`` is ``None``.

    Returns:
        ``{"type": "pandas.DataFrame", "format": "split", "shape", "value": {"columns",
        "index", "data"}, "truncated"}`` (a Series' value has ``name``, ``index``, ``data``),
        or ``None`` if ``value`` is neither, or if one row is over ``limit``.
    """
    kind = _kind(value)
    if kind is None:
        return None
    frame: Any = value
    shown = frame
    if rows is not None:
        shown = frame.head(rows)
        if kind == "DataFrame":
            shown = shown.iloc[:, :COLUMNS]
    # Cells JSON cannot hold are written as their str(), not as an empty object.
    encoded: str = shown.to_json(orient="split", date_format="iso", default_handler=str)
    while rows is not None and len(encoded) > limit and len(shown) > 1:
        shown = shown.head(len(shown) // 2)  # fewer rows until they fit
        encoded = shown.to_json(orient="split", date_format="iso", default_handler=str)
    if rows is not None and len(encoded) > limit:
        return None  # one row is already too long: the caller shows it as cut text
    return {
        "type": f"pandas.{kind}",
        "format": "split",
        "shape": list(frame.shape),
        "value": json.loads(encoded),
        "truncated": shown.shape != frame.shape,
    }
