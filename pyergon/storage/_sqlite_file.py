"""An open SQLite file: small reads on the loop's thread, and writes committed in groups.

Each write queues a small synchronous operation, and one flusher task runs everything queued
inside a single ``BEGIN IMMEDIATE ... COMMIT``, on the event loop's thread when the write lock
is free at once, else on the worker thread, which may wait for it
(:mod:`pyergon.storage._sqlite_connections`). A write alone in its pass of the loop commits at
once. Every few hundred batches a checkpoint copies the WAL back into the database on a thread
of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

from pyergon.errors import CorruptStorageError, StorageClosedError, StorageError
from pyergon.storage._sqlite_connections import (
    BackgroundCheckpoints,
    Operation,
    Outcome,
    WorkerThread,
    checkpoint,
    commit_batch,
    is_busy,
)
from pyergon.storage._sqlite_schema import is_corruption

__all__ = ["LARGE_WRITE", "SqliteFile", "closed_error", "storage_error"]

logger = logging.getLogger("pyergon.storage.sqlite")

_T = TypeVar("_T")

LARGE_WRITE = 1 << 20
"""Bytes of payload from which a batch is written on the worker thread, not the loop's."""
CHECKPOINT_EVERY = 300
"""Batches committed on the loop's thread between two WAL checkpoints on their own thread."""


def closed_error(path: str) -> StorageClosedError:
    """The error of a use of storage that is not connected."""
    return StorageClosedError(
        f"SQLite storage {path!r} is not open: use it between "
        "`await storage.connect()` and `await storage.close()`, or inside `async with`"
    )


def storage_error(path: str, busy_timeout: float, error: sqlite3.Error) -> StorageError:
    """The error a caller sees for ``error``: what went wrong with the file, and what to do."""
    if is_corruption(error):
        failure: StorageError = CorruptStorageError(
            f"SQLite storage {path!r} is damaged ({error}); restore it from a backup"
        )
    elif is_busy(error):
        failure = StorageError(
            f"SQLite storage {path!r} stayed locked by another connection for more "
            f"than busy_timeout={busy_timeout}s ({error}); find the process holding "
            "it or raise busy_timeout"
        )
    else:
        failure = StorageError(f"SQLite storage {path!r} failed: {error}")
    failure.__cause__ = error
    return failure


@dataclasses.dataclass(slots=True)
class _PendingWrite:
    operation: Operation[object]
    future: asyncio.Future[object]
    notifies: Callable[[Any], bool] | None
    large: bool


