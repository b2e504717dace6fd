"""Artifacts shared by forks and reruns, and released by gc, delete and prune."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pyergon import Executor, Scheduler, await_external_signal, flow, flow_type, step
from pyergon._artifact_gc import GcReport, collect_artifacts
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, Completed, TaskStatus
from pyergon.errors import ArtifactError, FlowNotFoundError, FlowStateError
from pyergon.management import FlowManager
from pyergon.serialization._artifact_store import Writer
from pyergon.serialization.artifacts import LocalArtifactStore
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from pyergon.testing import make_flow
from tests.conftest import (
    _ThrowawayPostgres,
    _ThrowawayRedis,
    require_postgres,
    require_redis,
)


@dataclass
@flow_type
class Text:
    seed: str

    @step
    async def load(self) -> bytes:
        return (self.seed * 2_000).encode()

    @step
    async def double(self, data: bytes) -> bytes:
        return data + data

    @flow
    async def run(self) -> int:
        return len(await self.double(await self.load()))


@dataclass
@flow_type
class Waiting:
    seed: str

    @step
    async def load(self) -> bytes:
        return (self.seed * 2_000).encode()

    @flow
    async def run(self) -> int:
        data = await self.load()
        await await_external_signal("go")
        return len(data)


def small_store(root: Path, store_class: type[LocalArtifactStore] = LocalArtifactStore) -> Any:
    """An artifact store that keeps values over 1 kB apart, so tests stay small."""
    return store_class(root, threshold=1_024)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def kept_apart(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExecutionLog]:
    """A backend whose large values go to an artifact directory in ``tmp_path``."""
    store = small_store(tmp_path / "artifacts")
    storage: ExecutionLog
    if request.param == "sqlite":
        storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    elif request.param == "postgres":
        dsn = await require_postgres()
        storage = _ThrowawayPostgres(
            dsn, schema=f"pyergon_test_{uuid.uuid4().hex[:12]}", artifacts=store
        )
    else:
        url = await require_redis()
        storage = _ThrowawayRedis(
            url, prefix=f"pyergon-test-{uuid.uuid4().hex[:12]}", artifacts=store
        )
    await storage.connect()
    yield storage
    await storage.close()


def names(storage: ExecutionLog) -> set[str]:
    store = storage.artifacts  # type: ignore[attr-defined]
    assert store is not None
    return {artifact.hex for artifact in store.list()}


async def run_text(storage: ExecutionLog, flow_id: str, seed: str) -> None:
    outcome = await Executor(Text(seed), storage, flow_id).run(lambda text: text.run())
    assert isinstance(outcome, Completed) and outcome.result == 4_000 * len(seed)


async def run_waiting(storage: ExecutionLog, flow_id: str, seed: str) -> object:
    return await Executor(Waiting(seed), storage, flow_id).run(lambda waiting: waiting.run())


def age(storage: ExecutionLog, seconds: float) -> None:
    """Make every artifact look written ``seconds`` ago."""
    store = storage.artifacts  # type: ignore[attr-defined]
    past = time.time() - seconds
    for artifact in store.list():
        os.utime(artifact.path, (past, past))


# -- gc ------------------------------------------------------------------------------------------


async def test_gc_removes_unnamed_artifacts_and_keeps_named_ones(kept_apart: ExecutionLog) -> None:
    await run_text(kept_apart, "keep", "a")
    kept = names(kept_apart)
    await run_text(kept_apart, "drop", "b")
    assert len(kept) == 2 and len(names(kept_apart)) == 4
    await kept_apart.delete_flow("drop")  # its records go; its artifacts stay behind
    manager = FlowManager(kept_apart)

    fresh = await manager.gc()
    assert (fresh.removed, fresh.kept, fresh.too_recent) == (0, 2, 2)  # within the grace

    age(kept_apart, 600)
    report = await manager.gc()
    assert (report.removed, report.kept, report.too_recent) == (2, 2, 0)
    assert report.removed_bytes == report.kept_bytes > 6_000  # two pickles of 2 and 4 kB
    assert names(kept_apart) == kept
    assert await manager.value("keep", "double") == b"a" * 4_000
    assert str(report) == "removed 2 artifacts (6.0 kB); kept 2 in use (6.0 kB)"


async def test_gc_dry_run_removes_nothing(tmp_path: Path) -> None:
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=small_store(tmp_path / "a"))
    async with storage:
        await run_text(storage, "drop", "b")
        await storage.delete_flow("drop")
        before = names(storage)
        report = await FlowManager(storage).gc(dry_run=True, older_than=0)
        assert (report.removed, report.dry_run) == (2, True)
        assert str(report).startswith("would remove 2 artifacts")
        assert names(storage) == before
        assert (await FlowManager(storage).gc(older_than=timedelta(0))).removed == 2
        assert names(storage) == set()


async def test_gc_removes_old_leftovers_of_interrupted_writes(tmp_path: Path) -> None:
    store = small_store(tmp_path / "a")
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    async with storage:
        leftovers = tmp_path / "a" / "tmp"
        leftovers.mkdir(parents=True)
        (leftovers / "old").write_bytes(b"half")
        (leftovers / "new").write_bytes(b"half")
        os.utime(leftovers / "old", (time.time() - 600, time.time() - 600))
        report = await collect_artifacts(storage)
        assert (report.removed, report.too_recent) == (1, 1)
        assert [path.name for path in leftovers.iterdir()] == ["new"]


async def test_gc_on_a_storage_without_artifacts_says_so() -> None:
    report = await FlowManager(InMemoryExecutionLog()).gc()
    assert report == GcReport(has_store=False)
    assert "keeps no artifacts" in str(report)
    assert "keeps no artifacts" in report._repr_html_()


async def test_gc_refuses_a_negative_grace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="older_than must be 0 seconds or more"):
        await FlowManager(InMemoryExecutionLog()).gc(older_than=-1)


# -- a gc while a worker writes ------------------------------------------------------------------


@dataclass
@flow_type
class Arrays:
    size: int

    @step
    async def make(self) -> np.ndarray:
        return np.arange(self.size, dtype=np.float64)

    @flow
    async def run(self) -> float:
        return float((await self.make()).sum())


class PausingStore(LocalArtifactStore):
    """Holds the writing thread after each write, between the artifact and its record."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, threshold=1_024)
        self.written = threading.Event()
        self.go = threading.Event()

    def write(self, writer: Writer) -> tuple[str, int]:
        written = super().write(writer)
        self.written.set()
        assert self.go.wait(timeout=30), "the test never let the write go on"
        return written


