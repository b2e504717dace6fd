"""An existing flow id given other inputs is refused; the same inputs stay idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pyergon import Executor, FlowInputsChangedError, Scheduler, flow, flow_type, step
from pyergon.serialization import JsonSerializer
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


@flow_type(name="Shaped")
@dataclass
class Shaped:
    shape: tuple[int, int]
    labels: dict[str, int]

    @flow
    async def run(self) -> int:
        return self.shape[0]


async def test_inputs_are_compared_as_stored_not_as_written() -> None:
    storage = InMemoryExecutionLog()
    json = JsonSerializer()
    await Executor(Shaped((2, 3), {"a": 1, "b": 2}), storage, "s", serializer=json).run(Shaped.run)
    # Other key order, other bytes; the tuple comes back from JSON as a list on both sides.
    again = Executor(Shaped((2, 3), {"b": 2, "a": 1}), storage, "s", serializer=json)
    assert (await again.run(Shaped.run)).result == 2


async def test_equal_frames_with_another_layout_are_the_same_inputs() -> None:
    pandas = pytest.importorskip("pandas")

    @flow_type(name="Framed")
    @dataclass
    class Framed:
        frame: Any

        @flow
        async def run(self) -> int:
            return len(self.frame)

    storage = InMemoryExecutionLog()
    first = pandas.DataFrame({"x": [1, 2], "y": [3.0, 4.0]})
    copied = pandas.concat([first[["x"]], first[["y"]]], axis=1)  # equal, other blocks
    assert copied.equals(first)
    await Executor(Framed(first), storage, "f").run(Framed.run)
    assert (await Executor(Framed(copied), storage, "f").run(Framed.run)).result == 2
    with pytest.raises(FlowInputsChangedError, match="frame: stored"):
        await Executor(Framed(first.assign(x=[1, 9])), storage, "f").run(Framed.run)


async def test_a_field_added_since_with_its_default_is_the_same_inputs() -> None:
    @flow_type(name="Grows")
    @dataclass
    class Before:
        n: int

        @flow
        async def run(self) -> int:
            return self.n

    @flow_type(name="Grows")
    @dataclass
    class After:
        n: int
        scale: int = 1

        @flow
        async def run(self) -> int:
            return self.n * self.scale

    storage = InMemoryExecutionLog()
    await Executor(Before(3), storage, "g").run(Before.run)
    assert (await Executor(After(3), storage, "g").run(After.run)).result == 3
    with pytest.raises(FlowInputsChangedError, match="scale: stored \\(no such field\\), given 2"):
        await Executor(After(3, scale=2), storage, "g").run(After.run)
