"""What ``pyergon.dag`` buys: a 20-step DAG of independent branches against the same steps in a row.

``DagPipeline`` and ``SequentialPipeline`` share their steps: four branches (``a`` to ``d``) of
five ``def`` steps each, every step passing its input on plus one after ``time.sleep`` of
``STEP_SECONDS``, which frees the interpreter lock as I/O or NumPy do. ``DagPipeline`` runs them
with ``dag(self)`` (the four branches at once, each step when the one before it finished);
``SequentialPipeline`` awaits the same 20 steps one after another. Each run times ``n`` flows of
each with ``Executor`` on fresh storage, alternating which goes first, after one warm-up flow of
each; the run's numbers are medians per flow.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.backends import fresh_storage
from benchmarks.result import RunResult
from pyergon import Completed, Executor, dag, flow, flow_type, step
from pyergon.storage.base import ExecutionLog

__all__ = ["BRANCHES", "STEPS_PER_BRANCH", "STEP_SECONDS", "dag_pipeline"]

BRANCHES = ("a", "b", "c", "d")
STEPS_PER_BRANCH = 5
STEP_SECONDS = 0.010
"""How long each step's body sleeps."""


def _stage(branch: str, number: int) -> Callable[..., Any]:
    """Step ``number`` of ``branch`` (``a1``, ``a2``...): takes the step before it as input."""

    def stage(self: Stages, x: int = 0) -> int:
        time.sleep(STEP_SECONDS)
        return x + 1

    stage.__name__ = stage.__qualname__ = f"{branch}{number}"
    inputs = {"x": f"{branch}{number - 1}"} if number > 1 else None
    return step(inputs=inputs)(stage)


class Stages:
    """The 20 steps both pipelines run, set below: ``a1`` -> ``a2`` -> ... -> ``a5``, ``b1``..."""


for _branch in BRANCHES:
    for _number in range(1, STEPS_PER_BRANCH + 1):
        setattr(Stages, f"{_branch}{_number}", _stage(_branch, _number))


@dataclass
@flow_type
class DagPipeline(Stages):
    number: int

    @flow
    async def run(self) -> int:
        return int(await dag(self))


@dataclass
@flow_type
class SequentialPipeline(Stages):
    number: int

    @flow
    async def run(self) -> int:
        ends = []
        for branch in BRANCHES:
            value = 0
            for number in range(1, STEPS_PER_BRANCH + 1):
                value = await getattr(self, f"{branch}{number}")(value)
            ends.append(value)
        return ends[-1]


async def _timed(
    storage: ExecutionLog, flow: DagPipeline | SequentialPipeline, flow_id: str
) -> float:
    """Run ``flow`` to its end; return its wall seconds. A wrong result fails the run."""
    started = time.perf_counter()
    outcome = await Executor(flow, storage, flow_id).run(lambda running: running.run())
    wall = time.perf_counter() - started
    if not (isinstance(outcome, Completed) and outcome.succeeded):
        raise RuntimeError(f"flow {flow_id} did not complete: {outcome!r}")
    if outcome.result != STEPS_PER_BRANCH:
        raise RuntimeError(f"flow {flow_id} returned {outcome.result!r}, not {STEPS_PER_BRANCH}")
    return wall


async def dag_pipeline(backend: str, n: int) -> RunResult:
    """``n`` flows of each pipeline, alternating; their median wall time per flow and the ratio."""
    kinds: dict[str, type[DagPipeline] | type[SequentialPipeline]] = {
        "dag": DagPipeline,
        "sequential": SequentialPipeline,
    }
    wall_ms: dict[str, list[float]] = {kind: [] for kind in kinds}
    async with fresh_storage(backend) as fresh:
        for kind, flow_class in kinds.items():  # warm-up: imports, the step threads
            await _timed(fresh.storage, flow_class(0), f"warm-up-{kind}")
        started = time.perf_counter()
        for number in range(n):
            # The order flips every round, so a drift of the machine falls on both alike.
            order = ("dag", "sequential") if number % 2 == 0 else ("sequential", "dag")
            for kind in order:
                wall = await _timed(fresh.storage, kinds[kind](number), f"{kind}-{number}")
                wall_ms[kind].append(wall * 1e3)
        total = time.perf_counter() - started
    dag_ms, sequential_ms = (statistics.median(wall_ms[kind]) for kind in kinds)
    steps = len(BRANCHES) * STEPS_PER_BRANCH
    return RunResult(
        total,
        flows=2 * n,
        steps=2 * n * steps,
        extra={
            "dag_ms": dag_ms,
            "sequential_ms": sequential_ms,
            "speedup": sequential_ms / dag_ms,
            "ideal_speedup": len(BRANCHES),
            "sleep_ms_per_step": STEP_SECONDS * 1e3,
            "steps_per_flow": steps,
            "branches": len(BRANCHES),
        },
    )
