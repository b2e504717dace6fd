"""SQLite storage: the embedded default backend, durable against a killed process.

Writes from concurrently running flows are group-committed: each write method queues a small
synchronous operation and one flusher task runs everything queued inside a single
``BEGIN IMMEDIATE ... COMMIT``, on the event loop's thread when the write lock is free at once,
else in aiosqlite's worker thread (:mod:`pyergon.storage.sqlite_connections`). Files use WAL with
``synchronous=NORMAL``, so every write whose ``await`` returned survives the process being killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any, TypeVar, cast

import aiosqlite

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.errors import CorruptStorageError, StorageClosedError, StorageError
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
from pyergon.storage.file_watch import WriteNotifier, watch_writes
from pyergon.storage.progress import FlowTransition, SavedProgress, stored_as_given
from pyergon.storage.sql_columns import flow_changes, record_values
from pyergon.storage.sqlite_connections import (
    BackgroundCheckpoints,
    Operation,
    Outcome,
    call_in_worker_thread,
    checkpoint,
    commit_batch,
    is_busy,
    open_loop_connection,
)
from pyergon.storage.sqlite_tables import (
    awaits_signal,
    change_flow,
    changed_flow,
    claim_next_flows,
    fetch_flow,
    fetch_invocation,
    flow_from_row,
    flow_listing,
    insert_flow_sql,
    is_corruption,
    load_log,
    next_wake_time,
    prepare_connection,
    signal_from_row,
    update_flow_returning,
    update_flow_row,
    upsert_invocation_sql,
    wake_already_due,
    wake_flow,
)

__all__ = ["SqliteExecutionLog"]

logger = logging.getLogger("pyergon.storage.sqlite")

_T = TypeVar("_T")

_MEMORY = ":memory:"
_MINIMUM_SQLITE = (3, 24, 0)  # INSERT ... ON CONFLICT DO UPDATE (upsert)
_IDS_PER_QUERY = 500  # below SQLite's smallest host-parameter limit (999 before 3.32)
_LARGE_WRITE = 1 << 20
"""Bytes of payload from which a batch is written on the worker thread, not the loop's."""
_CHECKPOINT_EVERY = 300
"""Batches committed on the loop's thread between two WAL checkpoints on the worker thread."""


_FlowChange = tuple[ScheduledFlow | None, bool]
"""A changed flow (``None`` if nothing changed) and whether its parent was woken."""


def _wakes_workers(change: _FlowChange) -> bool:
    """Whether a change left work that waiting workers should look at."""
    flow, woke_parent = change
    return woke_parent or (
        flow is not None
        and (
            flow.status is TaskStatus.PENDING
            or (flow.status is TaskStatus.SUSPENDED and flow.wake_at is not None)
        )
    )


@dataclasses.dataclass(slots=True)
class _PendingWrite:
    operation: Operation[object]
    future: asyncio.Future[object]
    wakes_workers: Callable[[Any], bool] | None
    large: bool


_POLL_MIN = 0.002
"""Seconds between checks for other processes' commits right after activity."""
_POLL_MAX = 0.05
"""Seconds between those checks once the database has been idle for a while."""
_POLL_HOT = 0.25
"""Seconds after another process's last commit during which checks stay at ``_POLL_MIN``."""
_WATCHED_CHECK = 1.0
"""Seconds between checks while the WAL is watched: a safeguard, the watch says it first."""


def _data_version(connection: sqlite3.Connection) -> int:
    row = connection.execute("PRAGMA data_version").fetchone()
    return int(row[0])


def _size(payload: bytes | FlowUpdate | None) -> int:
    return len(payload) if isinstance(payload, bytes) else 0


def _invocation_size(invocation: Invocation) -> int:
    error_payload = None if invocation.error is None else invocation.error.payload
    return _size(invocation.result) + _size(error_payload)


def _record(
    connection: sqlite3.Connection, invocation: Invocation, values: dict[str, object]
) -> Invocation:
    """Store a record unless a final one holds its position; return the record as stored."""
    if connection.execute(upsert_invocation_sql(values), values).rowcount == 1:
        return invocation  # inserted or replaced a record that was not final
    stored = fetch_invocation(
        connection, invocation.flow_id, invocation.sequence, invocation.sub_sequence
    )
    assert stored is not None  # kept by the upsert: a final record holds the position
    return stored


