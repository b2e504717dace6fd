"""What a worker process costs while it waits: memory per suspended flow, CPU when idle.

``suspended_memory``: one worker process runs ``n`` flows up to a one-hour durable timer; its RSS
(``VmRSS``) is read once it has started and idles, and again once every flow is ``SUSPENDED``,
with the storage's size (``sizes.py``) at both moments. ``idle_cpu``: a started worker with
nothing to do, its CPU time (``/proc/<pid>/stat``) and context switches over ``n`` seconds; the
worker prints nothing meanwhile, so every wake-up is pyergon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from benchmarks.backends import fresh_storage
from benchmarks.flows import HourTimerFlow
from benchmarks.pool import ProcessWorkers
from benchmarks.queued import schedule_all, wait_for_status
from benchmarks.result import RunResult
from benchmarks.sizes import storage_bytes
from benchmarks.stats import cpu_seconds, rss_mb
from pyergon import Scheduler
from pyergon.core.status import TaskStatus

__all__ = ["idle_cpu", "suspended_memory"]

SETTLE_SECONDS = 1.0
"""Pause after ``go`` (and before the last reading) so start-up work is over."""
RSS_TARGET_MB = 100


async def suspended_memory(backend: str, n: int) -> RunResult:
    """``n`` flows suspended on a one-hour timer under one worker: its RSS, the storage size."""
    async with fresh_storage(backend) as fresh:
        scheduler = Scheduler(fresh.storage)
        workers = ProcessWorkers(fresh.url, 1, options=("--types", "HourTimerFlow"))
        async with workers:
            await workers.go()
            await asyncio.sleep(SETTLE_SECONDS)
            pid = workers.pids[0]
            rss_before, bytes_before = rss_mb(pid), await storage_bytes(fresh)
            started = time.perf_counter()
            await schedule_all(scheduler, [HourTimerFlow(i) for i in range(n)])
            await wait_for_status(scheduler, HourTimerFlow, TaskStatus.SUSPENDED, n, 120 + n * 0.1)
            wall = time.perf_counter() - started
            await asyncio.sleep(SETTLE_SECONDS)
            rss_after, bytes_after = rss_mb(pid), await storage_bytes(fresh)
    grown = rss_after - rss_before
    return RunResult(
        wall,
        extra={
            "worker_rss_before_mb": rss_before,
            "worker_rss_after_mb": rss_after,
            "worker_rss_growth_mb": grown,
            "rss_per_suspended_flow_kb": grown * 1024 / n,
            "storage_mb": bytes_after / 2**20,
            "storage_per_flow_bytes": (bytes_after - bytes_before) / n,
            "suspended_flows_per_s": n / wall,
            "rss_target_mb": RSS_TARGET_MB,
        },
        worker_peak_rss_mb=workers.peak_rss_mb,
    )


async def idle_cpu(backend: str, n: int) -> RunResult:
    """A started worker with no work for ``n`` seconds: the CPU time it used."""
    async with (
        fresh_storage(backend) as fresh,
        ProcessWorkers(fresh.url, 1, options=("--no-reports",)) as workers,
    ):
        await workers.go()
        await asyncio.sleep(SETTLE_SECONDS)
        pid = workers.pids[0]
        cpu_before, switches_before = cpu_seconds(pid), _context_switches(pid)
        started = time.perf_counter()
        await asyncio.sleep(n)
        wall = time.perf_counter() - started
        cpu, switches = cpu_seconds(pid) - cpu_before, _context_switches(pid) - switches_before
    return RunResult(
        wall,
        extra={
            "idle_cpu_s": cpu,
            "idle_cpu_percent": cpu / wall * 100,
            "wakeups_per_s": switches / wall,
        },
    )


def _context_switches(pid: int) -> int:
    """Context switches of all of ``pid``'s threads: about how often the process woke up."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError),
            open(f"/proc/{pid}/task/{thread}/status") as status,
        ):
            for line in status:
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total
