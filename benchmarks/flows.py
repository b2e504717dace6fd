"""The flows the benchmarks run, shared by the harness and the worker processes.

``ThreeSteps`` is the throughput flow (three trivial steps); ``TimerFlow`` and ``SignalFlow``
record, in a step, the wall-clock time at which they continued after their wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyergon import await_external_signal, flow, flow_type, schedule_timer, step

TIMER_SECONDS = 1.0
"""How long each ``TimerFlow`` sleeps on its durable timer."""

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


FLOW_TYPES: tuple[type, ...] = (ThreeSteps, TimerFlow, SignalFlow)
"""Every flow type a benchmark worker registers."""