def _update_flow(
    connection: sqlite3.Connection,
    flow_id: str,
    transition: FlowTransition,
    expected_status: Sequence[TaskStatus] | None = None,
) -> _FlowChange:
    """Apply ``transition`` to a flow without a lease check (``update_flow``)."""
    if expected_status is None:
        lone = _change_lone_flow(connection, flow_id, transition)
        if lone is not None:
            return lone, False
    flow = fetch_flow(connection, flow_id)
    if flow is None or (expected_status is not None and flow.status not in expected_status):
        return None, False
    return _change(connection, flow, transition, transition.status)


def _release_flow(
    connection: sqlite3.Connection, flow_id: str, transition: FlowTransition
) -> _FlowChange:
    """Apply ``transition`` to a running flow held with its lease token (``release_flow``)."""
    if not transition.waiting_signals and not transition.waiting_children:
        lone = _change_lone_flow(connection, flow_id, transition)
        if lone is not None:
            return lone, False
    flow = fetch_flow(connection, flow_id)
    if flow is None or flow.status is not TaskStatus.RUNNING:
        return None, False
    if flow.lease_token != transition.lease_token:
        return None, False
    status = transition.status
    if status is TaskStatus.SUSPENDED and wake_already_due(
        connection, flow_id, list(transition.waiting_signals), list(transition.waiting_children)
    ):
        status = TaskStatus.PENDING
    return _change(connection, flow, transition, status)


def _change_lone_flow(
    connection: sqlite3.Connection, flow_id: str, transition: FlowTransition
) -> ScheduledFlow | None:
    """Apply ``transition`` in one statement to a flow that no rule of a change of state involves.

    That is a flow that, if it turns final, has no parent to wake and, if it is to wait again,
    was not asked to cancel while running; with a lease token, it must be ``RUNNING`` under that
    token. Saves the read that the general path makes first.

    Returns:
        The changed flow, or ``None`` if the flow does not qualify (or does not exist, or fails
        the lease condition): the caller then takes the general path.
    """
    status = transition.status
    changes = flow_changes(
        status,
        result=transition.result,
        error=transition.error,
        wake_at=transition.wake_at,
        attempt=transition.attempt,
    )
    condition = ""
    if status.is_final:
        condition += " AND parent_flow_id IS NULL"
    if status in (TaskStatus.SUSPENDED, TaskStatus.PENDING):
        condition += " AND NOT (status = 'RUNNING' AND cancel_requested)"
    parameters: dict[str, object] = {}
    if transition.lease_token is not None:
        condition += " AND status = 'RUNNING' AND lease_token = :held_token"
        parameters["held_token"] = transition.lease_token
    return update_flow_returning(connection, flow_id, changes, condition, parameters)


def _apply_transition(
    connection: sqlite3.Connection, flow_id: str, transition: FlowTransition
) -> _FlowChange:
    if transition.lease_token is not None:
        return _release_flow(connection, flow_id, transition)
    return _update_flow(connection, flow_id, transition)


def _change(
    connection: sqlite3.Connection,
    flow: ScheduledFlow,
    transition: FlowTransition,
    status: TaskStatus,
) -> _FlowChange:
    return change_flow(
        connection,
        flow,
        status,
        result=transition.result,
        error=transition.error,
        wake_at=transition.wake_at,
        attempt=transition.attempt,
    )


