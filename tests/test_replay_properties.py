"""Property: a flow resumed by a fresh executor replays its log exactly and runs no body twice.

A random program is a list of operations, each one step call or two calls gathered together;
every call has a random argument and either a random result or an error. The flow waits for a
signal at a random point, so the first run stops there and a second executor finishes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon.executor.signal import send_signal
from pyergon.storage.memory import InMemoryExecutionLog


class StepFailure(Exception):
    """The error a failing call raises; picklable, so replay rebuilds the same type."""


@dataclass(frozen=True)
class Call:
    arg: int | str
    result: int | str
    fails: bool

    def outcome(self, index: int) -> tuple[str, int | str]:
        if self.fails:
            return "error", failure_message(index, self.arg)
        return "ok", self.result


def failure_message(index: int, arg: int | str) -> str:
    return f"call {index} failed on {arg!r}"


Operation = tuple[Call] | tuple[Call, Call]


@dataclass
@flow_type
class RandomProgram:
    operations: list[Operation]
    wait_before: int
    body_runs: list[int] = field(default_factory=list, init=False, compare=False)
    seen: list[object] = field(default_factory=list, init=False, compare=False)

    @step
    async def act(self, index: int, arg: int | str) -> int | str:
        self.body_runs.append(index)
        call = self.calls()[index]
        if call.fails:
            raise StepFailure(failure_message(index, arg))
        return call.result

    def calls(self) -> list[Call]:
        return [call for operation in self.operations for call in operation]

    async def outcome_of(self, index: int, call: Call) -> tuple[str, int | str]:
        try:
            return "ok", await self.act(index, call.arg)
        except StepFailure as error:
            return "error", str(error)

    @flow
    async def run(self) -> list[object]:
        index = 0
        for position, operation in enumerate(self.operations):
            if position == self.wait_before:
                self.seen.append(("signal", await await_external_signal("resume")))
            outcomes = await asyncio.gather(
                *(self.outcome_of(index + offset, call) for offset, call in enumerate(operation))
            )
            self.seen.extend(outcomes)
            index += len(operation)
        if self.wait_before == len(self.operations):
            self.seen.append(("signal", await await_external_signal("resume")))
        return list(self.seen)


def expected_outcomes(program: RandomProgram) -> list[object]:
    expected: list[object] = []
    calls_before_wait = sum(len(op) for op in program.operations[: program.wait_before])
    for index, call in enumerate(program.calls()):
        if index == calls_before_wait:
            expected.append(("signal", "go"))
        expected.append(call.outcome(index))
    if calls_before_wait == len(program.calls()):
        expected.append(("signal", "go"))
    return expected


values = st.one_of(st.integers(), st.text(max_size=8))
calls = st.builds(Call, arg=values, result=values, fails=st.booleans())
operations = st.lists(st.one_of(st.tuples(calls), st.tuples(calls, calls)), max_size=6)


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[Operation], int]:
    drawn = draw(operations)
    return drawn, draw(st.integers(min_value=0, max_value=len(drawn)))


async def run_interrupted(operations: list[Operation], wait_before: int) -> None:
    storage = InMemoryExecutionLog()
    first = RandomProgram(operations, wait_before)
    suspended = await Executor(first, storage, "program").run(lambda f: f.run())
    assert isinstance(suspended, Suspended)
    await send_signal(storage, "program", "resume", "go")

    second = RandomProgram(operations, wait_before)
    completed = await Executor(second, storage, "program").run(lambda f: f.run())

    expected = expected_outcomes(first)
    assert completed == Completed("program", result=expected)
    assert second.seen[: len(first.seen)] == first.seen
    every_call = list(range(len(first.calls())))
    assert sorted(first.body_runs + second.body_runs) == every_call

    third = RandomProgram(operations, wait_before)
    again = await Executor(third, storage, "program").run(lambda f: f.run())
    assert again == completed
    assert third.body_runs == []


@settings(max_examples=50, deadline=None)
@given(programs())
def test_a_resumed_flow_gives_the_same_results_and_runs_no_body_twice(
    program: tuple[list[Operation], int],
) -> None:
    asyncio.run(run_interrupted(*program))
