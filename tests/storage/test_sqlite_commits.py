"""SQLite's group commit, locks, checkpoints, and wake-ups from other processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

import pyergon.storage.sqlite as sqlite_module
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.errors import StorageError
from pyergon.storage import _sqlite_connections as sqlite_connections
from pyergon.storage import _sqlite_file as sqlite_file
from pyergon.storage._sqlite_connections import checkpoint
from pyergon.storage._sqlite_file import SqliteFile
from pyergon.storage.sqlite import SqliteExecutionLog

from .conftest import FlowFactory, InvocationFactory


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


@pytest.fixture
async def sqlite(path: Path) -> AsyncIterator[SqliteExecutionLog]:
    async with SqliteExecutionLog(path) as storage:
        yield storage


@pytest.fixture
async def threaded() -> AsyncIterator[SqliteExecutionLog]:
    """In-memory storage: it commits on the worker thread only, where a gate can hold it."""
    storage = await SqliteExecutionLog.in_memory()
    try:
        yield storage
    finally:
        await storage.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, to look at or tamper with a file behind pyergon's back."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def file(storage: SqliteExecutionLog) -> SqliteFile:
    """The open file of ``storage``, whose batches the tests count and stage."""
    assert storage._file is not None
    return storage._file


async def record(storage: SqliteExecutionLog, invocation: Invocation) -> Invocation:
    """Store one record through ``apply`` and return it as stored."""
    (stored,) = (await storage.apply(Change(records=(invocation,)))).records
    return stored


class WorkerGate:
    """A write that holds the worker thread until released, to stage batches."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self, _connection: sqlite3.Connection) -> str:
        self.entered.set()
        self.released.wait(timeout=30)
        return "held"


# -- group commit ----------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    before = file(sqlite).batches_committed

    await asyncio.gather(*(record(sqlite, make_invocation(n)) for n in range(100)))

    assert file(sqlite).batches_committed - before < 10
    assert len(await sqlite.load_invocations("flow-1")) == 100


