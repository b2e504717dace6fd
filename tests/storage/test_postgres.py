"""What only the PostgreSQL backend does: schemas, migrations, NOTIFY, reconnection, real races."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pyergon.core.records import FlowCursor, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
)
from pyergon.storage import open_storage
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.postgres_sql import (
    Statements,
    advisory_lock_key,
    channel_name,
    quote_identifier,
)

from ..conftest import drop_schema
from .conftest import FlowFactory, InvocationFactory

MakePostgres = Callable[..., Awaitable[PostgresExecutionLog]]
T = TypeVar("T")


@pytest.fixture
async def new_schema(postgres_dsn: str) -> AsyncIterator[Callable[[], str]]:
    """Hand out fresh schema names; drop the schemas after the test."""
    schemas: list[str] = []

    def make() -> str:
        schemas.append(f"pyergon_test_{uuid.uuid4().hex[:12]}")
        return schemas[-1]

    yield make
    for schema in schemas:
        await drop_schema(schema)


@pytest.fixture
async def make_postgres(
    postgres_dsn: str, new_schema: Callable[[], str]
) -> AsyncIterator[MakePostgres]:
    """Connect backends (by default each in a fresh schema); close them after the test."""
    opened: list[PostgresExecutionLog] = []

    async def make(schema: str | None = None, **options: object) -> PostgresExecutionLog:
        options.setdefault("dsn", postgres_dsn)
        options.setdefault("schema", schema or new_schema())
        storage = PostgresExecutionLog(**options)  # type: ignore[arg-type]
        opened.append(storage)
        await storage.connect()
        return storage

    yield make
    for storage in opened:
        await storage.close()


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, to look at or tamper with the database behind pyergon's back."""
    connection = await asyncpg.connect(postgres_dsn)
    yield connection
    await connection.close()


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll a condition of the server (not of this process) until it holds, for at most 10 s."""
    deadline = time.monotonic() + 10
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def run_python(code: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(code),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, (stdout + stderr).decode()


def signal(name: str = "approved", flow_id: str = "flow-1") -> SignalRecord:
    return SignalRecord(flow_id=flow_id, name=name, payload=b"yes", sent_at=1_500.0)


# -- construction and lifecycle ----------------------------------------------------------------


def test_a_missing_asyncpg_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)

    with pytest.raises(ImportError, match=r'pip install "pyergon\[postgres\]"'):
        PostgresExecutionLog()


@pytest.mark.parametrize("schema", ["", "x" * 64, "nul\x00"])
def test_a_schema_name_postgres_would_change_is_refused(schema: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        PostgresExecutionLog(schema=schema)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgres://db/app?password=s3cret&ssl=on", "postgres://db/app?password=***&ssl=on"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
    ],
)
def test_the_dsn_is_shown_without_its_password(dsn: str, shown: str) -> None:
    storage = PostgresExecutionLog(dsn)

    assert storage.dsn == shown
    assert "s3cret" not in repr(storage)


def test_long_schema_names_get_a_channel_postgres_accepts() -> None:
    assert channel_name("orders") == "pyergon_work_orders"
    assert len(channel_name("s" * 63).encode()) <= 63
    assert channel_name("s" * 63) != channel_name("s" * 62 + "t")


async def test_use_before_connect_and_after_close_is_refused(
    make_postgres: MakePostgres, postgres_dsn: str, make_flow: FlowFactory
) -> None:
    unopened = PostgresExecutionLog(postgres_dsn, schema="never_connected")
    with pytest.raises(StorageClosedError, match="not open"):
        await unopened.get_flow("flow-1")

    storage = await make_postgres()
    await storage.close()
    with pytest.raises(StorageClosedError):
        await storage.create_flow(make_flow())
    with pytest.raises(StorageClosedError):
        await storage.wait_for_work(0.01)


async def test_reconnecting_after_close_finds_the_data(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    storage = await make_postgres()
    await storage.create_flow(make_flow())
    await storage.close()

    await storage.connect()

    assert await storage.get_flow("flow-1") == make_flow()


async def test_async_with_connects_and_closes(
    postgres_dsn: str, new_schema: Callable[[], str], make_flow: FlowFactory
) -> None:
    async with PostgresExecutionLog(postgres_dsn, schema=new_schema()) as storage:
        await storage.create_flow(make_flow())
        assert "open" in repr(storage)
    assert "closed" in repr(storage)


# -- schemas -----------------------------------------------------------------------------------


async def test_schemas_are_isolated_from_each_other(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    orders, refunds = await make_postgres(), await make_postgres()
    orders_elsewhere = await make_postgres(orders.schema)
    await refunds.create_flow(make_flow(flow_type="Refund", status=TaskStatus.COMPLETE))
    refund_waiter = asyncio.create_task(refunds.wait_for_work(timeout=0.5))
    order_waiter = asyncio.create_task(orders_elsewhere.wait_for_work(timeout=30))

    await orders.create_flow(make_flow())
    await refunds.reset()

    assert await order_waiter is True
    assert await refund_waiter is False  # the other schema's notice is not for us
    assert await orders_elsewhere.get_flow("flow-1") == make_flow()
    assert await refunds.list_flows() == []


async def test_an_odd_schema_name_is_quoted_everywhere(
    postgres_dsn: str, make_flow: FlowFactory
) -> None:
    schema = f'Odd "{uuid.uuid4().hex[:8]}"; DROP TABLE flows --'
    try:
        async with PostgresExecutionLog(postgres_dsn, schema=schema) as storage:
            waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
            await storage.create_flow(make_flow())
            assert await waiter is True
            assert await storage.claim_flow("w", ["Order"], lease_seconds=5, now=1_000)
    finally:
        await drop_schema(schema)


async def test_connect_creates_the_schema_at_the_current_version(
    make_postgres: MakePostgres, admin: asyncpg.Connection
) -> None:
    storage = await make_postgres()
    schema = quote_identifier(storage.schema)

    version = await admin.fetchval(f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'")
    tables = await admin.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", storage.schema
    )

    assert version == str(SCHEMA_VERSION)
    assert [row["tablename"] for row in tables] == ["flows", "invocations", "meta", "signals"]


async def test_a_schema_from_a_newer_pyergon_is_refused_untouched(
    make_postgres: MakePostgres, admin: asyncpg.Connection, make_flow: FlowFactory
) -> None:
    storage = await make_postgres()
    await storage.create_flow(make_flow())
    await storage.close()
    schema = quote_identifier(storage.schema)
    newer = str(SCHEMA_VERSION + 1)
    await admin.execute(f"UPDATE {schema}.meta SET value = $1", newer)

    with pytest.raises(SchemaVersionError, match=f"schema version {newer}.*Upgrade pyergon"):
        await storage.connect()

    assert await admin.fetchval(f"SELECT value FROM {schema}.meta") == newer
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.flows") == 1
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


async def test_a_schema_holding_other_tables_is_refused_untouched(
    make_postgres: MakePostgres, admin: asyncpg.Connection, new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    await admin.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id int)")

    with pytest.raises(CorruptStorageError, match="customers"):
        await make_postgres(schema)

    tables = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    assert [row["tablename"] for row in tables] == ["customers"]


@pytest.mark.slow
async def test_processes_connecting_at_once_to_a_new_schema_all_succeed(
    postgres_dsn: str, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    schema = new_schema()
    script = f"""
        import asyncio
        from pyergon.storage.postgres import PostgresExecutionLog

        async def main():
            async with PostgresExecutionLog({postgres_dsn!r}, schema={schema!r}) as storage:
                assert await storage.list_flows() == []

        asyncio.run(main())
    """
    # Hold the migration lock so all four block on it, then let them race for it at once.
    await admin.execute("SELECT pg_advisory_lock($1)", advisory_lock_key(schema))
    processes = asyncio.gather(*(run_python(script) for _ in range(4)))

    async def all_four_wait() -> bool:
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND wait_event = 'advisory'",
            f"pyergon-{schema}",
        )
        return bool(waiting == 4)

    try:
        await wait_until(all_four_wait, "four processes wait for the migration lock")
    finally:
        await admin.execute("SELECT pg_advisory_unlock($1)", advisory_lock_key(schema))
    await processes

    quoted = quote_identifier(schema)
    assert await admin.fetchval(f"SELECT value FROM {quoted}.meta") == str(SCHEMA_VERSION)


# -- wake-ups ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_flow_stored_by_another_process_wakes_a_waiting_worker(
    make_postgres: MakePostgres, postgres_dsn: str
) -> None:
    storage = await make_postgres()
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    started = time.monotonic()

    await run_python(f"""
        import asyncio
        from pyergon.core.records import ScheduledFlow
        from pyergon.core.status import TaskStatus
        from pyergon.storage.postgres import PostgresExecutionLog

        async def main():
            async with PostgresExecutionLog({postgres_dsn!r}, schema={storage.schema!r}) as other:
                flow = ScheduledFlow("from-afar", "Order", b"", TaskStatus.PENDING, 1.0, 1.0)
                assert (await other.create_flow(flow))[1]

        asyncio.run(main())
    """)

    assert await waiter is True
    assert time.monotonic() - started < 15
    assert await storage.get_flow("from-afar") is not None


async def test_every_waiter_of_one_object_is_woken(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    storage = await make_postgres()
    elsewhere = await make_postgres(storage.schema)
    waiters = [asyncio.create_task(storage.wait_for_work(timeout=30)) for _ in range(3)]
    await asyncio.sleep(0)  # let the waiters start waiting

    await elsewhere.create_flow(make_flow())

    assert await asyncio.gather(*waiters) == [True, True, True]


async def test_a_signal_from_another_object_wakes_the_suspended_flow_and_its_workers(
    make_postgres: MakePostgres, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await make_postgres()
    sender = await make_postgres(storage.schema)
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    await storage.record_invocation(
        make_invocation(
            2,
            kind=OperationKind.SIGNAL,
            name="approved",
            status=InvocationStatus.WAITING_FOR_SIGNAL,
        )
    )
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    assert await sender.store_signal(signal()) is True

    assert await waiter is True
    flow = await storage.get_flow("flow-1")
    assert flow is not None and flow.status is TaskStatus.PENDING


# -- faults ------------------------------------------------------------------------------------


async def terminate_backends(admin: asyncpg.Connection, application_name: str) -> None:
    """Kill every server process of a backend, as a failover or an admin would, and wait."""
    # Two statements: in one WHERE clause the server may call pg_terminate_backend first.
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    pids = [row["pid"] for row in rows]
    assert pids
    await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)

    async def all_gone() -> bool:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
        )
        return bool(left == 0)

    await wait_until(all_gone, f"the {len(pids)} backends of {application_name} are gone")


async def eventually(operation: Callable[[], Awaitable[T]], attempts: int) -> T:
    """Run ``operation`` until it succeeds, allowing ``attempts - 1`` storage errors."""
    for _ in range(attempts - 1):
        try:
            return await operation()
        except StorageError as error:
            assert "postgresql://" in str(error)
    return await operation()


async def test_the_backend_recovers_after_its_connections_are_terminated(
    make_postgres: MakePostgres, admin: asyncpg.Connection, make_flow: FlowFactory
) -> None:
    storage = await make_postgres(max_size=3)
    elsewhere = await make_postgres(storage.schema)
    await storage.create_flow(make_flow())
    await asyncio.gather(*(storage.get_flow("flow-1") for _ in range(3)))  # open the whole pool

    await terminate_backends(admin, f"pyergon-{storage.schema}")

    # Each pooled connection may fail once, when it is used before its loss was noticed.
    assert await eventually(lambda: storage.get_flow("flow-1"), attempts=4) == make_flow()
    # The lost listener wakes its waiters, is opened again on the next wait, and hears notices.
    assert await storage.wait_for_work(timeout=5) is True
    while await storage.wait_for_work(timeout=0.05):
        pass
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    await elsewhere.create_flow(make_flow("after-the-failover"))
    assert await waiter is True


class TcpProxy:
    """Forwards a local port to the server; ``stop()`` makes the server unreachable."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None or not self._server.is_serving():
            return
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.target_host, self.target_port
        )
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65_536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


