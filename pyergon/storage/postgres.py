"""PostgreSQL storage: workers on several machines share one log in a database they already run.

Claims are one ``UPDATE ... FOR UPDATE SKIP LOCKED`` statement. Every change that makes work
runnable sends ``pg_notify`` in its own transaction, and :meth:`PostgresExecutionLog.wait_for_work`
listens on a dedicated connection, so waiting workers in any process wake when the work commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Collection, Hashable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import TaskStatus
from pyergon.errors import StorageClosedError, StorageError
from pyergon.storage.base import (
    UNCHANGED,
    ClaimedRun,
    ClaimHelpers,
    FlowUpdate,
    StorageLifecycle,
    check_claim_limit,
    check_page,
    status_filter,
    wait_for_event,
)
from pyergon.storage.postgres_pool import ConnectionPool
from pyergon.storage.postgres_sql import (
    FLOW_COLUMNS,
    INVOCATION_COLUMNS,
    Statements,
    changed_flow,
    channel_name,
    flow_from_record,
    in_queue_order,
    invocation_from_record,
    migrate,
    sent_notice,
    signal_from_record,
    stored_record,
    validate_schema_name,
)
from pyergon.storage.progress import (
    FlowTransition,
    SavedProgress,
    save_progress_in_steps,
    stored_as_given,
)
from pyergon.storage.sql_columns import flow_changes, record_values

__all__ = ["DEFAULT_DSN", "PostgresExecutionLog"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The server the test suite and the examples use."""


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as error:
        raise ImportError(
            'the PostgreSQL backend needs asyncpg: pip install "pyergon[postgres]"'
        ) from error
    return asyncpg


def _public_dsn(dsn: str) -> str:
    """``dsn`` without its password (in the user part or the query), fit for messages."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<a DSN that is not a postgresql:// URL>"
    netloc = parts.netloc
    if password is not None:
        user_info, _, host = netloc.rpartition("@")
        netloc = f"{user_info.partition(':')[0]}:***@{host}"
    query = [
        (key, "***" if key == "password" else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


class _KeyedLocks:
    """One FIFO lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: Hashable) -> _Held:
        """``async with locks.hold(key):`` holds the lock of ``key`` for the block."""
        return _Held(self._locks, key)