class SqliteExecutionLog(ClaimHelpers, StorageLifecycle):
    """Stores flows, records and signals in one SQLite file (or in memory).

    Use it on the event loop that connected it. Reads see every write whose ``await`` returned.
    :meth:`wait_for_work` is woken at once by work stored through this object. Commits made by
    other processes are noticed through ``PRAGMA data_version``, checked when the WAL file is
    written (Linux: inotify; at most every 2 ms while someone writes, and every second anyway),
    or elsewhere by a poll that starts at 2 ms after activity and backs off to 50 ms while the
    database is idle.

    Args:
        path: The database file, created if missing, or ``":memory:"``.
        busy_timeout: Seconds to wait for another process's write lock before failing.

    Example:
        >>> async with SqliteExecutionLog("flows.db") as storage:  # doctest: +SKIP
        ...     flow = await storage.get_flow("order-42")
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._connection: aiosqlite.Connection | None = None
        self._loop_connection: sqlite3.Connection | None = None
        """The file's connection for the event loop's thread (none for in-memory databases)."""
        self._batches_since_checkpoint = 0
        self._closing = False
        self._lifecycle_lock = asyncio.Lock()
        self._pending: list[_PendingWrite] = []
        self._flusher: asyncio.Task[None] | None = None
        self._checkpoints: BackgroundCheckpoints | None = None
        self._catch_up = False
        """Whether writes are held until the flusher has checkpointed what the last
        background checkpoint could not copy."""
        self._work = asyncio.Event()
        self._data_version: int | None = None
        self._wal_writes: WriteNotifier | None = None
        """Calls :meth:`_check_other_commits` after writes to the WAL, while workers wait."""
        self._poll_interval = _POLL_MIN
        self._seen_commit_at = 0.0
        self._batches_committed = 0
        """Committed group-commit transactions; tests read it to check batching."""
        self._writers_alone = True
        """Whether the last batch held one write: then a lone write commits at once."""
        self._pass_writer: asyncio.Task[Any] | None = None
        """The task that committed at once in this pass of the event loop, if any."""

    @classmethod
    async def in_memory(cls) -> SqliteExecutionLog:
        """Return a connected backend on a private in-memory database."""
        storage = cls(_MEMORY)
        await storage.connect()
        return storage

    def __repr__(self) -> str:
        state = "open" if self._connection is not None else "closed"
        return f"SqliteExecutionLog({self._path!r}, {state})"

    @property
    def path(self) -> str:
        """The database file, or ``":memory:"``."""
        return self._path

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file, set WAL and create or migrate the schema; safe to call twice.

        Raises:
            CorruptStorageError: The file is not SQLite, is damaged, or is another program's
                database. Nothing in it was changed.
            SchemaVersionError: A newer pyergon wrote the file. Nothing in it was changed.
            StorageError: The file cannot be opened or stayed locked past ``busy_timeout``.
        """
        async with self._lifecycle_lock:
            if self._connection is not None:
                return
            if sqlite3.sqlite_version_info < _MINIMUM_SQLITE:
                raise StorageError(
                    f"pyergon needs SQLite {'.'.join(map(str, _MINIMUM_SQLITE))} or newer; "
                    f"this Python has SQLite {sqlite3.sqlite_version}"
                )
            connection = aiosqlite.connect(self._path, isolation_level=None)
            try:
                await connection
            except sqlite3.Error as error:
                # aiosqlite 0.22 stops the worker thread of a failed connect without waiting
                # for it; wait here, or the thread may report to this loop after it closed.
                worker = cast(threading.Thread, getattr(connection, "_thread", connection))
                await asyncio.to_thread(worker.join)
                raise self._storage_error(error) from error
            prepare = partial(
                prepare_connection,
                path=self._path,
                busy_timeout=self._busy_timeout,
                use_wal=self._path not in (_MEMORY, ""),
            )
            try:
                await call_in_worker_thread(connection, prepare)
                if self._path not in (_MEMORY, ""):
                    self._loop_connection = open_loop_connection(self._path)
                    self._checkpoints = BackgroundCheckpoints(self._path)
                    self._watch_wal()
            except BaseException as error:
                self._stop_watching_wal()
                if self._loop_connection is not None:
                    self._loop_connection.close()
                    self._loop_connection = None
                await connection.close()
                if isinstance(error, sqlite3.Error):
                    raise self._storage_error(error) from error
                raise
            self._connection = connection

    async def close(self) -> None:
        """Commit the writes still queued, then close the file; safe to call twice."""
        async with self._lifecycle_lock:
            connection = self._connection
            if connection is None:
                return
            self._closing = True  # new writes are refused; queued ones still commit
            if self._flusher is not None:
                await asyncio.wait([self._flusher])
            for write in self._pending:  # left only if the flusher was cancelled
                if not write.future.done():
                    write.future.set_exception(self._closed_error())
            self._pending = []
            self._connection = None
            self._closing = False
            self._catch_up = False
            checkpoints, self._checkpoints = self._checkpoints, None
            self._stop_watching_wal()
            if self._loop_connection is not None:
                self._loop_connection.close()
                self._loop_connection = None
            try:
                if checkpoints is not None:
                    await checkpoints.close()
            finally:
                await connection.close()  # the last connection to close checkpoints the WAL

    # -- running operations ------------------------------------------------------------------

    def _open_connection(self, *, writing: bool = False) -> aiosqlite.Connection:
        if self._connection is None or (writing and self._closing):
            raise self._closed_error()
        return self._connection

    def _closed_error(self) -> StorageClosedError:
        return StorageClosedError(
            f"SQLite storage {self._path!r} is not open: use it between "
            "`await storage.connect()` and `await storage.close()`, or inside `async with`"
        )

    def _storage_error(self, error: sqlite3.Error) -> StorageError:
        if is_corruption(error):
            failure: StorageError = CorruptStorageError(
                f"SQLite storage {self._path!r} is damaged ({error}); restore it from a backup"
            )
        elif is_busy(error):
            failure = StorageError(
                f"SQLite storage {self._path!r} stayed locked by another connection for more "
                f"than busy_timeout={self._busy_timeout}s ({error}); find the process holding "
                "it or raise busy_timeout"
            )
        else:
            failure = StorageError(f"SQLite storage {self._path!r} failed: {error}")
        failure.__cause__ = error
        return failure

    async def _read(self, operation: Operation[_T], *, small: bool = True) -> _T:
        """Run a read-only ``operation``, on the loop's thread if it is ``small``.

        A read on the loop's thread that meets a lock (rare with WAL) is made again on the
        worker thread, which waits for it; so are reads that may scan many rows.
        """
        connection = self._open_connection()
        try:
            if small and self._loop_connection is not None:
                try:
                    return operation(self._loop_connection)
                except sqlite3.Error as error:
                    if not is_busy(error):
                        raise
            return await call_in_worker_thread(connection, operation)
        except sqlite3.Error as error:
            raise self._storage_error(error) from error

    async def _write(
        self,
        operation: Operation[_T],
        *,
        wakes_workers: Callable[[_T], bool] | None = None,
        size: int = 0,
    ) -> _T:
        """Queue ``operation`` for the next group commit and return its result once committed.

        Args:
            operation: The synchronous write; it runs inside a savepoint of the batch.
            wakes_workers: Given the result, whether to notify :meth:`wait_for_work` once the
                batch commits (even if the caller has stopped waiting by then).
            size: Bytes of payload written; a large write is committed on the worker thread
                so the event loop is not held while SQLite copies it.
        """
        self._open_connection(writing=True)
        large = size >= _LARGE_WRITE
        if not large:
            committed, result = self._write_now(operation)
            if committed:
                if wakes_workers is not None and wakes_workers(cast(_T, result)):
                    self._work.set()
                return cast(_T, result)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingWrite(operation, future, wakes_workers, large))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_pending(), name="pyergon-sqlite-flush")
        return cast(_T, await future)

    def _write_now(self, operation: Operation[object]) -> tuple[bool, object]:
        """Commit a write at once, without a pass of the event loop, when it is alone.

        Group commit pays when several tasks write in the same pass of the loop. A task that
        writes while no other does would only wait a pass for nobody, twice per write. So a
        write commits at once while the recent batches held one write each, nothing is queued
        or committing, and no other task has committed at once in this pass; otherwise it is
        queued as usual, and the batch it joins tells whether writers are alone again.

        Returns:
            Whether the write was committed, and its result.

        Raises:
            StorageError: The write failed (it is rolled back).
        """
        connection = self._loop_connection
        if (
            connection is None
            or not self._writers_alone
            or self._flusher is not None
            or self._pending
            or self._catch_up
        ):
            return False, None
        task = asyncio.current_task()
        if self._pass_writer is not None and self._pass_writer is not task:
            return False, None
        try:
            ((result, _),) = commit_batch(connection, [operation])
        except sqlite3.Error as error:
            if is_busy(error):
                return False, None  # another connection is writing: queue for the worker thread
            raise self._storage_error(error) from error
        self._batches_committed += 1
        self._batches_since_checkpoint += 1
        if self._pass_writer is None:
            self._pass_writer = task
            asyncio.get_running_loop().call_soon(self._end_pass)
        self._checkpoint_if_due()
        return True, result

    def _end_pass(self) -> None:
        self._pass_writer = None

    async def _flush_pending(self) -> None:
        """Commit queued writes batch by batch; writes queued meanwhile form the next batch."""
        try:
            while True:
                # A write whose caller was cancelled before its batch started is not made.
                batch = [write for write in self._pending if not write.future.done()]
                self._pending = []
                if batch:
                    self._writers_alone = len(batch) == 1
                    await self._commit(batch)
                if self._catch_up:
                    await self._checkpoint()  # with writes held: the WAL starts over after it
                    self._catch_up = False
                if not self._pending:
                    break
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_PendingWrite]) -> None:
        operations = [write.operation for write in batch]
        try:
            outcomes = self._commit_on_loop(batch, operations)
            if outcomes is None:
                outcomes = await call_in_worker_thread(
                    self._open_connection(), partial(commit_batch, operations=operations)
                )
        except asyncio.CancelledError:
            for write in batch:
                write.future.cancel()
            raise
        except Exception as error:
            failure = self._storage_error(error) if isinstance(error, sqlite3.Error) else error
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(failure)
            return
        self._batches_committed += 1
        for write, (result, raised) in zip(batch, outcomes, strict=True):
            if raised is None and write.wakes_workers is not None and write.wakes_workers(result):
                self._work.set()
            if write.future.done():
                continue
            if raised is None:
                write.future.set_result(result)
            elif isinstance(raised, sqlite3.Error):
                write.future.set_exception(self._storage_error(raised))
            else:
                write.future.set_exception(raised)

    def _commit_on_loop(
        self, batch: list[_PendingWrite], operations: list[Operation[object]]
    ) -> list[Outcome] | None:
        """Commit the batch on the loop's thread; ``None`` if the worker thread must do it.

        Raises:
            Exception: The batch failed for another reason than a busy lock.
        """
        connection = self._loop_connection
        if connection is None or any(write.large for write in batch):
            return None
        try:
            outcomes = commit_batch(connection, operations)
        except sqlite3.Error as error:
            if is_busy(error):
                return None  # another connection is writing: wait for it on the worker thread
            raise
        self._batches_since_checkpoint += 1
        self._checkpoint_if_due()
        return outcomes

    def _checkpoint_if_due(self) -> None:
        """After a commit on the loop's thread: look after the WAL checkpoints.

        Every ``_CHECKPOINT_EVERY`` batches a checkpoint starts on its own thread and copies
        the WAL into the database while writes go on. The frames committed meanwhile keep the
        WAL from starting over, so it would only grow: once that checkpoint is done, writes are
        held while the flusher checkpoints those few frames too.
        """
        checkpoints = self._checkpoints
        if checkpoints is None or checkpoints.running:
            return
        finished, error = checkpoints.finished()
        if finished:
            self._checkpoint_failed(error)
            if self._batches_since_checkpoint:
                self._catch_up = True
        elif self._batches_since_checkpoint >= _CHECKPOINT_EVERY and not self._closing:
            self._batches_since_checkpoint = 0
            checkpoints.start()

    async def _checkpoint(self) -> None:
        """Checkpoint the WAL on the worker thread, where waiting for the disk holds nobody."""
        self._batches_since_checkpoint = 0
        try:
            await call_in_worker_thread(self._open_connection(), checkpoint)
        except sqlite3.Error as error:
            self._checkpoint_failed(error)

    def _checkpoint_failed(self, error: sqlite3.Error | None) -> None:
        # The WAL only grows until a later checkpoint succeeds; the data is safe either way.
        if error is not None and not is_busy(error):  # busy: another one is checkpointing
            logger.warning("SQLite storage %r: WAL checkpoint failed: %s", self._path, error)

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists; a new ``PENDING`` flow wakes workers."""
        values = record_values(flow)

        def insert(connection: sqlite3.Connection) -> tuple[ScheduledFlow, bool]:
            if connection.execute(insert_flow_sql(values), values).rowcount == 1:
                return flow, True
            existing = fetch_flow(connection, flow.flow_id)
            assert existing is not None  # the insert conflicted with it in this transaction
            return existing, False

        return await self._write(
            insert,
            wakes_workers=lambda stored: stored[1] and stored[0].status is TaskStatus.PENDING,
            size=len(flow.payload),
        )

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        return await self._read(partial(fetch_flow, flow_id=flow_id))

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
        """Change a flow's state in one transaction; see :meth:`ExecutionLog.update_flow`."""
        update = partial(
            _update_flow,
            flow_id=flow_id,
            transition=FlowTransition(
                status, result=result, error=error, wake_at=wake_at, attempt=attempt
            ),
            expected_status=expected_status,
        )
        updated, _ = await self._write(update, wakes_workers=_wakes_workers, size=_size(result))
        return updated

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
        """Take up to ``limit`` runnable flows of ``flow_types`` in one write transaction."""
        check_claim_limit(limit)
        claim = partial(
            claim_next_flows,
            worker_id=worker_id,
            flow_types=list(flow_types),
            limit=limit,
            lease_seconds=lease_seconds,
            now=now,
            due_by=due_by,
        )
        return await self._write(claim)

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
        """Claim flows as :meth:`claim_flows` does and read their logs in the same transaction.

        The transaction holds the write lock, so no record can be added between the claim and
        the reading.
        """
        check_claim_limit(limit)

        def claim(connection: sqlite3.Connection) -> list[ClaimedRun]:
            flows = claim_next_flows(
                connection,
                worker_id=worker_id,
                flow_types=list(flow_types),
                limit=limit,
                lease_seconds=lease_seconds,
                now=now,
                due_by=due_by,
            )
            return [ClaimedRun(flow, load_log(connection, flow_id=flow.flow_id)) for flow in flows]

        return await self._write(claim)

    async def renew_lease(
        self, flow_id: str, lease_token: str, *, lease_seconds: float, now: float
    ) -> bool:
        """Extend a lease still held with ``lease_token``."""

        def renew(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "UPDATE flows SET lease_expires_at = ? "
                "WHERE flow_id = ? AND status = 'RUNNING' AND lease_token = ?",
                (now + lease_seconds, flow_id, lease_token),
            )
            return cursor.rowcount == 1

        return await self._write(renew)

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
        """Leave a held flow in ``status`` and drop the lease; see the protocol."""
        release = partial(
            _release_flow,
            flow_id=flow_id,
            transition=FlowTransition(
                status,
                result=result,
                error=error,
                wake_at=wake_at,
                attempt=attempt,
                lease_token=lease_token,
                waiting_signals=tuple(waiting_signals),
                waiting_children=tuple(waiting_children),
            ),
        )
        released, _ = await self._write(release, wakes_workers=_wakes_workers, size=_size(result))
        return released

    async def request_cancel(self, flow_id: str) -> ScheduledFlow | None:
        """Cancel a flow now, or at its next step boundary if it is running; see the protocol."""

        def cancel(connection: sqlite3.Connection) -> tuple[ScheduledFlow | None, bool]:
            """Return the flow as stored, and whether waiting workers should look again."""
            flow = fetch_flow(connection, flow_id)
            if flow is None or flow.status.is_final:
                return flow, False
            if flow.status is TaskStatus.RUNNING:
                changes: dict[str, object] = {"cancel_requested": True, "updated_at": time.time()}
                update_flow_row(connection, flow_id, changes)
                return changed_flow(flow, changes), True
            # Cancelled at once: workers need to look only if that woke the parent.
            return change_flow(connection, flow, TaskStatus.CANCELLED, wake_at=None)

        stored, _ = await self._write(cancel, wakes_workers=lambda outcome: outcome[1])
        return stored

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        ids = list(flow_ids)

        def select(connection: sqlite3.Connection) -> set[str]:
            requested: set[str] = set()
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                rows = connection.execute(
                    f"SELECT flow_id FROM flows WHERE flow_id IN ({', '.join('?' * len(chunk))}) "
                    "AND status = 'RUNNING' AND cancel_requested",
                    chunk,
                )
                requested.update(flow_id for (flow_id,) in rows)
            return requested

        return await self._read(select)

    # -- wake-ups ----------------------------------------------------------------------------

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow (of ``flow_types``, if given)."""
        types = None if flow_types is None else list(flow_types)
        return await self._read(partial(next_wake_time, flow_types=types))

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for work stored by this or another process, or ``timeout`` seconds."""
        self._open_connection()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        notifier = self._wal_writes
        watched = notifier is not None and notifier.start()
        try:
            while not self._work.is_set():
                if await self._other_process_committed():
                    self._poll_interval = _POLL_MIN
                    self._seen_commit_at = loop.time()
                    # Setting the event wakes every worker sharing this object, not only this.
                    self._work.set()
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                interval = _WATCHED_CHECK if watched else self._poll_interval
                if not await wait_for_event(self._work, min(interval, remaining)):
                    quiet = loop.time() - self._seen_commit_at > _POLL_HOT
                    if quiet and not watched:
                        self._poll_interval = min(self._poll_interval * 2, _POLL_MAX)
        finally:
            if watched and notifier is not None:
                notifier.stop()  # the one started: a reconnect may have made another
        self._work.clear()
        return True

    async def _other_process_committed(self) -> bool:
        """Whether another connection committed since the last check (``PRAGMA data_version``)."""
        return self._note_data_version(await self._read(_data_version))

    def _note_data_version(self, version: int) -> bool:
        """Keep ``version``; return whether it differs from the one seen before."""
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    def _watch_wal(self) -> None:
        """Start noticing writes to the WAL file, where the platform allows it."""
        watch = watch_writes(f"{self._path}-wal")
        if watch is not None:
            self._wal_writes = WriteNotifier(
                watch, self._check_other_commits, interval=_POLL_MIN, settle=_POLL_HOT
            )

    def _stop_watching_wal(self) -> None:
        notifier, self._wal_writes = self._wal_writes, None
        if notifier is not None:
            notifier.close()

    def _check_other_commits(self) -> None:
        """After a write to the WAL: wake waiting workers if another connection committed."""
        connection = self._loop_connection
        if connection is None:
            return
        try:
            changed = self._note_data_version(_data_version(connection))
        except sqlite3.Error:
            changed = True  # a waiter looks again, on the worker thread if need be
        if changed:
            self._seen_commit_at = asyncio.get_running_loop().time()
            self._work.set()

    # -- invocations -------------------------------------------------------------------------

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by ``(sequence, sub_sequence)``."""
        return await self._read(partial(load_log, flow_id=flow_id))

    async def get_invocation(
        self, flow_id: str, sequence: int, sub_sequence: int = 0
    ) -> Invocation | None:
        """Return one record, or ``None``."""
        return await self._read(
            partial(fetch_invocation, flow_id=flow_id, sequence=sequence, sub_sequence=sub_sequence)
        )

    async def record_invocation(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` unless a final record holds its position (first writer wins)."""
        record = partial(_record, invocation=invocation, values=record_values(invocation))
        return await self._write(record, size=_invocation_size(invocation))

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        """Store records and the flow's new state in one transaction; see the protocol."""
        prepared = [(record, record_values(record)) for record in records]

        def save(connection: sqlite3.Connection) -> tuple[SavedProgress, _FlowChange]:
            stored_records: list[Invocation] = []
            for record, values in prepared:
                stored = _record(connection, record, values)
                stored_records.append(stored)
                if not stored_as_given(record, stored):
                    return SavedProgress(stored_records, conflict=True), (None, False)
            if transition is None:
                return SavedProgress(stored_records), (None, False)
            change = _apply_transition(connection, flow_id, transition)
            return SavedProgress(stored_records, flow=change[0]), change

        size = sum(_invocation_size(record) for record in records)
        if transition is not None:
            size += transition.payload_size
        saved, _ = await self._write(
            save, wakes_workers=lambda outcome: _wakes_workers(outcome[1]), size=size
        )
        return saved

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records and return how many there were."""

        def delete(connection: sqlite3.Connection) -> int:
            return connection.execute(
                "DELETE FROM invocations WHERE flow_id = ? AND status = ?",
                (flow_id, InvocationStatus.FAILED.value),
            ).rowcount

        return await self._write(delete)

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists.

        A new signal makes its ``SUSPENDED`` flow ``PENDING`` in the same transaction when the
        flow has a ``WAITING_FOR_SIGNAL`` record of that name.
        """
        values = (signal.flow_id, signal.name, signal.payload, signal.sent_at)

        def insert(connection: sqlite3.Connection) -> tuple[bool, bool]:
            # ON CONFLICT DO NOTHING ignores only the duplicate, unlike INSERT OR IGNORE, which
            # would also hide NOT NULL violations.
            cursor = connection.execute(
                "INSERT INTO signals (flow_id, name, payload, sent_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (flow_id, name) DO NOTHING",
                values,
            )
            if cursor.rowcount == 0:
                return False, False
            if awaits_signal(connection, signal.flow_id, signal.name):
                return True, wake_flow(connection, signal.flow_id)
            return True, False

        inserted, _ = await self._write(
            insert, wakes_workers=lambda outcome: outcome[1], size=len(signal.payload)
        )
        return inserted

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return a stored signal, or ``None``."""

        def fetch(connection: sqlite3.Connection) -> SignalRecord | None:
            row = connection.execute(
                "SELECT * FROM signals WHERE flow_id = ? AND name = ?", (flow_id, name)
            ).fetchone()
            return None if row is None else signal_from_row(row)

        return await self._read(fetch)

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first (then by name)."""

        def select(connection: sqlite3.Connection) -> list[SignalRecord]:
            rows = connection.execute(
                "SELECT * FROM signals WHERE flow_id = ? ORDER BY sent_at, name", (flow_id,)
            )
            return [signal_from_row(row) for row in rows]

        return await self._read(select, small=False)

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
        """Return flows newest first (ties by flow id, descending), filtered; see the protocol."""
        check_page(limit, offset)
        statuses = status_filter(status)
        if statuses is not None and not statuses:
            return []
        statement, parameters = flow_listing(
            statuses=statuses,
            flow_type=flow_type,
            created_after=created_after,
            created_before=created_before,
            worker_id=worker_id,
            parent_flow_id=parent_flow_id,
            limit=limit,
            offset=offset,
            after=after,
        )

        def select(connection: sqlite3.Connection) -> list[ScheduledFlow]:
            return [flow_from_row(row) for row in connection.execute(statement, parameters)]

        return await self._read(select, small=False)

    async def count_flows(self, *, flow_type: str | None = None) -> dict[TaskStatus, int]:
        """Return how many flows (of ``flow_type``, if given) are in each status."""
        where, parameters = (
            ("", ()) if flow_type is None else ("WHERE flow_type = ? ", (flow_type,))
        )

        def count(connection: sqlite3.Connection) -> dict[TaskStatus, int]:
            rows = connection.execute(
                f"SELECT status, COUNT(*) FROM flows {where}GROUP BY status", parameters
            )
            return dict.fromkeys(TaskStatus, 0) | {TaskStatus(name): n for name, n in rows}

        return await self._read(count, small=False)

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals in one transaction."""

        def delete(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM invocations WHERE flow_id = ?", (flow_id,))
            connection.execute("DELETE FROM signals WHERE flow_id = ?", (flow_id,))
            deleted = connection.execute("DELETE FROM flows WHERE flow_id = ?", (flow_id,))
            return deleted.rowcount > 0

        return await self._write(delete)

    async def reset(self) -> None:
        """Delete every flow, record and signal; the schema stays."""

        def delete_all(connection: sqlite3.Connection) -> None:
            for table in ("invocations", "signals", "flows"):
                connection.execute(f"DELETE FROM {table}")

        await self._write(delete_all)
