"""The tutorials' stored outputs show on GitHub, in exported HTML and in untrusted notebooks.

Read from the stored notebooks, no kernel: every cell has run in order; a cell that draws a
timeline or a graph stores its picture as PNG (what every renderer shows) beside its SVG and
text, with no HTML that would be chosen first and sanitized; no stored HTML holds an inline SVG;
and no output of pyergon is a widget view (a notebook reopened cannot show one). A widget the
tutorial builds itself (the review buttons) keeps its state in the notebook.
"""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nbformat
import pytest
from PIL import Image

from tests.notebook.tutorials import TUTORIALS

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PICTURE_CELL = re.compile(r"\.timeline\(|%pyergon timeline|\.graph\(")
"""Code that draws a pyergon picture (a timeline or a dependency graph)."""
GREEN = (0x2E, 0x7D, 0x32)
"""A completed step's bar or box outline."""


def outputs_of(cell: Any) -> list[dict[str, Any]]:
    return [output.get("data", {}) for output in cell.get("outputs", [])]


@pytest.fixture(params=TUTORIALS, ids=lambda path: path.stem)
def notebook(request: pytest.FixtureRequest) -> Any:
    path: Path = request.param
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_every_code_cell_has_run_in_order(notebook: Any) -> None:
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]

    assert counts == list(range(1, len(counts) + 1))


def test_every_picture_is_stored_as_png_with_its_text(notebook: Any) -> None:
    drawing = [
        cell
        for cell in notebook.cells
        if cell.cell_type == "code" and PICTURE_CELL.search(cell.source)
    ]
    for cell in drawing:
        pictures = [data for data in outputs_of(cell) if "image/svg+xml" in data]
        assert pictures, f"no picture stored for:\n{cell.source}"
        for data in pictures:
            assert set(data) == {"text/plain", "image/svg+xml", "image/png"}, cell.source
            svg = ET.fromstring(data["image/svg+xml"])
            with Image.open(io.BytesIO(base64.b64decode(data["image/png"]))) as png:
                assert png.size == (int(svg.attrib["width"]), int(svg.attrib["height"]))
                colours = png.convert("RGB").getcolors(1 << 22) or []
            # Its text is drawn: without fonts, a picture has a few hundred dark pixels at most.
            dark = sum(count for count, colour in colours if sum(colour) < 240)
            assert dark > 600, f"no text in the PNG of:\n{cell.source}"
            if "Timeline" in data["text/plain"]:
                assert GREEN in {colour for _, colour in colours}, cell.source


def test_no_stored_html_holds_an_svg_that_sanitizing_would_drop(notebook: Any) -> None:
    for cell in notebook.cells:
        for data in outputs_of(cell):
            html = data.get("text/html", "")
            assert "<svg" not in "".join(html), cell.source


def test_only_the_tutorials_own_widgets_are_widget_views(notebook: Any) -> None:
    views = [
        (cell, data) for cell in notebook.cells for data in outputs_of(cell) if WIDGET_VIEW in data
    ]
    for cell, data in views:
        assert "pyergon" not in "".join(data.get("text/plain", "")), cell.source
        assert "widgets." in cell.source, f"a widget view from pyergon:\n{cell.source}"
        state = notebook.metadata["widgets"][WIDGET_STATE]["state"]
        assert data[WIDGET_VIEW]["model_id"] in state


def test_a_notebook_without_widget_views_stores_no_widget_state(notebook: Any) -> None:
    # nbconvert --inplace keeps the widget state it finds when the run makes no widget: stale.
    if not any(WIDGET_VIEW in data for cell in notebook.cells for data in outputs_of(cell)):
        assert "widgets" not in notebook.metadata
