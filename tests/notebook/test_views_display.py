"""Views in a notebook output: a static picture that shows anywhere and refreshes in place.

The shell here records what views publish as a front end keeps it: one output per display id,
replaced by each update. No output holds a widget view; a picture carries its PNG, drawn on
white with its text, and a view that refreshes leaves the PNG in its output when it settles.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import sys
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import IPython
import pytest
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image
from traitlets.config import Config

from pyergon import Executor, await_external_signal, flow, flow_type, send_signal, step
from pyergon.core.records import StepProgress
from pyergon.core.workers import StepActivity, WorkerRecord
from pyergon.history import FlowHistory, load_history
from pyergon.notebook import Session
from pyergon.notebook._views_progress import DisplayedBars, progress_bars
from pyergon.notebook._views_static import png_of
from pyergon.notebook.views import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_worker

TEXT, SVG, PNG, HTML = "text/plain", "image/svg+xml", "image/png", "text/html"
GREEN = (0x2E, 0x7D, 0x32)
"""A completed step's bar."""


@dataclass
@flow_type
class Approval:
    @step
    async def prepare(self) -> str:
        return "prepared"

    @flow
    async def run(self) -> object:
        await self.prepare()
        return await await_external_signal("decision")


@dataclass
@flow_type
class Quick:
    n: int

    @flow
    async def run(self) -> int:
        return await self.double()

    @step
    async def double(self) -> int:
        return self.n * 2


class Outputs(DisplayPublisher):
    """A front end's outputs: the last bundle shown under each display id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown: dict[str, dict[str, str]] = {}
        self.updates = 0
        self._changed = asyncio.Event()

    def publish(  # type: ignore[override]
        self,
        data: dict[str, str],
        metadata: object = None,
        source: object = None,
        *,
        transient: dict[str, str] | None = None,
        update: bool = False,
        **kwargs: object,
    ) -> None:
        display_id = (transient or {})["display_id"]
        if update:
            assert display_id in self.shown, "an update of an output never shown"
            self.updates += 1
        self.shown[display_id] = data
        self._changed.set()

    def only(self) -> dict[str, str]:
        (bundle,) = self.shown.values()
        return bundle

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    """An IPython shell, taken for a kernel's, whose displays land in :class:`Outputs`."""
    made = not InteractiveShell.initialized()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(
        config=config, ipython_dir=str(tmp_path_factory.mktemp("ipython"))
    )
    kept, shell.display_pub = shell.display_pub, Outputs(shell=shell)
    shell.kernel = object()  # what views look for to know they run in a kernel
    hooks = list(shell.events.callbacks["post_run_cell"])
    try:
        yield shell.display_pub
    finally:
        shell.events.callbacks["post_run_cell"][:] = hooks  # views of this test redraw no more
        shell.display_pub = kept
        del shell.kernel
        if made:
            InteractiveShell.clear_instance()


@pytest.fixture
def memory() -> InMemoryExecutionLog:
    return InMemoryExecutionLog()


