"""The marks of the timeline's SVG: colours, record bars, badges and the legend.

Explicit colours only (no ``currentColor``), so the picture reads the same on the opaque white
background :mod:`pyergon.notebook._views_svg` lays out, in dark themes and as a PNG.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pyergon._history_html import AMBER, DARK_GREY, GREEN, GREY, RED, escape
from pyergon._timeline_text import ATTEMPTS_SIGN, clip, error_note
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.history import FlowHistory

__all__ = [
    "BAR",
    "CHAR",
    "FONT",
    "GRID",
    "INK",
    "MUTED",
    "PAPER",
    "PLOT_LEFT",
    "PLOT_RIGHT",
    "RULE",
    "STATUS_KEYS",
    "WIDTH",
    "empty_picture",
    "error_badge",
    "flow_badges",
    "flow_error_badge",
    "legend",
    "pills",
    "progress_mark",
    "record_badges",
    "record_mark",
]

INK, MUTED, RULE, GRID, PAPER = "#212121", "#616161", "#bdbdbd", "#e0e0e0", "#ffffff"
"""Text, secondary text, lane rules, grid lines and the opaque background."""
_PILLS = {
    "red": ("#fdecea", "#e57373", "#b71c1c"),
    "amber": ("#fff8e1", "#ffb300", "#6d4c00"),
    "grey": ("#f1f3f4", "#bdbdbd", "#303030"),
}
"""A badge's fill, outline and text by tone: light fills with dark text, readable on white."""

WIDTH, PLOT_LEFT, PLOT_RIGHT = 760, 250, 744
"""The picture's width and where its plot of time starts and ends; labels are left of it."""
BAR = 10
"""Height of a record's bar."""
LEGEND_ROW = 18
CHAR = 6.6
"""Width of a character at the font size of 11 (monospace, 0.6 em)."""
PILL_CHAR = 6.0
_NOTE_MIN = 16
"""Fewest characters of an error note worth drawing beside a bar rather than in the labels."""
_LABEL_MIN = 48 + 8 * CHAR
"""Where the label column must still have room for a position and a few letters of name."""
FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
"""Monospace fonts; DejaVu Sans Mono is what a Linux renderer of the PNG (resvg) finds."""


def _pill(x: float, baseline: float, text: str, tone: str, css: str) -> str:
    """A badge: ``text`` in a rounded box starting at ``x`` (light fill, dark text)."""
    fill, outline, ink = _PILLS[tone]
    width = _pill_width(text)
    return (
        f'<g class="pyergon-badge {css}"><rect x="{round(x, 1)}" y="{baseline - 9}" '
        f'width="{width}" height="12" rx="6" fill="{fill}" stroke="{outline}"/>'
        f'<text x="{round(x + 5, 1)}" y="{baseline}" font-size="10" fill="{ink}">'
        f"{escape(text)}</text></g>"
    )


def _pill_width(text: str) -> float:
    return round(len(text) * PILL_CHAR + 10, 1)


def pills(
    badges: Sequence[tuple[str, str, str]],
    start: float,
    end: float,
    baseline: float,
    note: tuple[str, str, str] | None = None,
) -> tuple[list[str], float | None]:
    """Badges beside a bar from ``start`` to ``end``, never over it.

    After the bar if they fit, else before it, else at the right of the label column.

    Args:
        badges: Text, tone and class of each badge, drawn whole.
        start: Where the bar starts.
        end: Where it ends.
        baseline: The baseline of the badges' text.
        note: A last badge (an error message) clipped to the room on the side with the most,
            so a static picture shows what the tooltip says.

    Returns:
        The drawn badges, and the x the label column must end before (``None``: not used).
    """
    if not badges and note is None:
        return [], None
    shown = list(badges)
    fixed = sum(_pill_width(text) + 4 for text, _, _ in badges)
    if note is not None:
        after = WIDTH - 2 - (end + 6) - fixed
        before = start - 6 - (PLOT_LEFT - 4) - fixed
        label = PLOT_LEFT - 6 - _LABEL_MIN - fixed
        room = max(after, before)
        if room < _pill_width("x" * _NOTE_MIN) + 4:
            room = label
        chars = int((room - 14) / PILL_CHAR)
        if chars >= 4:
            text, tone, css = note
            shown.append((clip(text, chars), tone, css))
    widths = [_pill_width(text) + 4 for text, _, _ in shown]
    total = sum(widths)
    label_end = None
    if end + 6 + total <= WIDTH - 2:
        x = end + 6
    elif start - 6 - total >= PLOT_LEFT - 4:
        x = start - 6 - total
    else:
        x = PLOT_LEFT - 6 - total
        label_end = x - 4
    drawn = []
    for (text, tone, css), width in zip(shown, widths, strict=True):
        drawn.append(_pill(x, baseline, text, tone, css))
        x += width
    return drawn, label_end