async def test_a_lone_write_commits_without_waiting_for_a_pass_of_the_loop(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    passes: list[str] = []
    asyncio.get_running_loop().call_soon(passes.append, "a pass of the loop")

    stored = await record(sqlite, make_invocation(1))

    assert stored == make_invocation(1)
    assert passes == []
    async with SqliteExecutionLog(sqlite.path) as other:  # committed, not only written
        assert await other.load_invocations("flow-1") == [stored]


async def test_writers_seen_together_share_every_transaction_after_the_first(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    await asyncio.gather(*(record(sqlite, make_invocation(n)) for n in range(50)))
    before = file(sqlite).batches_committed

    await asyncio.gather(*(record(sqlite, make_invocation(n)) for n in range(50, 100)))

    assert file(sqlite).batches_committed - before == 1
    assert len(await sqlite.load_invocations("flow-1")) == 100


async def test_writes_made_during_a_commit_form_the_next_batch(
    threaded: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    gate = WorkerGate()
    before = file(threaded).batches_committed
    held = asyncio.create_task(file(threaded).write(gate.hold))
    try:
        await asyncio.to_thread(gate.entered.wait, 30)
        writes = [asyncio.create_task(record(threaded, make_invocation(n))) for n in range(50)]
        await asyncio.sleep(0)  # one pass of the loop: every write queues itself
        assert len(file(threaded).pending) == 50
    finally:
        gate.released.set()

    assert await held == "held"
    await asyncio.gather(*writes)
    assert file(threaded).batches_committed - before == 2


async def test_a_write_cancelled_before_its_batch_is_not_made(
    threaded: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    gate = WorkerGate()
    held = asyncio.create_task(file(threaded).write(gate.hold))
    try:
        await asyncio.to_thread(gate.entered.wait, 30)
        cancelled = asyncio.create_task(record(threaded, make_invocation(1)))
        kept = asyncio.create_task(record(threaded, make_invocation(2)))
        await asyncio.sleep(0)  # both writes queue themselves
        cancelled.cancel()
    finally:
        gate.released.set()

    await held
    await kept
    assert cancelled.cancelled()
    assert [i.sequence for i in await threaded.load_invocations("flow-1")] == [2]


def insert_then_fail(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO signals VALUES ('flow-1', 'partial', x'00', 1.0)")
    raise RuntimeError("the operation broke after writing")


def insert_then_break_sql(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO signals VALUES ('flow-1', 'partial', x'00', 1.0)")
    connection.execute("INSERT INTO no_such_table VALUES (1)")


@pytest.mark.parametrize(
    ("operation", "error", "message"),
    [
        (insert_then_fail, RuntimeError, "broke after writing"),
        (insert_then_break_sql, StorageError, "no such table"),
    ],
)
async def test_a_failing_write_does_not_lose_the_rest_of_its_batch(
    sqlite: SqliteExecutionLog,
    make_invocation: InvocationFactory,
    operation: Callable[[sqlite3.Connection], None],
    error: type[Exception],
    message: str,
) -> None:
    file(sqlite).writers_alone = False  # as under load: every write of the pass joins one batch
    before = file(sqlite).batches_committed
    writes: list[Awaitable[object]] = [record(sqlite, make_invocation(n)) for n in range(10)]
    writes.insert(5, file(sqlite).write(operation))

    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    failure = outcomes.pop(5)
    assert isinstance(failure, error)
    assert message in str(failure)
    assert outcomes == [make_invocation(n) for n in range(10)]
    assert file(sqlite).batches_committed - before == 1
    assert await sqlite.list_signals("flow-1") == []  # its own write was rolled back
    assert len(await sqlite.load_invocations("flow-1")) == 10


async def test_a_batch_whose_transaction_fails_fails_every_write_in_it(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    def end_the_transaction(connection: sqlite3.Connection) -> None:
        connection.execute("ROLLBACK")

    file(sqlite).writers_alone = False  # as under load: every write of the pass joins one batch
    writes: list[Awaitable[object]] = [record(sqlite, make_invocation(n)) for n in range(5)]
    writes.append(file(sqlite).write(end_the_transaction))

    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    assert all(isinstance(outcome, StorageError) for outcome in outcomes)
    assert await sqlite.load_invocations("flow-1") == []
    assert await record(sqlite, make_invocation(1)) == make_invocation(1)


async def test_a_write_lock_held_too_long_is_a_clear_error(
    path: Path, make_flow: FlowFactory
) -> None:
    async with SqliteExecutionLog(path, busy_timeout=0.05) as storage:
        with raw(path) as other_process:
            other_process.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageError, match="busy_timeout"):
                await storage.create_flow(make_flow())
            other_process.execute("ROLLBACK")
        assert await storage.create_flow(make_flow()) == (make_flow(), True)


async def test_a_write_waits_for_another_connections_write_lock(
    sqlite: SqliteExecutionLog, path: Path, make_flow: FlowFactory
) -> None:
    with raw(path) as other_process:
        other_process.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(sqlite.create_flow(make_flow()))
        await asyncio.sleep(0.05)
        assert not write.done()  # waiting for the lock on the worker thread, not failed
        other_process.execute("ROLLBACK")

    assert await write == (make_flow(), True)
    assert await sqlite.get_flow("flow-1") == make_flow()


async def test_the_wal_is_checkpointed_while_the_storage_is_open(
    sqlite: SqliteExecutionLog,
    path: Path,
    make_invocation: InvocationFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copied = threading.Event()
    go_on = threading.Event()

    def checkpoint_then_wait(connection: sqlite3.Connection) -> None:
        checkpoint(connection)
        copied.set()
        go_on.wait(10)  # writes made now are not in the copy

    monkeypatch.setattr(sqlite_connections, "checkpoint", checkpoint_then_wait)
    every = sqlite_file.CHECKPOINT_EVERY
    for sequence in range(every):  # one batch each, so one or more WAL frames each
        await record(sqlite, make_invocation(sequence))
    checkpoints = file(sqlite).checkpoints
    assert checkpoints is not None and checkpoints.running  # started by the last write
    await asyncio.to_thread(copied.wait, 10)
    committed = file(sqlite).batches_committed
    for sequence in range(every, every + 10):
        await record(sqlite, make_invocation(sequence))
    assert file(sqlite).batches_committed == committed + 10
    assert checkpoints.running  # so those writes did not wait for it
    go_on.set()
    await checkpoints.wait()
    for sequence in range(every + 10, every + 13):
        # The first sees the checkpoint done and holds writes, the second waits for the
        # checkpoint of the frames written meanwhile, the third starts the WAL over.
        await record(sqlite, make_invocation(sequence))

    with raw(path) as other_process:
        busy, frames, copied_frames = other_process.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
    assert 0 <= frames < 10, (busy, frames, copied_frames)  # the last write only
    assert len(await sqlite.load_invocations("flow-1")) == every + 13


async def test_a_large_change_is_stored_whole(
    sqlite: SqliteExecutionLog,
    path: Path,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
) -> None:
    await sqlite.create_flow(make_flow())
    large = make_invocation(status=InvocationStatus.COMPLETE, result=os.urandom(3 << 20))
    result = os.urandom(2 << 20)
    change = Change(
        records=(large,),
        writes=(FlowWrite("flow-1", {"status": TaskStatus.COMPLETE, "result": result}),),
    )
    assert change.payload_size >= sqlite_file.LARGE_WRITE  # committed on the worker thread

    assert (await sqlite.apply(change)).records == [large]
    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.load_invocations("flow-1") == [large]
        assert await reopened.get_flow("flow-1") == make_flow(
            status=TaskStatus.COMPLETE, result=result, version=2
        )


# -- a change refused inside a batch ---------------------------------------------------------


async def test_a_stale_guard_in_a_batch_refuses_only_its_own_change(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    for flow_id in ("flow-1", "flow-2", "flow-3"):
        await sqlite.create_flow(make_flow(flow_id))
    file(sqlite).writers_alone = False  # as under load: every write of the pass joins one batch
    before = file(sqlite).batches_committed

    def attempt(flow_id: str, version: int, sequence: int) -> Change:
        return Change(
            records=(make_invocation(sequence, flow_id=flow_id),),
            writes=(FlowWrite(flow_id, {"attempt": 2}, expected_version=version),),
        )

    outcomes = await asyncio.gather(
        sqlite.apply(attempt("flow-1", 1, 1)),
        sqlite.apply(attempt("flow-2", 7, 1)),  # decided on a copy that moved on
        sqlite.apply(attempt("flow-3", 1, 1)),
        sqlite.apply(attempt("flow-1", 1, 2)),  # the first change of the batch moved it
    )

    assert [outcome.moved for outcome in outcomes] == [None, "flow-2", None, "flow-1"]
    assert file(sqlite).batches_committed - before == 1
    assert await sqlite.get_flow("flow-1") == make_flow(attempt=2, version=2)
    assert await sqlite.get_flow("flow-2") == make_flow("flow-2")
    assert await sqlite.get_flow("flow-3") == make_flow("flow-3", attempt=2, version=2)
    assert await sqlite.load_invocations("flow-1") == [make_invocation(1)]
    assert await sqlite.load_invocations("flow-2") == []  # nothing of a refused change


async def test_a_record_conflict_in_a_batch_stops_only_its_own_change(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await sqlite.create_flow(make_flow())
    first = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"first")
    await record(sqlite, first)
    file(sqlite).writers_alone = False
    before = file(sqlite).batches_committed
    done = FlowWrite("flow-1", {"status": TaskStatus.COMPLETE})

    conflicting, other = await asyncio.gather(
        sqlite.apply(
            Change(
                records=(first.replace(result=b"second"), make_invocation(2)),
                writes=(done,),
            )
        ),
        sqlite.apply(Change(records=(make_invocation(3),))),
    )

    assert conflicting.record_conflict and conflicting.records == [first]
    assert other.complete
    assert file(sqlite).batches_committed - before == 1
    assert await sqlite.load_invocations("flow-1") == [first, make_invocation(3)]
    assert await sqlite.get_flow("flow-1") == make_flow()


async def test_work_stored_by_another_process_wakes_a_waiting_worker(
    sqlite: SqliteExecutionLog, path: Path
) -> None:
    assert await sqlite.wait_for_work(0.01) is False  # nothing new yet
    script = textwrap.dedent(
        f"""
        import asyncio
        from pyergon.core.records import ScheduledFlow
        from pyergon.core.status import TaskStatus
        from pyergon.storage.sqlite import SqliteExecutionLog

        async def main():
            async with SqliteExecutionLog({str(path)!r}) as storage:
                await storage.create_flow(ScheduledFlow(
                    "from-elsewhere", "T", b"", TaskStatus.PENDING, 1.0, 1.0))

        asyncio.run(main())
        """
    )
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(sqlite.wait_for_work(30.0))
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await process.wait() == 0
    written_at = loop.time()
    assert await asyncio.wait_for(waiting, 30.0) is True
    # Woken by the other process's commit through the short poll, far before the timeout.
    assert loop.time() - written_at < 5.0
    flow = await sqlite.get_flow("from-elsewhere")
    assert flow is not None and flow.status is TaskStatus.PENDING


async def test_checkpoints_reach_the_file_opened_after_the_working_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_invocation: InvocationFactory
) -> None:
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with SqliteExecutionLog("flows.db") as storage:
        monkeypatch.chdir(elsewhere)
        for sequence in range(sqlite_file.CHECKPOINT_EVERY):
            await record(storage, make_invocation(sequence))
        checkpoints = file(storage).checkpoints
        assert checkpoints is not None
        await checkpoints.wait()
        _, error = checkpoints.finished()

    assert error is None
    assert not (elsewhere / "flows.db").exists()


_COMMIT_ELSEWHERE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA synchronous = FULL")  # sqlite3's default: a sync before publishing
connection.execute("INSERT INTO pyergon_meta (key, value) VALUES (?, 1)", (sys.argv[2],))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_other_processes_commits_wake_a_worker_through_the_wal_watch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the safeguard check an hour apart, only the watch can wake the waiter in time.
    monkeypatch.setattr(sqlite_module, "_WATCHED_CHECK", 3600.0)
    async with SqliteExecutionLog(path) as storage:
        assert storage._wal_writes is not None
        assert await storage.wait_for_work(0.01) is False
        for number in range(10):
            waiting = asyncio.create_task(storage.wait_for_work(3600.0))
            await asyncio.sleep(0)  # the waiter takes its first look, then listens
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _COMMIT_ELSEWHERE, str(path), f"elsewhere-{number}"
            )
            assert await writer.wait() == 0
            assert await asyncio.wait_for(waiting, 30.0) is True


async def test_without_a_watch_other_commits_are_polled_for(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "watch_writes", lambda _path: None)
    async with SqliteExecutionLog(path) as storage:
        assert storage._wal_writes is None
        assert await storage.wait_for_work(0.01) is False
        waiting = asyncio.create_task(storage.wait_for_work(3600.0))
        await asyncio.sleep(0)
        with raw(path) as other:
            other.execute("INSERT INTO pyergon_meta (key, value) VALUES ('written-elsewhere', 1)")
        assert await asyncio.wait_for(waiting, 30.0) is True
