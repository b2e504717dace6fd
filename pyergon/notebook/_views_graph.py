"""The dependency graph of a DAG flow, drawn as SVG without Graphviz, and as short text.

Steps are boxes in columns by level (a step's level is its longest chain of dependencies), so
every arrow points right; within a column, steps sit near the steps they depend on. Given a
flow's records, each box shows its step's state: complete, failed, running, not run, or stale
(a result made by code that has changed since, outlined as the timeline outlines it). The SVG
is self-contained (no script, no external reference, no ids) and every text in it is escaped;
the text form is one line per step, in the order the steps take their log positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pyergon._history_html import AMBER, GREEN, GREY, LARGE_VALUE, RED, escape, value_note
from pyergon.core.graph import StepGraph
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.executor._dag import shape_of
from pyergon.notebook._views_static import picture_bundle

__all__ = ["DependencyGraph", "StepState", "dependency_graph"]


class StepState(StrEnum):
    """What a flow's records say of one step of its DAG."""

    COMPLETE = "complete"
    FAILED = "failed"
    RUNNING = "running"
    NOT_RUN = "not run"
    STALE = "stale"


_COLOURS: Mapping[StepState, str] = {
    StepState.COMPLETE: GREEN,
    StepState.FAILED: RED,
    StepState.RUNNING: AMBER,
    StepState.NOT_RUN: GREY,
    StepState.STALE: GREEN,
}

_BOX_WIDTH = 164
_BOX_HEIGHT = 36
_COLUMN_GAP = 60
_ROW_GAP = 16
_MARGIN = 16
_HEADER = 24
_LEGEND_HEIGHT = 28
_LABEL_CHARS = 22
_LINE = 15
"""The height of a second line of the title."""
_TITLE_CHAR = 7.0
"""Width of a bold character of the title (monospace at 11 px, with room to spare)."""
_MUTED = "#616161"
_INK = "#1f2328"
"""The colour of text and arrows."""
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"


def dependency_graph(
    flow: type | object,
    records: Iterable[Invocation] | None = None,
    *,
    stale: Iterable[str] = (),
) -> DependencyGraph:
    """Draw the DAG of a flow class (or of a flow's class), with its steps' states if given.

    Args:
        flow: A flow class, or a flow instance for its class.
        records: A flow's records; each step's state is read from its latest top-level step
            record. ``None``: the graph alone, without states.
        stale: Names of steps whose recorded result was made by code that has changed since;
            a recorded step named here shows as stale.

    Returns:
        The graph, which renders as SVG and text in a notebook.

    Raises:
        FlowDefinitionError: The class's steps do not form a valid DAG.
    """
    cls = flow if isinstance(flow, type) else type(flow)
    shape = shape_of(cls)
    states: dict[str, StepState] | None = None
    details: dict[str, str] = {}
    if records is not None:
        latest: dict[str, Invocation] = {}
        for record in records:
            if record.kind is OperationKind.STEP and record.sub_sequence == 0:
                known = latest.get(record.name)
                if known is None or record.sequence >= known.sequence:
                    latest[record.name] = record
        stale_names = set(stale)
        states = {name: _state(latest.get(name), name in stale_names) for name in shape.graph.names}
        details = {name: _detail(record) for name, record in latest.items()}
    declares = any(method.spec.depends_on for method in shape.steps.values())
    order = shape.order
    if not declares and records is not None:
        # No DAG: the steps ran as the @flow method called them, which their positions record.
        ran = sorted(latest, key=lambda name: latest[name].sequence)
        order = (
            *[name for name in ran if name in shape.steps],
            *[name for name in shape.order if name not in latest],
        )
    return DependencyGraph(shape.flow_type, shape.graph, order, states, details, declares)


def _state(record: Invocation | None, stale: bool) -> StepState:
    if record is None:
        return StepState.NOT_RUN
    if record.status is InvocationStatus.COMPLETE:
        return StepState.STALE if stale else StepState.COMPLETE
    if record.status is InvocationStatus.FAILED:
        return StepState.FAILED
    return StepState.RUNNING


def _detail(record: Invocation) -> str:
    """What a step's tooltip adds from its record: position, attempts, a large value, error."""
    facts = [f"position {record.position}"]
    if record.attempts > 1:
        facts.append(f"{record.attempts} attempts")
    size = value_note(record.result, at_least=LARGE_VALUE)
    if size is not None:
        facts.append(size)
    if record.error is not None:
        facts.append(f"{record.error.short_type}: {record.error.message}")
    return ", ".join(facts)


