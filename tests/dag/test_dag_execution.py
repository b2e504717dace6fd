"""pyergon 0.8.1's tests/test_dag_execution.py, ported to the ``@step``/``dag`` API.

0.8.1 tested these scenarios on ``DeferredRegistry`` (steps registered by hand with their
dependencies, results passed as pickled bytes), which this package does not bring back. Each
test here keeps its scenario and what it asserted, written as a flow class run with ``dag``;
the registry's own mechanics (``StepHandle.resolve`` used once, ``DagSummary``,
``level_graph`` text) become :class:`~pyergon.core.graph.StepGraph` queries or are dropped,
as marked. Parallelism is shown by steps that each wait for the other to have started (which
cannot finish one after the other), not by sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from pyergon import dag, flow, flow_type, step
from pyergon.core.graph import StepGraph
from pyergon.errors import FlowDefinitionError


async def test_deferred_registry_basic() -> None:
    @flow_type
    class Independent:
        @step
        async def a(self) -> int:
            return 10

        @step
        async def b(self) -> int:
            return 20

        @flow
        async def run(self) -> tuple[int, int]:
            return await dag(self, final_step="a"), await dag(self, final_step="b")

    assert await Independent().run() == (10, 20)


async def test_dag_parallel_execution() -> None:
    started = {name: asyncio.Event() for name in "abc"}
    order: list[str] = []

    async def meet(name: str) -> None:
        order.append(f"{name}_start")
        started[name].set()
        async with asyncio.timeout(10):  # run one after another, they would wait forever
            for event in started.values():
                await event.wait()
        order.append(f"{name}_end")

    @flow_type
    class Parallel:
        @step
        async def a(self) -> int:
            await meet("a")
            return 1

        @step
        async def b(self) -> int:
            await meet("b")
            return 2

        @step
        async def c(self) -> int:
            await meet("c")
            return 3

        @step(inputs={"a": "a", "b": "b", "c": "c"})
        async def results(self, a: int, b: int, c: int) -> tuple[int, int, int]:
            return a, b, c

        @flow
        async def run(self) -> tuple[int, int, int]:
            return await dag(self)

    assert await Parallel().run() == (1, 2, 3)
    # All start before any ends (parallel execution).
    assert sorted(order[:3]) == ["a_start", "b_start", "c_start"]


async def test_dag_with_dependencies() -> None:
    @flow_type
    class Chain:
        @step
        async def a(self) -> int:
            return 10

        @step(inputs={"a_value": "a"})
        async def b(self, a_value: int) -> int:
            return a_value + 5

        @step(inputs={"b_value": "b"})
        async def c(self, b_value: int) -> int:
            return b_value * 2

        @flow
        async def run(self) -> list[int]:
            return [await dag(self, final_step=name) for name in "abc"]

    assert await Chain().run() == [10, 15, 30]


async def test_dag_diamond_pattern() -> None:
    @flow_type
    class Diamond:
        @step
        async def a(self) -> int:
            return 10

        @step(inputs={"a_value": "a"})
        async def b(self, a_value: int) -> int:
            return a_value + 1

        @step(inputs={"a_value": "a"})
        async def c(self, a_value: int) -> int:
            return a_value + 2

        @step(inputs={"b_value": "b", "c_value": "c"})
        async def d(self, b_value: int, c_value: int) -> int:
            return b_value + c_value

        @flow
        async def run(self) -> int:
            return await dag(self, final_step="d")

    assert await Diamond().run() == 23  # (10 + 1) + (10 + 2)


def test_dag_validation_invalid_dependency() -> None:
    # ADAPTED: the registry raised ValueError from validate(); the class definition fails here.
    with pytest.raises(FlowDefinitionError, match="depends on 'nonexistent'"):

        @flow_type
        class Invalid:
            @step(depends_on="nonexistent")
            async def a(self) -> int:
                return 1

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_dag_validation_cycle_detection() -> None:
    # ADAPTED: the registry raised ValueError("Cycle detected") from validate(); here the class
    # definition fails, naming the cycle.
    with pytest.raises(FlowDefinitionError, match="cycle: a -> b -> a"):

        @flow_type
        class Cycle:
            @step(depends_on="b")
            async def a(self) -> int:
                return 1

            @step(depends_on="a")
            async def b(self) -> int:
                return 2

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_dag_summary() -> None:
    # ADAPTED: DagSummary is gone; the same facts come from the pure StepGraph.
    graph = StepGraph.of({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})

    assert len(graph.names) == 4
    assert graph.roots == ("a",)
    assert graph.leaves == ("d",)
    assert len(graph.levels()) - 1 == 2  # max depth


def test_dag_level_graph() -> None:
    # ADAPTED: level_graph() printed "Level n: [a] ... parallel"; the levels themselves here.
    graph = StepGraph.of({"a": [], "b": ["a"], "c": ["b"]})

    assert graph.levels() == (("a",), ("b",), ("c",))


# test_step_handle_single_use is not ported: there are no step handles to resolve; a step's
# result reaches the steps that take it as an input, and dag() returns one.


async def test_dag_step_failure() -> None:
    @flow_type
    class OneFails:
        @step
        async def a(self) -> int:
            return 1

        @step
        async def b(self) -> int:
            raise ValueError("Step B failed")

        @flow
        async def run(self) -> int:
            return await dag(self)

    # ADAPTED: the registry raised RuntimeError("DAG execution failed"); the step's own error
    # propagates here.
    with pytest.raises(ValueError, match="Step B failed"):
        await OneFails().run()


def test_execute_dag_deadlock_detection() -> None:
    # ADAPTED: execute_dag refused steps waiting for each other (ValueError "Deadlock|cycle")
    # when run; such steps cannot be defined here.
    with pytest.raises(FlowDefinitionError, match="cycle"):

        @flow_type
        class Deadlock:
            @step(depends_on=["b"])
            async def a(self) -> None:
                await asyncio.sleep(0)

            @step(depends_on=["a"])
            async def b(self) -> None:
                await asyncio.sleep(0)

            @flow
            async def run(self) -> None:
                await dag(self)


async def test_dag_complex_parallel_branches() -> None:
    @flow_type
    class Branches:
        @step
        async def root(self) -> int:
            return 100

        @step(inputs={"root_value": "root"})
        async def a(self, root_value: int) -> int:
            return root_value + 1

        @step(inputs={"root_value": "root"})
        async def b(self, root_value: int) -> int:
            return root_value + 1

        @step(inputs={"root_value": "root"})
        async def c(self, root_value: int) -> int:
            return root_value + 1

        @step(inputs={"a": "a", "b": "b", "c": "c"})
        async def merge(self, a: int, b: int, c: int) -> int:
            return a + b + c

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await Branches().run() == 303  # (100+1) + (100+1) + (100+1)
