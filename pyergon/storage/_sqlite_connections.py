"""How the SQLite backend reaches its file: two connections, and transactions of queued writes.

A file is opened twice. One connection lives on a worker thread of its own, where waiting is
harmless: it creates and migrates the schema, waits for another process's write lock
(``busy_timeout``), checkpoints the WAL and runs the large reads and writes. A plain connection
on the event loop's own thread does the common small reads and writes: it never waits (a busy
timeout of 0, no automatic checkpoints), so it holds the loop only for the time SQLite itself
takes, and saves each call the two thread switches a hop to the worker thread costs. What it
cannot do at once, because another connection holds the write lock, is done again on the worker
thread. An in-memory database is private to one connection, so it uses the worker thread only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

__all__ = [
    "BackgroundCheckpoints",
    "Operation",
    "Outcome",
    "WorkerThread",
    "checkpoint",
    "commit_batch",
    "is_busy",
    "open_loop_connection",
]

_T = TypeVar("_T")
Operation = Callable[[sqlite3.Connection], _T]
"""A synchronous piece of work on a connection: a read, or one write of a batch."""
Outcome = tuple[object, Exception | None]
"""What one write of a batch returned, or the error it raised."""


class WorkerThread:
    """A thread of its own and the sqlite3 connection used only on it.

    A whole function runs on the thread per call, so a batch of writes, or a read of several
    statements, costs one thread hop (where a statement-by-statement async adapter costs one
    per statement). Use :meth:`open`, then :meth:`run`, then :meth:`close`.
    """

    def __init__(self, executor: ThreadPoolExecutor, connection: sqlite3.Connection) -> None:
        self._executor = executor
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(cls, path: str) -> WorkerThread:
        """Open ``path`` on a new thread, in autocommit mode: transactions are explicit.

        Raises:
            sqlite3.Error: The file cannot be opened.
        """
        # One thread, reused for every call: sqlite3's same-thread check stays on.
        executor = ThreadPoolExecutor(1, thread_name_prefix="pyergon-sqlite")
        connect = partial(sqlite3.connect, path, isolation_level=None)
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, connection)

    async def run(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``function(connection)`` on the thread and return what it returns.

        A caller cancelled meanwhile stops waiting; the function still runs to its end.

        Raises:
            sqlite3.ProgrammingError: The connection is closed.
        """
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, self._connection)

    async def close(self) -> None:
        """Close the connection on the thread once what runs there is done; end the thread.

        The thread closes the connection even if this wait is cancelled.
        """
        self._closed = True
        closed = self._executor.submit(self._connection.close)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closed)


def is_busy(error: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock it needs."""
    # Errors the sqlite3 module raises itself (wrong thread, closed connection) have no code.
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def commit_batch(
    connection: sqlite3.Connection, operations: Sequence[Operation[object]]
) -> list[Outcome]:
    """Run ``operations`` in one transaction; one that fails does not undo the others.

    The batch runs first without savepoints, which cost two statements per operation. If an
    operation fails, the transaction is rolled back and the batch runs again with each
    operation under a savepoint, so the failure stays its own. Operations only change the
    database, so running them again after a rollback is safe.

    Raises:
        Exception: The transaction as a whole failed, or its only operation did, or a lock
            was busy; nothing of the batch is stored.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        outcomes: list[Outcome] = [(operation(connection), None) for operation in operations]
    except BaseException as error:
        rolled_back_by_sqlite = not connection.in_transaction  # an I/O error, a full disk
        _roll_back(connection)
        alone = len(operations) == 1  # its failure is the batch's
        busy = isinstance(error, sqlite3.Error) and is_busy(error)  # the batch is tried again
        if alone or busy or rolled_back_by_sqlite or not isinstance(error, Exception):
            raise
        return _commit_each_under_a_savepoint(connection, operations)
    try:
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    return outcomes


def _commit_each_under_a_savepoint(
    connection: sqlite3.Connection, operations: Sequence[Operation[object]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        for operation in operations:
            connection.execute("SAVEPOINT pyergon_write")
            try:
                outcomes.append((operation(connection), None))
            except Exception as error:
                if not connection.in_transaction:
                    raise  # SQLite rolled the whole transaction back (I/O error, disk full)
                if isinstance(error, sqlite3.Error) and is_busy(error):
                    raise  # not this write's fault: the whole batch is tried again
                connection.execute("ROLLBACK TO pyergon_write")
                outcomes.append((None, error))
            connection.execute("RELEASE pyergon_write")
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise
    return outcomes


def _roll_back(connection: sqlite3.Connection) -> None:
    """Roll back the open transaction, unless SQLite already has (an I/O error, a full disk)."""
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def open_loop_connection(path: str) -> sqlite3.Connection:
    """Open the connection used on the event loop's thread to a file already prepared.

    It fails at once instead of waiting for a lock, and leaves checkpoints, which wait for the
    disk, to the worker thread. ``synchronous=NORMAL`` as on the worker thread's connection:
    with WAL, every commit survives the process being killed.
    """
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        connection.close()
        raise
    return connection


class BackgroundCheckpoints:
    """WAL checkpoints on a thread and a connection of their own, started from any code.

    :meth:`start` hands the checkpoint to the thread at once, without a pass of the event loop,
    so a task that keeps committing without ever waiting still gets its WAL copied back into
    the database file, on the other core, while it goes on.

    Args:
        path: The database file.
    """

    def __init__(self, path: str) -> None:
        # Opened now, while the path means the file the other connections opened, and never
        # creating one; used only on the thread from now on.
        uri = f"{Path(path).absolute().as_uri()}?mode=rw"
        self._connection = sqlite3.connect(
            uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            self._connection.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self._connection.close()
            raise
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pyergon-sqlite-checkpoint")
        self._running: Future[sqlite3.Error | None] | None = None

    @property
    def running(self) -> bool:
        """Whether a checkpoint was started and has not finished."""
        return self._running is not None and not self._running.done()

    def start(self) -> None:
        """Start a checkpoint unless one is running."""
        if not self.running:
            self._running = self._executor.submit(self._checkpoint)

    def finished(self) -> tuple[bool, sqlite3.Error | None]:
        """Whether a checkpoint finished since the last call, and the error it met, if any."""
        running = self._running
        if running is None or not running.done():
            return False, None
        self._running = None
        return True, running.result()

    async def wait(self) -> None:
        """Wait until a running checkpoint has finished."""
        if self._running is not None:
            await asyncio.wrap_future(self._running)

    async def close(self) -> None:
        """Close the connection on the thread once a running checkpoint is done; stop it.

        The thread closes the connection even if this wait is cancelled.
        """
        self._closed = True
        closed = self._executor.submit(self._connection.close)
        self._executor.shutdown(wait=False)
        self._running = None
        await asyncio.wrap_future(closed)

    def _checkpoint(self) -> sqlite3.Error | None:
        try:
            checkpoint(self._connection)
        except sqlite3.Error as error:
            return error
        return None


def checkpoint(connection: sqlite3.Connection) -> None:
    """Copy committed pages from the WAL back into the database, without waiting for readers."""
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