def _edge_text(name: str, needs: tuple[str, ...]) -> str:
    """``merge <- left, right``, or the name alone for a step that waits for none."""
    return f"{name} <- {', '.join(needs)}" if needs else name


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True, slots=True, eq=False)
class DependencyGraph:
    """A flow class's DAG, as a picture (SVG, and PNG with resvg-py) and as text in a notebook.

    Build one with :func:`dependency_graph`.

    Attributes:
        flow_type: The class's qualified name.
        graph: The steps and what each depends on.
        order: The steps in the order they take their log positions.
        states: Each step's state from a flow's records; ``None`` when drawn without records.
        details: Per recorded step, its position, attempts and error, for tooltips.
        declares_dependencies: Whether any step declares ``depends_on`` or ``inputs``.
    """

    flow_type: str
    graph: StepGraph
    order: tuple[str, ...]
    states: Mapping[str, StepState] | None
    details: Mapping[str, str]
    declares_dependencies: bool

    def heading(self) -> list[str]:
        """What the graph is, in a line or two: the title of its text and of its picture."""
        count = len(self.order)
        steps = f"{count} step{'' if count == 1 else 's'}"
        if not self.declares_dependencies:
            shown = "in the order they ran" if self.states is not None else "as declared"
            return [
                f"Steps of {self.flow_type}: {steps}, no DAG (none declares depends_on or inputs)",
                f"they run as its @flow method calls them; shown {shown}",
            ]
        head = f"DAG of {self.flow_type}: {steps}"
        if count:
            levels = len(self.graph.levels())
            head += f" in {levels} level{'' if levels == 1 else 's'}"
        return [head]

    def text(self) -> str:
        """One line per step, in position order: ``merge <- left, right  [complete]``.

        A flow whose steps declare no dependencies is no DAG: its steps are listed in the
        order they ran (given records), else as declared.
        """
        edges = {name: _edge_text(name, self.graph.depends_on(name)) for name in self.order}
        width = max((len(edge) for edge in edges.values()), default=0)
        lines = self.heading()
        for name, edge in edges.items():
            if self.states is None:
                lines.append(f"  {edge}")
            else:
                lines.append(f"  {edge:<{width}}  [{self.states[name].value}]")
        return "\n".join(lines)

    def svg(self) -> str:
        """The graph as one self-contained SVG element."""
        return _Drawing(self).svg()

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None, **kwargs: object
    ) -> dict[str, Any]:
        return picture_bundle(self.text(), self.svg())


