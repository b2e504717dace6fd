"""``rerun``: recompute a finished flow from a step on, keeping the previous generation."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import pytest

from pyergon import Executor, StaleResultWarning, flow, flow_type, step
from pyergon._rerun import rerun_flow
from pyergon.clock import SystemClock
from pyergon.core.changes import Change
from pyergon.core.status import TaskStatus
from pyergon.errors import FlowStateError, StepNotFoundError
from pyergon.management import FlowManager
from pyergon.notebook import Session
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.code.defining import define

CALLS: Counter[str] = Counter()


def pipeline(total: str) -> type:
    """A three-step flow type ``Pipeline`` whose ``total`` step returns ``total`` (new code)."""
    source = f"""
from dataclasses import dataclass
from pyergon import flow, flow_type, step

@flow_type(name="Pipeline")
@dataclass
class Pipeline:
    xs: list

    @step
    def load(self):
        CALLS["load"] += 1
        return list(self.xs)

    @step
    def total(self, xs):
        CALLS["total"] += 1
        return {total}

    @step
    def report(self, value):
        CALLS["report"] += 1
        return f"total={{value}}"

    @flow
    async def run(self):
        xs = await self.load()
        return await self.report(await self.total(xs))
"""
    return define(source, "Pipeline", CALLS=CALLS)


async def _run(storage: ExecutionLog, cls: type, flow_id: str, xs: list[int]) -> object:
    outcome = await Executor(cls(xs), storage, flow_id, on_stale=None).run(cls.run)  # type: ignore[attr-defined]
    return outcome.result


async def test_a_rerun_recomputes_from_the_first_changed_step_and_keeps_the_old_results() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    old, new = pipeline("sum(xs)"), pipeline("sum(xs) / len(xs)")
    assert await _run(storage, old, "p", [2, 4]) == "total=6"
    load_record = (await storage.load_invocations("p"))[0]

    manager = FlowManager(storage, [new])
    assert (await manager.replay("p")).stale == ("2 total",)
    plan = await manager.rerun("p")
    assert (plan.recomputed, plan.previous, plan.positions) == (
        ("total", "report"),
        "p~gen-1",
        (2, 3),
    )
    assert (await storage.get_flow("p")).status is TaskStatus.PENDING  # type: ignore[union-attr]

    assert await _run(storage, new, "p", [2, 4]) == "total=3.0"
    assert Counter(load=1, total=2, report=2) == CALLS  # load was reused
    records = await storage.load_invocations("p")
    assert records[0] == load_record
    assert (await manager.replay("p")).stale == ()

    previous = await storage.get_flow("p~gen-1")
    assert previous is not None and previous.status is TaskStatus.COMPLETE
    assert [r.name for r in await storage.load_invocations("p~gen-1")] == [
        "load",
        "total",
        "report",
    ]
    assert [flow.flow_id for flow in await manager.generations("p")] == ["p~gen-1"]


async def test_from_a_named_step_a_position_or_with_new_inputs() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    cls = pipeline("sum(xs)")
    manager = FlowManager(storage, [cls])
    await _run(storage, cls, "p", [1, 2])

    assert (await manager.rerun("p", from_step="report")).recomputed == ("report",)
    await _run(storage, cls, "p", [1, 2])
    assert (await manager.rerun("p", from_step=2)).recomputed == ("total", "report")
    await _run(storage, cls, "p", [1, 2])
    plan = await manager.rerun("p", inputs=cls([5, 5]))
    assert (plan.recomputed, plan.previous) == (("load", "total", "report"), "p~gen-3")
    assert await _run(storage, cls, "p", [5, 5]) == "total=10"
    assert Counter(load=2, total=3, report=4) == CALLS


async def test_bad_reruns_are_refused_and_change_nothing() -> None:
    storage = InMemoryExecutionLog()
    cls = pipeline("sum(xs)")
    manager = FlowManager(storage, [cls])
    await _run(storage, cls, "p", [1])
    with pytest.raises(FlowStateError, match="no step of flow 'p' changed since it was recorded"):
        await manager.rerun("p")
    with pytest.raises(StepNotFoundError, match="flow 'p' has no step 'totl'"):
        await manager.rerun("p", from_step="totl")
    with pytest.raises(StepNotFoundError):
        await manager.rerun("p", from_step=4)
    await manager.fork("p", from_step=1, new_flow_id="waiting")
    with pytest.raises(FlowStateError, match="flow 'waiting' is PENDING; rerun a flow once"):
        await manager.rerun("waiting", from_step=1)
    assert await manager.generations("p") == []
    assert (await storage.get_flow("p")).status is TaskStatus.COMPLETE  # type: ignore[union-attr]


@flow_type
@dataclass
class Child:
    n: int

    @step
    async def double(self) -> int:
        CALLS["double"] += 1
        return self.n * 2

    @flow
    async def run(self) -> int:
        return await self.double()


@flow_type
@dataclass
class Parent:
    n: int

    @step
    async def first(self) -> int:
        return self.n

    @flow
    async def run(self) -> int:
        value = await self.first()
        return await self.invoke(Child(value)).result()  # type: ignore[attr-defined,no-any-return]


async def test_children_of_recomputed_positions_move_to_the_previous_generation() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    assert (await Executor(Parent(3), storage, "par").run(Parent.run)).result == 6
    plan = await FlowManager(storage, [Parent]).rerun("par", from_step=2)
    assert plan.recomputed == ("Child",)
    kept = await storage.get_flow("par~gen-1~child-2")
    assert kept is not None and kept.parent_flow_id == "par~gen-1"
    assert [r.child_flow_id for r in await storage.load_invocations("par~gen-1")][1] == (
        "par~gen-1~child-2"
    )
    assert await storage.get_flow("par~child-2") is None
    assert (await Executor(Parent(3), storage, "par").run(Parent.run)).result == 6
    assert CALLS["double"] == 2  # the child ran afresh


async def test_a_session_reruns_in_the_cell_and_warns_once_of_stale_results() -> None:
    CALLS.clear()
    session = Session(InMemoryExecutionLog())
    old, new = pipeline("sum(xs)"), pipeline("max(xs)")
    assert (await session.run(old([1, 3]), "p")).result == "total=4"  # type: ignore[union-attr]
    # A flow that resumes on new code returns the recorded results of changed steps, and says so.
    await session.manager.fork("p", from_step=2, new_flow_id="q")
    with pytest.warns(StaleResultWarning, match=r"flow 'q' .* step 'total' \(position 2\)"):
        assert (await session.run(new([1, 3]), "q")).result == "total=4"  # type: ignore[union-attr]
    outcome = await session.rerun("p")
    assert outcome.result == "total=3"  # type: ignore[union-attr]
    frame = await session.generations("p")
    assert list(frame["flow_id"]) == ["p", "p~gen-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (await session.run(new([1, 3]), "p")).result == "total=3"  # type: ignore[union-attr]
    # A finished flow run again on edited code returns its stored result, and says so once,
    # pointing at the line that ran it.
    await session.run(old([5]), "done")
    with pytest.warns(StaleResultWarning, match="flow 'done'") as caught:
        assert (await session.run(new([5]), "done")).result == "total=5"  # type: ignore[union-attr]
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await session.run(new([5]), "done")  # once per flow
    await session.close()


def sales(by_product: str) -> type:
    """A DAG flow type ``Sales``: load feeds two branches that a report joins."""
    source = f"""
