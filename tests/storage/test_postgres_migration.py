"""PostgreSQL schemas written by earlier releases are migrated forward on connect.

The layouts are written out here as those releases created them (version 2 is the layout of
commit 3c90df0), so a change of today's migrations cannot change what is tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.records import (
    Attempt,
    Invocation,
    ScheduledFlow,
    SignalRecord,
    StepProgress,
    StoredError,
)
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.storage._flows import request_cancel
from pyergon.storage._postgres_sql import advisory_lock_key
from pyergon.storage._sql.dialect import quote_identifier
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.testing import make_worker

from .conftest import FlowFactory
from .test_postgres import Backends, run_python, wait_until


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


_V1_LAYOUT = """
    CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE {s}.flows (
        flow_id text COLLATE "C" PRIMARY KEY, flow_type text NOT NULL, payload bytea NOT NULL,
        status text NOT NULL, created_at double precision NOT NULL,
        updated_at double precision NOT NULL, result bytea, error_type text,
        error_message text, error_traceback text, error_payload bytea,
        attempt integer NOT NULL, wake_at double precision, parent_flow_id text COLLATE "C",
        parent_sequence text, lease_owner text, lease_token text,
        lease_expires_at double precision);
    CREATE INDEX flows_claim_queued ON {s}.flows (created_at, flow_id)
        WHERE status IN ('PENDING', 'RUNNING');
    CREATE INDEX flows_claim_wake ON {s}.flows (wake_at, created_at, flow_id)
        WHERE status = 'SUSPENDED';
    CREATE INDEX flows_by_created ON {s}.flows (created_at, flow_id);
    CREATE INDEX flows_by_status ON {s}.flows (status, created_at, flow_id);
    CREATE INDEX flows_by_type ON {s}.flows (flow_type, created_at, flow_id);
    CREATE TABLE {s}.invocations (
        flow_id text COLLATE "C" NOT NULL, sequence integer NOT NULL,
        sub_sequence integer NOT NULL, kind text NOT NULL, name text NOT NULL,
        args_hash text NOT NULL, status text NOT NULL, result bytea, error_type text,
        error_message text, error_traceback text, error_payload bytea,
        attempts integer NOT NULL, started_at double precision,
        completed_at double precision, fire_at double precision, child_flow_id text,
        PRIMARY KEY (flow_id, sequence, sub_sequence));
    CREATE TABLE {s}.signals (
        flow_id text COLLATE "C" NOT NULL, name text NOT NULL, payload bytea NOT NULL,
        sent_at double precision NOT NULL, PRIMARY KEY (flow_id, name));
"""

_V2_CHANGES = """
    ALTER TABLE {s}.flows ADD COLUMN worker_id text;
    ALTER TABLE {s}.flows ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
    CREATE INDEX flows_by_worker ON {s}.flows (worker_id, created_at, flow_id);
    CREATE INDEX flows_by_parent ON {s}.flows (parent_flow_id, created_at, flow_id)
        WHERE parent_flow_id IS NOT NULL;
"""

_V3_CHANGES = """
    ALTER TABLE {s}.flows ADD COLUMN version integer NOT NULL DEFAULT 1;
"""

_V4_CHANGES = """
    CREATE TABLE {s}.workers (
        worker_id text COLLATE "C" PRIMARY KEY, incarnation text NOT NULL, host text NOT NULL,
        pid integer NOT NULL, started_at double precision NOT NULL, flow_types text NOT NULL,
        lease_seconds double precision NOT NULL, last_beat double precision NOT NULL,
        stopped_at double precision);
    ALTER TABLE {s}.flows ADD COLUMN lease_losses integer NOT NULL DEFAULT 0;
    ALTER TABLE {s}.flows ADD COLUMN last_lost_by text;
"""

_V5_CHANGES = """
    ALTER TABLE {s}.invocations ADD COLUMN output text;
    ALTER TABLE {s}.invocations ADD COLUMN progress text;
    ALTER TABLE {s}.workers ADD COLUMN activity text;
"""

_V6_CHANGES = """
    ALTER TABLE {s}.invocations ADD COLUMN code_hash text NOT NULL DEFAULT '';
"""

_V6_RECORD = """
    INSERT INTO {s}.invocations (flow_id, sequence, sub_sequence, kind, name, args_hash, status,
        error_type, error_message, error_traceback, attempts, started_at, code_hash)
    VALUES ('running', 2, 0, 'STEP', 'ship', 'h2', 'PENDING', 'shop.Refused', 'no', 'Trace', 1,
        1001, '0123');
