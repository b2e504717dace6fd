"""The static outputs of a picture view: text, SVG and PNG, that show without a kernel or trust.

JupyterLab picks one mimetype of an output and never falls back: in an untrusted notebook it
skips widget views and ``image/svg+xml`` and sanitizes ``text/html`` (dropping inline SVG),
while ``image/png`` always shows, as it does on GitHub. So a picture view's output carries
``text/plain``, ``image/svg+xml`` and ``image/png`` of the same picture, and no ``text/html``
(it would be chosen first, then sanitized). The PNG is drawn by resvg, from the ``resvg-py``
package of the ``notebook`` extra; without it a bundle has no PNG and nothing fails.
"""

from __future__ import annotations

import base64
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "PNG_MIMETYPE",
    "SVG_MIMETYPE",
    "TEXT_MIMETYPE",
    "picture_bundle",
    "png_of",
    "png_renderer_available",
]

TEXT_MIMETYPE = "text/plain"
SVG_MIMETYPE = "image/svg+xml"
PNG_MIMETYPE = "image/png"

_FAMILY_CANDIDATES: Mapping[str, Sequence[str]] = {
    "sans_serif_family": ("DejaVu Sans", "Liberation Sans", "Arial", "Helvetica", "Noto Sans"),
    "monospace_family": (
        "DejaVu Sans Mono",
        "Liberation Mono",
        "Courier New",
        "Menlo",
        "Consolas",
        "Noto Sans Mono",
    ),
    "serif_family": ("DejaVu Serif", "Liberation Serif", "Times New Roman", "Noto Serif"),
}
"""Installed fonts resvg may use for each generic family, most likely first.

resvg maps ``monospace`` to Courier New and ``sans-serif`` to Arial, which Linux rarely has;
a text in a family it cannot find is left out of the picture without a word.
"""

_Render = Callable[..., Any]


def _renderer() -> _Render | None:
    """``resvg_py.svg_to_bytes`` if resvg-py is installed, else ``None``."""
    try:
        module = importlib.import_module("resvg_py")
    except ImportError:
        return None
    render: _Render = module.svg_to_bytes
    return render


def png_renderer_available() -> bool:
    """Whether views can add a PNG to their outputs (resvg-py is installed)."""
    return _renderer() is not None


def _draws(render: _Render, family: str) -> bool:
    """Whether resvg finds ``family``: a text in it draws something on a blank picture."""
    blank = '<svg xmlns="http://www.w3.org/2000/svg" width="24" height="16">{}</svg>'
    text = f'<text x="2" y="12" font-family="{family}" font-size="12">Hg</text>'
    return bytes(render(svg_string=blank.format(text))) != bytes(
        render(svg_string=blank.format(""))
    )


@functools.cache
def _font_options() -> dict[str, str]:
    """The generic families mapped to installed fonts, found once per process."""
    render = _renderer()
    if render is None:
        return {}
    options: dict[str, str] = {}
    for generic, candidates in _FAMILY_CANDIDATES.items():
        found = next((family for family in candidates if _draws(render, family)), None)
        if found is not None:
            options[generic] = found
    if "sans_serif_family" in options:
        options["font_family"] = options["sans_serif_family"]  # text that names no family
    return options


def png_of(svg: str) -> bytes | None:
    """Draw ``svg`` as a PNG on white, its size in pixels the SVG's; ``None`` without resvg-py.

    Raises:
        ValueError: resvg cannot read ``svg`` (a bug in the drawing, never the user's data).
    """
    render = _renderer()
    if render is None:
        return None
    return bytes(render(svg_string=svg, background="#ffffff", **_font_options()))


def picture_bundle(text: str, svg: str, *, png: bool = True) -> dict[str, str]:
    """The outputs of a picture: ``text/plain``, ``image/svg+xml`` and, with ``png``, a PNG.

    Args:
        text: The readable summary (terminals, nbval, screen readers).
        svg: The picture, self-contained with explicit colours.
        png: Add the PNG (about 100 ms for a large picture); left out while a view refreshes
            often, and added when it settles so the saved output has it.

    Returns:
        A mimebundle for ``IPython.display.display(bundle, raw=True)``; the PNG is base64 text,
        as notebooks store it.
    """
    bundle = {TEXT_MIMETYPE: text, SVG_MIMETYPE: svg}
    drawn = png_of(svg) if png else None
    if drawn is not None:
        bundle[PNG_MIMETYPE] = base64.b64encode(drawn).decode("ascii")
    return bundle
