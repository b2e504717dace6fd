"""SQLite storage: the embedded default backend, durable against a killed process.

Writes from concurrently running flows are group-committed: each write queues a small
synchronous operation and one flusher task runs everything queued inside a single
``BEGIN IMMEDIATE ... COMMIT`` (:mod:`pyergon.storage._sqlite_file`). Files use WAL with
``synchronous=NORMAL``, so every write whose ``await`` returned survives the process being killed.
The statements are the SQL layer's (:mod:`pyergon.storage._sql`); SQLite's own claim is in
:mod:`pyergon.storage._sqlite_changes`, the opening of a file in
:mod:`pyergon.storage._sqlite_schema`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Collection, Mapping
from functools import partial

from pyergon.core.changes import Applied, Change
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import claim_changes
from pyergon.core.workers import Beat, WorkerRecord
from pyergon.errors import StorageError
from pyergon.serialization._artifact_refs import ARTIFACT_TAG
from pyergon.serialization.artifacts import ArtifactStore, open_artifact_store
from pyergon.storage._artifact_references import referenced_digests
from pyergon.storage._file_watch import WriteNotifier, watch_writes
from pyergon.storage._sql import steps
from pyergon.storage._sql.rows import flow_from_row, signal_from_row, status_counts
from pyergon.storage._sqlite_changes import (
    SQL,
    WORKERS,
    apply_change,
    beat_worker,
    claim_runs,
    fetch_flow,
    insert_flow,
    load_log,
    next_wake_time,
    renew_leases,
    select_rows,
    select_workers,
)
from pyergon.storage._sqlite_connections import (
    BackgroundCheckpoints,
    WorkerThread,
    open_loop_connection,
)
from pyergon.storage._sqlite_file import SqliteFile, closed_error, storage_error
from pyergon.storage._sqlite_schema import prepare_connection
from pyergon.storage.base import ClaimedRun, StorageLifecycle, wait_for_event

__all__ = ["SqliteExecutionLog"]

logger = logging.getLogger(__name__)

_MEMORY = ":memory:"
_MINIMUM_SQLITE = (3, 24, 0)  # INSERT ... ON CONFLICT DO UPDATE (upsert)
_IDS_PER_QUERY = 500  # below SQLite's smallest host-parameter limit (999 before 3.32)

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


def _is_new_pending(stored: tuple[ScheduledFlow, bool]) -> bool:
    flow, created = stored
    return created and flow.status is TaskStatus.PENDING


class SqliteExecutionLog(StorageLifecycle):
    """Stores flows, records, signals and worker records in one SQLite file (or in memory).

    Use it on the event loop that connected it. Reads see every write whose ``await`` returned.
    :meth:`wait_for_work` is woken at once by work stored through this object. Commits made by
    other processes are noticed through ``PRAGMA data_version``, checked when the WAL file is
    written (Linux: inotify; at most every 2 ms while someone writes, and every second anyway),
    or elsewhere by a poll that starts at 2 ms after activity and backs off to 50 ms while the
    database is idle.

    Args:
        path: The database file, created if missing, or ``":memory:"``.
        busy_timeout: Seconds to wait for another process's write lock before failing.
        artifacts: Where values larger than about 1 MiB are kept apart from the log (see
            :mod:`pyergon.serialization.artifacts`): a directory, an fsspec URL or an
            :class:`~pyergon.serialization.artifacts.ArtifactStore`. By default
            ``flows.db`` keeps them in ``flows.artifacts/`` beside it (an in-memory database
            keeps them inline); ``False`` keeps them inline.

    Example:
        >>> async with SqliteExecutionLog("flows.db") as storage:  # doctest: +SKIP
        ...     flow = await storage.get_flow("order-42")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        artifacts: str | os.PathLike[str] | ArtifactStore | bool | None = None,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self.artifacts = _artifact_store(self._path, artifacts)
        self._file: SqliteFile | None = None
        self._lifecycle_lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._data_version: int | None = None
        self._wal_writes: WriteNotifier | None = None
        """Calls :meth:`_check_other_commits` after writes to the WAL, while workers wait."""
        self._poll_interval = _POLL_MIN
        self._seen_commit_at = 0.0
        self._left_out_reported: set[tuple[str, str]] = set()

    @classmethod
    async def in_memory(cls) -> SqliteExecutionLog:
        """Return a connected backend on a private in-memory database."""
        storage = cls(_MEMORY)
        await storage.connect()
        return storage

    def __repr__(self) -> str:
        state = "open" if self._file is not None else "closed"
        return f"SqliteExecutionLog({self._path!r}, {state})"

    @property
    def path(self) -> str:
        """The database file, or ``":memory:"``."""
        return self._path

    def reopened(self) -> SqliteExecutionLog:
        """A new, unconnected backend on the same file with the same ``busy_timeout``.

        Raises:
            StorageError: The database is in memory: it lives in this backend's connection
                alone, and cannot be opened a second time.
        """
        if self._path in (_MEMORY, ""):
            raise StorageError(
                "an in-memory SQLite database cannot be opened a second time: it lives in "
                "one connection; keep a worker's heartbeats on its own event loop, or use a file"
            )
        return SqliteExecutionLog(
            self._path, busy_timeout=self._busy_timeout, artifacts=self.artifacts or False
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file, set WAL and create or migrate the schema; safe to call twice.

        Several processes may connect to the same file at once: the first migrates it, the
        others wait for its write lock and find the schema current.

        Raises:
            CorruptStorageError: The file is not SQLite, is damaged, or is another program's
                database. Nothing in it was changed.
            SchemaVersionError: A newer pyergon wrote the file. Nothing in it was changed.
            StorageError: The file cannot be opened or stayed locked past ``busy_timeout``.
        """
        async with self._lifecycle_lock:
            if self._file is not None:
                return
            if sqlite3.sqlite_version_info < _MINIMUM_SQLITE:
                raise StorageError(
                    f"pyergon needs SQLite {'.'.join(map(str, _MINIMUM_SQLITE))} or newer; "
                    f"this Python has SQLite {sqlite3.sqlite_version}"
                )
            try:
                worker = await WorkerThread.open(self._path)
            except sqlite3.Error as error:
                raise storage_error(self._path, self._busy_timeout, error) from error
            in_file = self._path not in (_MEMORY, "")
            prepare = partial(
                prepare_connection,
                path=self._path,
                busy_timeout=self._busy_timeout,
                use_wal=in_file,
            )
            loop_connection: sqlite3.Connection | None = None
            checkpoints: BackgroundCheckpoints | None = None
            try:
                await worker.run(prepare)
                if in_file:
                    loop_connection = open_loop_connection(self._path)
                    checkpoints = BackgroundCheckpoints(self._path)
                    self._watch_wal()
            except BaseException as error:
                self._stop_watching_wal()
                if loop_connection is not None:
                    loop_connection.close()
                await worker.close()
                if isinstance(error, sqlite3.Error):
                    raise storage_error(self._path, self._busy_timeout, error) from error
                raise
            self._file = SqliteFile(
                self._path, self._busy_timeout, worker, loop_connection, checkpoints, self._work.set
            )

    async def close(self) -> None:
        """Commit the writes still queued, then close the file; safe to call twice."""
        async with self._lifecycle_lock:
            file = self._file
            if file is None:
                return
            self._stop_watching_wal()
            try:
                await file.close()  # new writes are refused; queued ones still commit
            finally:
                self._file = None

    def _open_file(self) -> SqliteFile:
        if self._file is None:
            raise closed_error(self._path)
        return self._file

    # -- flows and changes -------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists; a new ``PENDING`` flow wakes workers."""
        return await self._open_file().write(
            partial(insert_flow, flow=flow), notifies=_is_new_pending, size=len(flow.payload)
        )

    async def apply(self, change: Change) -> Applied:
        """Apply ``change`` atomically, within the next group commit; see the protocol.

        A change whose guard does not hold writes nothing and leaves the other writes of its
        transaction as they are.
        """

        def notifies(applied: Applied) -> bool:
            return change.notify and applied.complete

        return await self._open_file().write(
            partial(apply_change, change=change), notifies=notifies, size=change.payload_size
        )

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        """Take up to ``request.limit`` runnable flows in one write transaction, with their logs.

        The transaction holds the write lock, so no record can be added between the claim and
        the reading of the logs.
        """
        changes = claim_changes(request, lease_token="", at=time.time())
        claim = partial(
            claim_runs,
            flow_types=list(request.flow_types),
            changes=changes,
            limit=request.limit,
            now=request.now,
            due_by=request.wakes_by,
            left_out=self._report_left_out,
        )
        return await self._open_file().write(claim)

    def _report_left_out(self, flow_id: str, reason: str) -> None:
        """Log, once per flow and reason, a runnable flow a claim cannot place in the queue.

        Runs on the writer's thread; the set only grows, by one entry per damaged flow.
        """
        if (flow_id, reason) not in self._left_out_reported:
            self._left_out_reported.add((flow_id, reason))
            logger.error(
                "flow %s is left out of the queue of SQLite storage %r: %s; fix the column, "
                "then resume the flow",
                flow_id,
                self._path,
                reason,
            )

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases still held with their tokens, in one transaction."""
        if not leases:
            return set()
        renew = partial(renew_leases, leases=dict(leases), expires_at=now + lease_seconds)
        return await self._open_file().write(renew)

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        ids = list(flow_ids)

        def select(connection: sqlite3.Connection) -> set[str]:
            requested: set[str] = set()
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                rows = connection.execute(SQL.cancel_requests(len(chunk)), chunk)
                requested.update(flow_id for (flow_id,) in rows)
            return requested

        return await self._open_file().read(select)

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow (of ``flow_types``, if given)."""
        types = None if flow_types is None else list(flow_types)
        return await self._open_file().read(partial(next_wake_time, flow_types=types))

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for work stored by this or another process, or ``timeout`` seconds."""
        self._open_file()
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
        return self._note_data_version(await self._open_file().read(_data_version))

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
        connection = None if self._file is None else self._file.loop_connection
        if connection is None:
            return
        try:
            changed = self._note_data_version(_data_version(connection))
        except sqlite3.Error:
            changed = True  # a waiter looks again, on the worker thread if need be
        if changed:
            self._seen_commit_at = asyncio.get_running_loop().time()
            self._work.set()

    # -- reads -------------------------------------------------------------------------------

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        return await self._open_file().read(partial(fetch_flow, flow_id=flow_id))

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by ``(sequence, sub_sequence)``."""
        return await self._open_file().read(partial(load_log, flow_id=flow_id))

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first (then by name)."""

        def select(connection: sqlite3.Connection) -> list[SignalRecord]:
            rows = connection.execute(SQL.list_signals, (flow_id,))
            return [signal_from_row(row) for row in rows]

        return await self._open_file().read(select, small=False)

    async def artifact_references(self) -> set[str]:
        """Return the digests of the artifacts stored payloads name; see the protocol."""

        def select(connection: sqlite3.Connection) -> set[str]:
            rows = connection.execute(SQL.artifact_references, (ARTIFACT_TAG,))
            return referenced_digests(row[0] for row in rows)

        return await self._open_file().read(select, small=False)

    # -- history -----------------------------------------------------------------------------

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        """Return flows newest first (ties by flow id, descending), filtered; see the protocol."""
        query = query or FlowQuery()
        if query.statuses is not None and not query.statuses:
            return []
        parts = [query]
        if query.flow_ids is not None and len(query.flow_ids) > _IDS_PER_QUERY:
            # Each id is a parameter: each part gives the first offset + limit of its ids.
            ids = sorted(query.flow_ids)
            whole = query.page(limit=query.limit + query.offset, after=query.after)
            parts = [
                whole.of_flows(ids[start : start + _IDS_PER_QUERY])
                for start in range(0, len(ids), _IDS_PER_QUERY)
            ]
        statements = [SQL.list_flows(part) for part in parts]

        def select(connection: sqlite3.Connection) -> list[ScheduledFlow]:
            flows = [
                flow_from_row(row)
                for statement, parameters in statements
                for row in select_rows(connection, statement, parameters)
            ]
            return flows if len(parts) == 1 else query.page_of(flows)

        return await self._open_file().read(select, small=False)

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        """Return how many flows are in each status, from index ranges; see the protocol."""
        chosen = FlowQuery(flow_ids=flow_ids).flow_ids  # checked as a listing checks them
        chunks: list[list[str] | None] = [None]
        if chosen is not None:
            ids = sorted(chosen)  # each id is a parameter: a statement per chunk of them
            chunks = [
                ids[start : start + _IDS_PER_QUERY] for start in range(0, len(ids), _IDS_PER_QUERY)
            ]
        statements = [SQL.count_flows(flow_type, created_after, chunk) for chunk in chunks]

        def count(connection: sqlite3.Connection) -> dict[TaskStatus, int]:
            counts = dict.fromkeys(TaskStatus, 0)
            for statement, parameters in statements:
                for status, found in status_counts(
                    connection.execute(statement, parameters)
                ).items():
                    counts[status] += found
            return counts

        return await self._open_file().read(count, small=False)

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals in one transaction."""

        def delete(connection: sqlite3.Connection) -> bool:
            return steps.run_sqlite(connection, steps.delete_flow(SQL, flow_id))

        return await self._open_file().write(delete)

    async def reset(self) -> None:
        """Delete every flow, record, signal and worker record; the schema stays."""

        def delete_all(connection: sqlite3.Connection) -> None:
            steps.run_sqlite(connection, steps.reset(SQL))

        await self._open_file().write(delete_all)

    # -- workers -----------------------------------------------------------------------------

    async def beat(
        self,
        worker: WorkerRecord,
        leases: Mapping[str, str],
        *,
        lease_seconds: float,
        now: float,
    ) -> Beat:
        """Renew the leases still held and the worker's record, in one transaction."""
        renew = partial(
            beat_worker, worker=worker, leases=dict(leases), expires_at=now + lease_seconds
        )
        return await self._open_file().write(renew)

    async def put_worker(self, worker: WorkerRecord, *, replacing: str | None) -> bool:
        """Store ``worker`` if its id's record has incarnation ``replacing`` (or none)."""
        statement, arguments = WORKERS.put(worker, replacing)

        def put(connection: sqlite3.Connection) -> bool:
            return connection.execute(statement, arguments).rowcount == 1

        return await self._open_file().write(put)

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """Return the record of ``worker_id``, or ``None``."""
        select = partial(select_workers, statement=WORKERS.get, parameters=(worker_id,))
        found = await self._open_file().read(select)
        return found[0] if found else None

    async def list_workers(self) -> list[WorkerRecord]:
        """Return every worker record, by worker id."""
        select = partial(select_workers, statement=WORKERS.list, parameters=())
        return await self._open_file().read(select, small=False)

    async def delete_worker(self, worker_id: str) -> bool:
        """Delete the record of ``worker_id``. Returns whether it existed."""

        def delete(connection: sqlite3.Connection) -> bool:
            return connection.execute(WORKERS.delete, (worker_id,)).rowcount == 1

        return await self._open_file().write(delete)


def _artifact_store(
    path: str, artifacts: str | os.PathLike[str] | ArtifactStore | bool | None
) -> ArtifactStore | None:
    """The artifact store of the database at ``path``: by default a directory beside it."""
    if artifacts is False or (artifacts is None and path in (_MEMORY, "")):
        return None
    if artifacts is None or artifacts is True:
        if path in (_MEMORY, ""):
            raise ValueError("an in-memory database has no file to keep artifacts beside")
        return open_artifact_store(os.path.splitext(os.path.abspath(path))[0] + ".artifacts")
    return open_artifact_store(artifacts)