def record_mark(record: Invocation, start: float, end: float, y: float, colour: str) -> str:
    width = round(end - start, 1)
    middle = y + BAR / 2
    if record.kind is OperationKind.TIMER:
        return (
            f'<rect x="{start}" y="{y}" width="{width}" height="{BAR}" fill="{colour}" '
            f'fill-opacity="0.25" stroke="{colour}" stroke-dasharray="4 2"/>'
        )
    if record.kind is OperationKind.SIGNAL:
        fill = colour if record.is_final else PAPER
        return (
            f'<line x1="{start}" y1="{middle}" x2="{end}" y2="{middle}" stroke="{colour}" '
            f'stroke-width="2" stroke-dasharray="1 3"/>'
            f'<polygon points="{end},{y} {end + 5},{middle} {end},{y + BAR} '
            f'{end - 5},{middle}" fill="{fill}" stroke="{colour}"/>'
        )
    if record.kind is OperationKind.VALUE:
        return f'<circle cx="{start}" cy="{middle}" r="3" fill="{colour}"/>'
    radius = BAR / 2 if record.kind is OperationKind.CHILD else 2
    return (
        f'<rect x="{start}" y="{y}" width="{width}" height="{BAR}" rx="{radius}" fill="{colour}"/>'
    )


def progress_mark(record: Invocation, start: float, end: float, y: float) -> str:
    """A running step's share done, as a darker fill from the start of its bar."""
    fraction = None if record.progress is None else record.progress.fraction
    if fraction is None:
        return ""
    width = round((end - start) * fraction, 1)
    return (
        f'<rect class="pyergon-progress" x="{start}" y="{y + 2}" width="{width}" '
        f'height="{BAR - 4}" fill="{DARK_GREY}" fill-opacity="0.6"/>'
    )


# -- legend -------------------------------------------------------------------------------


def _swatch(colour: str) -> str:
    return f'<rect x="0" y="0" width="14" height="{BAR}" rx="2" fill="{colour}"/>'


def _tick(colour: str) -> str:
    return f'<line x1="7" y1="-1" x2="7" y2="{BAR + 1}" stroke="{colour}" stroke-width="2"/>'


_LEGEND = {
    "complete": (_swatch(GREEN), "complete"),
    "failed": (_swatch(RED), "failed"),
    "running": (_swatch(AMBER), "running"),
    "waiting": (_swatch(GREY), "waiting"),
    "cancelled": (_swatch(DARK_GREY), "cancelled"),
    "timer": (
        f'<rect x="0" y="0" width="14" height="{BAR}" fill="{GREY}" fill-opacity="0.25" '
        f'stroke="{GREY}" stroke-dasharray="4 2"/>',
        "timer",
    ),
    "signal": (f'<polygon points="7,0 12,5 7,10 2,5" fill="{GREY}"/>', "signal"),
    "child": (f'<rect x="0" y="0" width="14" height="{BAR}" rx="5" fill="{GREY}"/>', "child"),
    "abandoned": (
        f'<rect x="0" y="0" width="14" height="{BAR}" fill="{GREY}" fill-opacity="0.3"/>'
        f'<polyline points="14,-2 11,3 17,7 14,12" fill="none" stroke="{RED}" '
        'stroke-width="1.5"/>',
        "abandoned, crash gap",
    ),
    "lease lost": (
        f'<rect x="0" y="0" width="14" height="{BAR}" rx="2" fill="{AMBER}" '
        f'fill-opacity="0.35" stroke="{RED}" stroke-dasharray="2 1"/>'
        f'<polygon points="10,-3 18,-3 14,2" fill="{RED}"/>',
        "lease lost",
    ),
    "failure tick": (_tick(RED), "failed here"),
    "crash tick": (_tick(DARK_GREY), "worker stopped"),
    "lease tick": (_tick(AMBER), "lease lost"),
    "attempts": (_pill(0, 9, f"{ATTEMPTS_SIGN}n", "red", "pyergon-retry"), "attempts"),
    "stale": (
        f'<rect x="1" y="0" width="12" height="{BAR}" rx="2" fill="none" '
        f'stroke="{AMBER}" stroke-dasharray="3 2"/>',
        "stale",
    ),
}
"""The legend's entries by key, in order: a swatch and its name."""
STATUS_KEYS = {GREEN: "complete", RED: "failed", AMBER: "running", GREY: "waiting"}
"""The legend key of each colour a record or flow is drawn in (cancelled: its own)."""


