"""The flows the benchmarks run, shared by the harness and the worker processes.

``ThreeSteps`` is the throughput flow (three trivial steps); ``TimerFlow`` and ``SignalFlow``
record, in a step, the wall-clock time at which they continued after their wait.
``HourTimerFlow`` suspends for an hour (memory held by suspended flows) and ``SlowSteps`` has
three steps of 50 ms (recovery after a worker is killed). ``EndlessSteps`` runs 2 ms steps
until it is cancelled (how soon a cancel request reaches a running flow).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pyergon import await_external_signal, flow, flow_type, schedule_timer, step

TIMER_SECONDS = 1.0
"""How long each ``TimerFlow`` sleeps on its durable timer."""

LONG_TIMER_SECONDS = 3600.0
"""How long each ``HourTimerFlow`` sleeps: longer than any benchmark runs."""

SLOW_STEP_SECONDS = 0.05
"""How long each step of ``SlowSteps`` takes."""

ENDLESS_STEP_SECONDS = 0.002
"""How long each step of ``EndlessSteps`` takes: the longest a cancel waits for a boundary."""

SIGNAL_NAME = "go"
"""The signal each ``SignalFlow`` waits for."""


@dataclass
@flow_type
class ThreeSteps:
    number: int

    @step
    async def first(self) -> int:
        return self.number + 1

    @step
    async def second(self, value: int) -> int:
        return value * 2

    @step
    async def third(self, value: int) -> int:
        return value - 1

    @flow
    async def run(self) -> int:
        return await self.third(await self.second(await self.first()))


@dataclass
@flow_type
class TimerFlow:
    number: int

    @step
    async def continued_at(self) -> float:
        return time.time()

    @flow
    async def run(self) -> float:
        await schedule_timer(TIMER_SECONDS)
        return await self.continued_at()


@dataclass
@flow_type
class SignalFlow:
    number: int

    @step
    async def resumed_at(self) -> float:
        return time.time()

    @flow
    async def run(self) -> float:
        await await_external_signal(SIGNAL_NAME)
        return await self.resumed_at()


@dataclass
@flow_type
class HourTimerFlow:
    number: int

    @flow
    async def run(self) -> int:
        await schedule_timer(LONG_TIMER_SECONDS)
        return self.number


@dataclass
@flow_type
class SlowSteps:
    number: int

    @step
    async def first(self) -> int:
        await asyncio.sleep(SLOW_STEP_SECONDS)
        return self.number + 1

    @step
    async def second(self, value: int) -> int:
        await asyncio.sleep(SLOW_STEP_SECONDS)
        return value * 2

    @step
    async def third(self, value: int) -> int:
        await asyncio.sleep(SLOW_STEP_SECONDS)
        return value - 1

    @flow
    async def run(self) -> int:
        return await self.third(await self.second(await self.first()))


@dataclass
@flow_type
class EndlessSteps:
    number: int

    @step
    async def tick(self, count: int) -> int:
        await asyncio.sleep(ENDLESS_STEP_SECONDS)
        return count + 1

    @flow
    async def run(self) -> int:
        count = 0
        while True:  # until cancelled
            count = await self.tick(count)


FLOW_TYPES: tuple[type, ...] = (ThreeSteps, TimerFlow, SignalFlow)
"""The flow types a benchmark worker registers unless it is told others."""

FLOWS_BY_NAME: dict[str, type] = {
    cls.__name__: cls for cls in (*FLOW_TYPES, HourTimerFlow, SlowSteps, EndlessSteps)
}
"""Every benchmark flow class by class name, for ``benchmarks.worker --types``."""
