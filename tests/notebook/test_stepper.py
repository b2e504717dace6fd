"""``session.step_through``: one operation per ``next()``, gathered and DAG steps included."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pyergon
from pyergon import flow, flow_type, step
from pyergon.core.status import TaskStatus
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog


@dataclass
@flow_type
class Sequential:
    @step
    async def first(self) -> int:
        return 1

    @step
    async def second(self, value: int) -> int:
        return value + 1

    @flow
    async def run(self) -> int:
        return await self.second(await self.first())


@dataclass
@flow_type
class Gathered:
    @step
    async def left(self) -> str:
        return "left"

    @step
    def right(self) -> str:
        return "right"

    @step
    async def join(self, parts: list[str]) -> str:
        return "+".join(parts)

    @flow
    async def run(self) -> str:
        parts = await asyncio.gather(self.left(), self.right())
        return await self.join(list(parts))


@dataclass
@flow_type
class Diamond:
    @step
    def root(self) -> int:
        return 10

    @step(inputs={"value": "root"})
    def plus_one(self, value: int) -> int:
        return value + 1

    @step(inputs={"value": "root"})
    async def plus_two(self, value: int) -> int:
        return value + 2

    @step(inputs={"a": "plus_one", "b": "plus_two"})
    def merge(self, a: int, b: int) -> int:
        return a + b

    @flow
    async def run(self) -> int:
        return await pyergon.dag(self, final_step="merge")


async def _step_to_the_end(
    session: Session, instance: object, flow_id: str
) -> list[tuple[str, ...]]:
    stepper = session.step_through(instance, flow_id)
    ran = []
    for _ in range(10):
        report = await asyncio.wait_for(stepper.next(), timeout=10)
        ran.append(report.ran)
        if not report.paused:
            assert report.outcome is not None and report.outcome.status is TaskStatus.COMPLETE
            return ran
    raise AssertionError(f"{flow_id} did not finish in 10 steps: {ran}")


async def test_each_next_runs_one_operation_of_a_sequential_flow() -> None:
    session = Session(InMemoryExecutionLog())
    assert await _step_to_the_end(session, Sequential(), "seq") == [("1",), ("2",)]
    await session.close()


async def test_gathered_steps_are_let_through_one_per_next_without_hanging() -> None:
    session = Session(InMemoryExecutionLog())
    ran = await _step_to_the_end(session, Gathered(), "gathered")
    assert ran == [("1",), ("2",), ("3",)]
    await session.close()


async def test_a_dag_flow_steps_through_each_of_its_steps() -> None:
    session = Session(InMemoryExecutionLog())
    ran = await _step_to_the_end(session, Diamond(), "diamond")
    assert [position for positions in ran for position in positions] == ["1", "2", "3", "4"]
    assert all(len(positions) == 1 for positions in ran)
    records = await session.storage.load_invocations("diamond")
    assert [record.name for record in records] == ["root", "plus_one", "plus_two", "merge"]
    await session.close()