from dataclasses import dataclass
import pyergon
from pyergon import flow, flow_type, step

@flow_type(name="Sales")
@dataclass
class Sales:
    region: str

    @step
    def load(self):
        CALLS["load"] += 1
        return [3, 1, 2]

    @step(inputs={{"rows": "load"}})
    def by_week(self, rows):
        CALLS["by_week"] += 1
        return sum(rows)

    @step(inputs={{"rows": "load"}})
    def by_product(self, rows):
        CALLS["by_product"] += 1
        return {by_product}

    @step(inputs={{"weekly": "by_week", "products": "by_product"}})
    def report(self, weekly, products):
        CALLS["report"] += 1
        return (weekly, products)

    @flow
    async def run(self):
        return await pyergon.dag(self, final_step="report")
"""
    return define(source, "Sales", CALLS=CALLS)


async def test_a_dag_rerun_recomputes_the_changed_step_and_its_descendants_only() -> None:
    CALLS.clear()
    session = Session(InMemoryExecutionLog())
    old, new = sales("max(rows)"), sales("min(rows)")
    assert (await session.run(old("north"), "s")).result == (6, 3)  # type: ignore[union-attr]
    session.manager.register(new)
    graph = await session.graph("s")
    assert "stale" in repr(graph) and "by_product" in repr(graph)

    outcome = await session.rerun("s")
    assert outcome.result == (6, 1)  # type: ignore[union-attr]
    assert Counter(load=1, by_week=1, by_product=2, report=2) == CALLS
    previous = await session.manager.get("s~gen-1")
    assert previous.status is TaskStatus.COMPLETE

    # By name: that step and what depends on it; a step nothing depends on runs alone.
    assert (await session.manager.rerun("s", from_step="by_week")).recomputed == (
        "by_week",
        "report",
    )
    await session.close()


async def test_a_step_added_since_runs_on_a_rerun_and_the_recorded_ones_stay() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    old = sales("max(rows)")
    await Executor(old("north"), storage, "s", on_stale=None).run(old.run)  # type: ignore[attr-defined]
    grown = define(
        "from pyergon import flow_type, step\n"
        "@flow_type(name='Sales')\n"
        "class Sales(Base):\n"
        "    @step(inputs={'summary': 'report'})\n"
        "    def publish(self, summary):\n"
        "        CALLS['publish'] += 1\n"
        "        return f'published {summary}'\n",
        "Sales",
        Base=sales("max(rows)"),
        CALLS=CALLS,
    )
    plan = await FlowManager(storage, [grown]).rerun("s")
    assert plan.recomputed == () and "keeping every recorded step" in plan.summary()
    outcome = await Executor(grown("north"), storage, "s", on_stale=None).run(grown.run)  # type: ignore[attr-defined]
    assert outcome.result == (6, 3)  # final_step is still report
    assert Counter(load=1, by_week=1, by_product=1, report=1, publish=1) == CALLS


async def test_a_child_flow_or_new_inputs_with_a_start_are_refused() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Parent(3), storage, "par").run(Parent.run)
    manager = FlowManager(storage, [Parent, Child])
    with pytest.raises(FlowStateError, match=r"rerun\('par', from_step=2\)"):
        await manager.rerun("par~child-2", from_step=1)
    with pytest.raises(FlowStateError, match="leave from_step out"):
        await manager.rerun("par", from_step=1, inputs=Parent(4))
    assert await manager.generations("par") == []


async def test_a_second_rerun_planned_on_the_same_state_is_refused_before_it_writes() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Parent(3), storage, "par").run(Parent.run)
    flow = await storage.get_flow("par")
    assert flow is not None
    records = await storage.load_invocations("par")
    first = await rerun_flow(storage, flow, frozenset({2}), SystemClock())
    assert first.previous == "par~gen-1"
    assert (await Executor(Parent(3), storage, "par").run(Parent.run)).result == 6
    late = flow  # read before the first rerun
    with pytest.raises(FlowStateError, match="changed while its rerun was prepared"):
        await rerun_flow(storage, late, frozenset({2}), SystemClock())
    assert await storage.get_flow("par~child-2") is not None  # the new child is untouched
    assert await storage.get_flow("par~gen-2") is None
    assert [r.position for r in await storage.load_invocations("par")] == [
        r.position for r in records
    ]


async def test_records_left_by_a_rerun_that_died_are_not_mixed_into_a_generation() -> None:
    storage = InMemoryExecutionLog()
    cls = pipeline("sum(xs)")
    await _run(storage, cls, "p", [1, 2])
    orphan = (await storage.load_invocations("p"))[0].replace(flow_id="p~gen-1", result=b"x")
    await storage.apply(Change(records=(orphan,)))  # a copy that died before its flow
    manager = FlowManager(storage, [cls])
    plan = await manager.rerun("p", from_step="total")
    assert plan.previous == "p~gen-2"
    assert [flow.flow_id for flow in await manager.generations("p")] == ["p~gen-2"]


def reporting(total: str) -> type:
    """A DAG flow type whose @flow method calls a step outside the DAG with dag()'s result."""
    source = f"""
from dataclasses import dataclass
import pyergon
from pyergon import flow, flow_type, step

@flow_type(name="Reporting")
@dataclass
class Reporting:
    @step
    def load(self):
        return [1, 2, 3]

    @step(inputs={{"xs": "load"}})
    def total(self, xs):
        return {total}

    @step
    async def _save(self, value):
        CALLS["save"] += 1
        return f"saved {{value}}"

    @flow
    async def run(self):
        return await self._save(await pyergon.dag(self, final_step="total"))
"""
    return define(source, "Reporting", CALLS=CALLS)


