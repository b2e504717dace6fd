"""The worker scenarios: flows put on the queue with ``Scheduler`` and run by workers.

``drain`` enqueues N three-step flows, then times 1 or 2 worker processes from ``go`` until all
are finished. ``timer_lateness`` and ``signal_latency`` read, from each flow's result, the
wall-clock time at which it continued, and compare it with the timer's stored ``fire_at`` or the
signal's stored ``sent_at``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from benchmarks.backends import FreshStorage, fresh_storage
from benchmarks.direct import CONCURRENCY, STEPS_PER_FLOW, check_three_steps
from benchmarks.flows import SIGNAL_NAME, SignalFlow, ThreeSteps, TimerFlow
from benchmarks.pool import InProcessWorkers, ProcessWorkers, Workers
from benchmarks.result import RunResult
from benchmarks.stats import busy_cpu_seconds, cpu_seconds
from pyergon import Scheduler
from pyergon.core import FlowQuery
from pyergon.core.status import OperationKind, TaskStatus
from pyergon.decorators import flow_type_name
from pyergon.storage._flows import find_signal

__all__ = ["drain", "schedule_all", "signal_latency", "timer_lateness", "wait_for_status"]

SIGNAL_SPACING = 0.02
"""Seconds between two signals, so each latency is measured alone rather than in a burst."""

POLL_INTERVAL = 0.02


class CpuUse:
    """CPU used from now on by the worker processes ``pids`` and by the whole machine."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._workers_at_start = self._workers_seconds()
        self._machine_at_start = busy_cpu_seconds()

    def _workers_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self._pids)

    def percentages(self, wall: float) -> dict[str, float]:
        """CPU use since creation over ``wall`` seconds, in percent of one core.

        ``worker_cpu_percent`` is the CPU of the worker processes summed (at most 100 per
        process); ``machine_cpu_percent`` is every core's (at most 100 per core), which includes
        the harness and, on Redis and PostgreSQL, the server. In-process workers (``memory``)
        share the harness's process: their lines have only ``machine_cpu_percent``.
        """
        machine = (busy_cpu_seconds() - self._machine_at_start) / wall * 100
        if not self._pids:
            return {"machine_cpu_percent": round(machine, 1)}
        workers = (self._workers_seconds() - self._workers_at_start) / wall * 100
        return {"worker_cpu_percent": round(workers, 1), "machine_cpu_percent": round(machine, 1)}


def _timeout(n: int) -> float:
    return 120.0 + n * 0.1


def _workers(
    fresh: FreshStorage, backend: str, processes: int, options: Sequence[str] = ()
) -> Workers:
    if backend == "memory":
        return InProcessWorkers(fresh.storage)
    return ProcessWorkers(fresh.url, processes, options=options)


async def schedule_all(scheduler: Scheduler, flows: Sequence[object]) -> list[str]:
    """Enqueue ``flows`` with ``CONCURRENCY`` schedule calls in flight; return their ids."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def schedule(number: int, flow: object) -> str:
        async with slots:
            return await scheduler.schedule(flow, f"flow-{number}")

    return list(await asyncio.gather(*(schedule(i, flow) for i, flow in enumerate(flows))))


async def drain(backend: str, n: int, *, processes: int, options: Sequence[str] = ()) -> RunResult:
    """Enqueue ``n`` flows, then time ``processes`` worker processes draining them.

    ``options`` are passed to each worker process (see :mod:`benchmarks.worker`).
    """
    async with fresh_storage(backend) as fresh:
        scheduler = Scheduler(fresh.storage)
        enqueue_started = time.perf_counter()
        flow_ids = await schedule_all(scheduler, [ThreeSteps(i) for i in range(n)])
        enqueue_s = time.perf_counter() - enqueue_started
        async with _workers(fresh, backend, processes, options) as workers:
            cpu = CpuUse(workers.pids)
            started = time.perf_counter()
            await workers.go()
            await workers.wait_finished(n, _timeout(n))
            wall = time.perf_counter() - started
            cpu_extra = cpu.percentages(wall)
        outcomes = await scheduler.wait(flow_ids, timeout=30)
        for number, flow_id in enumerate(flow_ids):
            check_three_steps(number, outcomes[flow_id])
    return RunResult(
        wall,
        n,
        n * STEPS_PER_FLOW,
        extra={"enqueue_flows_per_s": n / enqueue_s, **cpu_extra},
        worker_peak_rss_mb=workers.peak_rss_mb,
    )


_heartbeat_runs: list[int] = []
"""One entry per ``heartbeat_cost`` run in this process: which side goes first alternates."""

RARE_BEATS_LEASE = 600.0
"""A lease so long that the heartbeat of ``heartbeat_cost``'s other side never beats in a run."""


