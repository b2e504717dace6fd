"""list_flows on SQLite: each page is read from one index range, even in a crowded file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from pyergon.core.query import FlowQuery
from pyergon.core.records import FlowCursor
from pyergon.core.status import TaskStatus
from pyergon.storage._sqlite_changes import SQL
from pyergon.storage._sqlite_schema import prepare_connection
from pyergon.storage.sqlite import SqliteExecutionLog


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


CROWD = 100_000
"""Flows in the crowded file the listing plans are checked on."""


def listing_file(path: Path, count: int) -> Path:
    """A file holding ``count`` flows, inserted behind pyergon's back for speed.

    Flow ``i`` has type ``i % 10``, the statuses in turn, worker ``i % 20`` and a ``created_at``
    shared with one neighbour; every tenth flow is a child of one of 100 parents.
    """
    statuses = list(TaskStatus)
    rows = (
        (
            f"flow-{index:06}",
            f"Type{index % 10}",
            b"",
            statuses[index % len(statuses)].value,
            float(index // 2),
            float(index),
            1,
            f"worker-{index % 20}",
            f"flow-{index % 100:06}" if index % 10 == 5 else None,
        )
        for index in range(count)
    )
    with raw(path) as connection:
        prepare_connection(connection, path=str(path), busy_timeout=5, use_wal=True)
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO flows (flow_id, flow_type, payload, status, created_at, updated_at, "
            "attempt, worker_id, parent_flow_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.execute("COMMIT")
    return path


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file holding :data:`CROWD` flows (about a second to build, once per module)."""
    return listing_file(tmp_path_factory.mktemp("crowded") / "flows.db", CROWD)


@pytest.fixture(scope="module")
def uncrowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file with the schema and no flows: the plans without statistics, quickly."""
    return listing_file(tmp_path_factory.mktemp("uncrowded") / "flows.db", 0)


CURSOR = FlowCursor(30_000.0, "flow-060000")
"""A cursor in the middle of the crowded file."""


@pytest.mark.parametrize(
    "file",
    [
        pytest.param("uncrowded", id="empty"),
        pytest.param("crowded", id="100k", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("after", [None, CURSOR], ids=["first-page", "after-cursor"])
@pytest.mark.parametrize(
    ("filters", "index"),
    [
        pytest.param({}, "flows_by_created", id="no-filter"),
        pytest.param({"status": {TaskStatus.RUNNING}}, "flows_by_status", id="status"),
        pytest.param(
            {"status": {TaskStatus.RUNNING, TaskStatus.PENDING}},
            "flows_by_status",
            id="statuses",
        ),
        pytest.param({"flow_type": "Type3"}, "flows_by_type", id="type"),
        pytest.param({"worker_id": "worker-7"}, "flows_by_worker", id="worker"),
        pytest.param({"parent_flow_id": "flow-000005"}, "flows_by_parent", id="parent"),
        pytest.param(
            {"created_after": 1_000.0, "created_before": 40_000.0},
            "flows_by_created",
            id="created-range",
        ),
    ],
)
def test_a_page_of_flows_is_read_from_an_index_without_sorting(
    request: pytest.FixtureRequest,
    file: str,
    filters: dict[str, Any],
    index: str,
    after: FlowCursor | None,
) -> None:
    statement, parameters = SQL.list_flows(FlowQuery(**filters, limit=50, after=after))
    with raw(request.getfixturevalue(file)) as connection:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()

    steps = [detail for *_, detail in plan]
    reads = [step for step in steps if step.startswith(("SCAN", "SEARCH"))]
    assert reads, steps
    assert all(f"USING INDEX {index}" in step for step in reads), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps
    if after is not None:  # the cursor bounds the index range rather than filtering rows
        assert all("(created_at,flow_id)<(?,?)" in step for step in reads), steps


@pytest.mark.slow
async def test_keyset_pages_of_a_crowded_file_hold_the_right_flows(crowded: Path) -> None:
    async with SqliteExecutionLog(crowded) as storage:
        first = await storage.list_flows(FlowQuery(flow_type="Type3", limit=50))
        second = await storage.list_flows(
            FlowQuery(flow_type="Type3", limit=50, after=FlowCursor.after(first[-1]))
        )
        children = await storage.list_flows(
            FlowQuery(parent_flow_id="flow-000005", limit=50, after=CURSOR)
        )

    assert [flow.flow_id for flow in first + second] == [
        f"flow-{index:06}" for index in range(CROWD - 7, CROWD - 1_000, -10)
    ]
    assert [flow.flow_id for flow in children] == [
        f"flow-{index:06}" for index in range(59_905, 59_905 - 5_000, -100)
    ]