@pytest.fixture
async def session(memory: InMemoryExecutionLog) -> AsyncIterator[Session]:
    session = Session(memory)
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
async def waiting(memory: InMemoryExecutionLog) -> FlowHistory:
    await Executor(Approval(), memory, "approval").run(lambda f: f.run())
    return await load_history(memory, "approval")


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make views believe they run in a Jupyter kernel."""
    shell = type("KernelShell", (), {"kernel": object()})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def picture(bundle: dict[str, str]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(bundle[PNG]))).convert("RGB")


def dark_pixels(found: list[tuple[int, Any]]) -> int:
    return sum(count for count, colour in found if sum(colour) < 240)


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    return {colour for _, colour in image.getcolors(maxcolors=1 << 20) or []}


# -- the bundle ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_kernel")
def test_a_timeline_output_is_text_svg_and_png_with_no_html_or_widget(
    waiting: FlowHistory,
) -> None:
    bundle = timeline_from_histories(waiting)._repr_mimebundle_()

    assert set(bundle) == {TEXT, SVG, PNG}
    assert bundle[TEXT].startswith("Timeline of 1 flow")
    svg = ET.fromstring(bundle[SVG])
    with picture(bundle) as png:
        assert png.size == (int(svg.attrib["width"]), int(svg.attrib["height"]))
        assert png.getpixel((png.width - 1, png.height - 1)) == (255, 255, 255)
        found = png.getcolors(maxcolors=1 << 20) or []
    assert GREEN in {colour for _, colour in found}  # the completed step
    # The text is drawn (resvg found fonts): the same picture without its texts is far lighter.
    textless = png_of(re.sub(r"<text\b.*?</text>", "", bundle[SVG], flags=re.DOTALL))
    assert textless is not None
    with Image.open(io.BytesIO(textless)).convert("RGB") as bare:
        bare_found = bare.getcolors(maxcolors=1 << 20) or []
    assert dark_pixels(found) > 2 * dark_pixels(bare_found) + 300


def test_without_resvg_a_picture_has_text_and_svg_only(
    waiting: FlowHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "resvg_py", None)

    assert set(timeline_from_histories(waiting)._repr_mimebundle_()) == {TEXT, SVG}


async def test_a_monitor_output_is_text_and_html_without_svg_or_widget(
    session: Session, fake_kernel: None
) -> None:
    await session.run(Quick(1), "quick")

    bundle = (await session.monitor())._repr_mimebundle_()

    assert set(bundle) == {TEXT, HTML}
    assert "1 of 1 flows final" in bundle[TEXT]
    assert "<svg" not in bundle[HTML] and "<script" not in bundle[HTML]


# -- displayed: refreshed in place --------------------------------------------------------------


async def test_a_refresh_redraws_every_output_of_the_timeline(
    session: Session, outputs: Outputs
) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval")
    IPython.display.display(timeline)
    IPython.display.display(timeline)
    assert len(outputs.shown) == 2
    assert all("WAITING_FOR_SIGNAL" in bundle[TEXT] for bundle in outputs.shown.values())

    await send_signal(session.storage, "approval", "decision", "yes")
    await session.run(Approval(), "approval")
    await timeline.refresh()

    assert outputs.updates == 2
    for bundle in outputs.shown.values():
        assert set(bundle) == {TEXT, SVG, PNG}
        assert "approval (Approval) COMPLETE" in bundle[TEXT]


async def test_auto_refresh_leaves_out_the_png_until_every_flow_is_final(
    session: Session, outputs: Outputs
) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval", interval=0.01, auto_refresh=True)

    IPython.display.display(timeline)

    assert timeline.auto_refreshing
    assert set(outputs.only()) == {TEXT, SVG, PNG}  # the first picture is whole
    await outputs.until(lambda: outputs.updates > 0)
    assert set(outputs.only()) == {TEXT, SVG}  # refreshing: no time spent on the PNG

    await send_signal(session.storage, "approval", "decision", "yes")
    await session.run(Approval(), "approval")
    await outputs.until(lambda: not timeline.auto_refreshing and PNG in outputs.only())

    assert "approval (Approval) COMPLETE" in outputs.only()[TEXT]
    with picture(outputs.only()) as png:
        assert GREEN in colours(png)


async def test_stopping_the_auto_refresh_leaves_the_png(session: Session, outputs: Outputs) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval", interval=0.01, auto_refresh=True)
    IPython.display.display(timeline)
    await outputs.until(lambda: outputs.updates > 0)

    timeline.stop()

    await outputs.until(lambda: PNG in outputs.only())
    assert not timeline.auto_refreshing


async def test_a_displayed_monitor_refreshes_its_output_until_stopped(
    session: Session, outputs: Outputs
) -> None:
    await session.start_workers(Quick)
    monitor = await session.monitor(interval=0.01)

    IPython.display.display(monitor)

    assert monitor.live
    assert outputs.only()[TEXT].startswith("pyergon monitor of flows created since this session")
    await session.schedule(Quick(1), "one")
    await outputs.until(lambda: "1 of 1 flows final (100%)" in outputs.only()[TEXT])
    assert "1 of 1 flows final (100%)" in outputs.only()[HTML]

    task = monitor.refresher
    monitor.stop()
    assert task is not None
    await asyncio.wait([task])

    assert not monitor.live
    assert set(outputs.only()) == {TEXT, HTML}


async def test_stopping_a_monitor_takes_a_last_reading_every_output_shows(
    session: Session, outputs: Outputs
) -> None:
    await session.start_workers(Quick)
    monitor = await session.monitor(interval=3600)
    IPython.display.display(monitor)
    await outputs.until(lambda: outputs.updates > 0)  # its first refresh; the next in an hour
    await session.wait(await session.schedule(Quick(1), "one"))
    assert "0 of 0 flows final" in outputs.only()[TEXT]

    monitor.stop()
    IPython.display.display(monitor)  # as `monitor.stop(); monitor` in a cell

    assert not monitor.live  # displaying a stopped monitor does not start it again
    await outputs.until(
        lambda: all("1 of 1 flows final" in bundle[TEXT] for bundle in outputs.shown.values())
    )
    assert len(outputs.shown) == 2
    assert all("1 of 1 flows final" in bundle[HTML] for bundle in outputs.shown.values())
    assert not monitor.live


async def test_awaiting_a_stopped_monitor_waits_for_its_last_reading(
    session: Session, outputs: Outputs
) -> None:
    await session.start_workers(Quick)
    monitor = await session.monitor(interval=3600)
    IPython.display.display(monitor)
    await outputs.until(lambda: outputs.updates > 0)
    await session.wait(await session.schedule(Quick(1), "one"))

    monitor.stop()
    assert await monitor is monitor

    assert "1 of 1 flows final" in outputs.only()[TEXT]
    assert monitor.settled


async def test_a_monitor_whose_refresh_failed_says_so_in_its_output(
    session: Session, outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = await session.monitor(interval=0.01)

    async def lost(*args: object, **options: object) -> object:
        raise ConnectionError("storage went away")

    monkeypatch.setattr(session.storage, "count_flows", lost)
    IPython.display.display(monitor)
    await outputs.until(lambda: "not live" in outputs.only()[TEXT])

    assert "not live: ConnectionError: storage went away" in outputs.only()[TEXT]
    assert "not live: ConnectionError" in outputs.only()[HTML]
    assert not monitor.live


# -- the bars of a waiting cell -----------------------------------------------------------------


def activity(flow_id: str, progress: StepProgress | None) -> StepActivity:
    return StepActivity(flow_id, "1", "load", 0.0, progress)


def test_bars_in_a_kernel_are_one_static_output_emptied_at_the_end(outputs: Outputs) -> None:
    bars = DisplayedBars()
    bars.show([activity("b", None)])
    assert outputs.shown == {}  # nothing to show yet

    bars.show([activity("b", StepProgress(1, 4, "loading")), activity("a", StepProgress(2))])
    bars.show([activity("b", StepProgress(1, 4, "loading")), activity("a", StepProgress(2))])

    bundle = outputs.only()
    assert set(bundle) == {TEXT, HTML}
    assert bundle[TEXT].splitlines() == ["a 1 load: 2", "b 1 load: 1/4 · loading"]
    assert outputs.updates == 0  # the same bars again: nothing sent

    bars.show([activity("b", StepProgress(3, 4))])
    assert outputs.only()[TEXT] == "b 1 load: 3/4"
    assert "width:75.0%" in outputs.only()[HTML]

    bars.close()
    assert outputs.only() == {}


async def test_a_wait_in_a_kernel_shows_the_bars_as_an_output(
    outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    tqdm = types.ModuleType("tqdm.auto")
    tqdm.tqdm = pytest.fail  # type: ignore[attr-defined] # installed, and never made in a kernel
    monkeypatch.setitem(sys.modules, "tqdm.auto", tqdm)
    now = time.time()
    worker = make_worker("elsewhere", flow_types=("Held",), last_beat=now, lease_seconds=60)
    worker = worker.beating(
        now, activity=(StepActivity("f", "1", "load", now, StepProgress(1, 2)),)
    )

    async def read_workers() -> list[WorkerRecord]:
        return [worker]

    async with progress_bars(read_workers, ["f"], on_error=pytest.fail):
        await outputs.until(lambda: bool(outputs.shown))
        assert outputs.only()[TEXT] == "f 1 load: 1/2"

    assert outputs.only() == {}


async def test_a_terminal_gets_the_text_once_and_nothing_refreshes(
    session: Session, capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    made = not InteractiveShell.initialized()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.instance(config=config, ipython_dir=str(tmp_path_factory.mktemp("ipython")))
    try:
        await session.run(Quick(1), "quick")
        monitor = await session.monitor(interval=0.01)
        timeline = await session.timeline("quick", auto_refresh=True)

        IPython.display.display(monitor)
        IPython.display.display(timeline)

        assert capsys.readouterr().out == f"{monitor.text()}\n{timeline.text()}\n"
        assert not monitor.live and not timeline.auto_refreshing
    finally:
        if made:
            InteractiveShell.clear_instance()


# -- a headless run (nbclient, as nbconvert and papermill run notebooks) ------------------------

HEADLESS_CELLS = [
    """from dataclasses import dataclass
from pyergon import flow, flow_type, step
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog

@dataclass
@flow_type
class Quick:
    n: int

    @flow
    async def run(self) -> int:
        return await self.double()

    @step
    async def double(self) -> int:
        return self.n * 2

session = Session(InMemoryExecutionLog())
workers = await session.start_workers(Quick)""",
    "monitor = session.monitor(interval=0.05)\nmonitor",  # not awaited: no reading yet
    "outcomes = await session.wait(await session.schedule(Quick(1), 'one'))",
    # The live refresh, a task of the second cell, reads the final count while this cell runs.
    """import asyncio
while monitor.snapshot is None or monitor.snapshot.final < 1:
    await asyncio.sleep(0.01)""",
]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_headless_run_stores_the_live_monitor_s_last_reading(tmp_path: Any) -> None:
    import nbformat
    from nbclient import NotebookClient

    from tests.notebook.tutorials import CELL_TIMEOUT, KERNEL_NAME

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in HEADLESS_CELLS]
    )
    NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    (bundle,) = (output.data for output in notebook.cells[1].outputs)
    assert "1 of 1 flows final (100%)" in bundle[TEXT]
    assert "1 of 1 flows final (100%)" in bundle[HTML]