async def test_a_dag_rerun_also_forgets_what_the_flow_recorded_after_the_dag() -> None:
    CALLS.clear()
    session = Session(InMemoryExecutionLog())
    old, new = reporting("sum(xs)"), reporting("max(xs)")
    assert (await session.run(old(), "r")).result == "saved 6"  # type: ignore[union-attr]
    session.manager.register(new)
    plan = await session.manager.rerun("r")
    assert (plan.recomputed, plan.positions) == (("total", "_save"), (2, 3))
    assert (await session.run(new(), "r")).result == "saved 3"  # type: ignore[union-attr]
    assert CALLS["save"] == 2
    await session.close()


async def test_a_child_flow_with_changed_code_counts_as_a_changed_step_of_its_parent() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    assert (await Executor(Parent(3), storage, "par").run(Parent.run)).result == 6
    edited = define(
        "from dataclasses import dataclass\n"
        "from pyergon import flow, flow_type, step\n"
        "@flow_type(name='Child')\n"
        "@dataclass\n"
        "class Child:\n"
        "    n: int\n"
        "    @step\n"
        "    async def double(self):\n"
        "        CALLS['triple'] += 1\n"
        "        return self.n * 3\n"
        "    @flow\n"
        "    async def run(self):\n"
        "        return await self.double()\n",
        "Child",
        CALLS=CALLS,
    )
    manager = FlowManager(storage, [Parent, edited])
    assert (await manager.replay("par")).stale == ("2 child Child",)
    with pytest.raises(StepNotFoundError, match="its steps: 1 first, 2 child Child"):
        await manager.rerun("par", from_step="nothing")
    plan = await manager.rerun("par")
    assert plan.recomputed == ("Child",) and plan.positions == (2,)


