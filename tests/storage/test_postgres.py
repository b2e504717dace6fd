"""What only the PostgreSQL backend does: schemas, connections, NOTIFY across processes.

Its faults, races, migrations and listing plans are in the other ``test_postgres_*`` modules,
which use :class:`Backends` from here (each with a ``backends`` fixture of its own: a fixture
imported from a module would be an unused import to the linters).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import asyncpg
import pytest

from pyergon.core import ClaimRequest
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
)
from pyergon.storage import open_storage
from pyergon.storage._flows import deliver_signal, save_records
from pyergon.storage._postgres_sql import channel_name
from pyergon.storage._sql.dialect import quote_identifier
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.postgres import PostgresExecutionLog

from ..conftest import drop_schema
from .conftest import FlowFactory, InvocationFactory, SignalFactory


class Backends:
    """Connects backends (by default each in a fresh schema); closes them and drops the schemas.

    Also lends a plain asyncpg connection, to look at or tamper with the database behind
    pyergon's back.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._schemas: list[str] = []
        self._opened: list[PostgresExecutionLog] = []
        self._admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for storage in self._opened:
            await storage.close()
        if self._admin is not None:
            await self._admin.close()
        for schema in self._schemas:
            await drop_schema(schema)

    def new_schema(self) -> str:
        """A fresh schema name, dropped after the test."""
        self._schemas.append(f"pyergon_test_{uuid.uuid4().hex[:12]}")
        return self._schemas[-1]

    def unopened(self, schema: str | None = None, **options: Any) -> PostgresExecutionLog:
        """A backend not connected yet, closed after the test."""
        storage = PostgresExecutionLog(self.dsn, schema=schema or self.new_schema(), **options)
        self._opened.append(storage)
        return storage

    async def make(self, schema: str | None = None, **options: Any) -> PostgresExecutionLog:
        """A connected backend, in ``schema`` or a fresh one."""
        storage = self.unopened(schema, **options)
        await storage.connect()
        return storage

    async def admin(self) -> asyncpg.Connection:
        """The plain connection (opened on first use)."""
        if self._admin is None:
            self._admin = await asyncpg.connect(self.dsn)
        return self._admin


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll a condition of the server (not of this process) until it holds, for at most 10 s."""
    deadline = time.monotonic() + 10
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def connections_of(admin: asyncpg.Connection, application_name: str) -> int:
    """How many server processes serve ``application_name`` now."""
    count = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return int(count)


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
    backends: Backends, make_flow: FlowFactory
) -> None:
    with pytest.raises(StorageClosedError, match="not open"):
        await backends.unopened().get_flow("flow-1")

    storage = await backends.make()
    await storage.close()
    with pytest.raises(StorageClosedError):
        await storage.create_flow(make_flow())
    with pytest.raises(StorageClosedError):
        await storage.apply(Change(notify=True))
    with pytest.raises(StorageClosedError):
        await storage.wait_for_work(0.01)


async def test_reconnecting_after_close_finds_the_data(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make()
    await storage.create_flow(make_flow())
    await storage.close()

    await storage.connect()

    assert await storage.get_flow("flow-1") == make_flow()


async def test_async_with_connects_and_closes(backends: Backends, make_flow: FlowFactory) -> None:
    async with backends.unopened() as storage:
        await storage.create_flow(make_flow())
        assert "open" in repr(storage)
    assert "closed" in repr(storage)


async def test_close_waits_for_a_change_in_flight_and_releases_every_connection(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make(max_size=3)
    await storage.create_flow(make_flow())
    admin = await backends.admin()
    application = f"pyergon-{storage.schema}"
    change = Change(writes=(FlowWrite("flow-1", {"attempt": 2}, expected_version=1),))
    async with admin.transaction():
        # Hold the flow's row, so the change waits for it on the server.
        await admin.execute(f"SELECT 1 FROM {quote_identifier(storage.schema)}.flows FOR UPDATE")
        applying = asyncio.create_task(storage.apply(change))

        async def change_waits() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event_type = 'Lock'",
                    application,
                )
            )

        await wait_until(change_waits, "the change waits for the flow's row")
        closing = asyncio.create_task(storage.close())
        await asyncio.sleep(0.05)  # give close a chance to (wrongly) finish first
        assert not closing.done()

    assert (await applying).complete
    await closing
    await wait_until(lambda: _none_left(admin, application), "the backend's connections are closed")
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


async def _none_left(admin: asyncpg.Connection, application_name: str) -> bool:
    return await connections_of(admin, application_name) == 0


async def test_a_failed_connect_leaves_no_connection_open(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make(min_size=3)
    await storage.close()
    admin = await backends.admin()
    await admin.execute(
        f"UPDATE {quote_identifier(storage.schema)}.meta SET value = $1",
        str(SCHEMA_VERSION + 1),
    )

    with pytest.raises(SchemaVersionError):
        await storage.connect()

    await wait_until(
        lambda: _none_left(admin, f"pyergon-{storage.schema}"), "its connections are closed"
    )


async def test_a_change_the_server_refuses_writes_nothing_and_the_pool_goes_on(
    backends: Backends, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await backends.make(max_size=1)
    await storage.create_flow(make_flow())
    refused = Change(
        records=(make_invocation(),),
        writes=(FlowWrite("flow-1", {"attempt": "not a number"}, expected_version=1),),
    )

    with pytest.raises(StorageError, match=r"could not use PostgreSQL storage postgresql://"):
        await storage.apply(refused)
    for field in ("version", "lease"):
        with pytest.raises(ValueError, match=f"cannot change '{field}'"):
            await storage.apply(Change(writes=(FlowWrite("flow-1", {field: 1}),)))

    assert await storage.load_invocations("flow-1") == []
    assert await storage.get_flow("flow-1") == make_flow()


# -- schemas -----------------------------------------------------------------------------------


async def test_schemas_are_isolated_from_each_other(
    backends: Backends, make_flow: FlowFactory
) -> None:
    orders, refunds = await backends.make(), await backends.make()
    orders_elsewhere = await backends.make(orders.schema)
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
    postgres_dsn: str, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    schema = f'Odd "{uuid.uuid4().hex[:8]}"; DROP TABLE flows --'
    try:
        async with PostgresExecutionLog(postgres_dsn, schema=schema) as storage:
            waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
            await storage.create_flow(make_flow())
            assert await waiter is True
            (run,) = await storage.claim(
                ClaimRequest("w", ["Order"], limit=1, lease_seconds=5, now=1_000)
            )
            token = run.flow.lease_token
            assert token is not None
            assert await storage.renew_leases({"flow-1": token}, lease_seconds=5, now=1_001)
            finished = FlowWrite("flow-1", {"status": TaskStatus.COMPLETE}, expected_version=2)
            applied = await storage.apply(Change((make_invocation(),), writes=(finished,)))
            assert applied.complete
    finally:
        await drop_schema(schema)


async def test_connect_creates_the_schema_at_the_current_version(backends: Backends) -> None:
    storage = await backends.make()
    admin = await backends.admin()
    schema = quote_identifier(storage.schema)

    version = await admin.fetchval(f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'")
    tables = await admin.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", storage.schema
    )

    assert version == str(SCHEMA_VERSION)
    assert [row["tablename"] for row in tables] == [
        "flows",
        "invocations",
        "meta",
        "signals",
        "workers",
    ]


async def test_a_schema_from_a_newer_pyergon_is_refused_untouched(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make()
    await storage.create_flow(make_flow())
    await storage.close()
    admin = await backends.admin()
    schema = quote_identifier(storage.schema)
    newer = str(SCHEMA_VERSION + 1)
    await admin.execute(f"UPDATE {schema}.meta SET value = $1", newer)

    with pytest.raises(SchemaVersionError, match=f"schema version {newer}.*Upgrade pyergon"):
        await storage.connect()

    assert await admin.fetchval(f"SELECT value FROM {schema}.meta") == newer
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.flows") == 1
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


async def test_a_schema_holding_other_tables_is_refused_untouched(backends: Backends) -> None:
    schema = backends.new_schema()
    admin = await backends.admin()
    await admin.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id int)")

    with pytest.raises(CorruptStorageError, match="customers"):
        await backends.make(schema)

    tables = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    assert [row["tablename"] for row in tables] == ["customers"]


# -- wake-ups ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_flow_stored_by_another_process_wakes_a_waiting_worker(
    backends: Backends,
) -> None:
    storage = await backends.make()
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    started = time.monotonic()

    await run_python(f"""
        import asyncio
        from pyergon.core.records import ScheduledFlow
        from pyergon.core.status import TaskStatus
        from pyergon.storage.postgres import PostgresExecutionLog

        async def main():
            dsn, schema = {backends.dsn!r}, {storage.schema!r}
            async with PostgresExecutionLog(dsn, schema=schema) as other:
                flow = ScheduledFlow("from-afar", "Order", b"", TaskStatus.PENDING, 1.0, 1.0)
                assert (await other.create_flow(flow))[1]

        asyncio.run(main())
    """)

    assert await waiter is True
    assert time.monotonic() - started < 15
    assert await storage.get_flow("from-afar") is not None


async def test_every_waiter_of_one_object_is_woken(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make()
    elsewhere = await backends.make(storage.schema)
    waiters = [asyncio.create_task(storage.wait_for_work(timeout=30)) for _ in range(3)]
    await asyncio.sleep(0)  # let the waiters start waiting

    await elsewhere.create_flow(make_flow())

    assert await asyncio.gather(*waiters) == [True, True, True]


async def test_only_a_change_that_notifies_wakes_workers_of_another_object(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make()
    elsewhere = await backends.make(storage.schema)
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    while await storage.wait_for_work(timeout=0.05):  # consume any notice so far
        pass

    await elsewhere.apply(Change(writes=(FlowWrite("flow-1", {"attempt": 2}),)))
    assert await storage.wait_for_work(timeout=0.3) is False

    refused = FlowWrite("flow-1", {"status": TaskStatus.PENDING}, expected_version=1)
    assert (await elsewhere.apply(Change(writes=(refused,), notify=True))).moved == "flow-1"
    assert await storage.wait_for_work(timeout=0.3) is False  # nothing was committed

    woken = FlowWrite("flow-1", {"status": TaskStatus.PENDING}, expected_version=2)
    assert (await elsewhere.apply(Change(writes=(woken,), notify=True))).complete
    assert await storage.wait_for_work(timeout=30) is True


async def test_a_signal_from_another_object_wakes_the_suspended_flow_and_its_workers(
    backends: Backends,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    storage = await backends.make()
    sender = await backends.make(storage.schema)
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    waiting = make_invocation(
        2, kind=OperationKind.SIGNAL, name="approved", status=InvocationStatus.WAITING_FOR_SIGNAL
    )
    await save_records(storage, [waiting])
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    assert await deliver_signal(sender, make_signal()) is True

    assert await waiter is True
    flow = await storage.get_flow("flow-1")
    assert flow is not None and flow.status is TaskStatus.PENDING


# -- open_storage ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_storage_connects_to_the_schema_named_in_the_url(
    backends: Backends, scheme: str, make_flow: FlowFactory
) -> None:
    schema = backends.new_schema()
    url = backends.dsn.replace("postgresql://", f"{scheme}://", 1) + f"?schema={schema}"

    storage = await open_storage(url)
    try:
        assert isinstance(storage, PostgresExecutionLog)
        assert storage.schema == schema
        assert "schema=" not in storage.dsn
        await storage.create_flow(make_flow())
    finally:
        await storage.close()
