"""The timeline's picture shows wherever a notebook is read: untrusted, without kernel, exported.

The quickstart is executed with nbclient and saved unsigned, so JupyterLab treats it as
untrusted (it sanitizes HTML and skips SVG, as for a fresh clone). In Debian's Chromium through
Playwright it must show the timeline as a picture (an ``<img>`` of the PNG, with the green bars
of completed steps), not the garbled text of sanitized inline SVG: (a) opened in JupyterLab 4
with its kernel; (b) opened in a JupyterLab that has no kernel to give (``No Kernel``), where a
widget would say "model not found" or "Loading widget..."; (c) exported with
``nbconvert --to html`` and opened offline. Every request outside the server (or, for the export,
outside the file) is aborted, so nothing here needs the internet.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Locator, Page, Route, sync_playwright

from tests.notebook.tutorials import NOTEBOOKS_DIR, execute_notebook, problems_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1200, "height": 4200}
"""Tall enough that JupyterLab lays out every output (it leaves those off screen empty)."""
TUTORIAL = NOTEBOOKS_DIR / "01-quickstart.ipynb"
MONITOR_TUTORIAL = NOTEBOOKS_DIR / "02-workers-and-timers.ipynb"
COMPLETE_GREEN = (0x2E, 0x7D, 0x32)
"""The colour of a completed step's bar in every view."""
GARBLED = "seconds from the first start0"
"""The timeline's axis as text: what an untrusted notebook showed of sanitized inline SVG."""
TOKEN = "pyergon-browser-test"
STARTUP_SECONDS = 90


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it where CI requires every service to be there."""
    if os.environ.get("PYERGON_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Lab:
    """A JupyterLab server on this machine, with the notebooks it serves in ``root``."""

    url: str
    root: Path

    def notebook_url(self, name: str) -> str:
        """Open ``name`` alone: ``reset`` drops the tabs an earlier page left open."""
        return f"{self.url}/lab/tree/{name}?reset&token={TOKEN}"


def _start_lab(root: Path, home: Path, *options: str) -> Iterator[Lab]:
    """Run JupyterLab on a free port with its own config, data and settings under ``home``.

    A data directory of its own means an empty trust database: every notebook is untrusted.
    """
    port = _free_port()
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *options,
    ]
    log = home / "jupyterlab.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield Lab(url, root)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def executed_tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, executed now and saved unsigned (untrusted)."""
    workdir = tmp_path_factory.mktemp("quickstart")
    notebook = execute_notebook(TUTORIAL, workdir)
    assert problems_in(notebook) == []
    return workdir / TUTORIAL.name


@pytest.fixture(scope="module")
def lab_root(executed_tutorial: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The notebooks JupyterLab serves: the quickstart run now and 02 as stored (a monitor)."""
    root = tmp_path_factory.mktemp("lab")
    (root / "quickstart.ipynb").write_bytes(executed_tutorial.read_bytes())
    (root / "monitor.ipynb").write_bytes(MONITOR_TUTORIAL.read_bytes())
    return root


@pytest.fixture(scope="module")
def lab(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab with the environment's Python kernel."""
    _need_chromium()
    yield from _start_lab(lab_root, tmp_path_factory.mktemp("lab-home"))


@pytest.fixture(scope="module")
def lab_without_kernels(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab that offers no kernel, as a notebook reopened where its kernel is gone."""
    _need_chromium()
    yield from _start_lab(
        lab_root,
        tmp_path_factory.mktemp("lab-home-no-kernel"),
        "--KernelSpecManager.allowed_kernelspecs=['nonexistent']",
    )


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """A page in headless Chromium."""
    _need_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def _only_from(page: Page, prefix: str) -> None:
    """Abort every request whose URL does not start with ``prefix`` (no internet here)."""

    def answer(route: Route) -> None:
        if route.request.url.startswith(prefix):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", answer)


def _colours(png: bytes) -> set[tuple[int, ...]]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}


def _assert_shows_the_timeline(page: Page, picture: Locator, tmp_path: Path) -> None:
    """The page shows the timeline as a picture with green bars, and nowhere as garbled text."""
    picture.first.wait_for(timeout=60_000)
    assert picture.count() == 1
    picture.scroll_into_view_if_needed()
    box = picture.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100, box
    colours = _colours(picture.screenshot(path=str(tmp_path / "timeline.png")))
    assert COMPLETE_GREEN in colours, "no bar of a completed step is visible"
    text = page.locator("body").inner_text()
    assert GARBLED not in text
    assert "model not found" not in text and "Loading widget" not in text


def _timeline_image(page: Page) -> Locator:
    """The ``<img>`` of a PNG in an output of the notebook JupyterLab shows."""
    return page.locator(".jp-OutputArea-output img[src^='data:image/png']").filter(visible=True)


def test_an_untrusted_notebook_in_jupyterlab_shows_the_timeline_picture(
    lab: Lab, browser_page: Page, tmp_path: Path
) -> None:
    page = browser_page
    _only_from(page, lab.url)

    page.goto(lab.notebook_url("quickstart.ipynb"))

    _assert_shows_the_timeline(page, _timeline_image(page), tmp_path)
    # Untrusted: JupyterLab skips the SVG (a trusted notebook would show it, ranked first).
    assert page.locator(".jp-RenderedSVG").count() == 0


def test_a_notebook_opened_with_no_kernel_shows_the_timeline_picture(
    lab_without_kernels: Lab, browser_page: Page, tmp_path: Path
) -> None:
    page = browser_page
    _only_from(page, lab_without_kernels.url)

    page.goto(lab_without_kernels.notebook_url("quickstart.ipynb"))
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=60_000)
    assert "Select Kernel" in dialog.inner_text()
    dialog.get_by_role("button", name="Select").click()  # "No Kernel" is the only choice

    _assert_shows_the_timeline(page, _timeline_image(page), tmp_path)
    assert page.locator(".jp-Toolbar-kernelName").first.inner_text().strip() == "No Kernel"


def test_the_stored_monitor_reads_as_a_table_in_an_untrusted_notebook(
    lab_without_kernels: Lab, browser_page: Page
) -> None:
    page = browser_page
    _only_from(page, lab_without_kernels.url)

    page.goto(lab_without_kernels.notebook_url("monitor.ipynb"))
    page.locator(".jp-Dialog").get_by_role("button", name="Select").click()

    monitor = page.locator(".jp-OutputArea-output .pyergon-monitor")
    monitor.first.wait_for(timeout=60_000)
    assert "flows final" in monitor.first.inner_text()
    assert monitor.first.locator("table td").count() >= 6  # a cell per status, at least
    _timeline_image(page).first.wait_for(timeout=60_000)  # the stored timeline of 02, as PNG
    assert _timeline_image(page).count() == 1


def test_the_exported_html_shows_the_timeline_offline(
    executed_tutorial: Path, browser_page: Page, tmp_path: Path
) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed_tutorial, as_version=4))
    exported = tmp_path / "01-quickstart.html"
    exported.write_text(body, encoding="utf-8")
    page = browser_page
    _only_from(page, "file://")  # the page's CDN scripts (MathJax, require.js) are refused

    page.goto(exported.as_uri())

    # nbconvert picks the SVG and shows it as an <img> of a data: URL.
    picture = page.locator(".jp-OutputArea-output img[src^='data:image/']")
    _assert_shows_the_timeline(page, picture, tmp_path)
