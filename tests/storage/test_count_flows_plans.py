"""What a monitor reads at each refresh reads an index range or flows by id, never every flow.

A monitor of the flows started in a session counts them at every refresh (``count_flows`` with
``created_after``), and one of chosen flows counts and lists them by id (``flow_ids``); on a log
of 100,000 flows neither may read them all, whatever the planner knows of the table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyergon.core.query import FlowQuery
from pyergon.core.records import FlowCursor
from pyergon.core.status import TaskStatus
from pyergon.storage._postgres_sql import PostgresStatements
from pyergon.storage._sqlite_changes import SQL
from pyergon.storage.sqlite import SqliteExecutionLog

from .test_postgres import Backends
from .test_postgres_listing import _HUNDRED_THOUSAND_FLOWS, plan_nodes, sql_literal
from .test_sqlite_listing import CROWD, listing_file, raw


@pytest.mark.parametrize(
    ("flow_type", "index"),
    [(None, "flows_by_status"), ("Type3", "flows_by_type")],
    ids=["any-type", "one-type"],
)
def test_a_count_since_reads_one_index_range_of_a_sqlite_file(
    tmp_path: Path, flow_type: str | None, index: str
) -> None:
    path = listing_file(tmp_path / "flows.db", 1_000)
    statement, parameters = SQL.count_flows(flow_type, 400.0)
    with raw(path) as connection:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()

    reads = [detail for *_, detail in plan if detail.startswith(("SCAN", "SEARCH"))]
    assert reads
    assert all(step.startswith("SEARCH") and f"INDEX {index}" in step for step in reads), reads
    assert all("created_at>?" in step for step in reads), reads


CHOSEN = [f"flow-{index:06}" for index in range(0, 1_000, 7)]
"""Ids of a monitor of chosen flows: fewer than SQLite binds in one statement."""

CHOSEN_READS = {
    "count": lambda sql: sql.count_flows(None, None, CHOSEN),
    "count of a type since": lambda sql: sql.count_flows("Type3", 10.0, CHOSEN),
    "running": lambda sql: sql.list_flows(
        FlowQuery(flow_ids=CHOSEN, status=TaskStatus.RUNNING, limit=20)
    ),
    "other statuses": lambda sql: sql.list_flows(
        FlowQuery(flow_ids=CHOSEN, status={TaskStatus.PENDING, TaskStatus.COMPLETE}, limit=20)
    ),
    "a type after a cursor": lambda sql: sql.list_flows(
        FlowQuery(
            flow_ids=CHOSEN, flow_type="Type3", after=FlowCursor(400.0, "flow-000800"), limit=5
        )
    ),
}


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
@pytest.mark.parametrize("read", list(CHOSEN_READS))
def test_chosen_flows_are_read_by_id_from_a_sqlite_file(
    tmp_path: Path, read: str, analyzed: bool
) -> None:
    path = listing_file(tmp_path / "flows.db", 2_000)
    statement, parameters = CHOSEN_READS[read](SQL)
    with raw(path) as connection:
        if analyzed:
            connection.execute("ANALYZE")
        plan = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()

    reads = [detail for *_, detail in plan if detail.startswith(("SCAN", "SEARCH"))]
    assert reads
    assert all("(flow_id=?)" in step for step in reads), reads


@pytest.mark.slow
async def test_counts_since_match_the_flows_of_a_crowded_sqlite_file(tmp_path: Path) -> None:
    path = listing_file(tmp_path / "flows.db", CROWD)
    async with SqliteExecutionLog(path) as storage:
        counts = await storage.count_flows(created_after=49_000.0)
        of_type = await storage.count_flows(flow_type="Type3", created_after=49_000.0)

    # Flows 98,000 to 99,999 were created at 49,000 or after; the statuses come in turn.
    statuses = list(TaskStatus)
    expected = dict.fromkeys(TaskStatus, 0)
    for index in range(98_000, CROWD):
        expected[statuses[index % len(statuses)]] += 1
    assert counts == expected
    assert sum(of_type.values()) == 200


def literal(value: object) -> str:
    """``value`` as a PostgreSQL literal, a list as an array."""
    if isinstance(value, list):
        return f"ARRAY[{', '.join(map(sql_literal, value))}]"
    return sql_literal(value)


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


@pytest.mark.slow
async def test_a_count_since_walks_indexes_of_100_000_postgres_flows(backends: Backends) -> None:
    storage = await backends.make()
    admin = await backends.admin()
    sql = PostgresStatements(storage.schema)
    await admin.execute(
        _HUNDRED_THOUSAND_FLOWS.format(s=sql.schema), [status.value for status in TaskStatus]
    )
    await admin.execute(f"ANALYZE {sql.schema}.flows")
    wrong = []
    for plan_cache_mode in ("auto", "force_generic_plan"):
        await admin.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        for flow_type in (None, "type-7"):
            statement, arguments = sql.count_flows(flow_type, 49_000.0)
            await admin.execute(f"PREPARE counting AS {statement}")
            try:
                rows = await admin.fetch(
                    f"EXPLAIN EXECUTE counting({', '.join(map(sql_literal, arguments))})"
                )
            finally:
                await admin.execute("DEALLOCATE counting")
            plan = [row[0] for row in rows]
            if any(node.startswith("Seq Scan") for node in plan_nodes(plan)):
                wrong.append(f"type {flow_type} ({plan_cache_mode}):\n" + "\n".join(plan))

    assert not wrong, "\n\n".join(wrong)
    assert sum((await storage.count_flows(created_after=49_000.0)).values()) == 2_001


@pytest.mark.slow
async def test_chosen_flows_are_read_by_id_from_100_000_postgres_flows(
    backends: Backends,
) -> None:
    storage = await backends.make()
    admin = await backends.admin()
    sql = PostgresStatements(storage.schema)
    await admin.execute(
        _HUNDRED_THOUSAND_FLOWS.format(s=sql.schema), [status.value for status in TaskStatus]
    )
    await admin.execute(f"ANALYZE {sql.schema}.flows")
    wrong = []
    for plan_cache_mode in ("auto", "force_generic_plan"):
        await admin.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        for name, read in CHOSEN_READS.items():
            statement, arguments = read(sql)
            await admin.execute(f"PREPARE reading AS {statement}")
            try:
                rows = await admin.fetch(
                    f"EXPLAIN EXECUTE reading({', '.join(map(literal, arguments))})"
                )
            finally:
                await admin.execute("DEALLOCATE reading")
            plan = [row[0] for row in rows]
            nodes = plan_nodes(plan)
            by_id = any("flows_pkey" in node for node in nodes)
            if not by_id or any(node.startswith(("Seq Scan", "Bitmap")) for node in nodes):
                wrong.append(f"{name} ({plan_cache_mode}):\n" + "\n".join(plan))

    assert not wrong, "\n\n".join(wrong)