def steps_flow(body: str) -> type:
    """A DAG flow type ``Moving`` whose class body (its steps) is ``body``."""
    source = (
        "from dataclasses import dataclass\n"
        "import pyergon\n"
        "from pyergon import flow, flow_type, step\n"
        "@flow_type(name='Moving')\n"
        "@dataclass\n"
        "class Moving:\n"
        f"{body}"
        "    @flow\n"
        "    async def run(self):\n"
        "        return await pyergon.dag(self, final_step='b')\n"
    )
    return define(source, "Moving", CALLS=CALLS)


STEP_A = "    @step\n    def a(self):\n        CALLS['a'] += 1\n        return 1\n"
STEP_B = (
    "    @step(inputs={'x': 'a'})\n    def b(self, x):\n        CALLS['b'] += 1\n"
    "        return x + 1\n"
)
STEP_Z = "    @step\n    def z(self):\n        CALLS['z'] += 1\n        return 0\n"


async def test_a_dag_step_added_before_others_reruns_from_where_positions_moved() -> None:
    CALLS.clear()
    storage = InMemoryExecutionLog()
    before = steps_flow(STEP_A + STEP_B)
    await Executor(before(), storage, "m", on_stale=None).run(before.run)  # type: ignore[attr-defined]
    grown = steps_flow(STEP_Z + STEP_A + STEP_B)  # z takes position 1: a and b move
    plan = await FlowManager(storage, [grown]).rerun("m")
    assert plan.positions == (1, 2)
    outcome = await Executor(grown(), storage, "m", on_stale=None).run(grown.run)  # type: ignore[attr-defined]
    assert outcome.result == 2
    assert Counter(a=2, b=2, z=1) == CALLS
    records = await storage.load_invocations("m")
    assert [(r.position, r.name) for r in records] == [("1", "z"), ("2", "a"), ("3", "b")]
