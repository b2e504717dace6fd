"""Child flow ids: a user's flow is never taken for another flow's child (issue 14, item 3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pyergon import Completed, Executor, Scheduler, Suspended, Worker, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import ScheduledFlow, TaskStatus
from pyergon.core.records import format_position
from pyergon.errors import FlowStateError, InvalidFlowIdError
from pyergon.executor import _child
from pyergon.executor.timer import schedule_timer
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog
from tests.records import record_at


@dataclass
@flow_type
class Pack:
    item: str
    wait_seconds: float = 0

    @step
    async def pack(self) -> str:
        return f"packed {self.item}"

    @flow
    async def run(self) -> str:
        if self.wait_seconds:
            await schedule_timer(self.wait_seconds)
        return await self.pack()


@dataclass
@flow_type
class Shipment:
    item: str
    wait_seconds: float = 0

    @flow
    async def run(self) -> str:
        return await self.invoke(Pack(self.item, self.wait_seconds)).result()


async def test_a_parent_does_not_adopt_a_user_flow_with_the_old_child_id_form(
    storage: ExecutionLog,
) -> None:
    await Scheduler(storage).schedule(Pack("someone else's parcel"), flow_id="ship/1")

    outcome = await Executor(Shipment("books"), storage, "ship").run(lambda f: f.run())

    assert outcome == Completed("ship", result="packed books")
    users = await storage.get_flow("ship/1")
    assert users is not None
    assert users.parent_flow_id is None
    assert users.status is TaskStatus.PENDING  # nobody ran it for the parent


async def test_a_worker_parent_does_not_adopt_a_user_flow(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Shipment)
    await worker.register(Pack)
    await scheduler.schedule(Pack("someone else's parcel"), flow_id="ship-w/1")
    await scheduler.schedule(Shipment("books"), flow_id="ship-w")

    await worker.run_until_idle()

    outcomes = await scheduler.wait(["ship-w", "ship-w/1"], timeout=10)
    assert outcomes["ship-w"].result == "packed books"
    assert outcomes["ship-w/1"].result == "packed someone else's parcel"
    record = await record_at(storage, "ship-w", 1)
    assert record is not None
    assert record.child_flow_id != "ship-w/1"


async def test_child_ids_live_in_a_namespace_of_their_own(storage: ExecutionLog) -> None:
    await Executor(Shipment("books"), storage, "ship-2").run(lambda f: f.run())

    record = await record_at(storage, "ship-2", 1)
    assert record is not None
    assert record.child_flow_id == "ship-2~child-1"
    child = await storage.get_flow("ship-2~child-1")
    assert child is not None
    assert (child.parent_flow_id, child.parent_sequence) == ("ship-2", "1")


@pytest.mark.parametrize("flow_id", ["ship~child-1", "a/b~child-12", "x~child-3.1"])
async def test_a_user_flow_id_in_the_child_namespace_is_refused(
    storage: ExecutionLog, flow_id: str
) -> None:
    with pytest.raises(InvalidFlowIdError, match="reserved for child flows") as scheduling:
        await Scheduler(storage).schedule(Pack("x"), flow_id=flow_id)
    assert repr(flow_id) in str(scheduling.value)
    with pytest.raises(InvalidFlowIdError, match="choose an id that does not end"):
        Executor(Pack("x"), storage, flow_id)
    assert await storage.get_flow(flow_id) is None


@pytest.mark.parametrize("flow_id", ["ship/1", "a~child-", "a~child-x", "~child-1 later"])
async def test_ids_outside_the_child_namespace_are_accepted(
    storage: ExecutionLog, flow_id: str
) -> None:
    assert await Scheduler(storage).schedule(Pack("x"), flow_id=flow_id) == flow_id


async def test_a_fork_cannot_take_an_id_in_the_child_namespace(storage: ExecutionLog) -> None:
    await Executor(Shipment("books"), storage, "ship-3").run(lambda f: f.run())

    with pytest.raises(InvalidFlowIdError, match="reserved for child flows"):
        await FlowManager(storage).fork("ship-3", from_step=0, new_flow_id="other~child-1")


async def test_a_parent_recorded_before_the_namespace_finds_its_old_child(
    storage: ExecutionLog, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_child_flow_id(parent_flow_id: str, position: tuple[int, int]) -> str:
        return f"{parent_flow_id}/{format_position(*position)}"

    with monkeypatch.context() as old_code:
        old_code.setattr(_child, "child_flow_id", old_child_flow_id)
        first = await Executor(Shipment("books", 30), storage, "ship-4", clock=clock).run(
            lambda f: f.run()
        )
    assert first.waiting_on == ("ship-4/1",)  # type: ignore[union-attr]
    clock.advance(30)

    outcome = await Executor(Shipment("books", 30), storage, "ship-4", clock=clock).run(
        lambda f: f.run()
    )

    assert outcome == Completed("ship-4", result="packed books")
    assert await storage.get_flow("ship-4~child-1") is None
    old_child = await storage.get_flow("ship-4/1")
    assert old_child is not None and old_child.status is TaskStatus.COMPLETE


async def test_a_stored_flow_at_the_child_id_that_is_not_the_child_is_refused(
    storage: ExecutionLog,
) -> None:
    # Only possible by writing storage directly: the id is refused to schedulers.
    await storage.create_flow(
        ScheduledFlow(
            flow_id="ship-5~child-1",
            flow_type="Pack",
            payload=b"",
            status=TaskStatus.PENDING,
            created_at=0.0,
            updated_at=0.0,
        )
    )

    outcome = await Executor(Shipment("books"), storage, "ship-5").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert isinstance(outcome.error, FlowStateError)
    assert "'ship-5~child-1'" in str(outcome.error)
    assert "not the child" in str(outcome.error)


async def test_a_fork_of_a_parent_waiting_on_a_child_starts_its_own_child(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(Shipment("books", 30), storage, "ship-6", clock=clock).run(lambda f: f.run())
    fork_id = await FlowManager(storage, clock=clock).fork(
        "ship-6", from_step=1, new_flow_id="ship-6-again"
    )
    clock.advance(30)

    outcome = await Executor(Shipment("books", 30), storage, fork_id, clock=clock).run(
        lambda f: f.run()
    )

    assert isinstance(outcome, Suspended)
    assert outcome.waiting_on == ("ship-6-again~child-1",)
    child = await storage.get_flow("ship-6-again~child-1")
    assert child is not None and child.parent_flow_id == "ship-6-again"
