"""Artifacts that go missing, cannot be written, or are cut by a crash: flows are not failed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyergon import (
    Completed,
    Executor,
    Scheduler,
    Suspended,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    send_signal,
    step,
)
from pyergon.core import TaskStatus
from pyergon.errors import ArtifactError
from pyergon.serialization.artifacts import LocalArtifactStore
from pyergon.storage.sqlite import SqliteExecutionLog

np = pytest.importorskip("numpy")

calls: list[str] = []
"""The step bodies that ran, in order."""

ROWS = 300_000  # 2.4 MB of int64: an npy artifact


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


@dataclass
@flow_type(name="ArtifactTrouble")
class Staged:
    name: str

    @step
    async def load(self) -> Any:
        calls.append("load")
        return np.arange(ROWS, dtype="int64")

    @step
    async def finish(self, data: Any, go: str) -> int:
        calls.append("finish")
        return int(data.sum()) + len(go)

    @flow
    async def run(self) -> int:
        data = await self.load()
        go = await await_external_signal("go")
        return await self.finish(data, go)


EXPECTED = ROWS * (ROWS - 1) // 2 + 2


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteExecutionLog]:
    """A SQLite file whose artifacts are in ``flows.artifacts/`` beside it."""
    opened = SqliteExecutionLog(tmp_path / "flows.db")
    await opened.connect()
    try:
        yield opened
    finally:
        await opened.close()


def only_artifact(storage: SqliteExecutionLog) -> str:
    assert storage.artifacts is not None
    [artifact] = storage.artifacts.list()
    return artifact.path


async def test_a_missing_artifact_on_replay_names_the_flow_the_step_and_the_path(
    storage: SqliteExecutionLog, tmp_path: Path
) -> None:
    first = await Executor(Staged("a"), storage, "lost-1").run(Staged.run)
    assert isinstance(first, Suspended)
    path = only_artifact(storage)
    shutil.move(path, tmp_path / "aside")
    await send_signal(storage, "lost-1", "go", "go")

    with pytest.raises(ArtifactError) as caught:
        await Executor(Staged("a"), storage, "lost-1").run(Staged.run)

    message = str(caught.value)
    assert "'lost-1'" in message
    assert "'load'" in message
    assert path in message
    assert "is missing" in message
    stored = await storage.get_flow("lost-1")
    assert stored is not None and stored.status is not TaskStatus.FAILED

    shutil.move(tmp_path / "aside", path)
    outcome = await Executor(Staged("a"), storage, "lost-1").run(Staged.run)
    assert outcome == Completed("lost-1", result=EXPECTED)
    assert calls == ["load", "finish"]


async def test_a_worker_gives_back_a_flow_whose_artifact_is_missing_and_runs_it_once_restored(
    storage: SqliteExecutionLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(storage)
    flow_id = await scheduler.schedule(Staged("w"))
    worker = Worker(storage, "w-artifacts")
    worker.register(Staged)
    assert await worker.run_until_idle(wait_for_timers=False) == 0  # waits for its signal
    path = only_artifact(storage)
    shutil.move(path, tmp_path / "aside")
    await scheduler.signal(flow_id, "go", "go")

    assert await worker.run_until_idle(wait_for_timers=False) == 0

    stored = await storage.get_flow(flow_id)
    assert stored is not None
    assert stored.status is TaskStatus.SUSPENDED  # given back, not failed
    assert stored.wake_at is not None and stored.lease_owner is None
    logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(path in line and flow_id in line for line in logged), logged

    shutil.move(tmp_path / "aside", path)
    assert await worker.run_until_idle() == 1
    outcome = (await scheduler.wait(flow_id, timeout=10))[flow_id]
    assert outcome.result == EXPECTED
    assert calls == ["load", "finish"]


async def test_a_step_whose_artifact_cannot_be_written_runs_again_on_the_next_run(
    storage: SqliteExecutionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = storage.artifacts
    assert isinstance(store, LocalArtifactStore)
    write = store.write

    def refuse(writer: Any) -> tuple[str, int]:
        raise ArtifactError(f"cannot write an artifact to {store.root}: disk full")

    monkeypatch.setattr(store, "write", refuse)
    with pytest.raises(ArtifactError, match="disk full"):
        await Executor(Staged("b"), storage, "unwritten-1").run(Staged.run)
    stored = await storage.get_flow("unwritten-1")
    assert stored is not None and stored.status is not TaskStatus.FAILED
    assert [record.name for record in await storage.load_invocations("unwritten-1")] in (
        [],
        ["load"],
    )
    assert all(
        not record.status.is_final for record in await storage.load_invocations("unwritten-1")
    )

    monkeypatch.setattr(store, "write", write)
    first = await Executor(Staged("b"), storage, "unwritten-1").run(Staged.run)
    assert isinstance(first, Suspended)
    await send_signal(storage, "unwritten-1", "go", "go")
    outcome = await Executor(Staged("b"), storage, "unwritten-1").run(Staged.run)
    assert outcome == Completed("unwritten-1", result=EXPECTED)
    assert calls == ["load", "load", "finish"]


async def test_a_worker_leaves_a_flow_whose_artifact_cannot_be_written_not_failed(
    storage: SqliteExecutionLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = storage.artifacts
    assert isinstance(store, LocalArtifactStore)
    os.makedirs(store.root, exist_ok=True)
    os.rename(store.root, tmp_path / "moved")
    Path(store.root).write_text("in the way")  # noqa: ASYNC240 - a test's tmp_path
    scheduler = Scheduler(storage)
    flow_id = await scheduler.schedule(Staged("c"))
    worker = Worker(storage, "w-unwritable")
    worker.register(Staged)

    assert await worker.run_until_idle(wait_for_timers=False) == 0

    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status is TaskStatus.SUSPENDED
    assert any(store.root in record.getMessage() for record in caplog.records)
    os.unlink(store.root)
    assert await worker.run_until_idle(wait_for_timers=True) == 0  # runs, then waits for "go"
    await scheduler.signal(flow_id, "go", "go")
    assert await worker.run_until_idle() == 1
    assert (await scheduler.wait(flow_id, timeout=10))[flow_id].result == EXPECTED
    assert calls == ["load", "load", "finish"]


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from pyergon.serialization.artifacts import LocalArtifactStore

    store = LocalArtifactStore(sys.argv[1])

    def write(file):
        file.write(b"x" * (4 << 20))
        print("half written", flush=True)
        sys.stdin.read()  # blocks until killed

    store.write(write)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_process_killed_while_writing_an_artifact_leaves_nothing_under_a_digest(
    tmp_path: Path,
) -> None:
    root = tmp_path / "artifacts"
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == b"half written\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = LocalArtifactStore(root)
    found = [artifact.hex for artifact in store.list()]
    assert len(found) == 1 and found[0].startswith("tmp/"), found  # a leftover gc removes
    assert all(entry.name == "tmp" for entry in os.scandir(root))
    hex_digest, size = store.write(lambda file: file.write(b"x" * (4 << 20)))
    assert store.read(hex_digest, size) == b"x" * (4 << 20)
    assert store.remove(found[0])


@dataclass
@flow_type(name="ArtifactBigInput")
class BigInput:
    rows: list[int]

    @step
    async def count(self) -> int:
        calls.append("count")
        return len(self.rows)

    @flow
    async def run(self) -> int:
        return await self.count()


async def test_a_worker_gives_back_a_flow_whose_input_artifact_is_missing(
    storage: SqliteExecutionLog, tmp_path: Path
) -> None:
    scheduler = Scheduler(storage)
    flow_id = await scheduler.schedule(BigInput(list(range(300_000))))
    path = only_artifact(storage)
    shutil.move(path, tmp_path / "aside")
    worker = Worker(storage, "w-inputs")
    worker.register(BigInput)

    assert await worker.run_until_idle(wait_for_timers=False) == 0

    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status is not TaskStatus.FAILED
    assert stored.error is not None and "is missing" in stored.error.message  # shown meanwhile
    assert path in stored.error.message
    shutil.move(tmp_path / "aside", path)
    assert await worker.run_until_idle() == 1
    assert (await scheduler.wait(flow_id, timeout=10))[flow_id].result == 300_000
    done = await storage.get_flow(flow_id)
    assert done is not None and done.error is None


async def test_a_direct_run_that_meets_a_missing_artifact_leaves_the_flow_as_it_was(
    storage: SqliteExecutionLog, tmp_path: Path
) -> None:
    await Executor(Staged("d"), storage, "lost-2").run(Staged.run)
    shutil.move(only_artifact(storage), tmp_path / "aside")
    await send_signal(storage, "lost-2", "go", "go")
    before = await storage.get_flow("lost-2")
    assert before is not None and before.status is TaskStatus.PENDING  # woken by its signal

    with pytest.raises(ArtifactError):
        await Executor(Staged("d"), storage, "lost-2").run(Staged.run)

    stored = await storage.get_flow("lost-2")
    assert stored is not None
    assert stored.status is TaskStatus.PENDING  # not left RUNNING, held by a run that is over


async def test_a_new_flow_whose_artifact_cannot_be_written_is_left_pending(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-directory").write_text("in the way")
    broken = SqliteExecutionLog(tmp_path / "flows.db", artifacts=tmp_path / "not-a-directory")
    await broken.connect()
    try:
        with pytest.raises(ArtifactError, match="cannot be stored"):
            await Executor(Staged("n"), broken, "new").run(Staged.run)

        stored = await broken.get_flow("new")
        assert stored is not None
        assert stored.status is TaskStatus.PENDING  # for a later run: not RUNNING for ever
    finally:
        await broken.close()
