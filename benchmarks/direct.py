"""The direct-executor scenarios: N three-step flows run with ``Executor``, in this process.

``executor_sequential`` runs them one after another, ``executor_concurrent`` keeps 50 running at
once. Each flow's run time is a latency sample.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.backends import fresh_storage
from benchmarks.flows import ThreeSteps
from benchmarks.result import RunResult
from pyergon import Completed, Executor
from pyergon.core import FlowOutcome
from pyergon.storage.base import ExecutionLog

__all__ = ["CONCURRENCY", "STEPS_PER_FLOW", "check_three_steps", "concurrent", "sequential"]

CONCURRENCY = 50
STEPS_PER_FLOW = 3


def check_three_steps(number: int, outcome: FlowOutcome[int]) -> None:
    """Fail the run unless the flow for ``number`` completed with the right result."""
    expected = (number + 1) * 2 - 1
    if not (isinstance(outcome, Completed) and outcome.succeeded and outcome.result == expected):
        raise RuntimeError(f"flow {number} did not complete with {expected}: {outcome!r}")


async def _run_one(storage: ExecutionLog, number: int, samples: list[float]) -> None:
    started = time.perf_counter()
    outcome = await Executor(ThreeSteps(number), storage, f"flow-{number}").run(
        lambda flow: flow.run()
    )
    samples.append((time.perf_counter() - started) * 1000)
    check_three_steps(number, outcome)


async def sequential(backend: str, n: int) -> RunResult:
    """Run ``n`` flows one after another."""
    async with fresh_storage(backend) as fresh:
        samples: list[float] = []
        started = time.perf_counter()
        for number in range(n):
            await _run_one(fresh.storage, number, samples)
        wall = time.perf_counter() - started
    return RunResult(wall, n, n * STEPS_PER_FLOW, samples)


async def concurrent(backend: str, n: int) -> RunResult:
    """Run ``n`` flows with at most ``CONCURRENCY`` in flight."""
    async with fresh_storage(backend) as fresh:
        samples: list[float] = []
        slots = asyncio.Semaphore(CONCURRENCY)

        async def run_in_slot(number: int) -> None:
            async with slots:
                await _run_one(fresh.storage, number, samples)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for number in range(n):
                group.create_task(run_in_slot(number))
        wall = time.perf_counter() - started
    return RunResult(wall, n, n * STEPS_PER_FLOW, samples)
