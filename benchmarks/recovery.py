"""The ``recovery_time`` scenario: a worker is SIGKILLed mid-run; how soon is its work done?

``n`` flows of three 50 ms steps (``SlowSteps``) are enqueued; two worker processes with the
default settings (their lease, ``DEFAULT_LEASE_SECONDS``, and heartbeats four times per lease)
and ``SLOTS`` flows each start on them. Once a quarter of the flows are
finished and worker 0 runs a flow, worker 0 is killed. The flows it held are those storage
still shows ``RUNNING`` under its id; each one's recovery time is its ``updated_at`` once
``COMPLETE`` minus the kill time.
The drain time runs from ``go`` to the last flow's ``updated_at``. Nobody can take a killed
worker's flow before its lease expires, so recovery is bounded below by the lease left at the
kill (between 3/4 and all of the lease, as heartbeats renew it every quarter), plus up to a
second until an idle worker claims again, plus the rest of the flow's run.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.backends import fresh_storage
from benchmarks.direct import STEPS_PER_FLOW, check_three_steps
from benchmarks.flows import SlowSteps
from benchmarks.pool import ProcessWorkers
from benchmarks.queued import schedule_all, wait_for_status
from benchmarks.result import RunResult
from pyergon import Scheduler
from pyergon.core import FlowQuery
from pyergon.core.status import TaskStatus
from pyergon.decorators import flow_type_name
from pyergon.executor.worker import DEFAULT_LEASE_SECONDS
from pyergon.storage.base import ExecutionLog

__all__ = ["recovery_time"]

SLOTS = 10
"""Flows each worker runs at once: few enough that the run lasts a few seconds."""


async def recovery_time(backend: str, n: int) -> RunResult:
    """Kill one of two workers mid-run; time until its flows, then all flows, are complete."""
    async with fresh_storage(backend) as fresh:
        scheduler = Scheduler(fresh.storage)
        flow_ids = await schedule_all(scheduler, [SlowSteps(i) for i in range(n)])
        options = ("--types", "SlowSteps")  # the workers' default lease and heartbeats
        async with ProcessWorkers(fresh.url, 2, max_concurrent=SLOTS, options=options) as workers:
            went_at = time.time()
            await workers.go()
            await workers.wait_finished(n // 4, 120)
            await _until_running_on(fresh.storage, ProcessWorkers.worker_id(0), 30)
            await workers.kill(0)
            killed_at = time.time()
            held = await fresh.storage.list_flows(
                FlowQuery(status=TaskStatus.RUNNING, worker_id=ProcessWorkers.worker_id(0), limit=n)
            )
            await wait_for_status(scheduler, SlowSteps, TaskStatus.COMPLETE, n, 120 + n)
        if not held:
            raise RuntimeError("the killed worker held no flow; kill it earlier")
        outcomes = await scheduler.wait(flow_ids, timeout=30)
        for number, flow_id in enumerate(flow_ids):
            check_three_steps(number, outcomes[flow_id])
        flows = await fresh.storage.list_flows(
            FlowQuery(flow_type=flow_type_name(SlowSteps), limit=n)
        )
        finished_at = {flow.flow_id: flow.updated_at for flow in flows}
    recovered = [finished_at[flow.flow_id] - killed_at for flow in held]
    drain = max(finished_at.values()) - went_at
    return RunResult(
        drain,
        n,
        n * STEPS_PER_FLOW,
        latencies_ms=[seconds * 1000 for seconds in recovered],
        extra={
            "recovery_s": max(recovered),
            "held_by_killed_worker": len(held),
            "killed_after_s": killed_at - went_at,
            "lease_seconds": DEFAULT_LEASE_SECONDS,
        },
    )


async def _until_running_on(storage: ExecutionLog, worker_id: str, within: float) -> None:
    """Wait until ``worker_id`` runs a flow, so killing it leaves flows to recover."""
    deadline = time.monotonic() + within
    while not await storage.list_flows(
        FlowQuery(status=TaskStatus.RUNNING, worker_id=worker_id, limit=1)
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{worker_id} ran no flow within {within} s")
        await asyncio.sleep(0.005)
