"""An existing flow id given other inputs is refused; the same inputs stay idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pyergon import Executor, FlowInputsChangedError, Scheduler, flow, flow_type, step
from pyergon.storage.memory import InMemoryExecutionLog


@flow_type
@dataclass
class Square:
    n: int
    tags: set[str] = field(default_factory=set)

    @step
    async def square(self) -> int:
        return self.n * self.n

    @flow
    async def run(self) -> int:
        return await self.square()


async def test_running_an_id_with_other_inputs_is_an_error_naming_both() -> None:
    storage = InMemoryExecutionLog()
    first = await Executor(Square(3), storage, "sq").run(Square.run)
    assert first.result == 9
    with pytest.raises(FlowInputsChangedError) as raised:
        await Executor(Square(4), storage, "sq").run(Square.run)
    message = str(raised.value)
    assert "flow 'sq' (Square) exists with other inputs (n: stored 3, given 4)" in message
    assert "new flow_id" in message and "session.rerun('sq', inputs=Square(n=4" in message
    assert raised.value.fields == ("n",)
    again = await Executor(Square(3), storage, "sq").run(Square.run)
    assert again.result == 9  # the stored flow is as it was


async def test_the_same_inputs_return_the_stored_outcome() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Square(3, {"a", "b", "c"}), storage, "sq").run(Square.run)
    again = await Executor(Square(3, {"c", "b", "a"}), storage, "sq").run(Square.run)
    assert again.result == 9


async def test_scheduling_an_id_with_other_inputs_is_an_error() -> None:
    storage = InMemoryExecutionLog()
    scheduler = Scheduler(storage)
    assert await scheduler.schedule(Square(3), "sq") == "sq"
    assert await scheduler.schedule(Square(3), "sq") == "sq"  # idempotent
    with pytest.raises(FlowInputsChangedError, match=r"tags: stored set\(\), given \{'x'\}"):
        await scheduler.schedule(Square(3, {"x"}), "sq")