def legend(top: float, shown: Collection[str]) -> tuple[str, float]:
    """The legend of the colours and marks ``shown`` (keys of ``_LEGEND``), and only those.

    Wrapped to the width; returns it and its height.
    """
    parts = []
    x, y = 4.0, top
    for key, (swatch, name) in _LEGEND.items():
        if key not in shown:
            continue
        # A badge's key is the badge itself, as wide as its text.
        left = 20 if key != "attempts" else _pill_width(f"{ATTEMPTS_SIGN}n") + 6
        width = left + 6 + 7 * len(name)
        if x + width > WIDTH:
            x, y = 4.0, y + LEGEND_ROW
        parts.append(
            f'<g transform="translate({x},{y})">{swatch}'
            f'<text x="{left}" y="9">{escape(name)}</text></g>'
        )
        x += width
    return f'<g class="pyergon-legend">{"".join(parts)}</g>', y - top + LEGEND_ROW + 4


def flow_badges(history: FlowHistory) -> list[tuple[str, str, str]]:
    """A collapsed flow's badges: how many records were retried, how often its lease was lost.

    The count of records has no multiplication sign: in the legend it counts attempts.
    """
    badges = []
    retried = sum(1 for record in history.records_now if record.attempts > 1)
    if retried:
        records = "record" if retried == 1 else "records"
        badges.append((f"{retried} {records} retried", "red", "pyergon-retry"))
    if history.flow.lease_losses:
        lost = f"lease lost {ATTEMPTS_SIGN}{history.flow.lease_losses}"
        badges.append((lost, "red", "pyergon-lease-lost"))
    return badges


def record_badges(record: Invocation, stale: bool) -> list[tuple[str, str, str]]:
    """A record's badges: text, tone and class."""
    badges = []
    if stale:
        badges.append(("stale", "amber", "pyergon-stale-note"))
    if record.attempts > 1:
        badges.append((f"{ATTEMPTS_SIGN}{record.attempts}", "red", "pyergon-retry"))
    if record.child_flow_id is not None:
        badges.append((f"→ {clip(record.child_flow_id, 30)}", "grey", "pyergon-child-link"))
    return badges


def error_badge(record: Invocation) -> tuple[str, str, str] | None:
    """The error a failed record ended with, as a badge for :func:`pills` to clip."""
    if record.status is not InvocationStatus.FAILED or record.error is None:
        return None
    return error_note(record.error, 200), "red", "pyergon-error-note"


def flow_error_badge(history: FlowHistory) -> tuple[str, str, str] | None:
    """The error a failed flow ended with, as a badge of its collapsed row."""
    error = history.flow.error
    if history.flow.status is not TaskStatus.FAILED or error is None:
        return None
    return error_note(error, 200), "red", "pyergon-error-note"


def empty_picture(note: str) -> str:
    """A picture with no axis and no legend: only why there is nothing to show."""
    width, height = WIDTH, 30
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="pyergon timeline of 0 flows" '
        f'font-family="{FONT}" font-size="11" fill="{INK}">'
        f'<rect class="pyergon-paper" x="0" y="0" width="{width}" height="{height}" '
        f'fill="{PAPER}"/><text class="pyergon-empty" x="4" y="19" fill="{MUTED}">'
        f"{escape(clip(note, int((width - 8) / CHAR)))}</text></svg>"
    )
