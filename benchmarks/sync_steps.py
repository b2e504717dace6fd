"""What a ``def`` step costs: its overhead over an ``async def`` step, and a flow of them.

``sync_step_overhead``: flows of ``n`` trivial steps (``DefAdds``, ``AsyncAdds``) run with
``Executor`` in this process, alternating ``ROUNDS`` times after one warm-up flow of each; a
run reports each kind's median time per step and the difference, in wall time and in CPU time
(``time.process_time``: every thread of the process, the step threads and SQLite's included).
Each round also times ``n`` bare ``loop.run_in_executor(None, ...)`` calls of a trivial function:
the thread hand-off this machine charges any ``def`` step, whatever pyergon does around it.
``sync_steps_flow``: one flow of ``n`` ``def`` steps on one backend, its steps per second.
A ``def`` step's body runs in the loop's default thread pool (``Executor`` runs have no pool of
their own), so each step adds a hand-off to a thread and back to the loop.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from benchmarks.backends import fresh_storage
from benchmarks.flows import AsyncAdds, DefAdds
from benchmarks.result import RunResult
from pyergon import Completed, Executor
from pyergon.storage.base import ExecutionLog

__all__ = ["OVERHEAD_TARGET_US", "ROUNDS", "sync_step_overhead", "sync_steps_flow"]

ROUNDS = 5
"""Timed flows of each kind per run, alternating (the median is the run's number)."""
OVERHEAD_TARGET_US = 100
"""Issue 15: a ``def`` step may cost at most this much more than an ``async def`` step."""


async def _timed_run(
    storage: ExecutionLog, flow: AsyncAdds | DefAdds, flow_id: str
) -> tuple[float, float]:
    """Run ``flow`` to its end; return its wall and CPU seconds. A wrong result fails the run."""
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    outcome = await Executor(flow, storage, flow_id).run(lambda running: running.run())
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    expected = sum(range(flow.steps))
    if not (isinstance(outcome, Completed) and outcome.succeeded and outcome.result == expected):
        raise RuntimeError(f"flow {flow_id} did not complete with {expected}: {outcome!r}")
    return wall, cpu


def _add(total: int, value: int) -> int:
    return total + value


async def _handoff_us(n: int) -> float:
    """Microseconds per bare call of a trivial function in the loop's default thread pool."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    total = 0
    for value in range(n):
        total = await loop.run_in_executor(None, _add, total, value)
    return (time.perf_counter() - started) / n * 1e6


async def sync_step_overhead(backend: str, n: int) -> RunResult:
    """Per-step time of ``n``-step flows of ``def`` and of ``async def`` steps, alternating."""
    kinds: dict[str, type[AsyncAdds] | type[DefAdds]] = {"async": AsyncAdds, "def": DefAdds}
    wall_us: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu_us: dict[str, list[float]] = {kind: [] for kind in kinds}
    handoff_us: list[float] = []
    async with fresh_storage(backend) as fresh:
        for kind, flow_class in kinds.items():  # warm-up: imports, the thread pool, caches
            await _timed_run(fresh.storage, flow_class(n), f"warm-up-{kind}")
        started = time.perf_counter()
        for number in range(ROUNDS):
            # The order flips every round, so a drift of the machine falls on both alike.
            order = ("async", "def") if number % 2 == 0 else ("def", "async")
            for kind in order:
                wall, cpu = await _timed_run(fresh.storage, kinds[kind](n), f"{kind}-{number}")
                wall_us[kind].append(wall / n * 1e6)
                cpu_us[kind].append(cpu / n * 1e6)
            handoff_us.append(await _handoff_us(n))
        total = time.perf_counter() - started
    medians = {kind: statistics.median(wall_us[kind]) for kind in kinds}
    cpu_medians = {kind: statistics.median(cpu_us[kind]) for kind in kinds}
    return RunResult(
        total,
        steps=2 * ROUNDS * n,
        extra={
            "async_us_per_step": medians["async"],
            "def_us_per_step": medians["def"],
            "overhead_us_per_step": medians["def"] - medians["async"],
            "async_cpu_us_per_step": cpu_medians["async"],
            "def_cpu_us_per_step": cpu_medians["def"],
            "overhead_cpu_us_per_step": cpu_medians["def"] - cpu_medians["async"],
            "thread_handoff_us": statistics.median(handoff_us),
            "overhead_target_us": OVERHEAD_TARGET_US,
        },
    )


async def sync_steps_flow(backend: str, n: int) -> RunResult:
    """One flow of ``n`` ``def`` steps, after a warm-up flow of 10: its steps per second."""
    async with fresh_storage(backend) as fresh:
        await _timed_run(fresh.storage, DefAdds(10), "warm-up")
        wall, cpu = await _timed_run(fresh.storage, DefAdds(n), "flow")
    return RunResult(wall, 1, n, extra={"cpu_us_per_step": cpu / n * 1e6})
