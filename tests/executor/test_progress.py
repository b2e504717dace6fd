"""When a run's records are stored: before the next live work, and with the run's outcome."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyergon import Completed, Executor, Suspended, flow, flow_type, schedule_timer, step
from pyergon.clock import ManualClock
from pyergon.core import Invocation, InvocationStatus, OperationKind, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.errors import StorageError
from pyergon.serialization import default_serializer, stable_hash
from pyergon.storage._flows import save_records
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.records import record_at

STORAGE: dict[str, ExecutionLog] = {}
"""The storage each test's flow reads from inside its steps (flow fields must serialize)."""


class SaveLog(InMemoryExecutionLog):
    """Memory storage that keeps every ``apply`` call: positions and the flow's new status."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[list[int], object]] = []

    async def apply(self, change: Change) -> Applied:
        status = change.writes[0].changes.get("status") if change.writes else None
        self.saves.append(([record.sequence for record in change.records], status))
        return await super().apply(change)


@dataclass
@flow_type
class Checked:
    """Each step looks in storage for the record of the step before it."""

    seen: list[InvocationStatus | None] = field(default_factory=list, init=False, compare=False)

    @step
    async def first(self) -> int:
        return 1

    @step
    async def second(self, value: int) -> int:
        record = await record_at(STORAGE["checked"], "checked", 1)
        self.seen.append(None if record is None else record.status)
        return value + 1

    @flow
    async def run(self) -> int:
        return await self.second(await self.first())


async def test_a_step_record_is_stored_before_the_next_step_body_runs(
    storage: ExecutionLog,
) -> None:
    STORAGE["checked"] = storage
    flow_instance = Checked()

    outcome = await Executor(flow_instance, storage, "checked").run(lambda f: f.run())

    assert outcome == Completed("checked", result=2)
    assert flow_instance.seen == [InvocationStatus.COMPLETE]


@dataclass
@flow_type
class ThreeSteps:
    number: int

    @step
    async def one(self) -> int:
        return self.number + 1

    @step
    async def two(self, value: int) -> int:
        return value * 2

    @step
    async def three(self, value: int) -> int:
        return value - 1

    @flow
    async def run(self) -> int:
        return await self.three(await self.two(await self.one()))


async def test_the_last_step_record_and_the_completion_are_one_save() -> None:
    storage = SaveLog()

    outcome = await Executor(ThreeSteps(1), storage, "three").run(lambda f: f.run())

    assert outcome == Completed("three", result=3)
    assert storage.saves == [([1], None), ([2], None), ([3], TaskStatus.COMPLETE)]


async def test_a_three_step_flow_costs_four_sqlite_transactions(tmp_path: Path) -> None:
    async with SqliteExecutionLog(tmp_path / "flows.db") as storage:
        assert storage._file is not None  # the open file counts its group commits
        before = storage._file.batches_committed

        await Executor(ThreeSteps(1), storage, "three").run(lambda f: f.run())

        # The flow's row, the first two steps, then the last step with the completion.
        assert storage._file.batches_committed - before == 4


@dataclass
@flow_type
class Sleeper:
    @flow
    async def run(self) -> str:
        await schedule_timer(60)
        return "awake"


async def test_a_timer_is_stored_with_the_suspension_in_one_save() -> None:
    storage = SaveLog()
    clock = ManualClock()

    outcome = await Executor(Sleeper(), storage, "sleeper", clock=clock).run(lambda f: f.run())

    assert isinstance(outcome, Suspended)
    assert storage.saves == [([1], TaskStatus.SUSPENDED)]
    timer = await record_at(storage, "sleeper", 1)
    assert timer is not None and timer.status is InvocationStatus.WAITING_FOR_TIMER


@dataclass
@flow_type
class Overtaken:
    """Another run records step 1 while this run's step 1 body is still running."""

    second_inputs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def pick(self) -> str:
        theirs = Invocation(
            flow_id="overtaken",
            sequence=1,
            kind=OperationKind.STEP,
            name="pick",
            status=InvocationStatus.COMPLETE,
            result=default_serializer().dumps("theirs"),
            args_hash=stable_hash((), {}),
            attempts=1,
        )
        await save_records(STORAGE["overtaken"], [theirs])
        return "mine"

    @step
    async def use(self, value: str) -> str:
        self.second_inputs.append(value)
        return f"used {value}"

    @flow
    async def run(self) -> str:
        return await self.use(await self.pick())