async def test_gc_while_a_step_writes_its_artifact_keeps_it(tmp_path: Path) -> None:
    store = PausingStore(tmp_path / "a")
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    async with storage:
        running = asyncio.create_task(
            Executor(Arrays(4_000), storage, "arrays").run(lambda arrays: arrays.run())
        )
        await asyncio.to_thread(store.written.wait, 30)
        # The artifact is written and no record names it yet: the race gc must survive.
        assert len(names(storage)) == 1 and await storage.artifact_references() == set()
        without_grace = await collect_artifacts(storage, older_than=0, dry_run=True)
        assert without_grace.removed == 1  # what the grace period protects against
        report = await collect_artifacts(storage)
        assert (report.removed, report.too_recent) == (0, 1)
        store.go.set()
        outcome = await running
        assert isinstance(outcome, Completed) and outcome.result == sum(range(4_000))
        after = await collect_artifacts(storage, older_than=0)
        assert (after.removed, after.kept) == (0, 1)
        assert len(await FlowManager(storage).value("arrays", "make")) == 4_000


# -- forks and reruns share artifacts -----------------------------------------------------------


@dataclass
@flow_type
class Frame:
    rows: int

    @step
    async def make(self) -> pd.DataFrame:
        values = np.arange(self.rows)
        return pd.DataFrame({"n": values, "third": values / 3, "half": values / 2})

    @step
    async def total(self, frame: pd.DataFrame) -> float:
        return float(frame["third"].sum())

    @flow
    async def run(self) -> float:
        return await self.total(await self.make())


def database_bytes(path: Path) -> int:
    return sum(os.path.getsize(f) for f in (path, Path(f"{path}-wal")) if os.path.exists(f))


async def test_a_fork_of_a_5_mb_frame_adds_no_file_and_a_rerun_keeps_the_earlier_one(
    tmp_path: Path,
) -> None:
    database = tmp_path / "flows.db"
    async with SqliteExecutionLog(database) as storage:  # flows.artifacts/ beside it
        await Executor(Frame(220_000), storage, "frame").run(lambda frame: frame.run())
        frames = names(storage)
        assert len(frames) == 1
        before = database_bytes(database)
        manager = FlowManager(storage)
        fork_id = await manager.fork("frame", from_step=1)
        assert names(storage) == frames
        assert database_bytes(database) - before < 1_000_000
        assert (await storage.load_invocations(fork_id))[0].result == (
            await storage.load_invocations("frame")
        )[0].result

        await manager.rerun("frame", from_step=2)
        outcome = await Executor(Frame(220_000), storage, "frame").run(lambda frame: frame.run())
        assert isinstance(outcome, Completed)
        assert names(storage) == frames
        assert (await collect_artifacts(storage, older_than=0)).kept == 1
        assert len(await manager.value("frame", "make")) == 220_000


# -- delete --------------------------------------------------------------------------------------


