"""A DAG that cannot run fails when its class is defined, with a message naming the class, the
step and what to do; what only running can tell is a ``DagExecutionError`` before any step."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pyergon import DagExecutionError, dag, flow, flow_type, step
from pyergon.decorators import StepSpec, step_methods
from pyergon.errors import FlowDefinitionError
from pyergon.executor._dag import declared_graph


def test_the_declarations_are_kept_on_the_step_as_immutable_values() -> None:
    @flow_type
    class Declared:
        @step
        async def load(self) -> int:
            return 1

        @step(depends_on="load")
        async def check(self) -> None:
            return None

        @step(depends_on=["check"], inputs={"rows": "load"})
        async def report(self, rows: int) -> int:
            return rows

        @flow
        async def run(self) -> int:
            return await dag(self)

    specs = {method.attribute: method.spec for method in step_methods(Declared)}
    assert specs["load"] == StepSpec("load", code=specs["load"].code)
    assert specs["check"].depends_on == ("load",)
    # An input implies a dependency, after those given by depends_on.
    assert specs["report"].depends_on == ("check", "load")
    assert specs["report"].inputs == (("rows", "load"),)
    hash(specs["report"])


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ({"depends_on": 3}, "depends_on"),
        ({"inputs": ["load"]}, "inputs"),
        ({"inputs": {1: "a"}}, "inputs"),
    ],
)
def test_declarations_of_the_wrong_type_are_refused(options: dict[str, object], wrong: str) -> None:
    with pytest.raises(FlowDefinitionError, match=rf"@step\({wrong}=\.\.\.\)"):
        step(**options)  # type: ignore[call-overload]


def test_an_input_the_method_does_not_take_is_refused_at_the_step() -> None:
    with pytest.raises(FlowDefinitionError) as refused:

        class Flow:
            @step(inputs={"frame": "load"})
            async def report(self, rows: int) -> int:
                return rows

    message = str(refused.value)
    assert "Flow.report" in message and "'frame'" in message and "rows" in message


def test_a_required_parameter_no_input_feeds_is_refused_at_the_step() -> None:
    with pytest.raises(FlowDefinitionError, match="required parameter\\(s\\) 'limit'") as refused:

        class Flow:
            @step(inputs={"rows": "load"})
            async def report(self, rows: int, limit: int) -> int:
                return rows + limit

    assert "Flow.report" in str(refused.value)
    assert "inputs={'limit': '<step name>'}" in str(refused.value)


def test_parameters_with_defaults_or_taken_as_keywords_need_no_input() -> None:
    class Flow:
        @step(depends_on="load")
        async def report(self, limit: int = 10, **options: object) -> int:
            return limit

        @step(inputs={"anything": "load"})
        async def extra(self, **options: object) -> object:
            return options

    assert Flow.report.__name__ == "report"


def test_a_dependency_on_no_step_names_the_class_the_step_and_the_steps_there_are() -> None:
    with pytest.raises(FlowDefinitionError) as refused:

        @flow_type
        class Pipeline:
            @step
            async def load(self) -> int:
                return 1

            @step(depends_on="lod")
            async def report(self) -> int:
                return 2

            @flow
            async def run(self) -> int:
                return await dag(self)

    message = str(refused.value)
    assert "step 'report' of flow type " in message and "Pipeline" in message
    assert "depends on 'lod'" in message and "its steps: load, report" in message


def test_steps_are_named_by_their_step_name_and_a_method_name_says_so() -> None:
    with pytest.raises(FlowDefinitionError, match="the method of the step named 'load_v1'"):

        @flow_type
        class Renamed:
            @step(name="load_v1")
            async def load(self) -> int:
                return 1

            @step(inputs={"rows": "load"})
            async def report(self, rows: int) -> int:
                return rows

            @flow
            async def run(self) -> int:
                return await dag(self)

    @flow_type
    class ByStepName:
        @step(name="load_v1")
        async def load(self) -> int:
            return 1

        @step(inputs={"rows": "load_v1"})
        async def report(self, rows: int) -> int:
            return rows + 1

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert ByStepName.report.__name__ == "report"


async def test_a_step_named_by_its_step_name_runs() -> None:
    @flow_type
    class ByStepName:
        @step(name="load_v1")
        async def load(self) -> int:
            return 1

        @step(inputs={"rows": "load_v1"})
        async def report(self, rows: int) -> int:
            return rows + 1

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await ByStepName().run() == 2


def test_private_steps_are_no_dag_steps() -> None:
    with pytest.raises(FlowDefinitionError, match="leaves out private steps"):

        @flow_type
        class DependsOnPrivate:
            @step
            async def _load(self) -> int:
                return 1

            @step(depends_on="_load")
            async def report(self) -> int:
                return 2

            @flow
            async def run(self) -> int:
                return await dag(self)

    with pytest.raises(FlowDefinitionError, match="drop the '_'"):

        @flow_type
        class PrivateDepends:
            @step
            async def load(self) -> int:
                return 1

            @step(depends_on="load")
            async def _report(self) -> int:
                return 2

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_a_cycle_is_named() -> None:
    with pytest.raises(FlowDefinitionError) as refused:

        @flow_type
        class Circular:
            @step
            async def start(self) -> int:
                return 1

            @step(inputs={"x": "start", "y": "check"})
            async def fit(self, x: int, y: int) -> int:
                return x + y

            @step(inputs={"model": "fit"})
            async def check(self, model: int) -> int:
                return model

            @flow
            async def run(self) -> int:
                return await dag(self)

    message = str(refused.value)
    assert "Circular" in message
    assert "cycle: fit -> check -> fit" in message
    assert "remove one of these dependencies" in message


def test_a_step_depending_on_itself_is_a_cycle() -> None:
    with pytest.raises(FlowDefinitionError, match="cycle: again -> again"):

        @flow_type
        class Again:
            @step(depends_on="again")
            async def again(self) -> int:
                return 1

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_two_steps_of_one_name_in_a_dag_are_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="two steps named 'load'"):

        @flow_type
        class Twice:
            @step
            async def load(self) -> int:
                return 1

            @step(name="load")
            async def load_again(self) -> int:
                return 2

            @step(depends_on="load")
            async def report(self) -> int:
                return 3

            @flow
            async def run(self) -> int:
                return await dag(self)


def test_a_class_declaring_no_dag_is_not_checked_as_one() -> None:
    @dataclass
    @flow_type
    class Sequential:
        @step
        async def load(self) -> int:
            return 1

        @step(name="load")
        async def load_again(self, extra: int) -> int:
            return extra

        @flow
        async def run(self) -> int:
            return await self.load()

    assert Sequential.run.__name__ == "run"


async def test_inherited_steps_join_the_subclass_dag_and_an_override_keeps_its_place() -> None:
    class Base:
        @step
        async def load(self) -> int:
            return 1

        @step(inputs={"rows": "load"})
        async def report(self, rows: int) -> int:
            return rows

    @flow_type
    class Child(Base):
        @step
        async def load(self) -> int:
            return 2

        @step(inputs={"rows": "report"})
        async def publish(self, rows: int) -> int:
            return rows * 10

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert [method.attribute for method in step_methods(Child)] == ["load", "report", "publish"]
    assert await Child().run() == 20


async def test_a_step_needing_an_argument_no_input_feeds_stops_the_dag_before_any_runs() -> None:
    ran: list[str] = []

    @flow_type
    class Unfed:
        @step
        async def load(self) -> int:
            ran.append("load")
            return 1

        @step
        async def scale(self, factor: int) -> int:
            return factor

        @flow
        async def run(self) -> int:
            return await dag(self)

    with pytest.raises(DagExecutionError, match=r"step 'scale' of flow type .*Unfed.* 'factor'"):
        await Unfed().run()
    assert ran == []


def test_the_declared_graph_is_what_a_rerun_asks_for_downstream_steps() -> None:
    @flow_type
    class Declares:
        @step
        async def load(self) -> int:
            return 1

        @step(inputs={"rows": "load"})
        async def clean(self, rows: int) -> int:
            return rows

        @step
        async def other(self) -> int:
            return 2

        @step(inputs={"rows": "clean", "extra": "other"})
        async def report(self, rows: int, extra: int) -> int:
            return rows + extra

        @flow
        async def run(self) -> int:
            return await dag(self)

    @flow_type
    class DeclaresNone:
        @step
        async def load(self) -> int:
            return 1

        @flow
        async def run(self) -> int:
            return await self.load()

    graph = declared_graph(Declares)
    assert graph is not None
    assert graph.descendants(["load"]) == ("clean", "report")
    assert graph.descendants(["other"]) == ("report",)
    assert declared_graph(DeclaresNone) is None
