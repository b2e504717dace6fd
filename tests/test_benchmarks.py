"""The issue 15 benchmarks run in quick mode and give the lines benchmarks/README.md describes.

Each runs through ``python -m benchmarks.one``'s ``main`` (one run, quick sizes), which prints
the scenario's JSON line: the test reads it as a user of the harness would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import one
from benchmarks.run import plan
from benchmarks.scenarios import SCENARIOS

# Quick cell_latency: a kernel start and a 2 s step per variant.
pytestmark = pytest.mark.timeout(180)


def run_line(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict[str, Any]:
    code = one.main([*arguments, "--runs", "1", "--quick"])
    (line,) = [text for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
    result: dict[str, Any] = json.loads(line)
    assert code == 0, result
    return result


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_sync_step_overhead_gives_each_kind_per_step_and_the_difference(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    line = run_line(capsys, "sync_step_overhead", backend)

    assert (line["scenario"], line["backend"], line["n"]) == ("sync_step_overhead", backend, 100)
    assert "variant" not in line
    assert line["async_us_per_step"] > 0 and line["def_us_per_step"] > 0
    assert line["overhead_us_per_step"] == pytest.approx(
        line["def_us_per_step"] - line["async_us_per_step"], abs=0.01
    )
    assert line["thread_handoff_us"] > 0
    assert line["overhead_target_us"] == 100
    assert len(line["load_avg_1m_before_runs"]) == 1


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_sync_steps_flow_gives_steps_per_second_of_one_flow(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    line = run_line(capsys, "sync_steps_flow", backend)

    assert (line["n"], line["runs"]) == (100, 1)
    assert line["steps_per_s"]["median"] == pytest.approx(100 / line["wall_s"]["median"], rel=0.01)


def test_cell_latency_runs_once_per_variant() -> None:
    assert [line for line in plan(["cell_latency"], None) if line[0] == "cell_latency"] == [
        ("cell_latency", "sqlite", "def"),
        ("cell_latency", "sqlite", "async"),
    ]
    assert plan(["cell_latency"], ["sqlite"], ["async"]) == [("cell_latency", "sqlite", "async")]
    with pytest.raises(ValueError, match="cell_latency needs --variant, one of def, async"):
        SCENARIOS["cell_latency"].runner(None)
    with pytest.raises(ValueError, match="sync_steps_flow has no variants"):
        SCENARIOS["sync_steps_flow"].runner("def")


@pytest.mark.slow
def test_cell_latency_in_a_real_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    threaded = run_line(capsys, "cell_latency", "sqlite", "--variant", "def")
    on_the_loop = run_line(capsys, "cell_latency", "sqlite", "--variant", "async")

    for line in (threaded, on_the_loop):
        assert line["extra_attempts"] == line["extra_body_starts"] == 0  # the step ran once
        assert line["step_seconds"] == 2
        assert line["latency_target_ms"] == 500
    assert threaded["variant"] == "def"
    assert threaded["cells"] >= 2  # cells completed while the def step ran
    assert on_the_loop["variant"] == "async"
    # Sent once the async step had started, a cell waits for the loop the step holds.
    assert on_the_loop["cells"] == 1
    assert on_the_loop["latency_ms"]["p50"] > 0.9 * 2000


def test_views_render_times_the_timeline_and_the_monitor_at_each_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = run_line(capsys, "views_render", "memory", "--n", "20")

    assert (line["scenario"], line["n"], line["steps_per_flow"]) == ("views_render", 20, 50)
    for size in (10, 20, 200):
        for number in ("timeline_build", "timeline_text", "timeline_svg", "monitor_refresh"):
            assert line[f"{number}_ms_at_{size}"] > 0
        assert line[f"monitor_html_ms_at_{size}"] > 0


def test_monitor_refresh_times_a_refresh_over_every_flow_and_over_a_session(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = run_line(capsys, "monitor_refresh", "sqlite", "--n", "300")

    assert (line["scenario"], line["backend"], line["n"]) == ("monitor_refresh", "sqlite", 300)
    assert line["scoped_flows"] == 300
    assert line["refreshes_per_s_all"] == pytest.approx(1000 / line["refresh_all_ms"], rel=0.01)
    assert line["busy_percent_at_1s_interval_scoped"] == pytest.approx(
        line["refresh_scoped_ms"] / 10, rel=0.01
    )
