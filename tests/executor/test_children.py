"""Child flows (DESIGN §3.8): derived ids, results and errors flow back, parents wait."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import InvocationStatus, OperationKind, SuspendReason, TaskStatus
from pyergon.executor.signal import send_signal
from pyergon.executor.timer import schedule_timer
from pyergon.storage.base import ExecutionLog
from tests.records import record_at


class OutOfStockError(Exception):
    """Raised by the child; picklable, so the parent sees the same type."""


@dataclass
@flow_type
class Reserve:
    sku: str
    quantity: int
    wait_seconds: float = 0
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def reserve(self) -> str:
        self.body_runs.append(self.sku)
        if self.quantity > 10:
            raise OutOfStockError(f"only 10 of {self.sku} left")
        return f"{self.quantity}x{self.sku}"

    @flow
    async def run(self) -> str:
        if self.wait_seconds:
            await schedule_timer(self.wait_seconds)
        return await self.reserve()


@dataclass
@flow_type
class Order:
    order_id: str
    quantity: int = 1
    wait_seconds: float = 0
    children: list[Reserve] = field(default_factory=list, init=False, compare=False)
    child_ids: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def price(self) -> int:
        return 10 * self.quantity

    @flow
    async def run(self) -> tuple[int, str]:
        price = await self.price()
        child = Reserve("widget", self.quantity, self.wait_seconds)
        self.children.append(child)
        handle = self.invoke(child)
        self.child_ids.append(handle.flow_id)
        return price, await handle.result()


async def test_a_child_result_flows_back_to_the_parent(storage: ExecutionLog) -> None:
    outcome = await Executor(Order("o-1", 3), storage, "order-1").run(lambda f: f.run())

    assert outcome == Completed("order-1", result=(30, "3xwidget"))


async def test_a_child_id_is_derived_from_the_parent_id_and_position(
    storage: ExecutionLog,
) -> None:
    order = Order("o-1")

    await Executor(order, storage, "order-2").run(lambda f: f.run())

    assert order.child_ids == ["order-2~child-2"]
    record = await record_at(storage, "order-2", 2)
    assert record is not None
    assert record.kind is OperationKind.CHILD
    assert record.name == "Reserve"
    assert record.child_flow_id == "order-2~child-2"
    assert record.status is InvocationStatus.COMPLETE


async def test_a_child_is_stored_as_a_flow_with_its_parent(storage: ExecutionLog) -> None:
    await Executor(Order("o-1"), storage, "order-3").run(lambda f: f.run())

    child = await storage.get_flow("order-3~child-2")
    assert child is not None
    assert child.flow_type == "Reserve"
    assert child.status is TaskStatus.COMPLETE
    assert child.parent_flow_id == "order-3"
    assert child.parent_sequence == "2"
    assert [r.name for r in await storage.load_invocations("order-3~child-2")] == ["reserve"]


async def test_a_waiting_child_suspends_the_parent_until_it_completes(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    outcome = await Executor(Order("o-1", wait_seconds=30), storage, "order-4", clock=clock).run(
        lambda f: f.run()
    )

    assert isinstance(outcome, Suspended)
    assert outcome.reason is SuspendReason.CHILD
    assert outcome.waiting_on == ("order-4~child-2",)
    assert outcome.wake_at == clock.now() + 30
    child = await storage.get_flow("order-4~child-2")
    assert child is not None
    assert child.status is TaskStatus.SUSPENDED
    waiting = await record_at(storage, "order-4", 2)
    assert waiting is not None
    assert waiting.status is InvocationStatus.WAITING_FOR_CHILD

    clock.advance(30)
    resumed = await Executor(Order("o-1", wait_seconds=30), storage, "order-4", clock=clock).run(
        lambda f: f.run()
    )

    assert resumed == Completed("order-4", result=(10, "1xwidget"))
    child = await storage.get_flow("order-4~child-2")
    assert child is not None
    assert child.status is TaskStatus.COMPLETE


async def test_a_child_failure_raises_the_same_error_type_in_the_parent(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Order("o-1", quantity=50), storage, "order-5").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert type(outcome.error) is OutOfStockError
    assert str(outcome.error) == "only 10 of widget left"
    child = await storage.get_flow("order-5~child-2")
    assert child is not None
    assert child.status is TaskStatus.FAILED
    record = await record_at(storage, "order-5", 2)
    assert record is not None
    assert record.status is InvocationStatus.FAILED


@dataclass
@flow_type
class OrderAwaitingPayment:
    order_id: str
    children: list[Reserve] = field(default_factory=list, init=False, compare=False)

    @flow
    async def run(self) -> tuple[str, object]:
        child = Reserve("gadget", 2)
        self.children.append(child)
        reserved = await self.invoke(child).result()
        return reserved, await await_external_signal("paid")


async def test_a_replayed_parent_takes_the_child_result_without_running_the_child(
    storage: ExecutionLog,
) -> None:
    first = OrderAwaitingPayment("o-6")
    await Executor(first, storage, "order-6").run(lambda f: f.run())
    await send_signal(storage, "order-6", "paid", True)
    second = OrderAwaitingPayment("o-6")

    outcome = await Executor(second, storage, "order-6").run(lambda f: f.run())

    assert outcome == Completed("order-6", result=("2xgadget", True))
    assert first.children[0].body_runs == ["gadget"]
    assert second.children[0].body_runs == []
