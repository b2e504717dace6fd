"""Views never load a stored value: they show its size and format, even when it cannot be read.

A flow whose step returns a 5 MB DataFrame keeps it as a Parquet artifact beside its SQLite
file. With the artifact deleted and every serializer's ``loads`` made to fail, the DataFrames,
the history, the timeline (text and SVG), the monitor and ``pyergon show`` still work and name
the value's size and format; reading the value itself is a one-line error naming the flow, the
step and the artifact's path.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest

from pyergon import dag, flow, flow_type, step
from pyergon.errors import ArtifactError
from pyergon.notebook import Session
from pyergon.serialization import ArtifactSerializer, JsonSerializer, PickleSerializer
from pyergon.serialization._artifact_refs import format_size
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.notebook.test_magics import Cells, cells, ipython  # noqa: F401 - fixtures
from tests.test_cli_manage import one_line_error, run_all

ROWS = 320_000
"""Rows of two float64 columns: a 5 MB frame, above the 1 MiB artifact threshold."""


@dataclass
@flow_type
class Crunch:
    rows: int

    @step
    async def load(self) -> pd.DataFrame:
        numbers = np.random.default_rng(7)
        return pd.DataFrame({"x": numbers.random(self.rows), "y": numbers.random(self.rows)})

    @step
    async def total(self, frame: pd.DataFrame) -> float:
        return float(frame["x"].sum())

    @flow
    async def run(self) -> pd.DataFrame:
        frame = await self.load()
        await self.total(frame)
        return frame


@dataclass
@flow_type
class CrunchDag:
    """The same frame through a DAG, whose graph shows its steps' states."""

    rows: int

    @step
    async def load(self) -> pd.DataFrame:
        return await Crunch(self.rows).load()

    @step(inputs={"frame": "load"})
    async def total(self, frame: pd.DataFrame) -> float:
        return float(frame["x"].sum())

    @flow
    async def run(self) -> object:
        return await dag(self)


@dataclass(frozen=True)
class Stored:
    """The flows ``big`` and ``big-dag`` run once on SQLite, their one artifact then deleted."""

    database: Path
    artifact: Path
    digest: str
    size: int

    @property
    def url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def described(self) -> str:
        return f"{format_size(self.size)} parquet artifact"


@pytest.fixture
async def stored(tmp_path: Path) -> Stored:
    database = tmp_path / "flows.db"
    async with SqliteExecutionLog(str(database)) as storage:
        session = Session(storage)
        try:
            outcomes = [
                await session.run(Crunch(ROWS), "big"),
                await session.run(CrunchDag(ROWS), "big-dag"),
            ]
        finally:
            await session.close()
    assert [outcome.status.value for outcome in outcomes] == ["COMPLETE", "COMPLETE"]
    store = tmp_path / "flows.artifacts"
    (artifact,) = [path for path in store.glob("??/*") if re.fullmatch("[0-9a-f]{64}", path.name)]
    found = Stored(database, artifact, f"sha256:{artifact.name}", artifact.stat().st_size)
    artifact.unlink()
    return found


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every serializer's ``loads`` fail and note each call, even one a view swallows."""
    calls: list[int] = []

    def loads(self: object, data: bytes) -> NoReturn:
        calls.append(len(data))
        raise AssertionError(f"a view loaded a stored value ({len(data)} bytes)")

    for serializer in (ArtifactSerializer, PickleSerializer, JsonSerializer):
        monkeypatch.setattr(serializer, "loads", loads)
    return calls


@pytest.fixture
async def session(stored: Stored, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Session]:
    loaded = _no_loading(monkeypatch)
    async with SqliteExecutionLog(str(stored.database)) as storage:
        opened = Session(storage)
        try:
            yield opened
        finally:
            await opened.close()
    assert loaded == [], "a view loaded stored values of these sizes"


async def test_invocations_give_each_value_s_size_format_and_artifact(
    session: Session, stored: Stored
) -> None:
    started = time.perf_counter()
    records = await session.invocations("big")
    took = time.perf_counter() - started

    rows = records.set_index("name")
    assert rows.loc["load", "result_size"] == stored.size
    assert rows.loc["load", "result_format"] == "parquet"
    assert rows.loc["load", "result_artifact"] == stored.digest
    assert rows.loc["total", "result_format"] == "pickle"
    assert 0 < rows.loc["total", "result_size"] < 100
    assert rows.loc["total", "result_artifact"] is pd.NA
    assert str(records.dtypes["result_size"]) == "Int64"
    assert str(records.dtypes["result_format"]) == "category"
    assert str(records.dtypes["result_artifact"]) == "string"
    print(f"invocations() of a flow with a {stored.described}: {took * 1000:.1f} ms")


