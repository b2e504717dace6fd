"""The PostgreSQL backend's history listings: each filter walks an index, pages stay exact."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyergon.core.query import FlowQuery
from pyergon.core.records import FlowCursor
from pyergon.core.status import TaskStatus
from pyergon.storage._postgres_sql import PostgresStatements

from .conftest import FlowFactory
from .test_postgres import Backends


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


_HUNDRED_THOUSAND_FLOWS = """
    INSERT INTO {s}.flows (flow_id, flow_type, payload, status, created_at, updated_at, attempt,
        worker_id, parent_flow_id)
    SELECT 'flow-' || lpad(n::text, 6, '0'), 'type-' || n % 20, '', ($1::text[])[1 + n % 6],
        n / 2, n / 2, 1, 'worker-' || n % 50,
        CASE WHEN n % 4 = 0 THEN 'flow-' || lpad((n % 20)::text, 6, '0') END
    FROM generate_series(1, 100000) AS n
"""
"""Two flows per ``created_at``; statuses, types, workers and parents spread evenly."""

LISTING_FILTERS: dict[str, dict[str, Any]] = {
    "no filter": {},
    "status": {"status": {TaskStatus.COMPLETE}},
    "several statuses": {"status": {TaskStatus.PENDING, TaskStatus.RUNNING}},
    "flow_type": {"flow_type": "type-7"},
    "created_after": {"created_after": 10_000.0},
    "created_before": {"created_before": 40_000.0},
    "worker_id": {"worker_id": "worker-7"},
    "parent_flow_id": {"parent_flow_id": "flow-000004"},
}


def sql_literal(value: object) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


def plan_nodes(plan: list[str]) -> list[str]:
    """The nodes of an EXPLAIN plan, e.g. ``Index Scan Backward using flows_by_type on flows``."""
    return [
        line.strip().removeprefix("->").strip().split("  (")[0] for line in plan if "(cost=" in line
    ]


async def test_every_listing_walks_an_index_of_100_000_flows_without_sorting(
    backends: Backends,
) -> None:
    storage = await backends.make()
    admin = await backends.admin()
    sql = PostgresStatements(storage.schema)
    await admin.execute(
        _HUNDRED_THOUSAND_FLOWS.format(s=sql.schema), [status.value for status in TaskStatus]
    )
    await admin.execute(f"ANALYZE {sql.schema}.flows")
    cursor = FlowCursor(25_000.0, "flow-050000")
    wrong = []
    # The server plans each of the first executions for its arguments, and may then switch
    # to one generic plan for any arguments: both must walk an index.
    for plan_cache_mode in ("auto", "force_generic_plan"):
        await admin.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        for (name, filters), after in itertools.product(LISTING_FILTERS.items(), [None, cursor]):
            statement, arguments = sql.list_flows(FlowQuery(**filters, after=after, limit=100))
            await admin.execute(f"PREPARE listing AS {statement}")
            try:
                rows = await admin.fetch(
                    f"EXPLAIN EXECUTE listing({', '.join(map(sql_literal, arguments))})"
                )
            finally:
                await admin.execute("DEALLOCATE listing")
            plan = [row[0] for row in rows]
            nodes = plan_nodes(plan)
            walks = any(node.startswith("Index Scan") for node in nodes)
            sorts_or_scans_all = any(
                node.startswith(("Sort", "Incremental Sort", "Seq Scan", "Bitmap"))
                for node in nodes
            )
            bounded = after is None or any(
                "Index Cond:" in line and "ROW(created_at, flow_id) <" in line for line in plan
            )
            if not walks or sorts_or_scans_all or not bounded:
                paging = "a cursor" if after else "no cursor"
                wrong.append(f"{name} with {paging} ({plan_cache_mode}):\n" + "\n".join(plan))

    assert not wrong, "\n\n".join(wrong)


async def test_several_statuses_page_like_one_list(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make()
    statuses = [TaskStatus.PENDING, TaskStatus.SUSPENDED, TaskStatus.COMPLETE]
    for index in range(40):  # unevenly, so that pages come mostly from one status
        status = statuses[index % 7 % 3]
        await storage.create_flow(
            make_flow(f"flow-{index:02}", status=status, created_at=float(index // 2))
        )
    wanted = statuses[:2]
    matching = [
        flow for flow in await storage.list_flows(FlowQuery(limit=100)) if flow.status in wanted
    ]

    by_offset = [
        flow
        for start in range(0, len(matching), 4)
        for flow in await storage.list_flows(FlowQuery(status=wanted, limit=4, offset=start))
    ]
    by_cursor = await storage.list_flows(FlowQuery(status=wanted, limit=4))
    while page := await storage.list_flows(
        FlowQuery(status=wanted, limit=4, after=FlowCursor.after(by_cursor[-1]))
    ):
        by_cursor += page

    assert len(matching) > 20
    assert by_offset == matching
    assert by_cursor == matching