class SqliteFile:
    """The connections to one open file, and the writes queued for its next transaction.

    Args:
        path: The file, or ``":memory:"``.
        busy_timeout: Seconds the worker thread waits for another connection's write lock.
        worker: The worker thread's connection, prepared.
        loop_connection: The connection of the event loop's thread (``None`` in memory).
        checkpoints: Checkpoints on their own thread (``None`` in memory).
        on_work: Called once a write whose ``notifies`` says so has committed.
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        worker: WorkerThread,
        loop_connection: sqlite3.Connection | None,
        checkpoints: BackgroundCheckpoints | None,
        on_work: Callable[[], None],
    ) -> None:
        self.path = path
        self.worker = worker
        self.loop_connection = loop_connection
        self.checkpoints = checkpoints
        self.batches_committed = 0
        """Committed group-commit transactions; tests read it to check batching."""
        self.writers_alone = True
        """Whether the last batch held one write: then a lone write commits at once."""
        self.pending: list[_PendingWrite] = []
        self._busy_timeout = busy_timeout
        self._on_work = on_work
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._batches_since_checkpoint = 0
        self._catch_up = False
        """Whether writes are held until the flusher has checkpointed what the last
        background checkpoint could not copy."""
        self._pass_writer: asyncio.Task[Any] | None = None
        """The task that committed at once in this pass of the event loop, if any."""

    def error(self, error: sqlite3.Error) -> StorageError:
        """The error a caller sees for ``error``."""
        return storage_error(self.path, self._busy_timeout, error)

    async def close(self) -> None:
        """Commit the writes still queued, refusing new ones, then close the connections."""
        self._closing = True
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        for write in self.pending:  # left only if the flusher was cancelled
            if not write.future.done():
                write.future.set_exception(closed_error(self.path))
        self.pending = []
        if self.loop_connection is not None:
            self.loop_connection.close()
        try:
            if self.checkpoints is not None:
                await self.checkpoints.close()
        finally:
            await self.worker.close()  # the last connection to close checkpoints the WAL

    # -- reads -------------------------------------------------------------------------------

    async def read(self, operation: Operation[_T], *, small: bool = True) -> _T:
        """Run a read-only ``operation``, on the loop's thread if it is ``small``.

        A read on the loop's thread that meets a lock (rare with WAL) is made again on the
        worker thread, which waits for it; so are reads that may scan many rows.
        """
        try:
            if small and self.loop_connection is not None:
                try:
                    return operation(self.loop_connection)
                except sqlite3.Error as error:
                    if not is_busy(error):
                        raise
            return await self.worker.run(operation)
        except sqlite3.Error as error:
            raise self.error(error) from error

    # -- writes ------------------------------------------------------------------------------

    async def write(
        self,
        operation: Operation[_T],
        *,
        notifies: Callable[[_T], bool] | None = None,
        size: int = 0,
    ) -> _T:
        """Queue ``operation`` for the next group commit and return its result once committed.

        Args:
            operation: The synchronous write; it runs inside the batch's transaction.
            notifies: Given the result, whether to call ``on_work`` once the batch commits
                (even if the caller has stopped waiting by then).
            size: Bytes of payload written; a large write is committed on the worker thread
                so the event loop is not held while SQLite copies it.

        Raises:
            StorageClosedError: The file is closing.
            StorageError: The write failed; nothing of it is stored.
        """
        if self._closing:
            raise closed_error(self.path)
        large = size >= LARGE_WRITE
        if not large:
            committed, result = self._write_now(operation)
            if committed:
                if notifies is not None and notifies(cast(_T, result)):
                    self._on_work()
                return cast(_T, result)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append(_PendingWrite(operation, future, notifies, large))
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
        connection = self.loop_connection
        if (
            connection is None
            or not self.writers_alone
            or self._flusher is not None
            or self.pending
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
            raise self.error(error) from error
        self.batches_committed += 1
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
                batch = [write for write in self.pending if not write.future.done()]
                self.pending = []
                if batch:
                    self.writers_alone = len(batch) == 1
                    await self._commit(batch)
                if self._catch_up:
                    await self._checkpoint()  # with writes held: the WAL starts over after it
                    self._catch_up = False
                if not self.pending:
                    break
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_PendingWrite]) -> None:
        operations = [write.operation for write in batch]
        try:
            outcomes = self._commit_on_loop(batch, operations)
            if outcomes is None:
                outcomes = await self.worker.run(partial(commit_batch, operations=operations))
        except asyncio.CancelledError:
            for write in batch:
                write.future.cancel()
            raise
        except Exception as error:
            failure = self.error(error) if isinstance(error, sqlite3.Error) else error
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(failure)
            return
        self.batches_committed += 1
        for write, (result, raised) in zip(batch, outcomes, strict=True):
            if raised is None and write.notifies is not None and write.notifies(result):
                self._on_work()
            if write.future.done():
                continue
            if raised is None:
                write.future.set_result(result)
            elif isinstance(raised, sqlite3.Error):
                write.future.set_exception(self.error(raised))
            else:
                write.future.set_exception(raised)

    def _commit_on_loop(
        self, batch: list[_PendingWrite], operations: list[Operation[object]]
    ) -> list[Outcome] | None:
        """Commit the batch on the loop's thread; ``None`` if the worker thread must do it.

        Raises:
            Exception: The batch failed for another reason than a busy lock.
        """
        connection = self.loop_connection
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

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint_if_due(self) -> None:
        """After a commit on the loop's thread: look after the WAL checkpoints.

        Every ``CHECKPOINT_EVERY`` batches a checkpoint starts on its own thread and copies
        the WAL into the database while writes go on. The frames committed meanwhile keep the
        WAL from starting over, so it would only grow: once that checkpoint is done, writes are
        held while the flusher checkpoints those few frames too.
        """
        checkpoints = self.checkpoints
        if checkpoints is None or checkpoints.running:
            return
        finished, error = checkpoints.finished()
        if finished:
            self._checkpoint_failed(error)
            if self._batches_since_checkpoint:
                self._catch_up = True
        elif self._batches_since_checkpoint >= CHECKPOINT_EVERY and not self._closing:
            self._batches_since_checkpoint = 0
            checkpoints.start()

    async def _checkpoint(self) -> None:
        """Checkpoint the WAL on the worker thread, where waiting for the disk holds nobody."""
        self._batches_since_checkpoint = 0
        try:
            await self.worker.run(checkpoint)
        except sqlite3.Error as error:
            self._checkpoint_failed(error)

    def _checkpoint_failed(self, error: sqlite3.Error | None) -> None:
        # The WAL only grows until a later checkpoint succeeds; the data is safe either way.
        if error is not None and not is_busy(error):  # busy: another one is checkpointing
            logger.warning("SQLite storage %r: WAL checkpoint failed: %s", self.path, error)
