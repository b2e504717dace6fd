"""The dependency graph view: a flow class's DAG as text and as self-contained SVG, with each
step's state read from a flow's records."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from PIL import Image

from pyergon import Executor, dag, flow, flow_type, step
from pyergon.notebook._views_graph import StepState, dependency_graph
from pyergon.storage.memory import InMemoryExecutionLog

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
@flow_type
class Report:
    fail: bool

    @step
    async def load(self) -> int:
        return 1

    @step
    async def prices(self) -> int:
        return 2

    @step(inputs={"rows": "load"})
    async def clean(self, rows: int) -> int:
        return rows

    @step(inputs={"rows": "load"})
    async def check(self, rows: int) -> int:
        if self.fail:
            raise ValueError("<bad> & rows")
        return rows

    @step(inputs={"rows": "clean", "prices": "prices", "checked": "check"})
    async def merge(self, rows: int, prices: int, checked: int) -> int:
        return rows + prices + checked

    @flow
    async def run(self) -> int:
        return await dag(self)


def test_the_text_is_one_line_per_step_in_position_order() -> None:
    view = dependency_graph(Report)

    assert view.text() == (
        "DAG of Report: 5 steps in 3 levels\n"
        "  load\n"
        "  prices\n"
        "  clean <- load\n"
        "  check <- load\n"
        "  merge <- clean, prices, check"
    )
    assert repr(view) == view.text()
    assert view.states is None


async def test_the_records_of_a_flow_give_each_step_its_state() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Report(fail=True), storage, "report").run(Report.run)
    records = await storage.load_invocations("report")

    view = dependency_graph(Report(fail=True), records, stale={"clean", "merge"})

    assert view.states == {
        "load": StepState.COMPLETE,
        "prices": StepState.COMPLETE,
        "clean": StepState.STALE,
        "check": StepState.FAILED,
        "merge": StepState.NOT_RUN,  # stale is said only of a recorded result
    }
    assert view.text().splitlines()[1:] == [
        "  load                           [complete]",
        "  prices                         [complete]",
        "  clean <- load                  [stale]",
        "  check <- load                  [failed]",
        "  merge <- clean, prices, check  [not run]",
    ]


async def test_the_svg_is_escaped_self_contained_and_marks_every_state() -> None:
    @dataclass
    @flow_type
    class Local:  # a qualified name with "<locals>" in it, which the SVG must escape
        @step
        async def first(self) -> int:
            return 1

        @step(inputs={"x": "first"})
        async def second(self, x: int) -> int:
            raise ValueError("<bad> & rows")

        @step(inputs={"x": "second"})
        async def third(self, x: int) -> int:
            return x

        @step(inputs={"x": "first"})
        async def far(self, x: int) -> int:
            return x

        @step(inputs={"x": "third", "y": "far", "z": "first"})
        async def last(self, x: int, y: int, z: int) -> int:
            return x

        @flow
        async def run(self) -> int:
            return await dag(self)

    storage = InMemoryExecutionLog()
    await Executor(Local(), storage, "local").run(Local.run)
    view = dependency_graph(Local, await storage.load_invocations("local"))

    svg = view.svg()
    root = ElementTree.fromstring(svg)  # well formed, so every text was escaped
    assert "&lt;locals&gt;" in svg and "&lt;bad&gt; &amp; rows" in svg
    assert "<script" not in svg and " id=" not in svg and "href" not in svg
    steps = {
        group.get("data-step"): group.get("data-state")
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "pyergon-step"
    }
    assert steps == {
        "first": "complete",
        "second": "failed",
        "third": "not run",
        "far": "complete",
        "last": "not run",
    }
    edges = [
        (group.get("data-from"), group.get("data-to"))
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "pyergon-edge"
    ]
    assert sorted(edges) == sorted(
        [
            ("first", "second"),
            ("second", "third"),
            ("first", "far"),
            ("third", "last"),
            ("far", "last"),
            ("first", "last"),
        ]
    )
    assert view.svg() == svg  # the same graph and records draw the same picture


def test_in_a_notebook_it_shows_as_svg_with_its_text() -> None:
    view = dependency_graph(Report)

    bundle = view._repr_mimebundle_()

    assert set(bundle) == {"image/svg+xml", "image/png", "text/plain"}
    assert bundle["text/plain"] == view.text()
    svg = ElementTree.fromstring(bundle["image/svg+xml"])
    with Image.open(io.BytesIO(base64.b64decode(bundle["image/png"]))) as png:
        assert png.size == (int(svg.attrib["width"]), int(svg.attrib["height"]))
        assert png.convert("RGB").getpixel((1, 1)) == (255, 255, 255)  # white, as in any theme


@dataclass
@flow_type
class Sales:
    """An ordinary flow: its @flow method awaits its steps one after another."""

    @step
    async def report(self, total: int) -> str:
        return f"total {total}"

    @step
    async def load(self) -> int:
        return 1

    @step
    async def clean(self, rows: int) -> int:
        return rows

    @step
    async def total(self, rows: int) -> int:
        return rows * 10

    @flow
    async def run(self) -> str:
        rows = await self.clean(await self.load())
        return await self.report(await self.total(rows))


def test_a_class_declaring_no_dependencies_is_no_dag_and_says_so() -> None:
    text = dependency_graph(Sales).text()

    assert text.splitlines() == [
        "Steps of Sales: 4 steps, no DAG (none declares depends_on or inputs)",
        "they run as its @flow method calls them; shown as declared",
        "  report",
        "  load",
        "  clean",
        "  total",
    ]
    assert "all run at once" not in text


async def test_a_flow_that_is_no_dag_shows_its_steps_in_the_order_they_ran() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Sales(), storage, "sales").run(Sales.run)

    view = dependency_graph(Sales, await storage.load_invocations("sales"))

    assert view.text().splitlines() == [
        "Steps of Sales: 4 steps, no DAG (none declares depends_on or inputs)",
        "they run as its @flow method calls them; shown in the order they ran",
        "  load    [complete]",
        "  clean   [complete]",
        "  total   [complete]",
        "  report  [complete]",
    ]
    root = ElementTree.fromstring(view.svg())
    steps = [g.get("data-step") for g in root.iter(f"{SVG}g") if g.get("class") == "pyergon-step"]
    assert steps == ["load", "clean", "total", "report"]
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "pyergon-edge"]
    tops = [float(rect.get("y", 0)) for rect in root.iter(f"{SVG}rect") if rect.get("rx") == "4"]
    assert tops == sorted(tops) and len(set(tops)) == 4  # one column, top to bottom


async def test_the_picture_is_as_wide_as_its_title_and_its_legend_names_only_what_is_drawn() -> (
    None
):
    storage = InMemoryExecutionLog()
    await Executor(Sales(), storage, "sales").run(Sales.run)
    view = dependency_graph(Sales, await storage.load_invocations("sales"))

    root = ElementTree.fromstring(view.svg())

    width = float(root.attrib["width"])
    (title,) = [t for t in root.iter(f"{SVG}text") if t.get("class") == "pyergon-title"]
    longest = max(len(part.text or "") for part in title)
    assert 16 + longest * 6.6 <= width  # monospace at 11 px: 6.6 px a character
    (legend,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "pyergon-legend"]
    assert ["".join(entry.itertext()) for entry in legend] == ["complete"]
    with Image.open(io.BytesIO(base64.b64decode(view._repr_mimebundle_()["image/png"]))) as png:
        assert png.size[0] == int(width)


async def test_a_dags_legend_names_only_the_states_drawn() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Report(fail=True), storage, "report").run(Report.run)

    svg = dependency_graph(Report, await storage.load_invocations("report")).svg()

    root = ElementTree.fromstring(svg)
    (legend,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "pyergon-legend"]
    assert ["".join(entry.itertext()) for entry in legend] == ["complete", "failed", "not run"]
