"""The ``cancel_latency`` scenario: how soon does a cancel request stop a running flow?

``n`` flows of endless 2 ms steps (``EndlessSteps``) run on one worker (a process of its own,
except on memory), ``RUNNING_AT_ONCE`` at a time. Each is cancelled through
``FlowManager.cancel`` on the harness's own storage object, one after another with a random
pause of 0 to 40 ms between requests, so requests fall at every phase of the worker's own
checks; after each request the next flow is scheduled, which wakes the worker (it looks for
cancel requests then) as a busy queue does. Latency per flow = its
``updated_at`` once ``CANCELLED`` minus the time ``FlowManager.cancel`` returned (the request
is stored by then); it includes the wait for the flow's next step boundary (at most 2 ms) and
the worker's write. ``cancel_call_ms`` is the median time the cancel call itself took (it reads
the flow, then writes the request), which a user waits in addition.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from benchmarks.backends import FreshStorage, fresh_storage
from benchmarks.flows import EndlessSteps
from benchmarks.pool import InProcessWorkers, ProcessWorkers, Workers
from benchmarks.queued import schedule_all, wait_for_status
from benchmarks.result import RunResult
from pyergon import Scheduler
from pyergon.core.status import TaskStatus
from pyergon.management import FlowManager

__all__ = ["cancel_latency"]

MOST_SPACING = 0.04
"""Longest pause between two cancel requests (seconds); each pause is drawn from 0 to this."""

RUNNING_AT_ONCE = 4
"""Flows running at a time: enough that the worker is busy, few enough that their step writes
do not saturate a server (then a cancel would time the server's queue, not the worker)."""


def _workers(fresh: FreshStorage) -> Workers:
    if fresh.backend == "memory":
        return InProcessWorkers(fresh.storage, (EndlessSteps,))
    return ProcessWorkers(fresh.url, 1, options=("--types", "EndlessSteps", "--no-reports"))


async def cancel_latency(backend: str, n: int) -> RunResult:
    """Cancel ``n`` running flows one by one; latency = ``CANCELLED`` at minus requested at."""
    pauses = random.Random(n)
    async with fresh_storage(backend) as fresh:
        scheduler = Scheduler(fresh.storage)
        manager = FlowManager(fresh.storage)
        async with _workers(fresh) as workers:
            await workers.go()
            flows = [EndlessSteps(i) for i in range(n)]
            flow_ids = await schedule_all(scheduler, flows[:RUNNING_AT_ONCE])
            await wait_for_status(scheduler, EndlessSteps, TaskStatus.RUNNING, len(flow_ids), 60)
            started = time.perf_counter()
            stored_at = {}
            calls = []
            for number in range(n):
                flow_id = flow_ids[number]
                await _until_running(manager, flow_id)
                await asyncio.sleep(pauses.uniform(0, MOST_SPACING))
                called_at = time.time()
                await manager.cancel(flow_id)
                stored_at[flow_id] = time.time()
                calls.append((stored_at[flow_id] - called_at) * 1000)
                if len(flow_ids) < n:
                    flow_ids.append(await scheduler.schedule(flows[len(flow_ids)]))
            await wait_for_status(scheduler, EndlessSteps, TaskStatus.CANCELLED, n, 60)
            wall = time.perf_counter() - started
        latencies = []
        for flow_id in flow_ids:
            flow = await manager.get(flow_id)
            latencies.append((flow.updated_at - stored_at[flow_id]) * 1000)
    return RunResult(
        wall,
        latencies_ms=latencies,
        extra={"cancel_call_ms": round(statistics.median(calls), 3)},
        worker_peak_rss_mb=workers.peak_rss_mb,
    )


async def _until_running(manager: FlowManager, flow_id: str) -> None:
    async with asyncio.timeout(60):
        # Storage has no event for "this flow runs now": poll it.
        while (await manager.get(flow_id)).status is not TaskStatus.RUNNING:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