async def heartbeat_cost(backend: str, n: int) -> RunResult:
    """One worker process draining ``n`` flows with its default heartbeats, then nearly none.

    The line is the default side's; ``flows_per_s_rare_beats`` is the other's and
    ``heartbeat_cost_percent`` how much slower the default is (negative: faster), run by run.
    """
    beating = await drain(backend, n, processes=1)
    rare = await drain(backend, n, processes=1, options=("--lease-seconds", str(RARE_BEATS_LEASE)))
    beating.extra["flows_per_s_rare_beats"] = n / rare.wall_s
    beating.extra["heartbeat_cost_percent"] = (beating.wall_s / rare.wall_s - 1) * 100
    return beating


async def _run_waiting_flows(
    backend: str,
    flows: Sequence[object],
    release: Callable[[Scheduler, list[str]], Awaitable[None]],
    waited_since: Callable[[FreshStorage, str], Awaitable[float]],
) -> RunResult:
    """Run ``flows`` under one worker; latency = each result minus ``waited_since`` its flow."""
    n = len(flows)
    async with fresh_storage(backend) as fresh:
        scheduler = Scheduler(fresh.storage)
        async with _workers(fresh, backend, 1) as workers:
            await workers.go()
            started = time.perf_counter()
            flow_ids = await schedule_all(scheduler, flows)
            await release(scheduler, flow_ids)
            await workers.wait_finished(n, _timeout(n))
            wall = time.perf_counter() - started
        outcomes = await scheduler.wait(flow_ids, timeout=30)
        latencies = [
            (outcomes[flow_id].unwrap() - await waited_since(fresh, flow_id)) * 1000
            for flow_id in flow_ids
        ]
    # The wait dominates the wall time, so throughput is not reported.
    return RunResult(wall, latencies_ms=latencies, worker_peak_rss_mb=workers.peak_rss_mb)


async def timer_lateness(backend: str, n: int) -> RunResult:
    """``n`` flows sleep 1 s on a durable timer; lateness = continued-at minus ``fire_at``."""

    async def nothing_to_release(_scheduler: Scheduler, _flow_ids: list[str]) -> None:
        return None

    async def fire_at(fresh: FreshStorage, flow_id: str) -> float:
        records = await fresh.storage.load_invocations(flow_id)
        timer = next(record for record in records if record.kind is OperationKind.TIMER)
        assert timer.fire_at is not None
        return timer.fire_at

    return await _run_waiting_flows(
        backend, [TimerFlow(i) for i in range(n)], nothing_to_release, fire_at
    )


async def signal_latency(backend: str, n: int) -> RunResult:
    """``n`` flows wait for a signal sent every 20 ms; latency = resumed-at minus ``sent_at``."""

    async def send_signals(scheduler: Scheduler, flow_ids: list[str]) -> None:
        await _wait_until_suspended(scheduler, flow_ids)
        for flow_id in flow_ids:
            await scheduler.signal(flow_id, SIGNAL_NAME, None)
            await asyncio.sleep(SIGNAL_SPACING)

    async def sent_at(fresh: FreshStorage, flow_id: str) -> float:
        signal = await find_signal(fresh.storage, flow_id, SIGNAL_NAME)
        assert signal is not None
        return signal.sent_at

    return await _run_waiting_flows(
        backend, [SignalFlow(i) for i in range(n)], send_signals, sent_at
    )


async def _wait_until_suspended(scheduler: Scheduler, flow_ids: list[str]) -> None:
    """Return once every flow has reached its signal wait and released its worker."""
    async with asyncio.timeout(_timeout(len(flow_ids))):
        while True:
            suspended = await scheduler.storage.list_flows(
                FlowQuery(status=TaskStatus.SUSPENDED, limit=len(flow_ids) + 1)
            )
            if len(suspended) >= len(flow_ids):
                return
            await asyncio.sleep(POLL_INTERVAL)


async def wait_for_status(
    scheduler: Scheduler, flow_class: type, status: TaskStatus, count: int, timeout: float
) -> None:
    """Return once ``count`` flows of ``flow_class`` have ``status`` (polling ``count_flows``)."""
    name = flow_type_name(flow_class)
    async with asyncio.timeout(timeout):
        # Storage has no event for "this many flows reached a status": poll it.
        while (await scheduler.storage.count_flows(flow_type=name))[status] < count:  # noqa: ASYNC110
            await asyncio.sleep(POLL_INTERVAL * 5)
