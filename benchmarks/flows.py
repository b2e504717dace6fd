"""The flows the benchmarks run, shared by the harness and the worker processes.

``ThreeSteps`` is the throughput flow (three trivial steps); ``TimerFlow`` and ``SignalFlow``
record, in a step, the wall-clock time at which they continued after their wait.
``HourTimerFlow`` suspends for an hour (memory held by suspended flows) and ``SlowSteps`` has
three steps of 50 ms (recovery after a worker is killed). ``EndlessSteps`` runs 2 ms steps
until it is cancelled (how soon a cancel request reaches a running flow). ``ChaosSteps`` runs
five short steps, one of which may block the event loop past the lease; each body notes its
start in a file (the chaos benchmark). ``AsyncAdds`` and ``DefAdds`` run the same ``steps``
trivial steps one after another, as ``async def`` and as ``def`` steps (the cost of a sync step).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from pyergon import (
    await_external_signal,
    flow,
    flow_type,
    idempotency_key,
    schedule_timer,
    step,
)
from pyergon._context import current_context
from pyergon.core.status import InvocationStatus
from pyergon.executor.worker import DEFAULT_LEASE_SECONDS

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

BLOCK_SECONDS = DEFAULT_LEASE_SECONDS + 0.5
"""How long the blocking step of a ``ChaosSteps`` flow holds the event loop: past the lease."""

WORKER_ID_VARIABLE = "PYERGON_BENCH_WORKER_ID"
"""Environment variable in which ``benchmarks.worker`` leaves its worker id for step bodies."""


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


@dataclass
@flow_type
class ChaosSteps:
    """Steps of ``step_ms`` milliseconds; the one at index ``blocking_step`` (if any) blocks.

    Every body first reads its own record from the worker's storage, then appends
    ``"<time.time()> <worker id> <pid> <flow id>:<position> <stored|absent|unread>"`` to
    ``starts_file`` with one ``os.write`` on an ``O_APPEND`` descriptor, so the lines of
    several processes (killed ones too) do not mix; ``stored`` says the read found the record
    ``COMPLETE`` already.
    """

    number: int
    step_ms: tuple[int, ...]
    blocking_step: int | None
    starts_file: str

    @step
    async def work(self, index: int, value: int) -> int:
        await _note_start(self.starts_file)
        if index == self.blocking_step:
            time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - the point: a step that blocks the loop
        else:
            await asyncio.sleep(self.step_ms[index] / 1000)
        return value + index

    @flow
    async def run(self) -> int:
        value = self.number
        for index in range(len(self.step_ms)):
            value = await self.work(index, value)
        return value


@dataclass
@flow_type
class AsyncAdds:
    steps: int

    @step
    async def add(self, total: int, value: int) -> int:
        return total + value

    @flow
    async def run(self) -> int:
        total = 0
        for value in range(self.steps):
            total = await self.add(total, value)
        return total


@dataclass
@flow_type
class DefAdds:
    steps: int

    @step
    def add(self, total: int, value: int) -> int:
        return total + value

    @flow
    async def run(self) -> int:
        total = 0
        for value in range(self.steps):
            total = await self.add(total, value)
        return total


_start_files: dict[str, int] = {}
"""Descriptors of the files step bodies note their starts in, by path (one per process)."""


async def _note_start(path: str) -> None:
    if path not in _start_files:
        _start_files[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    key = idempotency_key()
    context = current_context()
    assert context is not None  # in a step
    try:
        records = await context.storage.load_invocations(context.flow_id)
    except Exception:  # the worker's own write will meet it too; the body still runs
        verdict = "unread"
    else:
        stored = any(
            record.idempotency_key == key and record.status is InvocationStatus.COMPLETE
            for record in records
        )
        verdict = "stored" if stored else "absent"
    worker_id = os.environ.get(WORKER_ID_VARIABLE, "-")
    line = f"{time.time()!r} {worker_id} {os.getpid()} {key} {verdict}\n"
    os.write(_start_files[path], line.encode())


FLOW_TYPES: tuple[type, ...] = (ThreeSteps, TimerFlow, SignalFlow)
"""The flow types a benchmark worker registers unless it is told others."""

FLOWS_BY_NAME: dict[str, type] = {
    cls.__name__: cls for cls in (*FLOW_TYPES, HourTimerFlow, SlowSteps, EndlessSteps, ChaosSteps)
}
"""Every benchmark flow class by class name, for ``benchmarks.worker --types``."""