async def test_flows_give_the_input_and_result_size_and_format(
    session: Session, stored: Stored
) -> None:
    flows = (await session.flows()).set_index("flow_id")

    assert flows.loc["big", "result_size"] == stored.size
    assert flows.loc["big", "result_format"] == "parquet"
    assert 0 < flows.loc["big", "input_size"] < 1000
    assert str(flows.dtypes["input_size"]) == "Int64"


async def test_the_history_and_the_timeline_name_a_large_value_s_size_and_format(
    session: Session, stored: Stored
) -> None:
    history = await session.history("big")
    timeline = await session.timeline("big")

    assert f"result {stored.described}: <code>" in history._repr_html_()
    load, total = [line for line in timeline.text().splitlines() if "STEP" in line]
    assert load.endswith(f"  {stored.described}")
    assert "pickle" not in total  # a small value goes unmentioned
    assert history.text() == timeline.text().split("\n", 1)[1]
    svg = timeline.svg()
    assert f"1 STEP load: COMPLETE, {time_of(svg, 'load')}, {stored.described}" in svg
    assert "pickle" not in svg


def time_of(svg: str, name: str) -> str:
    """The duration a record's tooltip gives, as the SVG has it."""
    marker = f"STEP {name}: COMPLETE, "
    return svg.split(marker, 1)[1].split(",", 1)[0]


async def test_the_monitor_names_a_large_result_s_size_and_format(
    session: Session, stored: Stored
) -> None:
    monitor = await session.monitor(all_flows=True)
    monitor.stop()

    assert f"    big (Crunch) COMPLETE, result {stored.described}" in monitor.text()
    assert f"<td>{stored.described}</td>" in monitor._repr_html_()


async def test_a_dag_s_graph_names_a_large_value_in_its_step_s_tooltip(
    session: Session, stored: Stored
) -> None:
    await session.register(CrunchDag)
    graph = await session.graph("big-dag")

    assert f"load: complete (position 1, {stored.described})" in graph.svg()


async def test_the_value_itself_is_an_error_naming_the_flow_step_and_path(stored: Stored) -> None:
    async with SqliteExecutionLog(str(stored.database)) as storage:
        session = Session(storage)
        try:
            with pytest.raises(ArtifactError) as step_value:
                await session.value("big", "load")
            with pytest.raises(ArtifactError) as flow_result:
                await session.value("big")
        finally:
            await session.close()

    message = str(step_value.value)
    assert message.startswith("the value of step 1 'load' of flow 'big' cannot be read: ")
    assert f"artifact {stored.artifact} is missing" in message
    assert str(flow_result.value).startswith("the result of flow 'big' cannot be read: ")


def test_in_a_notebook_the_missing_artifact_is_one_line(
    cells: Cells,  # noqa: F811 - fixture
    stored: Stored,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cells(f"%pyergon connect {stored.url}")
    records = cells("await pyergon_session.invocations('big')")
    assert records.set_index("name").loc["load", "result_format"] == "parquet"
    capsys.readouterr()

    error = cells.error("%pyergon value big load")

    assert isinstance(error, ArtifactError)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("ArtifactError: the value of step 1 'load' of flow 'big' cannot be read")
    assert str(stored.artifact) in line


def test_show_prints_each_step_s_size_and_format_without_loading(stored: Stored) -> None:
    text, as_json, table, listed, result = run_all(
        ["show", "big", "--storage", stored.url],
        ["show", "big", "--json", "--storage", stored.url],
        ["flows", "--storage", stored.url],
        ["flows", "--json", "--storage", stored.url],
        ["show", "big", "--result", "--storage", stored.url],
        cwd=stored.database.parent,
    )

    assert text.returncode == 0, text.stderr
    reads = f"pyergon show big --storage {stored.url} --result prints it"
    assert f"  result {stored.described}: {reads}" in text.stdout.splitlines()
    load = next(line for line in text.stdout.splitlines() if " load " in line)
    assert stored.described in load
    assert as_json.returncode == 0, as_json.stderr
    shown: dict[str, Any] = json.loads(as_json.stdout)
    assert shown["result"] == {"artifact": stored.digest, "bytes": stored.size, "format": "parquet"}
    first = shown["invocations"][0]
    assert (first["result_bytes"], first["result_format"]) == (stored.size, "parquet")
    assert first["result_artifact"] == stored.digest
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("big "))
    assert row.endswith(f"  {stored.described}")
    assert listed.returncode == 0, listed.stderr
    flow_json = next(each for each in json.loads(listed.stdout) if each["flow_id"] == "big")
    assert (flow_json["result_bytes"], flow_json["result_format"]) == (stored.size, "parquet")
    one_line_error(result, 1, f"artifact {stored.artifact} is missing")


if __name__ == "__main__":  # pragma: no cover - a quick look at the figures
    sys.exit(pytest.main([__file__, "-q", "-s"]))
