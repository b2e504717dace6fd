"""pyergon 0.8.1's tests/test_dag_runtime.py, ported: ``@step(depends_on=..., inputs=...)`` and
``dag(self)`` run outside any executor (``await Flow().run()``), as they did there.

Adapted only where this design deliberately differs, each marked ADAPTED: a misdefined DAG fails
when the class is defined (``FlowDefinitionError``), not when it runs, and a failing step's own
error propagates instead of a ``DagExecutionError`` wrapping it.
"""

from __future__ import annotations

import pytest

from pyergon import DagExecutionError, dag, flow, flow_type, step
from pyergon.errors import FlowDefinitionError


async def test_dag_runtime_basic() -> None:
    @flow_type
    class BasicDagFlow:
        @step
        async def step_a(self) -> int:
            return 10

        @step
        async def step_b(self) -> int:
            return 20

        @flow
        async def run(self) -> int:
            return await dag(self)

    result = await BasicDagFlow().run()

    # 0.8.1 allowed either; here the last declared step of the last level is the result.
    assert result in [10, 20]
    assert result == 20


async def test_dag_runtime_with_dependencies() -> None:
    @flow_type
    class DependentDagFlow:
        @step
        async def fetch_data(self) -> int:
            return 42

        @step(depends_on=["fetch_data"], inputs={"data": "fetch_data"})
        async def process_data(self, data: int) -> int:
            return data * 2

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await DependentDagFlow().run() == 84


async def test_dag_runtime_parallel_steps() -> None:
    @flow_type
    class ParallelDagFlow:
        @step
        async def step_a(self) -> int:
            return 1

        @step
        async def step_b(self) -> int:
            return 2

        @step
        async def step_c(self) -> int:
            return 3

        @step(
            depends_on=["step_a", "step_b", "step_c"],
            inputs={"a": "step_a", "b": "step_b", "c": "step_c"},
        )
        async def merge(self, a: int, b: int, c: int) -> int:
            return a + b + c

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await ParallelDagFlow().run() == 6


async def test_dag_runtime_diamond_pattern() -> None:
    @flow_type
    class DiamondDagFlow:
        @step
        async def root(self) -> int:
            return 10

        @step(depends_on=["root"], inputs={"val": "root"})
        async def branch_a(self, val: int) -> int:
            return val + 1

        @step(depends_on=["root"], inputs={"val": "root"})
        async def branch_b(self, val: int) -> int:
            return val + 2

        @step(depends_on=["branch_a", "branch_b"], inputs={"a": "branch_a", "b": "branch_b"})
        async def merge(self, a: int, b: int) -> int:
            return a + b

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await DiamondDagFlow().run() == 23  # (10 + 1) + (10 + 2)


async def test_dag_runtime_final_step_selection() -> None:
    @flow_type
    class SelectiveDagFlow:
        @step
        async def step_a(self) -> int:
            return 100

        @step(depends_on=["step_a"], inputs={"val": "step_a"})
        async def step_b(self, val: int) -> int:
            return val + 50

        @step(depends_on=["step_a"], inputs={"val": "step_a"})
        async def step_c(self, val: int) -> int:
            return val + 25

        @flow
        async def run(self) -> int:
            return await dag(self, final_step="step_b")

    assert await SelectiveDagFlow().run() == 150


async def test_dag_runtime_no_steps_error() -> None:
    @flow_type
    class NoStepsFlow:
        @flow
        async def run(self) -> object:
            return await dag(self)

    with pytest.raises(DagExecutionError, match="No @step methods found"):
        await NoStepsFlow().run()


def test_dag_runtime_missing_dependency_error() -> None:
    # ADAPTED: 0.8.1 raised DagExecutionError when the flow ran; the class definition fails here.
    with pytest.raises(FlowDefinitionError, match="not a @step method"):

        @flow_type
        class MissingDepFlow:
            @step(depends_on=["nonexistent"])
            async def step_a(self) -> int:
                return 1

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_dag_runtime_missing_input_error() -> None:
    # ADAPTED: 0.8.1 raised DagExecutionError when the flow ran; the class definition fails here.
    with pytest.raises(FlowDefinitionError, match="not a @step method"):

        @flow_type
        class MissingInputFlow:
            @step
            async def step_a(self) -> int:
                return 10

            @step(depends_on=["step_a"], inputs={"val": "nonexistent"})  # nonexistent step
            async def step_b(self, val: int) -> int:
                return val

            @flow
            async def run(self) -> int:
                return await dag(self)


async def test_dag_runtime_step_failure() -> None:
    @flow_type
    class FailingDagFlow:
        @step
        async def step_a(self) -> int:
            return 10

        @step(depends_on=["step_a"])
        async def step_b(self) -> int:
            raise ValueError("Step failed")

        @flow
        async def run(self) -> int:
            return await dag(self)

    # ADAPTED: 0.8.1 wrapped the error in DagExecutionError("Step execution failed ..."); the
    # step's own error propagates here, so retry policies and except clauses see its type.
    with pytest.raises(ValueError, match="Step failed"):
        await FailingDagFlow().run()


async def test_dag_runtime_complex_workflow() -> None:
    @flow_type
    class ComplexDagFlow:
        @step
        async def fetch_user(self) -> dict[str, object]:
            return {"id": 1, "name": "Alice"}

        @step
        async def fetch_orders(self) -> list[dict[str, int]]:
            return [{"id": 101, "total": 50}, {"id": 102, "total": 75}]

        @step
        async def fetch_inventory(self) -> dict[str, bool]:
            return {"in_stock": True}

        @step(
            depends_on=["fetch_user", "fetch_orders", "fetch_inventory"],
            inputs={"user": "fetch_user", "orders": "fetch_orders", "inventory": "fetch_inventory"},
        )
        async def validate(
            self, user: dict[str, object], orders: list[dict[str, int]], inventory: dict[str, bool]
        ) -> dict[str, object]:
            return {"valid": inventory["in_stock"], "total": sum(o["total"] for o in orders)}

        @step(depends_on=["validate"], inputs={"validation": "validate"})
        async def process(self, validation: dict[str, object]) -> object:
            return validation["total"] if validation["valid"] else 0

        @flow
        async def run(self) -> object:
            return await dag(self)

    assert await ComplexDagFlow().run() == 125  # 50 + 75


async def test_dag_runtime_nonexistent_final_step() -> None:
    @flow_type
    class FlowWithSteps:
        @step
        async def step_a(self) -> int:
            return 1

        @flow
        async def run(self) -> int:
            return await dag(self, final_step="nonexistent")

    with pytest.raises(DagExecutionError, match="was not executed"):
        await FlowWithSteps().run()


async def test_dag_runtime_private_methods_ignored() -> None:
    @flow_type
    class PrivateMethodFlow:
        def _helper(self) -> int:
            """Private helper method."""
            return 42

        @step
        async def step_a(self) -> int:
            return self._helper()

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await PrivateMethodFlow().run() == 42