async def test_an_unreachable_server_raises_and_the_same_object_works_once_it_is_back(
    postgres_dsn: str, new_schema: Callable[[], str], make_flow: FlowFactory
) -> None:
    server = urlsplit(postgres_dsn)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or 5432)
    await proxy.start()
    await proxy.stop()  # the port is known, and nothing listens on it
    password = server.password or "not-shown"
    user = f"{server.username or 'postgres'}:{password}"
    dsn = urlunsplit(server._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))
    storage = PostgresExecutionLog(dsn, schema=new_schema())
    try:
        with pytest.raises(StorageError, match=r"could not connect.*server is running") as raised:
            await storage.connect()
        assert password not in str(raised.value)

        await proxy.start()
        await storage.connect()
        await storage.create_flow(make_flow())
        await proxy.stop()

        with pytest.raises(StorageError, match=r"127\.0\.0\.1.*server is running") as raised:
            await eventually(lambda: storage.get_flow("flow-1"), attempts=4)
        assert password not in str(raised.value)
        with pytest.raises(StorageError, match="listen for work"):  # once the loss is noticed
            for _ in range(2):
                assert await storage.wait_for_work(timeout=5) is True  # the listener was lost

        await proxy.start()

        assert await eventually(lambda: storage.get_flow("flow-1"), attempts=4) == make_flow()
        assert await storage.wait_for_work(timeout=5) is True  # notices may have been missed
    finally:
        await storage.close()
        await proxy.stop()