"""

_V5_RECORD = """
    INSERT INTO {s}.invocations (flow_id, sequence, sub_sequence, kind, name, args_hash, status,
        result, attempts, started_at, completed_at, output)
    VALUES ('running', 2, 0, 'STEP', 'ship', 'h2', 'COMPLETE', 'shipped', 1, 1001, 1001.5,
        'shipped\n');
"""

_V4_WORKER = """
    INSERT INTO {s}.workers (worker_id, incarnation, host, pid, started_at, flow_types,
        lease_seconds, last_beat)
    VALUES ('worker-a', 'worker-a-first', 'host-1', 4242, 1000.25, '["Order","Refund"]', 2.0,
        1000.25);
"""

_V2_CONTENTS = """
    INSERT INTO {s}.flows (flow_id, flow_type, payload, status, created_at, updated_at,
        error_type, error_message, error_traceback, error_payload, attempt, wake_at,
        parent_flow_id, parent_sequence, lease_owner, lease_token, lease_expires_at,
        worker_id, cancel_requested)
    VALUES
        ('running', 'Order', 'r', 'RUNNING', 1000, 1001, NULL, NULL, NULL, NULL, 1, NULL,
            NULL, NULL, 'w', 't', 1060, 'w', true),
        ('suspended', 'Order', 's', 'SUSPENDED', 1002, 1003, NULL, NULL, NULL, NULL, 2, 1500,
            'running', '3', NULL, NULL, NULL, 'w', false),
        ('failed', 'Order', 'f', 'FAILED', 1004, 1005, 'ValueError', 'bad', 'Traceback',
            'pickled', 3, NULL, NULL, NULL, NULL, NULL, NULL, 'w', false);
    INSERT INTO {s}.invocations (flow_id, sequence, sub_sequence, kind, name, args_hash, status,
        result, attempts, started_at, completed_at)
    VALUES ('running', 1, 0, 'STEP', 'charge', 'h', 'COMPLETE', 'paid', 1, 1000, 1000.5);
    INSERT INTO {s}.signals (flow_id, name, payload, sent_at)
    VALUES ('suspended', 'approved', 'yes', 1004);