class _Held:
    """The ``async with`` of :meth:`_KeyedLocks.hold`."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[Hashable, tuple[asyncio.Lock, int]], key: Hashable) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key) or (asyncio.Lock(), 0)
        self._locks[self._key] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)


class PostgresExecutionLog(ClaimHelpers, StorageLifecycle):
    """Stores flows, records and signals in one schema of a PostgreSQL database.

    Several processes and machines may share one schema; each holds a pool of connections and
    one more connection that LISTENs for work. Use an object on the event loop that connected it.
    While the server is unreachable, methods raise :class:`~pyergon.errors.StorageError`; the
    same object works again once the server is back.

    Args:
        dsn: A ``postgresql://user:password@host:port/database`` URL, as asyncpg takes it.
        schema: The schema holding pyergon's tables, created on first connect.
        min_size: Connections the pool keeps open.
        max_size: Connections the pool opens at most.

    Raises:
        ImportError: asyncpg is not installed.
        ValueError: ``schema`` is empty or longer than PostgreSQL's 63-byte names.

    Example:
        >>> async with PostgresExecutionLog("postgresql://app@db/app") as storage:  # doctest: +SKIP
        ...     flow = await storage.get_flow("order-42")
    """

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        *,
        schema: str = "pyergon",
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        driver = self._driver = _import_asyncpg()
        self._failures: tuple[type[Exception], ...] = (
            driver.PostgresError,
            driver.InterfaceError,
            driver.InternalClientError,
            OSError,
        )
        """What asyncpg raises: wrapped in :class:`StorageError` naming the server."""
        self._lost_connection: tuple[type[Exception], ...] = (
            OSError,
            driver.PostgresConnectionError,
            driver.OperatorInterventionError,  # the server is shutting down or restarting
            driver.InterfaceError,  # "connection is closed"
            driver.InternalClientError,  # a query sent as the server's FATAL notice arrived
        )
        """Those failures that leave the connection unusable rather than fail a statement."""
        self._dsn = dsn
        self._schema = validate_schema_name(schema)
        self._min_size = min_size
        self._max_size = max_size
        self._sql = Statements.for_schema(schema)
        self._channel = channel_name(schema)
        # Our notices carry this, so the listener skips the echo of a wake-up already given.
        self._origin = uuid.uuid4().hex
        query = dict(parse_qsl(urlsplit(dsn).query))
        self._server_settings = (
            {} if "application_name" in query else {"application_name": f"pyergon-{schema}"}
        )
        self._pool: ConnectionPool | None = None
        self._listener: Any = None
        self._lifecycle_lock = asyncio.Lock()
        self._listener_lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._recording = _KeyedLocks()

    @classmethod
    def from_url(cls, url: str) -> PostgresExecutionLog:
        """Build an unconnected backend from ``postgresql://user@host:port/db[?schema=name]``.

        Raises:
            StorageError: The ``schema`` parameter is repeated or not a usable name.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        dsn = urlunsplit(parts._replace(query=urlencode([p for p in query if p[0] != "schema"])))
        if len(schemas) > 1:
            raise StorageError(f"{_public_dsn(url)!r} names more than one schema: give one")
        try:
            return cls(dsn, schema=schemas[0]) if schemas else cls(dsn)
        except ValueError as error:
            raise StorageError(f"{_public_dsn(url)!r} cannot be used: {error}") from error

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"PostgresExecutionLog({self.dsn!r}, schema={self._schema!r}, {state})"

    @property
    def dsn(self) -> str:
        """The server's URL, without its password."""
        return _public_dsn(self._dsn)

    @property
    def schema(self) -> str:
        """The schema holding pyergon's tables."""
        return self._schema

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel announcing runnable work in this schema."""
        return self._channel

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool and the listening connection, create or migrate the schema.

        Safe to call twice, and from several processes at once: migrations take a
        transaction-scoped advisory lock derived from the schema name.

        Raises:
            SchemaVersionError: A newer pyergon wrote the schema. Nothing in it was changed.
            CorruptStorageError: The schema holds tables that are not a pyergon log.
            StorageError: The server cannot be reached or refused the connection.
        """
        async with self._lifecycle_lock:
            if self._pool is not None:
                return
            pool = ConnectionPool(
                self._open_connection,
                max_size=self._max_size,
                reusable_after=lambda error: (
                    not isinstance(error, self._lost_connection)
                    and isinstance(error, self._driver.PostgresError)
                ),
            )
            with self._driver_errors("connect to"):
                await pool.open(self._min_size)
            try:
                with self._driver_errors("migrate"):
                    async with pool.acquire() as connection:
                        await migrate(connection, self._sql, where=self.dsn)
                await self._listening_connection()
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool

    async def close(self) -> None:
        """Close the pool (waiting for operations in flight) and the listener; safe twice."""
        async with self._lifecycle_lock:
            pool, listener = self._pool, self._listener
            if pool is None:
                return
            self._pool = self._listener = None
            for resource in (listener, pool):
                if resource is None:
                    continue
                try:
                    await resource.close()
                except self._failures:
                    resource.terminate()  # the server is gone: nothing left to close politely

    # -- running statements ------------------------------------------------------------------

    @contextlib.contextmanager
    def _driver_errors(self, action: str = "use") -> Iterator[None]:
        """Turn asyncpg and socket errors into :class:`StorageError` naming the server."""
        try:
            yield
        except self._failures as error:
            raise self._storage_error(error, action) from error

    def _storage_error(self, error: Exception, action: str = "use") -> StorageError:
        """The :class:`StorageError` for an asyncpg or socket error, naming the server."""
        where = f"PostgreSQL storage {self.dsn} (schema {self._schema!r})"
        message = f"could not {action} {where}: {type(error).__name__}: {error}"
        if isinstance(error, self._lost_connection):
            message += (
                ". Check that the server is running and reachable; the storage reconnects "
                "on its next call. A write in flight may or may not have been applied."
            )
        return StorageError(message)

    async def _open_connection(self) -> Any:
        return await self._driver.connect(self._dsn, server_settings=self._server_settings)

    def _open_pool(self) -> ConnectionPool:
        if self._pool is None:
            raise StorageClosedError(
                f"PostgreSQL storage {self.dsn} (schema {self._schema!r}) is not open: use it "
                "between `await storage.connect()` and `await storage.close()`, or inside "
                "`async with`"
            )
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection for several statements; one that was lost is not reused."""
        pool = self._open_pool()
        with self._driver_errors():
            async with pool.acquire() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        async with self._connection() as connection, connection.transaction():
            yield connection

    # One statement each, on a pooled connection; written out rather than through
    # _connection, which costs a generator's frames on every statement.

    async def _fetch(self, statement: str, *arguments: object) -> list[Any]:
        try:
            async with self._open_pool().acquire() as connection:
                return cast(list[Any], await connection.fetch(statement, *arguments))
        except self._failures as error:
            raise self._storage_error(error) from error

    async def _fetchrow(self, statement: str, *arguments: object) -> Any:
        try:
            async with self._open_pool().acquire() as connection:
                return await connection.fetchrow(statement, *arguments)
        except self._failures as error:
            raise self._storage_error(error) from error

    async def _fetchval(self, statement: str, *arguments: object) -> Any:
        try:
            async with self._open_pool().acquire() as connection:
                return await connection.fetchval(statement, *arguments)
        except self._failures as error:
            raise self._storage_error(error) from error

    def _woke_workers(self, *rows: Any) -> None:
        """Wake this object's waiters now if a committed statement sent a notice."""
        if any(row is not None and sent_notice(row) for row in rows):
            self._work.set()

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists; a new ``PENDING`` flow wakes workers."""
        values = record_values(flow)
        arguments = [values[column] for column in FLOW_COLUMNS]
        while True:
            async with self._connection() as connection:
                row = await connection.fetchrow(
                    self._sql["insert_flow"], self._channel, self._origin, *arguments
                )
                if row is not None:
                    self._woke_workers(row)
                    return flow, True
                existing = await connection.fetchrow(self._sql["get_flow"], flow.flow_id)
            if existing is not None:
                return flow_from_record(existing), False
            # Deleted between the two statements: insert again.

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        row = await self._fetchrow(self._sql["get_flow"], flow_id)
        return None if row is None else flow_from_record(row)

    async def update_flow(
        self,
        flow_id: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        expected_status: Sequence[TaskStatus] | None = None,
    ) -> ScheduledFlow | None:
        """Change a flow's state; see :meth:`ExecutionLog.update_flow`.

        One statement for a flow without a parent, else one transaction that locks rows as
        :meth:`release_flow` does: the flow's, then its parent's.
        """
        changes = flow_changes(status, result=result, error=error, wake_at=wake_at, attempt=attempt)
        expected = None if expected_status is None else [item.value for item in expected_status]
        lone = await self._change_lone_flow(flow_id, status, changes, expected=expected)
        if lone is not None:
            return flow_from_record(lone)
        async with self._transaction() as connection:
            held = await connection.fetchrow(self._sql["lock_flow"], flow_id)
            if held is None:
                return None
            if expected_status is not None and TaskStatus(held["status"]) not in expected_status:
                return None
            updated, woken = await self._change_held(
                connection,
                flow_id,
                held,
                status,
                result=result,
                error=error,
                wake_at=wake_at,
                attempt=attempt,
            )
        self._woke_workers(updated, woken)
        return flow_from_record(updated)

    async def _change_lone_flow(
        self,
        flow_id: str,
        status: TaskStatus,
        changes: dict[str, object],
        *,
        lease_token: str | None = None,
        expected: list[str] | None = None,
        connection: Any = None,
    ) -> Any:
        """Change a flow in one statement if it has no parent and no cancellation applies.

        Args:
            flow_id: The flow.
            status: Its new status.
            changes: The columns to set (``flow_changes``).
            lease_token: Also require the flow to be ``RUNNING`` under this lease.
            expected: Also require its status to be one of these.
            connection: Run the statement in this connection's transaction; by default it
                commits on its own.

        Returns:
            The changed row, or ``None`` if the flow does not qualify (or does not exist, or
            fails the lease or status condition): the caller then takes the general path.
        """
        statement = self._sql.change_lone_flow(
            list(changes),
            lease=lease_token is not None,
            expected=expected is not None,
            waits=status in (TaskStatus.SUSPENDED, TaskStatus.PENDING),
        )
        conditions = [value for value in (lease_token, expected) if value is not None]
        arguments = (self._channel, self._origin, flow_id, *changes.values(), *conditions)
        if connection is not None:
            return await connection.fetchrow(statement, *arguments)
        row = await self._fetchrow(statement, *arguments)
        self._woke_workers(row)
        return row

    async def _change_held(
        self,
        connection: Any,
        flow_id: str,
        held: Any,
        status: TaskStatus,
        *,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
    ) -> tuple[Any, Any]:
        """Change a flow whose row (``held``) the transaction on ``connection`` has locked.

        A running flow whose cancellation was requested ends ``CANCELLED`` instead of waiting
        again. A flow turning final locks its parent's row before changing anything and wakes
        the parent if it is suspended, so a parent suspending on it at the same moment either
        sees it final or is already suspended when it is woken.

        Returns:
            The flow's row as changed, and the parent's row if it was woken (else ``None``).
        """
        waits = status in (TaskStatus.SUSPENDED, TaskStatus.PENDING)
        if waits and held["status"] == TaskStatus.RUNNING.value and held["cancel_requested"]:
            status = TaskStatus.CANCELLED
        parent = held["parent_flow_id"] if status.is_final else None
        if parent is not None:
            await connection.fetchrow(self._sql["lock_flow"], parent)
        changes = flow_changes(status, result=result, error=error, wake_at=wake_at, attempt=attempt)
        updated = await connection.fetchrow(
            self._sql.update_flow(list(changes)),
            self._channel,
            self._origin,
            flow_id,
            *changes.values(),
        )
        woken = None
        if parent is not None:
            woken = await connection.fetchrow(
                self._sql["wake_flow"], self._channel, self._origin, parent, time.time()
            )
        return updated, woken

    # -- queue -------------------------------------------------------------------------------

    async def claim_flows(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ScheduledFlow]:
        """Take up to ``limit`` runnable flows of ``flow_types`` in one statement."""
        rows = await self._claim_rows(worker_id, flow_types, limit, lease_seconds, now, due_by)
        return [flow_from_record(row) for row in rows]

    async def claim_runs(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ClaimedRun]:
        """Claim flows as :meth:`claim_flows` does, then read their logs in one query.

        The logs are read in a statement of their own: one inside the claim would see them as
        they were when the claim began, before a run that released a flow meanwhile saved.
        """
        flows = [
            flow_from_record(row)
            for row in await self._claim_rows(
                worker_id, flow_types, limit, lease_seconds, now, due_by
            )
        ]
        if not flows:
            return []
        logs: dict[str, list[Invocation] | None] = {flow.flow_id: [] for flow in flows}
        try:
            records = await self._fetch(self._sql["load_logs"], list(logs))
        except StorageError:
            return [ClaimedRun(flow, None) for flow in flows]  # the runs read them
        for record in records:
            cast(list[Invocation], logs[record["flow_id"]]).append(invocation_from_record(record))
        return [ClaimedRun(flow, logs[flow.flow_id]) for flow in flows]

    async def _claim_rows(
        self,
        worker_id: str,
        flow_types: Collection[str],
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None,
    ) -> list[Any]:
        """Run the batch claim; return its rows in queue order."""
        check_claim_limit(limit)
        rows = await self._fetch(
            self._sql["claim_flows"],
            time.time(),
            worker_id,
            f"{uuid.uuid4().hex}-",
            now + lease_seconds,
            now,
            list(flow_types),
            limit,
            now if due_by is None else max(due_by, now),
        )
        return in_queue_order(rows)

    async def renew_lease(
        self, flow_id: str, lease_token: str, *, lease_seconds: float, now: float
    ) -> bool:
        """Extend a lease still held with ``lease_token``."""
        renewed = await self._fetchval(
            self._sql["renew_lease"], flow_id, lease_token, now + lease_seconds
        )
        return renewed is not None

    async def release_flow(
        self,
        flow_id: str,
        lease_token: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        waiting_signals: Collection[str] = (),
        waiting_children: Collection[str] = (),
    ) -> ScheduledFlow | None:
        """Leave a held flow in ``status`` and drop the lease, in one transaction.

        The flow's row is locked first, and a finishing child locks its parent's row before
        changing anything, so a parent suspending on a child at the same moment either sees the
        child final or is already suspended when the child wakes it. :meth:`store_signal`,
        :meth:`update_flow` and :meth:`request_cancel` lock rows in the same order. A flow
        without a parent and nothing to wait for is released in one statement instead.
        """
        if not waiting_signals and not waiting_children:
            changes = flow_changes(
                status, result=result, error=error, wake_at=wake_at, attempt=attempt
            )
            lone = await self._change_lone_flow(flow_id, status, changes, lease_token=lease_token)
            if lone is not None:
                return flow_from_record(lone)
        transition = FlowTransition(
            status,
            result=result,
            error=error,
            wake_at=wake_at,
            attempt=attempt,
            lease_token=lease_token,
            waiting_signals=tuple(waiting_signals),
            waiting_children=tuple(waiting_children),
        )
        async with self._transaction() as connection:
            released, woken = await self._transition_in(
                connection, flow_id, transition, try_lone=False
            )
        self._woke_workers(released, woken)
        return None if released is None else flow_from_record(released)

    async def _wake_already_due(
        self, connection: Any, flow_id: str, signals: list[str], children: list[str]
    ) -> bool:
        if signals and await connection.fetchval(self._sql["signal_arrived"], flow_id, signals):
            return True
        return bool(children) and bool(
            await connection.fetchval(self._sql["child_finished"], children)
        )

    async def request_cancel(self, flow_id: str) -> ScheduledFlow | None:
        """Cancel a flow now, or at its next step boundary if it is running.

        One transaction, locking rows as :meth:`release_flow` does; a request for a running
        flow notifies workers in every process.
        """
        woken = None
        async with self._transaction() as connection:
            held = await connection.fetchrow(self._sql["lock_flow"], flow_id)
            if held is None:
                return None
            current = TaskStatus(held["status"])
            if current.is_final:
                return flow_from_record(await connection.fetchrow(self._sql["get_flow"], flow_id))
            if current is TaskStatus.RUNNING:
                changed = await connection.fetchrow(
                    self._sql["request_cancel"], self._channel, self._origin, flow_id, time.time()
                )
            else:
                changed, woken = await self._change_held(
                    connection, flow_id, held, TaskStatus.CANCELLED, wake_at=None
                )
        self._woke_workers(changed, woken)
        return flow_from_record(changed)

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        if not flow_ids:
            return set()
        rows = await self._fetch(self._sql["cancel_requests"], list(flow_ids))
        return {row["flow_id"] for row in rows}

    # -- wake-ups ----------------------------------------------------------------------------

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow (of ``flow_types``, if given)."""
        if flow_types is None:
            return cast(float | None, await self._fetchval(self._sql["next_wake_at"]))
        wake_at = await self._fetchval(self._sql["next_wake_at_of_types"], list(flow_types))
        return cast(float | None, wake_at)

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for a notice of work from any process using this schema, or ``timeout`` seconds.

        Every waiter of this object wakes on a notice. Losing the listening connection wakes
        them too (notices sent meanwhile are gone, so they should look for work); the next wait
        opens it again.

        Raises:
            StorageError: The listening connection cannot be opened again.
        """
        self._open_pool()
        if not self._work.is_set():
            await self._listening_connection()
            if not await wait_for_event(self._work, timeout):
                return False
        self._work.clear()
        return True

    async def _listening_connection(self) -> None:
        """Open the LISTEN connection if there is none or it was lost."""
        async with self._listener_lock:
            lost = self._listener
            if lost is not None and not lost.is_closed():
                return
            with self._driver_errors("listen for work on"):
                connection = await self._driver.connect(
                    self._dsn, server_settings=self._server_settings
                )
                try:
                    await connection.add_listener(self._channel, self._on_notice)
                except BaseException:
                    connection.terminate()
                    raise
            connection.add_termination_listener(self._on_listener_lost)
            self._listener = connection
            if lost is not None:
                self._work.set()

    def _on_notice(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != self._origin:
            self._work.set()

    def _on_listener_lost(self, connection: Any) -> None:
        if connection is self._listener:
            self._work.set()  # waiters return and open a new listener on their next wait

    # -- invocations -------------------------------------------------------------------------

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by ``(sequence, sub_sequence)``."""
        rows = await self._fetch(self._sql["load_invocations"], flow_id)
        return [invocation_from_record(row) for row in rows]

    async def get_invocation(
        self, flow_id: str, sequence: int, sub_sequence: int = 0
    ) -> Invocation | None:
        """Return one record, or ``None``."""
        row = await self._fetchrow(self._sql["get_invocation"], flow_id, sequence, sub_sequence)
        return None if row is None else invocation_from_record(row)

    async def record_invocation(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` unless a final record holds its position (first writer wins).

        Concurrent calls of this object for one position reach the server in call order, as
        with the other backends; across processes the first to commit wins.
        """
        values = record_values(invocation)
        arguments = [values[column] for column in INVOCATION_COLUMNS]
        position = (invocation.flow_id, invocation.sequence, invocation.sub_sequence)
        async with self._recording.hold(position):
            while True:
                if await self._fetchval(self._sql["record_invocation"], *arguments):
                    return invocation  # stored as given
                # A final record holds the position.
                row = await self._fetchrow(self._sql["get_invocation"], *position)
                if row is not None:
                    return invocation_from_record(row)
                # The final record was deleted between the two statements: record again.

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        """Store records and the flow's new state; see :meth:`ExecutionLog.save_progress`.

        A held flow's last record and its release are one statement. When that statement
        cannot release the flow (it has a parent, its lease is gone, or it was asked to cancel
        while it would wait), its record is stored already and one transaction does the rest,
        as it does every other save of records with a new state. Rows are locked in the order
        every other writer uses: the records, then the flow's row, then its parent's (see
        :meth:`release_flow`).
        """
        if not records or transition is None:
            # Single statements commit on their own: a transaction would only add round trips.
            return await save_progress_in_steps(self, flow_id, records, transition)
        if len(records) == 1:
            saved = await self._record_and_change_lone_flow(flow_id, records[0], transition)
            if saved is not None:
                return saved
        stored_records: list[Invocation] = []
        changed: tuple[Any, Any] = (None, None)
        async with self._transaction() as connection:
            for record in records:
                stored = await self._record_in(connection, record)
                stored_records.append(stored)
                if not stored_as_given(record, stored):
                    return SavedProgress(stored_records, conflict=True)
            if transition is not None:
                changed = await self._transition_in(connection, flow_id, transition)
        self._woke_workers(*changed)
        flow = None if changed[0] is None else flow_from_record(changed[0])
        return SavedProgress(stored_records, flow=flow)

    async def _record_and_change_lone_flow(
        self, flow_id: str, record: Invocation, transition: FlowTransition
    ) -> SavedProgress | None:
        """Save one record and a lone flow's release in one statement: one round trip.

        Returns:
            What was saved, or ``None`` if the general path must save it: the transition is
            not a lone flow's release, the flow did not qualify, or the record was not stored.
            The record may be stored already then, which is a prefix of the progress.
        """
        if transition.lease_token is None or transition.waiting_signals:
            return None
        if transition.waiting_children:
            return None
        changes = flow_changes(
            transition.status,
            result=transition.result,
            error=transition.error,
            wake_at=transition.wake_at,
            attempt=transition.attempt,
        )
        statement = self._sql.record_and_change_lone_flow(
            list(changes), waits=transition.status in (TaskStatus.SUSPENDED, TaskStatus.PENDING)
        )
        values = record_values(record)
        row = await self._fetchrow(
            statement,
            self._channel,
            self._origin,
            flow_id,
            *changes.values(),
            transition.lease_token,
            *[values[column] for column in INVOCATION_COLUMNS],
        )
        if not stored_record(row) or not changed_flow(row):
            return None
        self._woke_workers(row)
        return SavedProgress([record], flow=flow_from_record(row))

    async def _record_in(self, connection: Any, invocation: Invocation) -> Invocation:
        """Record ``invocation`` in the transaction on ``connection``; return it as stored."""
        values = record_values(invocation)
        arguments = [values[column] for column in INVOCATION_COLUMNS]
        position = (invocation.flow_id, invocation.sequence, invocation.sub_sequence)
        while True:
            if await connection.fetchval(self._sql["record_invocation"], *arguments):
                return invocation  # stored as given
            row = await connection.fetchrow(self._sql["get_invocation"], *position)
            if row is not None:  # a final record holds the position
                return invocation_from_record(row)
            # The final record was deleted between the two statements: record again.

    async def _transition_in(
        self, connection: Any, flow_id: str, transition: FlowTransition, *, try_lone: bool = True
    ) -> tuple[Any, Any]:
        """Apply ``transition`` in the transaction on ``connection``, as release or update.

        Args:
            connection: A connection inside a transaction.
            flow_id: The flow.
            transition: Its new state.
            try_lone: Try the one-statement change first (off when the caller just did).

        Returns:
            The flow's changed row (``None`` if it was not changed) and its woken parent's.
        """
        status = transition.status
        if try_lone and not transition.waiting_signals and not transition.waiting_children:
            changes = flow_changes(
                status,
                result=transition.result,
                error=transition.error,
                wake_at=transition.wake_at,
                attempt=transition.attempt,
            )
            lone = await self._change_lone_flow(
                flow_id, status, changes, lease_token=transition.lease_token, connection=connection
            )
            if lone is not None:
                return lone, None
        held = await connection.fetchrow(self._sql["lock_flow"], flow_id)
        if held is None:
            return None, None
        if transition.lease_token is not None:
            if held["status"] != TaskStatus.RUNNING.value:
                return None, None
            if held["lease_token"] != transition.lease_token:
                return None, None
            if status is TaskStatus.SUSPENDED and await self._wake_already_due(
                connection,
                flow_id,
                list(transition.waiting_signals),
                list(transition.waiting_children),
            ):
                status = TaskStatus.PENDING
        return await self._change_held(
            connection,
            flow_id,
            held,
            status,
            result=transition.result,
            error=transition.error,
            wake_at=transition.wake_at,
            attempt=transition.attempt,
        )

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records and return how many there were."""
        async with self._connection() as connection:
            outcome = await connection.execute(self._sql["delete_failed_invocations"], flow_id)
        return int(outcome.rsplit(" ", 1)[1])

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists.

        In the same transaction, with the flow's row locked first (see :meth:`release_flow`),
        a ``SUSPENDED`` flow with a ``WAITING_FOR_SIGNAL`` record of that name becomes
        ``PENDING``.
        """
        woken = None
        async with self._transaction() as connection:
            held = await connection.fetchrow(self._sql["lock_flow"], signal.flow_id)
            inserted = await connection.fetchval(
                self._sql["insert_signal"],
                signal.flow_id,
                signal.name,
                signal.payload,
                signal.sent_at,
            )
            if inserted is None:
                return False
            if (
                held is not None
                and held["status"] == TaskStatus.SUSPENDED.value
                and await connection.fetchval(
                    self._sql["awaits_signal"], signal.flow_id, signal.name
                )
            ):
                woken = await connection.fetchrow(
                    self._sql["wake_flow"], self._channel, self._origin, signal.flow_id, time.time()
                )
        self._woke_workers(woken)
        return True

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return a stored signal, or ``None``."""
        row = await self._fetchrow(self._sql["get_signal"], flow_id, name)
        return None if row is None else signal_from_record(row)

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first, then by name."""
        rows = await self._fetch(self._sql["list_signals"], flow_id)
        return [signal_from_record(row) for row in rows]

    # -- history -----------------------------------------------------------------------------

    async def list_flows(
        self,
        *,
        status: TaskStatus | Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        worker_id: str | None = None,
        parent_flow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: FlowCursor | None = None,
    ) -> list[ScheduledFlow]:
        """Return flows newest first (by ``created_at``, then ``flow_id``), filtered.

        See :meth:`ExecutionLog.list_flows`. Each filter alone, and the cursor, is served by an
        index walked in the listing's order, so pages stay fast however many flows there are.
        """
        check_page(limit, offset)
        statement, arguments = self._sql.list_flows(
            statuses=status_filter(status),
            flow_type=flow_type,
            created_after=created_after,
            created_before=created_before,
            worker_id=worker_id,
            parent_flow_id=parent_flow_id,
            after=after,
            limit=limit,
            offset=offset,
        )
        rows = await self._fetch(statement, *arguments)
        return [flow_from_record(row) for row in rows]

    async def count_flows(self, *, flow_type: str | None = None) -> dict[TaskStatus, int]:
        """Return how many flows (of ``flow_type``, if given) are in each status."""
        if flow_type is None:
            rows = await self._fetch(self._sql["count_flows"])
        else:
            rows = await self._fetch(self._sql["count_flows_of_type"], flow_type)
        counts = dict.fromkeys(TaskStatus, 0)
        counts.update((TaskStatus(row["status"]), row["flows"]) for row in rows)
        return counts

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals in one transaction."""
        async with self._transaction() as connection:
            await connection.execute(self._sql["delete_invocations"], flow_id)
            await connection.execute(self._sql["delete_signals"], flow_id)
            deleted = await connection.fetchval(self._sql["delete_flow"], flow_id)
        return deleted is not None

    async def reset(self) -> None:
        """Delete every flow, record and signal; the schema stays."""
        async with self._connection() as connection:
            await connection.execute(self._sql["reset"])