async def test_delete_releases_what_only_the_flow_named(kept_apart: ExecutionLog) -> None:
    await run_text(kept_apart, "original", "a")
    manager = FlowManager(kept_apart)
    await manager.fork("original", from_step=1, new_flow_id="fork")  # shares step 1
    shared = {record.result for record in await kept_apart.load_invocations("fork")}
    report = await manager.delete("original", grace=0)
    assert report.flows == ("original",)
    assert (report.removed, report.kept) == (1, 1)
    assert await kept_apart.get_flow("original") is None
    assert await kept_apart.load_invocations("original") == []
    assert {record.result for record in await kept_apart.load_invocations("fork")} == shared
    assert len(names(kept_apart)) == 1
    last = await manager.delete("fork", grace=0)
    assert (last.removed, last.kept, last.flows) == (1, 0, ("fork",))
    assert names(kept_apart) == set()


async def test_delete_refuses_a_running_flow_and_deletes_children(storage: ExecutionLog) -> None:
    manager = FlowManager(storage)
    with pytest.raises(FlowNotFoundError):
        await manager.delete("nope")
    flow_id = await Scheduler(storage).schedule(Text("a"), flow_id="busy")
    await storage.claim(ClaimRequest("w", ["Text"], limit=1, lease_seconds=30, now=time.time()))
    with pytest.raises(FlowStateError, match="'busy' is running; cancel it"):
        await manager.delete(flow_id)
    assert await storage.get_flow(flow_id) is not None

    await storage.create_flow(make_flow("parent", status=TaskStatus.COMPLETE))
    await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="1"))
    await storage.create_flow(make_flow("grandchild", parent_flow_id="child", parent_sequence="1"))
    report = await manager.delete("parent")
    assert report.flows == ("grandchild", "child", "parent")
    assert [flow.flow_id for flow in await storage.list_flows()] == ["busy"]


# -- prune ---------------------------------------------------------------------------------------


async def test_prune_deletes_old_finished_flows_and_their_artifacts(tmp_path: Path) -> None:
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=small_store(tmp_path / "a"))
    async with storage:
        await run_text(storage, "done", "a")
        await run_waiting(storage, "waiting", "w")
        later = FlowManager(storage, clock=ManualClock(time.time() + 1_000))
        assert (await later.prune(5_000)).flows == ()
        planned = await later.prune(timedelta(seconds=500), dry_run=True, grace=0)
        assert planned.flows == ("done",) and planned.removed == 2
        assert str(planned).startswith("would delete 1 flow; would remove 2 artifacts")
        assert len(names(storage)) == 3 and await storage.get_flow("done") is not None
        assert (await later.prune(500, flow_type="Waiting")).flows == ()

        report = await later.prune(500, grace=0)
        assert (report.flows, report.removed) == (("done",), 2)
        assert [flow.flow_id for flow in await storage.list_flows()] == ["waiting"]
        assert len(names(storage)) == 1
        with pytest.raises(ValueError, match="leave RUNNING out"):
            await later.prune(500, statuses=[TaskStatus.RUNNING])


async def test_gc_refuses_a_store_another_log_keeps_artifacts_in(tmp_path: Path) -> None:
    # flows.db and flows.sqlite both keep theirs in flows.artifacts/ by default.
    first = SqliteExecutionLog(tmp_path / "flows.db")
    second = SqliteExecutionLog(tmp_path / "flows.sqlite")
    await first.connect()
    await second.connect()
    try:
        await Executor(Arrays(300_000), first, "first").run(lambda f: f.run())
        await Executor(Arrays(200_000), second, "second").run(lambda f: f.run())
        assert first.artifacts is not None
        files = sorted(item.hex for item in first.artifacts.list())

        with pytest.raises(ArtifactError, match=r"shared with other logs \(SqliteExecutionLog"):
            await FlowManager(second).gc(older_than=0)

        assert sorted(item.hex for item in first.artifacts.list()) == files
        assert (await FlowManager(first).value("first", 1)) is not None
    finally:
        await first.close()
        await second.close()


async def test_logs_of_one_file_name_in_two_directories_are_two_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    logs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        storage = SqliteExecutionLog("flows.db", artifacts=shared)  # the same relative path
        await storage.connect()
        logs.append(storage)
        await Executor(Arrays(300_000 if name == "a" else 200_000), storage, name).run(
            lambda f: f.run()
        )
    first, second = logs
    try:
        with pytest.raises(ArtifactError, match="shared with other logs"):
            await FlowManager(first).gc(older_than=0)

        report = await FlowManager(first).delete("a", grace=0)  # the flow goes, files stay

        assert report.flows == ("a",) and report.removed == 0
        assert "no artifact removed: the store is shared with" in str(report)
        assert await first.get_flow("a") is None
        assert (await FlowManager(second).value("b", 1)) is not None
    finally:
        for storage in logs:
            await storage.close()