"""


async def build_layout(
    admin: asyncpg.Connection, schema: str, version: int, contents: str = ""
) -> None:
    """Create ``schema`` as the release of schema ``version`` left it, with ``contents``."""
    quoted = quote_identifier(schema)
    changes = (_V2_CHANGES, _V3_CHANGES, _V4_CHANGES, _V5_CHANGES, _V6_CHANGES)
    layout = _V1_LAYOUT + "".join(changes[: version - 1])
    async with admin.transaction():
        await admin.execute(f"CREATE SCHEMA {quoted}")
        await admin.execute((layout + contents).format(s=quoted))
        await admin.execute(
            f"INSERT INTO {quoted}.meta (key, value) VALUES ('schema_version', $1)", str(version)
        )


async def stored_version(admin: asyncpg.Connection, schema: str) -> str:
    quoted = quote_identifier(schema)
    return str(await admin.fetchval(f"SELECT value FROM {quoted}.meta"))


async def test_a_version_1_schema_is_migrated_keeping_its_flows(
    backends: Backends, make_flow: FlowFactory
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(
        admin,
        schema,
        1,
        "INSERT INTO {s}.flows (flow_id, flow_type, payload, status, created_at, updated_at, "
        "attempt, lease_owner, lease_token, lease_expires_at) VALUES "
        "('flow-1', 'Order', 'order-payload', 'RUNNING', 1000, 1000, 1, 'w', 't', 1060);",
    )

    storage = await backends.make(schema)

    running = make_flow(
        status=TaskStatus.RUNNING, lease_owner="w", lease_token="t", lease_expires_at=1_060.0
    )
    assert await storage.get_flow("flow-1") == running  # no worker_id, no cancel request
    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    indexes = await admin.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
    assert {"flows_by_worker", "flows_by_parent"} <= {row["indexname"] for row in indexes}
    requested = await request_cancel(storage, "flow-1")  # the new columns are in use
    assert requested is not None and requested.cancel_requested and requested.version == 2


async def test_a_version_2_schema_is_migrated_keeping_everything_at_version_1(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(admin, schema, 2, _V2_CONTENTS)

    storage = await backends.make(schema)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    assert await storage.list_flows(FlowQuery(status=TaskStatus.RUNNING)) == [
        ScheduledFlow(
            "running", "Order", b"r", TaskStatus.RUNNING, 1_000.0, 1_001.0,
            lease_owner="w", lease_token="t", lease_expires_at=1_060.0, worker_id="w",
            cancel_requested=True, version=1,
        )
    ]  # fmt: skip
    suspended = await storage.get_flow("suspended")
    assert suspended is not None and suspended.version == 1
    assert (suspended.wake_at, suspended.parent_flow_id, suspended.attempt) == (
        1_500.0,
        "running",
        2,
    )
    failed = await storage.get_flow("failed")
    assert failed is not None
    assert failed.error == StoredError("ValueError", "bad", "Traceback", b"pickled")
    assert await storage.load_invocations("running") == [
        Invocation(
            flow_id="running",
            sequence=1,
            sub_sequence=0,
            kind=OperationKind.STEP,
            name="charge",
            args_hash="h",
            status=InvocationStatus.COMPLETE,
            result=b"paid",
            attempts=1,
            started_at=1_000.0,
            completed_at=1_000.5,
        )
    ]
    assert await storage.list_signals("suspended") == [
        SignalRecord("suspended", "approved", b"yes", 1_004.0)
    ]
    # The version guards writes from now on.
    stale = FlowWrite("suspended", {"status": TaskStatus.PENDING}, expected_version=2)
    assert (await storage.apply(Change(writes=(stale,)))).moved == "suspended"
    woken = FlowWrite("suspended", {"status": TaskStatus.PENDING}, expected_version=1)
    assert (await storage.apply(Change(writes=(woken,)))).complete
    claimed = await storage.claim(
        ClaimRequest("w2", ["Order"], limit=5, lease_seconds=10, now=2_000)
    )
    # The running flow's lease expired at 1060.
    assert [(run.flow.flow_id, run.flow.version) for run in claimed] == [
        ("running", 2),
        ("suspended", 3),
    ]
    # A flow of the old schema lost no lease before; the claim counts the one it lost now.
    assert (claimed[0].flow.lease_losses, claimed[0].flow.last_lost_by) == (1, "w")
    assert (claimed[1].flow.lease_losses, claimed[1].flow.last_lost_by) == (0, None)


async def test_a_version_3_schema_gets_worker_records_and_its_flows_have_lost_no_lease(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(
        admin,
        schema,
        3,
        _V2_CONTENTS + "UPDATE {s}.flows SET version = 5 WHERE flow_id = 'running';",
    )

    storage = await backends.make(schema)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    running = await storage.get_flow("running")
    assert running is not None and running.version == 5 and running.lease_token == "t"
    assert await storage.renew_leases({"running": "t"}, lease_seconds=30, now=1_050.0) == {
        "running"
    }
    quoted = quote_identifier(schema)
    losses = await admin.fetch(
        f"SELECT flow_id, lease_losses, last_lost_by FROM {quoted}.flows ORDER BY flow_id"
    )
    assert [tuple(row) for row in losses] == [
        ("failed", 0, None),
        ("running", 0, None),
        ("suspended", 0, None),
    ]
    assert await storage.list_workers() == []
    worker = make_worker()
    assert await storage.put_worker(worker, replacing=None)
    assert await storage.get_worker(worker.worker_id) == worker


async def test_a_version_4_schema_keeps_its_records_and_workers_without_output_or_activity(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(admin, schema, 4, _V2_CONTENTS + _V4_WORKER)

    storage = await backends.make(schema)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    (charged,) = await storage.load_invocations("running")
    assert (charged.name, charged.result, charged.output, charged.progress) == (
        "charge",
        b"paid",
        None,
        None,
    )
    worker = make_worker()
    assert await storage.list_workers() == [worker]  # running nothing
    # The new columns are in use.
    shipped = charged.replace(
        sequence=2,
        name="ship",
        output="shipped ✓\n",
        progress=StepProgress(1.0, 2.0, "parcel 1", 1_001.0),
    )
    assert (await storage.apply(Change(records=(shipped,)))).records == [shipped]
    assert await storage.load_invocations("running") == [charged, shipped]
    activity = (StepActivity("running", "3", "pack", 1_002.0, StepProgress(0.5, at=1_002.5)),)
    beaten = worker.beating(1_003.0, activity=activity)
    assert (await storage.beat(beaten, {}, lease_seconds=2.0, now=1_003.0)).registered
    assert await storage.get_worker("worker-a") == beaten
    quoted = quote_identifier(schema)
    columns = await admin.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND column_name IN ('output', 'progress', 'activity') "
        "ORDER BY table_name, column_name",
        schema,
    )
    assert [tuple(row) for row in columns] == [
        ("invocations", "output"),
        ("invocations", "progress"),
        ("workers", "activity"),
    ]
    assert await admin.fetchval(f"SELECT activity IS NOT NULL FROM {quoted}.workers")


async def test_a_version_5_schemas_records_have_no_code_hash_and_new_ones_keep_theirs(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(admin, schema, 5, _V2_CONTENTS + _V5_RECORD)

    storage = await backends.make(schema)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    charged, shipped = await storage.load_invocations("running")
    assert (charged.name, charged.code_hash, shipped.output, shipped.code_hash) == (
        "charge",
        "",
        "shipped\n",
        "",
    )
    # The new column is in use, and a record made before stands against one made by other
    # code with the same outcome.
    packed = charged.replace(sequence=3, name="pack", code_hash="0123456789abcdef")
    again = shipped.replace(code_hash="fedcba9876543210")
    applied = await storage.apply(Change(records=(packed, again)))
    assert applied.complete and applied.records == [packed, shipped]
    assert await storage.load_invocations("running") == [charged, shipped, packed]
    column = await admin.fetchrow(
        "SELECT is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'invocations' AND column_name = 'code_hash'",
        schema,
    )
    assert column is not None and column["is_nullable"] == "NO"


async def test_a_version_6_schemas_records_have_no_earlier_attempts_and_new_ones_keep_theirs(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(admin, schema, 6, _V2_CONTENTS + _V6_RECORD)

    storage = await backends.make(schema)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    charged, shipping = await storage.load_invocations("running")
    assert (charged.earlier_attempts, shipping.earlier_attempts) == ((), ())
    assert (shipping.code_hash, shipping.error) == (
        "0123",
        StoredError("shop.Refused", "no", "Trace"),
    )
    # The new column is in use.
    failed = Attempt.failed(1, 1_001.0, 1_001.5, StoredError("shop.Refused", "no", "Trace"))
    shipped = shipping.replace(
        status=InvocationStatus.COMPLETE, result=b"shipped", error=None, attempts=2,
        earlier_attempts=(failed,),
    )  # fmt: skip
    assert (await storage.apply(Change(records=(shipped,)))).complete
    assert await storage.load_invocations("running") == [charged, shipped]


async def test_two_backends_connecting_at_once_to_a_version_2_schema_both_succeed(
    backends: Backends,
) -> None:
    admin = await backends.admin()
    schema = backends.new_schema()
    await build_layout(admin, schema, 2, _V2_CONTENTS)
    first, second = backends.unopened(schema), backends.unopened(schema)

    await asyncio.gather(first.connect(), second.connect())

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)
    for storage in (first, second):
        flow = await storage.get_flow("running")
        assert flow is not None and flow.version == 1
    columns = await admin.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'flows' AND column_name = 'version'",
        schema,
    )
    assert columns == 1


@pytest.mark.slow
@pytest.mark.parametrize("from_version", [0, 2, 3, 4, 5, 6])
async def test_processes_connecting_at_once_all_succeed(
    backends: Backends, from_version: int
) -> None:
    schema = backends.new_schema()
    admin = await backends.admin()
    if from_version:
        await build_layout(admin, schema, from_version, _V2_CONTENTS)
    await connect_from_processes_at_once(backends, schema, processes=4)

    assert await stored_version(admin, schema) == str(SCHEMA_VERSION)


async def connect_from_processes_at_once(backends: Backends, schema: str, processes: int) -> None:
    """Connect from ``processes`` processes that all wait for the migration lock, then race."""
    script = f"""
        import asyncio
        import pyergon.storage.postgres as postgres

        async def main():
            storage = postgres.PostgresExecutionLog({backends.dsn!r}, schema={schema!r})
            async with storage:
                assert isinstance(await storage.list_flows(), list)

        asyncio.run(main())
    """
    admin = await backends.admin()
    await admin.execute("SELECT pg_advisory_lock($1)", advisory_lock_key(schema))
    running = asyncio.gather(*(run_python(script) for _ in range(processes)))

    async def all_wait() -> bool:
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND wait_event = 'advisory'",
            f"pyergon-{schema}",
        )
        return bool(waiting == processes)

    try:
        await wait_until(all_wait, f"{processes} processes wait for the migration lock")
    finally:
        await admin.execute("SELECT pg_advisory_unlock($1)", advisory_lock_key(schema))
    await running