class _Drawing:
    """Lays the steps out in columns by level and draws boxes and arrows."""

    def __init__(self, view: DependencyGraph) -> None:
        self.view = view
        self.heading = view.heading()
        # No DAG: one column in the order the steps ran (or were declared), and no arrows.
        self.columns = (
            self._columns(view.graph) if view.declares_dependencies else [list(view.order)]
        )
        self.header = _HEADER + _LINE * (len(self.heading) - 1)
        self.at: dict[str, tuple[float, float]] = {}
        for column, names in enumerate(self.columns):
            x = _MARGIN + column * (_BOX_WIDTH + _COLUMN_GAP)
            for row, name in enumerate(names):
                self.at[name] = (x, self.header + _MARGIN + row * (_BOX_HEIGHT + _ROW_GAP))
        rows = max((len(names) for names in self.columns), default=0)
        self.legend = self._legend_entries()
        legend_width = sum(width for _, width in self.legend)
        # Wide enough for the boxes, the title and the legend: a PNG crops what overflows.
        self.width = math.ceil(
            max(
                2 * _MARGIN + len(self.columns) * (_BOX_WIDTH + _COLUMN_GAP) - _COLUMN_GAP,
                2 * _MARGIN + max(len(line) for line in self.heading) * _TITLE_CHAR,
                2 * _MARGIN + legend_width,
                360,
            )
        )
        legend = _LEGEND_HEIGHT if view.states is not None else 0
        self.height = self.header + 2 * _MARGIN
        self.height += max(rows * (_BOX_HEIGHT + _ROW_GAP) - _ROW_GAP, 0) + legend

    @staticmethod
    def _columns(graph: StepGraph) -> list[list[str]]:
        """The levels, each ordered by where the steps it depends on sit.

        Declaration order breaks ties; this keeps most arrows short and uncrossed.
        """
        row: dict[str, float] = {}
        columns: list[list[str]] = []

        def key(name: str) -> float:
            needs = graph.depends_on(name)
            return sum(row[need] for need in needs) / len(needs) if needs else 0.0

        for level in graph.levels():
            ordered = sorted(level, key=key) if columns else list(level)
            for number, name in enumerate(ordered):
                row[name] = number
            columns.append(ordered)
        return columns

    def svg(self) -> str:
        view = self.view
        label = f"pyergon DAG of {view.flow_type}"
        second = f' dy="{_LINE}" font-weight="normal" fill="{_MUTED}"'
        title = "".join(
            f'<tspan x="{_MARGIN}"{second if number else ""}>{escape(line)}</tspan>'
            for number, line in enumerate(self.heading)
        )
        edges = "".join(
            self._edge(need, name) for name in view.order for need in view.graph.depends_on(name)
        )
        boxes = "".join(self._box(name) for name in view.order)
        legend = self._legend(self.height - _LEGEND_HEIGHT + 8) if view.states is not None else ""
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(label)}" font-family="{_FONT}" font-size="11" '
            # Explicit ink on white: the picture reads the same in a dark theme and as a PNG.
            f'color="{_INK}" fill="currentColor"><rect width="100%" height="100%" fill="#fff"/>'
            f'<text class="pyergon-title" x="{_MARGIN}" y="{_HEADER - 6}" font-weight="bold">'
            f"{title}</text>"
            f'<g class="pyergon-edges">{edges}</g><g class="pyergon-steps">{boxes}</g>'
            f"{legend}</svg>"
        )

    def _edge(self, need: str, name: str) -> str:
        """An arrow from ``need``'s right side to ``name``'s left side.

        An arrow past other columns runs along the free lane above ``name``'s row, so it
        crosses no box on its way.
        """
        x1, y1 = self.at[need]
        x2, y2 = self.at[name]
        x1, y1, mid2 = x1 + _BOX_WIDTH, y1 + _BOX_HEIGHT / 2, y2 + _BOX_HEIGHT / 2
        tip = x2 - 1
        if tip - x1 <= _COLUMN_GAP:
            bend = round((tip - x1) / 2, 1)
            path = f"M{x1},{y1} C{x1 + bend},{y1} {tip - bend},{mid2} {tip - 6},{mid2}"
        else:
            lane = y2 - _ROW_GAP / 2
            out, back, bend = x1 + _COLUMN_GAP * 0.7, tip - _COLUMN_GAP * 0.7, _COLUMN_GAP * 0.35
            path = (
                f"M{x1},{y1} C{x1 + bend},{y1} {out - bend},{lane} {out},{lane} "
                f"L{back},{lane} C{back + bend},{lane} {tip - bend},{mid2} {tip - 6},{mid2}"
            )
        return (
            f'<g class="pyergon-edge" data-from="{escape(need)}" data-to="{escape(name)}">'
            f'<path d="{path}" fill="none" stroke="currentColor" stroke-opacity="0.5"/>'
            f'<polygon points="{tip - 7},{mid2 - 4} {tip},{mid2} {tip - 7},{mid2 + 4}" '
            'fill="currentColor" fill-opacity="0.6"/></g>'
        )

    def _box(self, name: str) -> str:
        view = self.view
        x, y = self.at[name]
        state = None if view.states is None else view.states[name]
        tooltip = _edge_text(name, view.graph.depends_on(name))
        if state is not None:
            tooltip += f": {state.value}"
        if name in view.details:
            tooltip += f" ({view.details[name]})"
        if state is StepState.STALE:
            tooltip += "\nstale: made by code that has changed since; rerun recomputes it"
        colour = GREY if state is None else _COLOURS[state]
        dashes = ' stroke-dasharray="4 3"' if state is StepState.NOT_RUN else ""
        fill = "none" if state in (None, StepState.NOT_RUN) else colour
        parts = [
            f"<title>{escape(tooltip)}</title>",
            f'<rect x="{x}" y="{y}" width="{_BOX_WIDTH}" height="{_BOX_HEIGHT}" rx="4" '
            f'fill="{fill}" fill-opacity="0.18" stroke="{colour}" stroke-width="1.5"{dashes}/>',
            f'<text x="{x + 8}" y="{y + 15}" font-weight="bold">'
            f"{escape(_clip(name, _LABEL_CHARS))}</text>",
        ]
        if state is not None:
            parts.append(
                f'<text x="{x + 8}" y="{y + 29}" fill="{colour}">{escape(state.value)}</text>'
            )
        if state is StepState.STALE:
            parts.append(
                f'<rect x="{x - 3}" y="{y - 3}" width="{_BOX_WIDTH + 6}" '
                f'height="{_BOX_HEIGHT + 6}" rx="6" fill="none" stroke="{AMBER}" '
                'stroke-width="1.5" stroke-dasharray="3 2"/>'
            )
        data_state = "" if state is None else f' data-state="{escape(state.value)}"'
        step = f'data-step="{escape(name)}"{data_state}'
        return f'<g class="pyergon-step" {step}>{"".join(parts)}</g>'

    def _legend_entries(self) -> list[tuple[StepState, float]]:
        """The states drawn, each with the width of its legend entry; none drawn, none named."""
        states = self.view.states
        if states is None:
            return []
        drawn = set(states.values())
        return [(state, 30 + 7 * len(state.value)) for state in StepState if state in drawn]

    def _legend(self, y: float) -> str:
        parts = []
        x = float(_MARGIN)
        for state, width in self.legend:
            colour = _COLOURS[state]
            fill = "none" if state is StepState.NOT_RUN else colour
            dashes = ' stroke-dasharray="3 2"' if state is StepState.NOT_RUN else ""
            swatch = (
                f'<rect x="0" y="0" width="14" height="10" rx="2" fill="{fill}" '
                f'fill-opacity="0.18" stroke="{colour}"{dashes}/>'
            )
            if state is StepState.STALE:
                swatch += (
                    f'<rect x="-2" y="-2" width="18" height="14" rx="3" fill="none" '
                    f'stroke="{AMBER}" stroke-dasharray="3 2"/>'
                )
            parts.append(
                f'<g transform="translate({x},{y})">{swatch}'
                f'<text x="20" y="9">{escape(state.value)}</text></g>'
            )
            x += width
        return f'<g class="pyergon-legend">{"".join(parts)}</g>'
