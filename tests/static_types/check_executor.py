"""Checked by mypy (tests/static_types/test_types.py), never run: the public API's types.

Each ``assert_type`` fails the check when the type mypy infers differs, including when it is
``Any``, so an untyped ``Executor.run`` cannot slip back in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from pyergon import Completed, Executor, FlowOutcome, Suspended, flow, flow_type, step
from pyergon.storage.base import ExecutionLog


@dataclass
@flow_type
class Order:
    order_id: str
    amount: float

    @step
    async def charge(self, cents: int) -> str:
        return f"{self.order_id}:{cents}"

    @flow
    async def process(self) -> float:
        receipt = await self.charge(round(self.amount * 100))
        assert_type(receipt, str)
        return self.amount


async def run_with_a_lambda(storage: ExecutionLog) -> None:
    executor = Executor(Order("ORD-1", 9.5), storage, "order-1")
    assert_type(executor, Executor[Order])
    outcome = await executor.run(lambda order: order.process())
    assert_type(outcome, FlowOutcome[float])
    assert_type(outcome.result, float | None)
    if isinstance(outcome, Completed):
        assert_type(outcome, Completed[float])
        assert_type(outcome.unwrap(), float)
    else:
        assert_type(outcome, Suspended)


async def run_with_the_method(storage: ExecutionLog) -> None:
    outcome = await Executor(Order("ORD-2", 1.0), storage).run(Order.process)
    assert_type(outcome, Completed[float] | Suspended)


@dataclass
@flow_type
class Report:
    rows: int

    @step
    def load(self, limit: int) -> list[int]:
        return list(range(limit))

    @step(isolate="process", timeout=5)
    def crunch(self, values: list[int]) -> float:
        return sum(values) / len(values)

    @step(timeout=5)
    async def publish(self, mean: float) -> str:
        return f"{mean:.2f}"

    @flow
    async def run(self) -> str:
        values = await self.load(self.rows)
        assert_type(values, list[int])
        mean = await self.crunch(values)
        assert_type(mean, float)
        return await self.publish(mean)


async def run_a_flow_of_def_steps(storage: ExecutionLog) -> None:
    outcome = await Executor(Report(3), storage).run(Report.run)
    assert_type(outcome, Completed[str] | Suspended)