# -- races between processes -------------------------------------------------------------------


@pytest.mark.slow
async def test_concurrent_claimers_take_each_flow_exactly_once(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    first = await make_postgres(max_size=5)
    backends = [first, *[await make_postgres(first.schema, max_size=5) for _ in range(3)]]
    for index in range(50):
        await first.create_flow(make_flow(f"flow-{index:02}", created_at=float(index % 7)))

    async def claim_until_empty(storage: PostgresExecutionLog, worker: str) -> list[str]:
        claimed = []
        while flow := await storage.claim_flow(worker, ["Order"], lease_seconds=60, now=2_000):
            claimed.append(flow.flow_id)
        return claimed

    claims = await asyncio.gather(
        *(claim_until_empty(backends[n % 4], f"worker-{n}") for n in range(20))
    )

    everything = [flow_id for claimed in claims for flow_id in claimed]
    assert sorted(everything) == [f"flow-{index:02}" for index in range(50)]
    stored = await first.list_flows(limit=100)
    assert {flow.status for flow in stored} == {TaskStatus.RUNNING}


async def test_a_signal_racing_a_suspension_is_never_lost(
    make_postgres: MakePostgres, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    worker = await make_postgres()
    sender = await make_postgres(worker.schema)
    for round_ in range(25):
        flow_id, flow_type = (
            f"flow-{round_}",
            f"Order-{round_}",
        )  # earlier rounds' flows stay pending
        await worker.create_flow(make_flow(flow_id, flow_type=flow_type))
        claimed = await worker.claim_flow("w", [flow_type], lease_seconds=60, now=1_000)
        assert claimed is not None and claimed.flow_id == flow_id and claimed.lease_token
        await worker.record_invocation(
            make_invocation(
                1,
                flow_id=flow_id,
                kind=OperationKind.SIGNAL,
                name="approved",
                status=InvocationStatus.WAITING_FOR_SIGNAL,
            )
        )

        await asyncio.gather(
            worker.release_flow(
                flow_id, claimed.lease_token, status=TaskStatus.SUSPENDED,
                waiting_signals=["approved"],
            ),
            sender.store_signal(signal(flow_id=flow_id)),
        )  # fmt: skip

        flow = await worker.get_flow(flow_id)
        assert flow is not None and flow.status is TaskStatus.PENDING, f"round {round_}"


async def test_a_child_finishing_as_its_parent_suspends_always_wakes_the_parent(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    parents = await make_postgres()
    children = await make_postgres(parents.schema)
    for round_ in range(25):
        parent = await claimed_parent_and_child(parents, make_flow, round_)
        parent_id, child_id = parent.flow_id, f"child-{round_}"
        child = await children.claim_flow("c", [f"Child-{round_}"], lease_seconds=60, now=1_000)
        assert child is not None and child.flow_id == child_id and child.lease_token

        await asyncio.gather(
            parents.release_flow(
                parent_id, parent.lease_token, status=TaskStatus.SUSPENDED,
                waiting_children=[child_id],
            ),
            children.release_flow(child_id, child.lease_token, status=TaskStatus.COMPLETE),
        )  # fmt: skip

        stored = await parents.get_flow(parent_id)
        assert stored is not None and stored.status is TaskStatus.PENDING, f"round {round_}"


async def claimed_parent_and_child(
    storage: PostgresExecutionLog, make_flow: FlowFactory, round_: int
) -> ScheduledFlow:
    """Store ``parent-<round>``, claimed, and its pending ``child-<round>``; return the parent.

    Each round has flow types of its own, so flows of earlier rounds are never claimed.
    """
    parent_id, parent_type = f"parent-{round_}", f"Order-{round_}"
    await storage.create_flow(make_flow(parent_id, flow_type=parent_type))
    parent = await storage.claim_flow("p", [parent_type], lease_seconds=60, now=1_000)
    assert parent is not None and parent.flow_id == parent_id and parent.lease_token
    child = make_flow(f"child-{round_}", flow_type=f"Child-{round_}", parent_flow_id=parent_id)
    await storage.create_flow(child)
    return parent


async def test_a_child_cancelled_as_its_parent_suspends_always_wakes_the_parent(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    parents = await make_postgres()
    managers = await make_postgres(parents.schema)
    for round_ in range(25):
        parent = await claimed_parent_and_child(parents, make_flow, round_)
        assert parent.lease_token is not None

        await asyncio.gather(
            parents.release_flow(
                parent.flow_id, parent.lease_token, status=TaskStatus.SUSPENDED,
                waiting_children=[f"child-{round_}"],
            ),
            managers.request_cancel(f"child-{round_}"),
        )  # fmt: skip

        stored = await parents.get_flow(parent.flow_id)
        assert stored is not None and stored.status is TaskStatus.PENDING, f"round {round_}"


async def test_a_cancel_request_from_another_object_reaches_the_flows_worker(
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    worker = await make_postgres()
    manager = await make_postgres(worker.schema)
    await worker.create_flow(make_flow())
    claimed = await worker.claim_flow("w", ["Order"], lease_seconds=60, now=1_000)
    assert claimed is not None
    while await worker.wait_for_work(timeout=0.05):  # consume the notice of the new flow
        pass
    waiter = asyncio.create_task(worker.wait_for_work(timeout=30))

    requested = await manager.request_cancel("flow-1")

    assert requested is not None and requested.cancel_requested
    assert await waiter is True
    assert await worker.cancel_requests(["flow-1", "elsewhere"]) == {"flow-1"}


# -- management: migration and listing plans ---------------------------------------------------


async def test_a_version_1_schema_is_migrated_keeping_its_flows(
    make_postgres: MakePostgres,
    admin: asyncpg.Connection,
    new_schema: Callable[[], str],
    make_flow: FlowFactory,
) -> None:
    sql = Statements.for_schema(new_schema())
    async with admin.transaction():
        await admin.execute(f"CREATE SCHEMA {sql.schema}")
        for statement in sql.migration(0):  # the version 1 layout
            await admin.execute(statement)
        await admin.execute(sql["set_schema_version"], "1")
        await admin.execute(
            f"INSERT INTO {sql.schema}.flows (flow_id, flow_type, payload, status, created_at, "
            "updated_at, attempt, lease_owner, lease_token, lease_expires_at) VALUES "
            "('flow-1', 'Order', 'order-payload', 'RUNNING', 1000, 1000, 1, 'w', 't', 1060)"
        )

    storage = await make_postgres(sql.name)

    running = make_flow(
        status=TaskStatus.RUNNING, lease_owner="w", lease_token="t", lease_expires_at=1_060.0
    )
    assert await storage.get_flow("flow-1") == running  # no worker_id, no cancel request
    assert await admin.fetchval(sql["schema_version"]) == str(SCHEMA_VERSION)
    indexes = await admin.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", sql.name)
    assert {"flows_by_worker", "flows_by_parent"} <= {row["indexname"] for row in indexes}
    requested = await storage.request_cancel("flow-1")  # the new columns are in use
    assert requested is not None and requested.cancel_requested


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
    "status": {"statuses": {TaskStatus.COMPLETE}},
    "several statuses": {"statuses": {TaskStatus.PENDING, TaskStatus.RUNNING}},
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
    make_postgres: MakePostgres, admin: asyncpg.Connection
) -> None:
    storage = await make_postgres()
    sql = Statements.for_schema(storage.schema)
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
            statement, arguments = sql.list_flows(**filters, after=after, limit=100)
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
    make_postgres: MakePostgres, make_flow: FlowFactory
) -> None:
    storage = await make_postgres()
    statuses = [TaskStatus.PENDING, TaskStatus.SUSPENDED, TaskStatus.COMPLETE]
    for index in range(40):  # unevenly, so that pages come mostly from one status
        status = statuses[index % 7 % 3]
        await storage.create_flow(
            make_flow(f"flow-{index:02}", status=status, created_at=float(index // 2))
        )
    wanted = statuses[:2]
    matching = [flow for flow in await storage.list_flows(limit=100) if flow.status in wanted]

    by_offset = [
        flow
        for start in range(0, len(matching), 4)
        for flow in await storage.list_flows(status=wanted, limit=4, offset=start)
    ]
    by_cursor = await storage.list_flows(status=wanted, limit=4)
    while page := await storage.list_flows(
        status=wanted, limit=4, after=FlowCursor.after(by_cursor[-1])
    ):
        by_cursor += page

    assert len(matching) > 20
    assert by_offset == matching
    assert by_cursor == matching


# -- open_storage ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_storage_connects_to_the_schema_named_in_the_url(
    postgres_dsn: str, new_schema: Callable[[], str], scheme: str, make_flow: FlowFactory
) -> None:
    schema = new_schema()
    url = postgres_dsn.replace("postgresql://", f"{scheme}://", 1) + f"?schema={schema}"

    storage = await open_storage(url)
    try:
        assert isinstance(storage, PostgresExecutionLog)
        assert storage.schema == schema
        assert "schema=" not in storage.dsn
        await storage.create_flow(make_flow())
    finally:
        await storage.close()