async def test_a_run_overtaken_by_another_continues_from_the_stored_record(
    storage: ExecutionLog,
) -> None:
    STORAGE["overtaken"] = storage
    flow_instance = Overtaken()

    outcome = await Executor(flow_instance, storage, "overtaken").run(lambda f: f.run())

    assert outcome == Completed("overtaken", result="used theirs")
    assert flow_instance.second_inputs == ["theirs"]  # never ran on the value that lost
    stored = await storage.get_flow("overtaken")
    assert stored is not None and stored.status is TaskStatus.COMPLETE


class SignalsSaves(InMemoryExecutionLog):
    """Memory storage that sets an event for each position once a change stores it."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[int, asyncio.Event] = {}

    async def apply(self, change: Change) -> Applied:
        saved = await super().apply(change)
        for record in saved.records:
            self.stored.setdefault(record.sequence, asyncio.Event()).set()
        return saved


@dataclass
@flow_type
class SlowAndQuick:
    slow_release: asyncio.Event = field(default_factory=asyncio.Event, init=False, compare=False)

    @step
    async def slow(self) -> str:
        await self.slow_release.wait()
        return "slow"

    @step
    async def quick(self) -> str:
        return "quick"

    @flow
    async def run(self) -> list[str]:
        return list(await asyncio.gather(self.slow(), self.quick()))


async def test_a_gathered_step_is_stored_while_its_sibling_still_runs() -> None:
    storage = SignalsSaves()
    storage.stored[2] = asyncio.Event()
    flow_instance = SlowAndQuick()
    run = asyncio.create_task(Executor(flow_instance, storage, "gathered").run(lambda f: f.run()))

    await asyncio.wait_for(storage.stored[2].wait(), 10)

    assert not run.done()  # the slow step still runs, yet the quick one's record is stored
    quick = await record_at(storage, "gathered", 2)
    assert quick is not None and quick.status is InvocationStatus.COMPLETE
    flow_instance.slow_release.set()
    assert await run == Completed("gathered", result=["slow", "quick"])


class RefusesSaves(InMemoryExecutionLog):
    """Memory storage whose changes with records fail while ``down``."""

    down = True

    async def apply(self, change: Change) -> Applied:
        if self.down and change.records:
            raise StorageError("the storage went away")
        return await super().apply(change)


async def test_a_failed_save_ends_the_run_with_the_storage_error_and_the_flow_resumable() -> None:
    storage = RefusesSaves()

    with pytest.raises(StorageError, match="went away"):
        await Executor(ThreeSteps(1), storage, "refused").run(lambda f: f.run())

    stored = await storage.get_flow("refused")
    assert stored is not None and stored.status is TaskStatus.RUNNING  # not failed for good
    assert await storage.load_invocations("refused") == []
    storage.down = False
    outcome = await Executor(ThreeSteps(1), storage, "refused").run(lambda f: f.run())
    assert outcome == Completed("refused", result=3)


class HeldSaves(InMemoryExecutionLog):
    """Memory storage whose changes with records wait for ``release`` once ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.saving = asyncio.Event()
        self.release = asyncio.Event()

    async def apply(self, change: Change) -> Applied:
        if self.hold and change.records:
            self.saving.set()
            await self.release.wait()
        return await super().apply(change)


@dataclass
@flow_type
class FanOut:
    bodies: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def base(self) -> int:
        self.bodies.append("base")
        return 41

    @step
    async def left(self, value: int) -> int:
        self.bodies.append("left")
        return value + 1

    @step
    async def right(self, value: int) -> int:
        self.bodies.append("right")
        return value + 2

    @flow
    async def run(self) -> list[int]:
        value = await self.base()
        return list(await asyncio.gather(self.left(value), self.right(value)))


async def test_no_gathered_step_runs_while_the_result_it_uses_is_still_being_saved() -> None:
    storage = HeldSaves()
    storage.hold = True
    flow_instance = FanOut()
    run = asyncio.create_task(Executor(flow_instance, storage, "fan").run(lambda f: f.run()))

    await asyncio.wait_for(storage.saving.wait(), 10)  # the base step's record is being saved
    for _ in range(20):  # many passes of the loop: neither sibling may start meanwhile
        await asyncio.sleep(0)

    assert flow_instance.bodies == ["base"]
    storage.hold = False
    storage.release.set()
    assert await run == Completed("fan", result=[42, 43])
    assert sorted(flow_instance.bodies) == ["base", "left", "right"]
