"""DAG flows under the Executor and a Worker: positions fixed before any step starts, steps
started as their dependencies finish, replays and retries that run only what has no record.

Concurrency is shown with events (a step that waits for another to have started cannot finish
if they run one after the other), never with sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyergon
from pyergon import Completed, Executor, RetryPolicy, Scheduler, Worker, dag, flow, flow_type, step
from pyergon.core import Invocation, InvocationStatus, OperationKind
from pyergon.core.changes import Change
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.conftest import BACKENDS

runs: Counter[str] = Counter()
"""How often each step's body ran (bodies of stored flows keep no state of their own)."""
breaks: set[str] = set()
"""Steps whose next attempt fails once."""
events: dict[str, asyncio.Event] = {}
"""Events steps set and wait for, by name: made afresh for each test on its own loop."""


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    runs.clear()
    breaks.clear()
    events.clear()


def event(name: str) -> asyncio.Event:
    return events.setdefault(name, asyncio.Event())


async def wait_for(name: str) -> None:
    async with asyncio.timeout(10):
        await event(name).wait()


@pytest.fixture(params=["memory", "sqlite-file"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExecutionLog]:
    """Memory and a SQLite file: the backends DAG durability is tested on."""
    backend = await BACKENDS[request.param](tmp_path)
    try:
        yield backend
    finally:
        await backend.close()


def ran(name: str) -> None:
    runs[name] += 1
    if name in breaks:
        breaks.discard(name)
        raise ValueError(f"{name} broke")


@dataclass
@flow_type
class Branches:
    """source feeds two branches, left (two steps, the first a def step) and right; merge
    joins them."""

    base: int

    @step
    async def source(self) -> int:
        ran("source")
        return self.base

    @step(inputs={"x": "source"})
    def left(self, x: int) -> int:
        ran("left")
        return x + 1

    @step(inputs={"x": "left"})
    async def left_more(self, x: int) -> int:
        ran("left_more")
        return x * 10

    @step(inputs={"x": "source"})
    async def right(self, x: int) -> int:
        ran("right")
        return x + 2

    @step(inputs={"a": "left_more", "b": "right"})
    async def merge(self, a: int, b: int) -> int:
        ran("merge")
        return a + b

    @flow(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
    async def run(self) -> int:
        return await dag(self)


EXPECTED = (1 + 1) * 10 + (1 + 2)
ORDER = ["source", "left", "left_more", "right", "merge"]
"""Topological order, declaration order breaking ties: left_more before right, declared later."""


def step_positions(records: list[Invocation]) -> dict[str, int]:
    return {
        record.name: record.sequence
        for record in records
        if record.kind is OperationKind.STEP and record.sub_sequence == 0
    }


async def test_a_dag_flow_records_every_step_at_its_fixed_position_and_replays(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Branches(1), storage, "branches").run(Branches.run)

    assert outcome == Completed("branches", result=EXPECTED)
    records = await storage.load_invocations("branches")
    assert step_positions(records) == {name: number for number, name in enumerate(ORDER, 1)}
    assert all(record.status is InvocationStatus.COMPLETE for record in records)

    again = await Executor(Branches(1), storage, "branches").run(Branches.run)
    assert again == outcome
    assert runs == Counter(ORDER)  # once each

    replayed = await FlowManager(storage).replay("branches", Branches)
    assert (replayed.consistent, replayed.replayed, replayed.ended_at) == (True, 5, None)
    assert runs == Counter(ORDER)


@dataclass
@flow_type
class Racing:
    """A diamond whose branches finish in the order ``first`` says, whatever their positions."""

    first: str

    @step
    async def root(self) -> int:
        return 10

    @step(inputs={"val": "root"})
    async def branch_a(self, val: int) -> int:
        await self.finish_after("a")
        return val + 1

    @step(inputs={"val": "root"})
    async def branch_b(self, val: int) -> int:
        await self.finish_after("b")
        return val + 2

    async def finish_after(self, branch: str) -> None:
        """The first branch goes on at once and says so; the other waits for it."""
        if branch == self.first:
            event(f"{branch} done").set()
        else:
            await wait_for(f"{self.first} done")

    @step(inputs={"a": "branch_a", "b": "branch_b"})
    async def merge(self, a: int, b: int) -> int:
        return a + b

    @flow
    async def run(self) -> int:
        await pyergon.now()  # a recorded value first: the DAG's positions follow it
        return await dag(self)


async def test_positions_do_not_depend_on_which_step_finishes_first() -> None:
    storage = InMemoryExecutionLog()
    positions = {}
    for first, second in (("a", "b"), ("b", "a")):
        flow_id = f"racing-{first}"

        assert (await Executor(Racing(first), storage, flow_id).run(Racing.run)).result == 23

        records = await storage.load_invocations(flow_id)
        positions[first] = step_positions(records)
        finished = {r.name: r.completed_at for r in records}
        assert finished[f"branch_{first}"] <= finished[f"branch_{second}"]  # type: ignore[operator]

    assert positions["a"] == positions["b"] == {"root": 2, "branch_a": 3, "branch_b": 4, "merge": 5}


@dataclass
@flow_type
class Dataflow:
    """slow cannot finish before after_quick started: level by level, it would wait forever."""

    tag: str

    @step
    async def quick(self) -> int:
        return 1

    @step
    async def slow(self) -> int:
        await wait_for("after_quick started")
        return 2

    @step(inputs={"x": "quick"})
    async def after_quick(self, x: int) -> int:
        event("after_quick started").set()
        return x + 10

    @step(inputs={"a": "after_quick", "b": "slow"})
    async def total(self, a: int, b: int) -> int:
        return a + b

    @flow
    async def run(self) -> int:
        return await dag(self)


async def test_a_step_starts_as_soon_as_its_own_dependencies_finished(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Dataflow("x"), storage, "dataflow").run(Dataflow.run)

    assert outcome.result == 13
    positions = step_positions(await storage.load_invocations("dataflow"))
    assert positions == {"quick": 1, "slow": 2, "after_quick": 3, "total": 4}


async def test_a_failing_branch_stops_new_steps_lets_running_ones_finish_and_raises_itself(
    storage: ExecutionLog,
) -> None:
    @dataclass
    @flow_type
    class OneBranchFails:
        tag: str

        @step
        async def fails(self) -> int:
            await wait_for("running started")
            event("fails failed").set()
            raise KeyError("no such row")

        @step
        async def running(self) -> int:  # still running when fails fails
            event("running started").set()
            await wait_for("fails failed")
            return 2

        @step(inputs={"x": "fails"})
        async def never(self, x: int) -> int:
            runs["never"] += 1
            return x

        @step(inputs={"x": "running"})
        async def not_started(self, x: int) -> int:
            runs["not_started"] += 1
            return x

        @flow
        async def run(self) -> int:
            return await dag(self)

    outcome = await Executor(OneBranchFails("t"), storage, "one-fails").run(OneBranchFails.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, KeyError)
    statuses = {r.name: r.status for r in await storage.load_invocations("one-fails")}
    assert statuses == {"fails": InvocationStatus.FAILED, "running": InvocationStatus.COMPLETE}
    assert runs == Counter()


async def test_a_flow_retry_after_a_failed_branch_runs_only_that_branch_again(
    storage: ExecutionLog,
) -> None:
    breaks.add("left")

    outcome = await Executor(Branches(1), storage, "retried").run(Branches.run)

    assert outcome == Completed("retried", result=EXPECTED)
    assert runs == Counter(source=1, left=2, left_more=1, right=1, merge=1)
    records = await storage.load_invocations("retried")
    assert step_positions(records) == {name: number for number, name in enumerate(ORDER, 1)}


async def test_without_a_retry_the_flow_fails_with_the_steps_own_error(
    storage: ExecutionLog,
) -> None:
    breaks.add("right")

    @dataclass
    @flow_type
    class NoRetry(Branches):
        @flow
        async def run(self) -> int:
            return await dag(self)

    outcome = await Executor(NoRetry(1), storage, "no-retry").run(NoRetry.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, ValueError)
    assert str(outcome.error) == "right broke"
    assert runs["merge"] == 0


@pytest.mark.parametrize(
    "forgotten",
    [{"right", "merge"}, {"left", "left_more", "merge"}],
    ids=["the-last-branch", "a-branch-before-a-kept-step"],
)
async def test_a_rerun_that_forgot_some_steps_runs_exactly_those_again(forgotten: set[str]) -> None:
    first = InMemoryExecutionLog()
    assert (await Executor(Branches(1), first, "pipeline").run(Branches.run)).result == EXPECTED
    recorded = await first.load_invocations("pipeline")
    runs.clear()
    # What a rerun leaves: every record but those of the steps it recomputes.
    second = InMemoryExecutionLog()
    await Scheduler(second).schedule(Branches(1), flow_id="pipeline")  # stored, not run
    await second.apply(Change(records=tuple(r for r in recorded if r.name not in forgotten)))

    outcome = await Executor(Branches(1), second, "pipeline").run(Branches.run)

    assert outcome.result == EXPECTED
    assert runs == Counter(forgotten)
    assert step_positions(await second.load_invocations("pipeline")) == step_positions(recorded)


async def test_a_worker_runs_a_dag_flow(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "dag-worker", max_concurrent_flows=4)
    await worker.register(Branches)
    flow_id = await scheduler.schedule(Branches(2), flow_id="served")

    await worker.run_until_idle()

    assert (await scheduler.wait(flow_id, timeout=10))[flow_id].result == (2 + 1) * 10 + (2 + 2)
    assert runs == Counter(ORDER)


meeting = threading.Barrier(2, timeout=10)
"""Two def steps meet here: in threads one after the other, the first would wait in vain."""


@dataclass
@flow_type
class Threads:
    tag: str

    @step
    def left(self) -> str:
        meeting.wait()
        return threading.current_thread().name

    @step
    def right(self) -> str:
        meeting.wait()
        return threading.current_thread().name

    @step(isolate="process")
    def squared(self) -> int:
        return len(self.tag) ** 2

    @step(inputs={"a": "left", "b": "right", "n": "squared"})
    async def joined(self, a: str, b: str, n: int) -> tuple[bool, int]:
        return a != b, n

    @flow
    async def run(self) -> tuple[bool, int]:
        return await dag(self)


async def test_def_steps_run_concurrently_in_threads_and_a_process_step_is_a_node(
    storage: ExecutionLog,
) -> None:
    meeting.reset()
    outcome = await Executor(Threads("abc"), storage, "threads").run(Threads.run)

    assert outcome.result == (True, 9)


async def test_outside_a_flow_def_steps_still_overlap() -> None:
    meeting.reset()

    @flow_type
    class Plain:
        @step
        def left(self) -> int:
            meeting.wait()
            return 1

        @step
        def right(self) -> int:
            meeting.wait()
            return 2

        @step(inputs={"a": "left", "b": "right"})
        def both(self, a: int, b: int) -> int:
            return a + b

        @flow
        async def run(self) -> int:
            return await dag(self)

    assert await Plain().run() == 3
