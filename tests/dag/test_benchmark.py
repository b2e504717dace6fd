"""The dag_pipeline benchmark runs in quick mode and gives the line its README describes."""

from __future__ import annotations

import json

import pytest

from benchmarks import one


def test_dag_pipeline_gives_each_pipelines_time_per_flow_and_the_speedup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = one.main(["dag_pipeline", "memory", "--runs", "1", "--quick"])
    (text,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    line = json.loads(text)

    assert code == 0, line
    assert (line["scenario"], line["backend"], line["n"], line["runs"]) == (
        "dag_pipeline",
        "memory",
        2,
        1,
    )
    assert line["dag_ms"] > 0 and line["sequential_ms"] > 0
    assert line["speedup"] == pytest.approx(line["sequential_ms"] / line["dag_ms"], rel=0.01)
    assert (line["ideal_speedup"], line["steps_per_flow"], line["branches"]) == (4, 20, 4)
