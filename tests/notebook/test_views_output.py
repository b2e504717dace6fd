"""What steps printed and how far running steps are: in a history, the timeline, the monitor.

The histories are built as storage and the workers' heartbeats give them, so each view is
tested on its own; escaping is checked with output that holds markup and terminal codes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pyergon.core.records import StepProgress
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.testing import make_flow, make_invocation

HOSTILE = "<script>alert('out')</script> \x1b[31mred\x1b[0m"
PRINTED = "".join(f"part {number}\n" for number in range(1, 26)) + HOSTILE + "\n"
"""What step 1 printed: 26 lines, the last one hostile."""
START = 1_000.0


@pytest.fixture
def busy() -> FlowHistory:
    """A running flow: step 1 printed and reported progress, step 2 fails and runs again,
    step 3 runs its first attempt (no record yet)."""
    flow = make_flow("busy", flow_type="Crunch", status=TaskStatus.RUNNING, created_at=START)
    loaded = make_invocation(
        1,
        flow_id="busy",
        name="load",
        status=InvocationStatus.COMPLETE,
        attempts=1,
        started_at=START,
        completed_at=START + 2,
        output=PRINTED,
        progress=StepProgress(25, 25, "all parts", START + 2),
    )
    fitting = make_invocation(
        2, flow_id="busy", name="fit", attempts=1, started_at=START + 2, output="try 1\n"
    )
    running = (
        StepActivity("busy", "2", "fit", START + 3, StepProgress(1, 4, "fold 1", START + 4)),
        StepActivity("busy", "3", "crunch", START + 4, StepProgress(37, 100, "loading Jan")),
    )
    return FlowHistory(flow, (loaded, fitting), (), (), running=running)


def test_a_history_shows_each_steps_output_collapsed_and_the_progress_of_running_steps(
    busy: FlowHistory,
) -> None:
    page = busy._repr_html_()

    root = ET.fromstring(page)  # well formed, so escaped
    rows = root.findall(".//tbody/tr")
    assert [[cell.text for cell in row][:4] for row in rows] == [
        ["1", "STEP", "load", "COMPLETE"],
        ["2", "STEP", "fit", "running"],
        ["3", "STEP", "crunch", "running"],
    ]
    (output,) = rows[0].iter("details")
    assert output.findtext("summary") == "printed 26 lines"
    shown = output.findtext("pre") or ""
    assert shown.startswith("… 6 earlier line(s)\npart 7\n")
    assert shown.endswith("part 25\n<script>alert('out')</script> red")
    assert "<script" not in page and "\x1b" not in page
    bars = [bar for bar in rows[2].iter("div") if bar.get("class") == "pyergon-progress"]
    assert len(bars) == 1 and "width:37.0%" in ET.tostring(bars[0], encoding="unicode")
    assert "37/100 · loading Jan" in "".join(rows[2].itertext())
    assert "1/4 · fold 1" in "".join(rows[1].itertext())
    assert "printed 1 line" in "".join(rows[1].itertext())  # the failed attempt's output
