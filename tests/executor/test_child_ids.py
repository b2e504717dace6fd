"""Child flow ids: a user's flow is never taken for another flow's child (issue 14, item 3)."""

from __future__ import annotations

import pytest

from pyergon import Completed, Executor, Scheduler, Suspended, Worker
from pyergon.clock import ManualClock
from pyergon.core import ScheduledFlow, TaskStatus
from pyergon.core.records import format_position
from pyergon.errors import FlowStateError, InvalidFlowIdError
from pyergon.executor import _child
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog
from tests.executor.test_children import Order, Reserve
from tests.records import record_at


async def test_a_parent_does_not_adopt_a_user_flow_with_the_old_child_id_form(
    storage: ExecutionLog,
) -> None:
    await Scheduler(storage).schedule(Reserve("gizmo", 5), flow_id="order/2")

    outcome = await Executor(Order("o-1", 3), storage, "order").run(lambda f: f.run())

    assert outcome == Completed("order", result=(30, "3xwidget"))
    users = await storage.get_flow("order/2")
    assert users is not None
    assert users.parent_flow_id is None
    assert users.status is TaskStatus.PENDING  # nobody ran it for the parent


async def test_a_worker_parent_does_not_adopt_a_user_flow(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Order)
    await worker.register(Reserve)
    await scheduler.schedule(Reserve("gizmo", 5), flow_id="order-w/2")
    await scheduler.schedule(Order("o-1", 3), flow_id="order-w")

    await worker.run_until_idle()

    outcomes = await scheduler.wait(["order-w", "order-w/2"], timeout=10)
    assert outcomes["order-w"].result == (30, "3xwidget")
    assert outcomes["order-w/2"].result == "5xgizmo"
    record = await record_at(storage, "order-w", 2)
    assert record is not None
    assert record.child_flow_id == "order-w~child-2"


async def test_child_ids_live_in_a_namespace_of_their_own(storage: ExecutionLog) -> None:
    await Executor(Order("o-1"), storage, "order-2").run(lambda f: f.run())

    child = await storage.get_flow("order-2~child-2")
    assert child is not None
    assert (child.parent_flow_id, child.parent_sequence) == ("order-2", "2")


@pytest.mark.parametrize("flow_id", ["order~child-1", "a/b~child-12", "x~child-3.1"])
async def test_a_user_flow_id_in_the_child_namespace_is_refused(
    storage: ExecutionLog, flow_id: str
) -> None:
    with pytest.raises(InvalidFlowIdError, match="reserved for child flows") as scheduling:
        await Scheduler(storage).schedule(Reserve("gizmo", 1), flow_id=flow_id)
    assert repr(flow_id) in str(scheduling.value)
    with pytest.raises(InvalidFlowIdError, match="choose an id that does not end"):
        Executor(Reserve("gizmo", 1), storage, flow_id)
    assert await storage.get_flow(flow_id) is None


@pytest.mark.parametrize("flow_id", ["order/1", "a~child-", "a~child-x", "~child-1 later"])
async def test_ids_outside_the_child_namespace_are_accepted(
    storage: ExecutionLog, flow_id: str
) -> None:
    assert await Scheduler(storage).schedule(Reserve("gizmo", 1), flow_id=flow_id) == flow_id


async def test_a_fork_cannot_take_an_id_in_the_child_namespace(storage: ExecutionLog) -> None:
    await Executor(Order("o-1"), storage, "order-3").run(lambda f: f.run())

    with pytest.raises(InvalidFlowIdError, match="reserved for child flows"):
        await FlowManager(storage).fork("order-3", from_step=0, new_flow_id="other~child-1")


async def test_a_parent_recorded_before_the_namespace_finds_its_old_child(
    storage: ExecutionLog, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_child_flow_id(parent_flow_id: str, position: tuple[int, int]) -> str:
        return f"{parent_flow_id}/{format_position(*position)}"

    with monkeypatch.context() as old_code:
        old_code.setattr(_child, "child_flow_id", old_child_flow_id)
        first = await Executor(Order("o-1", wait_seconds=30), storage, "order-4", clock=clock).run(
            lambda f: f.run()
        )
    assert isinstance(first, Suspended)
    assert first.waiting_on == ("order-4/2",)
    clock.advance(30)

    outcome = await Executor(Order("o-1", wait_seconds=30), storage, "order-4", clock=clock).run(
        lambda f: f.run()
    )

    assert outcome == Completed("order-4", result=(10, "1xwidget"))
    assert await storage.get_flow("order-4~child-2") is None
    old_child = await storage.get_flow("order-4/2")
    assert old_child is not None and old_child.status is TaskStatus.COMPLETE


async def test_a_stored_flow_at_the_child_id_that_is_not_the_child_is_refused(
    storage: ExecutionLog,
) -> None:
    # Only possible by writing storage directly: the id is refused to schedulers.
    await storage.create_flow(
        ScheduledFlow(
            flow_id="order-5~child-2",
            flow_type="Reserve",
            payload=b"",
            status=TaskStatus.PENDING,
            created_at=0.0,
            updated_at=0.0,
        )
    )

    outcome = await Executor(Order("o-1"), storage, "order-5").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert isinstance(outcome.error, FlowStateError)
    assert "'order-5~child-2'" in str(outcome.error)
    assert "not the child" in str(outcome.error)


async def test_a_fork_of_a_parent_waiting_on_a_child_starts_its_own_child(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(Order("o-1", wait_seconds=30), storage, "order-6", clock=clock).run(
        lambda f: f.run()
    )
    fork_id = await FlowManager(storage, clock=clock).fork(
        "order-6", from_step=2, new_flow_id="order-6-again"
    )
    clock.advance(30)

    outcome = await Executor(Order("o-1", wait_seconds=30), storage, fork_id, clock=clock).run(
        lambda f: f.run()
    )

    assert isinstance(outcome, Suspended)
    assert outcome.waiting_on == ("order-6-again~child-2",)
    child = await storage.get_flow("order-6-again~child-2")
    assert child is not None and child.parent_flow_id == "order-6-again"
