"""A tutorial exported to HTML shows its timeline widget in a real, headless Chromium.

The quickstart is executed with its widget state stored, exported with nbconvert's default
HTML template, and opened in Debian's Chromium through Playwright. The exported page loads
require.js and the Jupyter widget manager from CDNs; this machine has no internet, so those
files come from the npm registry (``npm pack``, cached under ``~/.cache/pyergon-tests``) and
are served through Playwright's request routing. Every other outside request is aborted, so
a page that needs more than that fails here instead of hanging.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, sync_playwright

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
HTML_MANAGER = "@jupyter-widgets/html-manager@1.0.15"
"""The widget manager for ipywidgets 8 pages; nbconvert's page asks the CDN for any version."""
REQUIREJS = "requirejs@2.3.8"
ASSETS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "pyergon-tests"
    / re.sub(r"[^\w.-]+", "_", f"{HTML_MANAGER}+{REQUIREJS}")
)
TUTORIAL = NOTEBOOKS_DIR / "01-quickstart.ipynb"
COMPLETE_GREEN = (0x2E, 0x7D, 0x32)
"""The colour of a completed step's bar in every view."""


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it where CI requires every service to be there."""
    if os.environ.get("PYERGON_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


def _npm_pack(package: str, workdir: Path) -> Path:
    """Download ``package``'s tarball from the npm registry into ``workdir``."""
    result = subprocess.run(
        ["npm", "pack", package, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        _unavailable(f"`npm pack {package}` failed: {result.stderr.strip()[-500:]}")
    return workdir / result.stdout.strip().splitlines()[-1]


def _extract(tarball: Path, folder: str, target: Path) -> None:
    """Copy the regular files directly in ``folder`` of ``tarball`` to ``target``."""
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            parent, _, name = member.name.rpartition("/")
            source = archive.extractfile(member) if member.isfile() else None
            if source is not None and parent == folder and name:
                (target / name).write_bytes(source.read())


@pytest.fixture(scope="module")
def widget_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the widget manager's ``dist/`` files and ``require.js``, from npm."""
    if (ASSETS_DIR / "embed-amd.js").is_file() and (ASSETS_DIR / "require.js").is_file():
        return ASSETS_DIR
    if shutil.which("npm") is None:
        _unavailable("npm is needed to fetch the Jupyter widget manager: apt-get install npm")
    workdir = tmp_path_factory.mktemp("npm")
    ASSETS_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Filled next to its final place and renamed into it, so a cache is never half there.
    staging = ASSETS_DIR.with_name(f"{ASSETS_DIR.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _extract(_npm_pack(HTML_MANAGER, workdir), "package/dist", staging)
    _extract(_npm_pack(REQUIREJS, workdir), "package", staging)
    try:
        staging.rename(ASSETS_DIR)
    except OSError:  # another run filled the cache meanwhile
        shutil.rmtree(staging)
    return ASSETS_DIR


@pytest.fixture(scope="module")
def exported_tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, executed with its widget state and exported to HTML."""
    from nbconvert import HTMLExporter

    workdir = tmp_path_factory.mktemp("quickstart")
    notebook = execute_notebook(TUTORIAL, workdir)
    assert problems_in(notebook) == []
    body, _ = HTMLExporter().from_notebook_node(notebook)
    page = workdir / "01-quickstart.html"
    page.write_text(body, encoding="utf-8")
    return page


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """A page in headless Chromium."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 900})
        finally:
            browser.close()


def _serve_offline(page: Page, assets: Path, served: list[str], refused: list[str]) -> None:
    """Answer the CDN requests from ``assets``; abort every other outside request."""

    def answer(route: Route) -> None:
        url = route.request.url
        name = re.sub(r"[?#].*$", "", url).rsplit("/", 1)[-1]
        name = "require.js" if name == "require.min.js" else name
        if url.startswith("file://") and "/@jupyter-widgets/" not in url:
            route.continue_()  # the exported page itself
        elif (assets / name).is_file():
            # The manager's script, and the icon fonts it asks for relative to the page.
            served.append(url)
            route.fulfill(path=assets / name)
        else:
            refused.append(url)
            route.abort()

    page.route("**/*", answer)


def _colours(png: bytes) -> set[tuple[int, ...]]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}


def test_the_timeline_widget_renders_in_chromium(
    exported_tutorial: Path, widget_assets: Path, browser_page: Page, tmp_path: Path
) -> None:
    page = browser_page
    served: list[str] = []
    refused: list[str] = []
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    _serve_offline(page, widget_assets, served, refused)

    page.goto(exported_tutorial.as_uri())
    # The widget manager replaces the widget-view script with the live widget tree.
    bars = page.locator(".pyergon-timeline-widget .pyergon-timeline svg rect")
    bars.first.wait_for(timeout=60_000)

    assert page_errors == []
    assert any("embed-amd.js" in url for url in served), served
    assert [url for url in refused if "jupyter-widgets" in url or "require" in url] == []
    widget = page.locator(".pyergon-timeline-widget")
    assert widget.count() == 1
    assert bars.count() >= 6  # three steps in each of two flows, at least
    lanes = widget.locator(".pyergon-timeline").inner_text()
    assert "report-north" in lanes and "report-south" in lanes
    buttons = [text.strip() for text in widget.locator("button").all_inner_texts()]
    assert buttons == ["Refresh", "auto-refresh"], buttons

    widget.scroll_into_view_if_needed()
    screenshot = widget.screenshot(path=str(tmp_path / "timeline.png"))
    colours = _colours(screenshot)
    assert len(colours) > 20, f"the screenshot looks blank: {len(colours)} colours"
    assert COMPLETE_GREEN in colours, "no bar of a completed step is visible"
